import Foundation

/// How the worker's code writes its lines: each is redacted (the secrets the worker knows) and written to
/// the worker's log (`Log`); a line about a flow run also goes to that run's logs in Prefect. The run id is
/// metadata: a logger made with `forRun` carries it, and `run:` names another. The worker hands its logger to
/// each part that writes lines (a service's `log`, `RunDependencies.log`).
struct Logger: Sendable {
    /// What every logger made from one shares: the redaction and where lines about runs go.
    final class Output: Sendable {
        let redact: @Sendable (String) -> String
        let runLine: (@Sendable (_ level: Log.Level, _ runID: String, _ message: String) -> Void)?

        init(redact: @escaping @Sendable (String) -> String, runLine: (@Sendable (Log.Level, String, String) -> Void)?) {
            self.redact = redact
            self.runLine = runLine
        }
    }

    let output: Output
    /// The flow run the lines are about.
    let runID: String?

    init(output: Output, runID: String? = nil) {
        self.output = output
        self.runID = runID
    }

    /// Lines to the worker's log only, unredacted: for parts that run without a worker (tests, tools).
    static let console = Logger(output: Output(redact: { $0 }, runLine: nil))

    /// The same logger, about `runID`.
    func forRun(_ runID: String) -> Logger { Logger(output: output, runID: runID) }

    func debug(_ message: @autoclosure () -> String, run: String? = nil) { write(.debug, message, run) }
    func info(_ message: @autoclosure () -> String, run: String? = nil) { write(.info, message, run) }
    func warning(_ message: @autoclosure () -> String, run: String? = nil) { write(.warning, message, run) }
    func error(_ message: @autoclosure () -> String, run: String? = nil) { write(.error, message, run) }
    /// A line at `level`.
    func log(_ level: Log.Level, _ message: @autoclosure () -> String, run: String? = nil) { write(level, message, run) }

    private func write(_ level: Log.Level, _ message: () -> String, _ run: String?) {
        let run = run ?? runID
        // Lines about a run reach its logs from INFO up, whatever the worker's own level.
        let runLine = run == nil || level < .info ? nil : output.runLine
        guard runLine != nil || Log.isEnabled(level) else { return }
        let text = output.redact(message())
        if let run, let runLine { runLine(level, run, text) }
        Log.emit(level, text, run: run)
    }
}
