/// The state to report when a job process has ended: a pure decision from how it ended and who owns
/// the run's states.
struct FinalState: Sendable, Equatable {
    var type: StateType
    var message: String
    /// The state's name when it is not the type's default (`TimedOut`).
    var name: String? = nil

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
