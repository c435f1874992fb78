import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Synchronization

/// Worker log lines on stderr: one line per event, with a UTC timestamp and a level.
public enum Log {
    /// Severity, Prefect's names.
    public enum Level: Int, Sendable, Comparable {
        case debug = 10, info = 20, warning = 30, error = 40

        /// Orders levels from debug to error.
        public static func < (a: Level, b: Level) -> Bool { a.rawValue < b.rawValue }

        /// Accepts Python logging names (`DEBUG`, `INFO`, `WARNING`, `ERROR`, `CRITICAL`).
        init?(name: String) {
            switch name.uppercased() {
            case "DEBUG": self = .debug
            case "INFO": self = .info
            case "WARNING", "WARN": self = .warning
            case "ERROR", "CRITICAL": self = .error
            default: return nil
            }
        }

        var label: String {
            switch self {
            case .debug: "DEBUG"
            case .info: "INFO"
            case .warning: "WARNING"
            case .error: "ERROR"
            }
        }
    }

    /// How lines are written.
    public enum Format: String, Sendable { case text, json }

    private struct Config { var level = Level.info; var format = Format.text }
    private static let config = Mutex(Config())
    /// Receives every line about a flow run, so it can be shipped to the run's logs in Prefect.
    private static let runSink = Mutex<(@Sendable (Level, String, String) -> Void)?>(nil)

    /// Applied to every line before it is written or given to the run sink: it removes secrets.
    private static let redaction = Mutex<(@Sendable (String) -> String)?>(nil)

    static func setRedaction(_ redact: (@Sendable (String) -> String)?) {
        redaction.withLock { $0 = redact }
    }

    static func setRunSink(_ sink: (@Sendable (_ level: Level, _ runID: String, _ message: String) -> Void)?) {
        runSink.withLock { $0 = sink }
    }

    /// Sets the level and format of everything written from now on.
    public static func configure(level: Level, format: Format) {
        config.withLock { $0 = Config(level: level, format: format) }
    }

    /// Writes a DEBUG line.
    public static func debug(_ message: @autoclosure () -> String, run: String? = nil) { write(.debug, message, run) }
    /// Writes an INFO line.
    public static func info(_ message: @autoclosure () -> String, run: String? = nil) { write(.info, message, run) }
    /// Writes a WARNING line.
    public static func warning(_ message: @autoclosure () -> String, run: String? = nil) { write(.warning, message, run) }
    /// Writes an ERROR line.
    public static func error(_ message: @autoclosure () -> String, run: String? = nil) { write(.error, message, run) }

    private static func write(_ level: Level, _ message: () -> String, _ run: String?) {
        let current = config.withLock { $0 }
        let sink = run == nil ? nil : runSink.withLock { $0 }
        guard level >= current.level || (sink != nil && level >= .info) else { return }
        var text = message()
        if let redact = redaction.withLock({ $0 }) { text = redact(text) }
        if let run, let sink, level >= .info { sink(level, run, text) }
        guard level >= current.level else { return }
        let time = Timestamp.format(Date())
        var line: String
        switch current.format {
        case .text:
            line = "\(time) \(level.label) " + (run.map { "flow run \($0): " } ?? "") + text
        case .json:
            var fields: [String: JSON] = ["time": .string(time), "level": .string(level.label), "message": .string(text)]
            if let run { fields["flow_run_id"] = .string(run) }
            line = JSON.object(fields).encoded()
        }
        line += "\n"
        writeAll(STDERR_FILENO, line)
    }

    /// Writes a whole string with as few `write(2)` calls as the kernel allows, so lines do not interleave.
    static func writeAll(_ fd: Int32, _ text: String) {
        var text = text
        text.withUTF8 { buffer in
            var offset = 0
            while offset < buffer.count {
                let n = Glibc.write(fd, buffer.baseAddress! + offset, buffer.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    return
                }
                offset += n
            }
        }
    }
}
