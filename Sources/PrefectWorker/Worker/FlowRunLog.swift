import Foundation

/// A flow run log record as `POST /logs/` takes it.
public enum FlowRunLog {
    public static func record(runID: String, level: Log.Level, message: String, name: String = "prefect.flow_runs.worker",
                              at date: Date = Date()) -> JSON {
        .object([
            "name": .string(name), "level": .int(level.rawValue), "message": .string(message),
            "timestamp": .string(Timestamp.format(date)), "flow_run_id": .string(runID), "task_run_id": .null,
        ])
    }
}
