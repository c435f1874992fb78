import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A TLS server on 127.0.0.1 (Python's `ssl`, with a certificate made by `TLSTerminator.makeCertificate`) that
/// offers ALPN `h2` and `http/1.1`, records the protocol each accepted connection chose (`none` when the
/// client offered no ALPN), one line per connection, and closes the connection without an HTTP answer.
/// It tells which HTTP versions a client offers: the real server (uvicorn) speaks HTTP/1.1 only, so a run that
/// completes through it says nothing about HTTP/2. Only the python process this object started is signalled.
final class ALPNRecorder: @unchecked Sendable {
    let certificate: String
    let port: UInt16
    private let recordPath: String
    private let process: Process

    private static let script = #"""
    import os, signal, socket, ssl, sys
    cert, key, port_file, record = sys.argv[1:5]
    signal.alarm(300)  # a safety net: never outlive a test run that lost track of this process
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols(["h2", "http/1.1"])
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(server.getsockname()[1]))
    os.rename(port_file + ".tmp", port_file)
    while True:
        connection, _ = server.accept()
        connection.settimeout(10)
        try:
            tls = context.wrap_socket(connection, server_side=True)
            chosen = tls.selected_alpn_protocol() or "none"
            tls.close()
        except Exception as error:
            chosen = "handshake failed: " + type(error).__name__
            connection.close()
        with open(record, "a") as f:
            f.write(chosen + "\n")
    """#

    /// Starts the server (with `python` from the virtualenv) and waits until it listens.
    init(python: String, directory: String) throws {
        let key: String
        (certificate, key) = try TLSTerminator.makeCertificate(directory: directory)
        let scriptPath = directory + "/alpn_server.py"
        let portPath = directory + "/port"
        recordPath = directory + "/alpn.txt"
        try Self.script.write(toFile: scriptPath, atomically: true, encoding: .utf8)
        process = Process()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = [scriptPath, certificate, key, portPath, recordPath]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(20)
        var port: UInt16?
        while port == nil, process.isRunning, Date() < deadline {
            port = E2E.readText(portPath).flatMap { UInt16($0) }
            if port == nil { usleep(20_000) }
        }
        guard let port else {
            let running = process.isRunning
            Self.stop(process)
            throw E2E.Timeout(description: "the ALPN server did not start (\(running ? "no port after 20 s" : "python exited \(process.terminationStatus)"))")
        }
        self.port = port
    }

    /// `https://127.0.0.1:<port>/api`.
    var apiURL: String { "https://127.0.0.1:\(port)/api" }

    /// The protocol each connection so far chose, in order.
    var chosen: [String] {
        (E2E.readText(recordPath) ?? "").split(separator: "\n").map(String.init)
    }

    /// SIGKILL to the python this object started, then a wait for it to be gone.
    func stop() { Self.stop(process) }

    private static func stop(_ process: Process) {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        let deadline = Date().addingTimeInterval(5)
        while process.isRunning, Date() < deadline { usleep(20_000) }
    }
}
