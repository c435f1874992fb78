import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import CLinux

/// The supervisor side of one engine job's Attempt Control Session: a listener of its own on 127.0.0.1 (an
/// ephemeral port) and a random token, given to the job as `PREFECT__CONTROL_PORT`/`PREFECT__CONTROL_TOKEN`.
/// It accepts one authenticated connection, then closes the listener. Everything runs on the worker's
/// poller thread (`FDPoller`) with non-blocking sockets: no thread of its own, no cost while idle.
///
/// A local client that is not the job gets nothing: a connection must send the token within
/// `authenticationSeconds` and at most `AttemptControl.maxTokenLine` bytes, at most `maxUnauthenticated`
/// are held at once (the oldest is dropped for a new one), and a wrong token closes it.
final class AttemptControlSession: Sendable {
    /// What became of an intent (`signal`).
    enum SignalStatus: Sendable, Equatable {
        /// The engine acknowledged it: it will treat our SIGTERM accordingly.
        case acknowledged
        /// The engine had already concluded the attempt (it reported a state, or acknowledged an intent).
        case alreadyConcluded
        /// The engine is not connected, or did not answer in time: fall back to a plain teardown.
        case notAcknowledged
    }

    static let authenticationSeconds = 5.0
    static let maxUnauthenticated = 8
    /// How long an intent waits for the engine's acknowledgement (as Prefect's runner waits).
    static let acknowledgementSeconds = 1.0

    let port: UInt16
    let token: String
    private let log: Logger
    private let poller: FDPoller
    private let state = Mutex(State())
    /// Set once nothing more can be acknowledged: the engine concluded its attempt, or the connection is gone.
    /// `signal` waits on it. Set while `state` is locked; its waiters' test reads only its own value.
    private let settled = Condition(false)

    private struct State {
        var listener: (fd: Int32, watch: FDPoller.Watch)?
        /// Connections that have not sent the token yet, oldest first.
        var unauthenticated: [(fd: Int32, watch: FDPoller.Watch, line: [UInt8], since: Date)] = []
        var connection: (fd: Int32, watch: FDPoller.Watch)?
        var rules = ControlConnection()
        var everConnected = false
        var conclusion: AttemptControl.Conclusion?
        var rejections = 0
        var closed = false
    }

    /// The variables that tell the engine where to connect.
    var environment: [String: String] {
        ["PREFECT__CONTROL_PORT": String(port), "PREFECT__CONTROL_TOKEN": token]
    }

    /// The engine connected and authenticated at some point.
    var connected: Bool { state.withLock { $0.everConnected } }
    /// The engine negotiated outcome receipts (protocol version 2): it promises to conclude the attempt.
    var negotiatedReceipts: Bool { state.withLock { $0.rules.receipts } }
    /// How the engine concluded the attempt, if it has.
    var conclusion: AttemptControl.Conclusion? { state.withLock { $0.conclusion } }

    /// Opens the listener. Throws a message naming what failed; the job then runs without a session.
    init(log: Logger, poller: FDPoller = .shared) throws(SpawnError) {
        self.log = log
        self.poller = poller
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw SpawnError(message: "cannot open the attempt control listener: socket(): \(errnoText())") }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = in_addr_t(UInt32(0x7f00_0001).bigEndian)
        address.sin_port = 0
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let named = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard bound == 0, listen(fd, 16) == 0, named == 0 else {
            let reason = errnoText()
            _ = Glibc.close(fd)
            throw SpawnError(message: "cannot open the attempt control listener on 127.0.0.1: \(reason)")
        }
        port = UInt16(bigEndian: address.sin_port)
        var generator = SystemRandomNumberGenerator()
        token = (0..<16).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &generator)) }.joined()
        let watch = poller.watch(fd) { [weak self] _ in self?.accepting() ?? false }
        state.withLock { $0.listener = (fd, watch) }
    }

    deinit { close() }

    /// Tells the engine `intent` and waits (at most `acknowledgementSeconds`) for it to acknowledge.
    func signal(_ intent: AttemptControl.Intent, timeout: Double = AttemptControlSession.acknowledgementSeconds) async -> SignalStatus {
        enum Start { case status(SignalStatus), wait }
        let start = state.withLock { state -> Start in
            if state.conclusion != nil { return .status(.alreadyConcluded) }
            guard let connection = state.connection, state.rules.pendingIntent == nil else { return .status(.notAcknowledged) }
            state.rules.pendingIntent = intent
            guard Self.write(connection.fd, [intent.byte]) else { return .status(.notAcknowledged) }
            return .wait
        }
        if case .status(let status) = start { return status }
        // A real wait (the teardown's deadlines do not end with a cancelled task), at most `timeout`.
        await settled.wait(until: { $0 }, timeout: timeout, cancellation: .ignored)
        let outcome = state.withLock { state -> SignalStatus in
            switch state.conclusion {
            case .delegated(intent): return .acknowledged
            case .some: return .alreadyConcluded
            case nil: return .notAcknowledged
            }
        }
        if outcome == .notAcknowledged { dropConnection() }  // as Prefect's runner: no ack in time ends the session
        return outcome
    }

    /// Closes the listener and every connection. Called when the job has exited; safe to call again.
    func close() {
        let (listener, connections) = state.withLock { state -> ((Int32, FDPoller.Watch)?, [(Int32, FDPoller.Watch)]) in
            guard !state.closed else { return (nil, []) }
            state.closed = true
            defer {
                state.listener = nil
                state.unauthenticated = []
                state.connection = nil
            }
            settled.update { $0 = true }
            return (state.listener, state.unauthenticated.map { ($0.fd, $0.watch) } + (state.connection.map { [$0] } ?? []))
        }
        for (fd, watch) in (listener.map { [$0] } ?? []) + connections {
            poller.remove(watch) { _ = Glibc.close(fd) }
        }
    }

    // MARK: - On the poller thread

    /// The listener is readable: accept what is waiting.
    private func accepting() -> Bool {
        while true {
            let listener: Int32 = state.withLock { $0.listener?.fd ?? -1 }
            let fd = cl_accept_cloexec_nonblocking(listener)
            guard fd >= 0 else {
                if errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED { return true }
                // The listener is broken (or closed): stop listening; the job runs on without a session.
                let owned = state.withLock { state -> Bool in
                    guard state.listener?.fd == listener else { return false }
                    state.listener = nil
                    return true
                }
                if owned { _ = Glibc.close(listener) }
                return false
            }
            let watch = poller.watch(fd) { [weak self] fd in self?.readable(fd) ?? false }
            let dropped = state.withLock { state -> (Int32, FDPoller.Watch)? in
                state.unauthenticated.append((fd, watch, [], Date()))
                guard state.unauthenticated.count > Self.maxUnauthenticated else { return nil }
                let oldest = state.unauthenticated.removeFirst()
                return (oldest.fd, oldest.watch)
            }
            if let (fd, watch) = dropped { poller.remove(watch) { _ = Glibc.close(fd) } }
            DispatchQueue.global().asyncAfter(deadline: .now() + Self.authenticationSeconds) { [weak self] in
                self?.expire(fd, watch)
            }
        }
    }

    /// A connection that has not authenticated in time is closed.
    private func expire(_ fd: Int32, _ watch: FDPoller.Watch) {
        let expired = state.withLock { state -> Bool in
            guard let index = state.unauthenticated.firstIndex(where: { $0.watch == watch }) else { return false }
            state.unauthenticated.remove(at: index)
            return true
        }
        if expired {
            log.debug("closed a connection to the attempt control port that sent no token within \(Self.authenticationSeconds) s")
            poller.remove(watch) { _ = Glibc.close(fd) }
        }
    }

    /// A connection is readable. False (after closing it) when it is done.
    private func readable(_ fd: Int32) -> Bool {
        var bytes = [UInt8](repeating: 0, count: 512)
        let count = recv(fd, &bytes, bytes.count, 0)
        if count < 0, errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR { return true }
        let data = count > 0 ? Array(bytes[0..<count]) : []
        let keep: Bool = state.withLock { state in
            if let index = state.unauthenticated.firstIndex(where: { $0.fd == fd }) {
                return authenticate(&state, index, data, ended: count <= 0)
            }
            guard state.connection?.fd == fd else { return false }
            guard count > 0 else { return disconnect(&state) }
            return handle(&state, data)
        }
        if !keep { Glibc.close(fd) }
        return keep
    }

    /// Reads the token line of an unauthenticated connection; true while it stays open.
    private func authenticate(_ state: inout State, _ index: Int, _ data: [UInt8], ended: Bool) -> Bool {
        state.unauthenticated[index].line += data
        let line = state.unauthenticated[index].line
        guard let newline = line.firstIndex(of: UInt8(ascii: "\n")) else {
            if ended || line.count > AttemptControl.maxTokenLine {
                state.unauthenticated.remove(at: index)
                return false
            }
            return true
        }
        let entry = state.unauthenticated.remove(at: index)
        let offered = String(decoding: line[..<newline], as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard !state.closed, !state.everConnected, Self.same(offered, token) else {
            state.rejections += 1
            let line = "rejected a connection to the run's attempt control port (127.0.0.1:\(port)): wrong token; the job goes on"
            if state.rejections == 1 { log.warning(line) } else { log.debug(line) }
            return false
        }
        // The token is used up: one authenticated connection, no more listening.
        state.everConnected = true
        state.connection = (entry.fd, entry.watch)
        if let listener = state.listener {
            state.listener = nil
            poller.remove(listener.watch) { _ = Glibc.close(listener.fd) }
        }
        log.debug("the engine connected to the attempt control session")
        let rest = Array(line[(newline + 1)...])
        return rest.isEmpty || handle(&state, rest)
    }

    /// Feeds the engine's bytes to the session's rules; true while the connection stays open.
    private func handle(_ state: inout State, _ data: [UInt8]) -> Bool {
        for event in state.rules.receive(data) {
            switch event {
            case .reply(let bytes):
                if let fd = state.connection?.fd { _ = Self.write(fd, bytes) }
            case .concluded(let conclusion):
                if state.conclusion == nil {
                    state.conclusion = conclusion
                    log.debug("the engine concluded its attempt: \(conclusion)")
                }
            case .close(let reason):
                if let reason { log.warning("the engine's attempt control session sent \(reason); closing the session (cancellation falls back to stopping the job)") }
                return disconnect(&state)
            }
        }
        return true
    }

    private func disconnect(_ state: inout State) -> Bool {
        state.connection = nil
        settled.update { $0 = true }
        return false
    }

    /// Ends the session without a conclusion (an intent that was not acknowledged in time).
    private func dropConnection() {
        let dropped = state.withLock { state -> (Int32, FDPoller.Watch)? in
            defer { state.connection = nil }
            settled.update { $0 = true }
            return state.connection
        }
        if let (fd, watch) = dropped { poller.remove(watch) { _ = Glibc.close(fd) } }
    }

    /// Writes a few bytes to a non-blocking socket (never SIGPIPE); false if they could not all be written.
    private static func write(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } == bytes.count
    }

    /// Compares tokens in time that does not depend on where they differ.
    private static func same(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        guard x.count == y.count else { return false }
        return zip(x, y).reduce(0) { $0 | ($1.0 ^ $1.1) } == 0
    }
}
