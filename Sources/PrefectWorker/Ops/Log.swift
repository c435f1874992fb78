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

    /// Sets the level and format of everything written from now on.
    public static func configure(level: Level, format: Format) {
        config.withLock { $0 = Config(level: level, format: format) }
    }

    /// Writes a DEBUG line.
    public static func debug(_ message: @autoclosure () -> String) { if isEnabled(.debug) { emit(.debug, message(), run: nil) } }
    /// Writes an INFO line.
    public static func info(_ message: @autoclosure () -> String) { if isEnabled(.info) { emit(.info, message(), run: nil) } }
    /// Writes a WARNING line.
    public static func warning(_ message: @autoclosure () -> String) { if isEnabled(.warning) { emit(.warning, message(), run: nil) } }
    /// Writes an ERROR line.
    public static func error(_ message: @autoclosure () -> String) { emit(.error, message(), run: nil) }

    /// Whether lines of `level` are written.
    static func isEnabled(_ level: Level) -> Bool { level >= config.withLock { $0.level } }

    /// Writes one line, if its level is enabled; `run` is the flow run it is about (a prefix, or `flow_run_id`).
    /// The worker's own code writes through a `Logger`, which redacts and also ships lines about runs.
    static func emit(_ level: Level, _ text: String, run: String?) {
        let current = config.withLock { $0 }
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
