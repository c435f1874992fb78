import Foundation

/// A flow run log record as `POST /logs/` takes it.
enum FlowRunLog {
    /// Bytes a record takes besides its message (names, level, timestamp, ids), as an estimate of its JSON.
    static let recordOverhead = 200

    /// The record with its size, its message truncated like Prefect's `APILogHandler` when the record would
    /// exceed `maxSize` bytes: cut 50 bytes short of the limit and ended with "... [truncated]".
    static func shippable(runID: String, level: Log.Level, message: String, name: String = "prefect.flow_runs.worker",
                          maxSize: Int) -> APIShipper.Record {
        var text = message
        var size = recordOverhead + name.utf8.count + text.utf8.count
        if size > maxSize {
            let keep = max(text.utf8.count - (size - maxSize) - 50, 0)
            var kept = 0
            var cut = String.UnicodeScalarView()
            for scalar in text.unicodeScalars {
                let length = String(scalar).utf8.count
                if kept + length > keep { break }
                kept += length
                cut.append(scalar)
            }
            text = String(cut) + "... [truncated]"
            size = recordOverhead + name.utf8.count + text.utf8.count
        }
        return APIShipper.Record(body: record(runID: runID, level: level, message: text, name: name), key: runID, size: size)
    }

    static func record(runID: String, level: Log.Level, message: String, name: String = "prefect.flow_runs.worker",
                       at date: Date = Date()) -> JSON {
        .object([
            "name": .string(name), "level": .int(level.rawValue), "message": .string(message),
            "timestamp": .string(Timestamp.format(date)), "flow_run_id": .string(runID), "task_run_id": .null,
        ])
    }
}
