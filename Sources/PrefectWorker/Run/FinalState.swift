/// The state to report when a job process has ended: a pure decision from how it ended and who owns
/// the run's states.
struct FinalState: Sendable, Equatable {
    var type: StateType
    var message: String
    /// The state's name when it is not the type's default (`TimedOut`).
    var name: String? = nil

    /// A run cancelled before its job started: nothing ran, so nothing else can be said.
    static let cancelledBeforeStart = FinalState(type: .cancelled, message: "Flow run was cancelled before it started.")

    /// `nil` means the worker reports nothing (the engine has reported, or will).
    ///
    /// | owner  | exit 0    | exit N                | signal                |
    /// |--------|-----------|-----------------------|-----------------------|
    /// | worker | COMPLETED | FAILED (code N)       | CRASHED (signal name) |
    /// | engine | —         | CRASHED if not final  | CRASHED if not final  |
    static func decide(owner: StateOwner, exit: ExitStatus) -> FinalState? {
        switch (owner, exit) {
        case (.worker, .exited(0)):
            return FinalState(type: .completed, message: "Job exited with code 0.")
        case (.worker, .exited(let code)):
            return FinalState(type: .failed, message: "Job exited with code \(code)\(hint(code)).")
        case (.worker, .signaled(let signal)):
            return FinalState(type: .crashed, message: "Job was killed by \(ExitStatus.signalName(signal)).")
        case (.engine, .exited(0)):
            return nil
        case (.engine, .exited(let code)):
            return FinalState(type: .crashed, message: "Flow run process exited with code \(code)\(hint(code)) before the flow run reached a final state.")
        case (.engine, .signaled(let signal)):
            return FinalState(type: .crashed, message: "Flow run process was killed by \(ExitStatus.signalName(signal)) before the flow run reached a final state.")
        }
    }

    /// The meaning of well-known exit codes, from Prefect's `infrastructure_exit_codes`.
    static func hint(_ code: Int32) -> String {
        switch code {
        case 126: " (command not executable)"
        case 127: " (command not found)"
        case 137: " (killed, possibly out of memory)"
        case 143: " (terminated by SIGTERM)"
        case 247: " (memory limit reached)"
        default: ""
        }
    }
}

/// What an engine's attempt control session says about how its attempt ended.
enum EngineEvidence: Sendable, Equatable {
    /// No session (a plain command, an engine that never connected, or one speaking protocol version 1):
    /// the exit status is all there is.
    case none
    /// The engine concluded the attempt: it reported the run's state (final, paused or suspended), the
    /// server aborted it, or it acknowledged our intent.
    case concluded
    /// The engine negotiated outcome receipts, so it promised to conclude, and exited without doing so.
    case silent
}

extension FinalState {
    /// The state to report when a job has ended, with what its engine's control session says.
    ///
    /// | owner  | evidence  | exit                       |
    /// |--------|-----------|----------------------------|
    /// | engine | concluded | any: nothing (the engine reported) |
    /// | engine | silent    | any: CRASHED if not final  |
    /// | any    | none      | `decide(owner:exit:)`      |
    static func decide(owner: StateOwner, exit: ExitStatus, evidence: EngineEvidence) -> FinalState? {
        switch (owner, evidence) {
        case (.engine, .concluded):
            return nil
        case (.engine, .silent):
            let how = switch exit {
            case .exited(let code): "exited with code \(code)\(hint(code))"
            case .signaled(let signal): "was killed by \(ExitStatus.signalName(signal))"
            }
            return FinalState(type: .crashed, message: "Flow run process \(how) without reporting the flow run's outcome, which its attempt control session had promised; the flow run did not reach a final state.")
        default:
            return decide(owner: owner, exit: exit)
        }
    }

    /// The message of the CANCELLED that takes the place of another final state on a run being cancelled.
    static func cancelledInstead(of message: String?) -> String {
        "Flow run was cancelled. \(message ?? "")"
    }

    /// What to do with a final state about to be delivered, given the run's state on the server now.
    enum Delivery: Sendable, Equatable {
        /// Report nothing: the run already has the state it should end with (`already`), or ended on its own.
        case skip(already: Bool)
        /// Propose `type`; `copyDetails` keeps the current state's details (as Prefect's runner does for CANCELLED).
        case propose(type: StateType, force: Bool, copyDetails: Bool, cancelledInstead: Bool)
    }

    /// A cancelled run ends CANCELLED, as Prefect's runner has it: forced, over whatever the run is now (an
    /// engine that raced to CRASHED on the SIGTERM included), unless it reached COMPLETED or FAILED on its own.
    /// Any other report never overwrites a final state (a timeout's FAILED excepted over the CRASHED its SIGTERM
    /// caused), and becomes CANCELLED on a run being cancelled.
    ///
    /// | proposing         | now                    | delivery                      |
    /// |-------------------|------------------------|-------------------------------|
    /// | CANCELLED         | CANCELLED              | skip (already)                |
    /// | CANCELLED         | COMPLETED, FAILED      | skip                          |
    /// | CANCELLED         | anything else          | CANCELLED, forced, details    |
    /// | FAILED (TimedOut) | CRASHED                | as proposed                   |
    /// | anything else     | final                  | skip (already if the same)    |
    /// | anything else     | CANCELLING             | CANCELLED, forced, details    |
    /// | anything else     | not final              | as proposed                   |
    static func delivery(proposing type: StateType, name: String?, force: Bool, current: StateType?) -> Delivery {
        if type == .cancelled {
            switch current {
            case .cancelled?: return .skip(already: true)
            case .completed?, .failed?: return .skip(already: false)
            default: return .propose(type: .cancelled, force: true, copyDetails: true, cancelledInstead: false)
            }
        }
        let timeoutOverCrash = name == "TimedOut" && current == .crashed
        if let current, current.isTerminal, !timeoutOverCrash { return .skip(already: current == type) }
        if current == .cancelling { return .propose(type: .cancelled, force: true, copyDetails: true, cancelledInstead: true) }
        return .propose(type: type, force: force, copyDetails: false, cancelledInstead: false)
    }
}
