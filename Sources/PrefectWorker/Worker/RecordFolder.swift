import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A folder of small per-run records, `<dir>/<run id>.json`, each written atomically and durably
/// (`AtomicFile`) and read back when a worker starts: what must survive the worker (the journal of launched
/// jobs, the outbox of undelivered reports).
struct RecordFolder<Record: Codable & Sendable>: Sendable {
    let directory: String

    /// Creates the folder (mode 0700). Throws `what` and the path, and what to do about it.
    func prepare(_ what: String, advice: String = "") throws {
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
        } catch {
            throw WorkerError(message: "cannot create \(what) \(directory): \(error.localizedDescription)\(advice)")
        }
    }

    func path(_ runID: String) -> String { directory + "/" + runID + ".json" }

    /// The record as written: JSON with sorted keys, so files are stable and diffable.
    func encoded(_ record: Record) -> Data? {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return try? encoder.encode(record)
    }

    /// Every record file in the folder (in-progress temporary files excluded): its run id, path, and the
    /// record, or nil if the file cannot be read as one.
    func scan() -> [(runID: String, file: String, record: Record?)] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.filter { $0.hasSuffix(".json") && !$0.contains(".tmp-") }.sorted().map { name in
            let file = directory + "/" + name
            let record = FileManager.default.contents(atPath: file).flatMap { try? JSONDecoder().decode(Record.self, from: $0) }
            return (String(name.dropLast(5)), file, record)
        }
    }
}
