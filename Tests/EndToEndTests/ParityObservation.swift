import Foundation
#if canImport(Glibc)
import Glibc
#endif
@testable import PrefectWorker

/// What a user sees of one run: its final state, run_count, the state names it went through, the side effects
/// of its flow and hooks (marker files), and which PREFECT* variable names its job had.
struct ParityObservation: Sendable {
    var stateType: String
    var stateName: String
    var message: String
    var runCount: Int
    var stateNames: [String]
    /// Marker file name → its lines.
    var markers: [String: String]
    /// The PREFECT* variable names the job was started with (nil when no job process was seen).
    var environment: Set<String>?

    var finalState: String { "\(stateType)/\(stateName)" }

    /// A table cell: `TYPE/Name, run_count N, A→B→C, hooks: x`.
    var summary: String {
        let hooks = markers.keys.filter { $0.hasPrefix("on_") }.sorted()
        return "\(finalState), run_count \(runCount), \(stateNames.joined(separator: "→"))"
            + (hooks.isEmpty ? "" : ", hooks: \(hooks.joined(separator: " "))")
    }
}

/// The comparison of one scenario (or one run of it): the differences that count, and what was normalised.
struct ParityComparison: Sendable {
    var differences: [String] = []

    /// The PREFECT* names whose presence must match: how a flow finds its run, flow, deployment and worker,
    /// the API, and its supervisor's control session. Values differ per run and are not compared.
    static let environmentKeys: Set<String> = [
        "PREFECT__FLOW_RUN_ID", "PREFECT__FLOW_ID", "PREFECT__FLOW_NAME", "PREFECT__DEPLOYMENT_ID",
        "PREFECT__DEPLOYMENT_NAME", "PREFECT__WORKER_NAME", "PREFECT_API_URL",
        "PREFECT__CONTROL_PORT", "PREFECT__CONTROL_TOKEN",
    ]

    /// Compares `ours` with `reference`. `normalise` maps a state-name sequence before comparing (the same for
    /// both sides); `label` prefixes each difference (which run of the scenario).
    mutating func compare(_ label: String, reference: ParityObservation, ours: ParityObservation,
                          normalise: ([String]) -> [String] = { $0 }) {
        let prefix = label.isEmpty ? "" : "\(label): "
        if reference.finalState != ours.finalState {
            differences.append("\(prefix)final state \(ours.finalState) (\"\(ours.message.prefix(120))\"), Prefect's worker \(reference.finalState) (\"\(reference.message.prefix(120))\")")
        }
        if reference.runCount != ours.runCount {
            differences.append("\(prefix)run_count \(ours.runCount), Prefect's worker \(reference.runCount)")
        }
        let referenceStates = normalise(reference.stateNames), ourStates = normalise(ours.stateNames)
        if referenceStates != ourStates {
            differences.append("\(prefix)states \(ourStates.joined(separator: "→")), Prefect's worker \(referenceStates.joined(separator: "→"))")
        }
        if reference.markers != ours.markers {
            let names = Set(reference.markers.keys).union(ours.markers.keys).sorted()
            let detail = names.filter { reference.markers[$0] != ours.markers[$0] }.map {
                "\($0): \(Self.lines(ours.markers[$0])) vs \(Self.lines(reference.markers[$0]))"
            }
            differences.append("\(prefix)side effects (ours vs Prefect's) \(detail.joined(separator: "; "))")
        }
        if let referenceEnv = reference.environment {
            // Presence only: the values (ids, ports, tokens) differ per run.
            let want = referenceEnv.intersection(Self.environmentKeys)
            let have = (ours.environment ?? []).intersection(Self.environmentKeys)
            if want != have {
                differences.append("\(prefix)job environment: missing \(want.subtracting(have).sorted()), extra \(have.subtracting(want).sorted())")
            }
        }
    }

    private static func lines(_ text: String?) -> String {
        guard let text else { return "absent" }
        return "[" + text.split(separator: "\n").joined(separator: " | ") + "]"
    }
}

extension ParityObservation {
    /// Reads the run, its states and the marker directory. Waits until the run's processes are gone and the
    /// markers have stopped changing (hooks may run just after the final state is set), at most `settle` s.
    static func collect(api: TestAPI, run id: String, markers: String, settle: Double = 10) async throws -> ParityObservation {
        let deadline = Date().addingTimeInterval(settle)
        var previous: [String: String] = [:]
        var stableSince = Date()
        while Date() < deadline {
            let now = readMarkers(markers)
            if now != previous { previous = now; stableSince = Date() }
            if ProcScan.processes(ofRun: id).isEmpty, Date().timeIntervalSince(stableSince) >= 1.5 { break }
            try await Task.sleep(nanoseconds: 250_000_000)
        }
        let run = try await api.readFlowRun(id)
        let states = try await api.states(id)
        return ParityObservation(
            stateType: run.stateType ?? "?", stateName: run["state_name"]?.asString ?? run["state"]?["name"]?.asString ?? "?",
            message: run.stateMessage, runCount: run["run_count"]?.asInt ?? -1,
            stateNames: states.compactMap { $0["name"]?.asString }, markers: readMarkers(markers), environment: nil)
    }

    static func readMarkers(_ directory: String) -> [String: String] {
        var markers: [String: String] = [:]
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
            markers[name] = E2E.readText(directory + "/" + name) ?? ""
        }
        return markers
    }
}

/// The parity table the class writes at teardown: to the file named by PREFECT_E2E_PARITY_REPORT, or to stderr.
enum ParityReport {
    struct Row: Sendable {
        var scenario: String
        var reference: String
        var ours: String
        var differences: [String]
        var note: String
    }

    nonisolated(unsafe) private static var rows: [Row] = []
    private static let lock = NSLock()

    static func add(_ row: Row) { lock.withLock { rows.append(row) } }

    static func markdown() -> String {
        let all = lock.withLock { rows }
        func cell(_ s: String) -> String { s.replacingOccurrences(of: "|", with: "\\|").replacingOccurrences(of: "\n", with: " ") }
        var text = "| scenario | Prefect's worker | prefect-worker | match? |\n|---|---|---|---|\n"
        for row in all {
            var match = row.differences.isEmpty ? "yes" : "**no**: " + row.differences.joined(separator: "; ")
            if !row.differences.isEmpty, row.differences.allSatisfy(Self.isOnlyMissingSubmitting) {
                match = "**no**, only the PENDING/Submitting state Prefect's worker proposes before the spawn is missing"
            }
            let scenario = row.note.isEmpty ? row.scenario : "\(row.scenario) (\(row.note))"
            text += "| \(cell(scenario)) | \(cell(row.reference)) | \(cell(row.ours)) | \(cell(match)) |\n"
        }
        return text
    }

    /// A state-sequence difference that is exactly Prefect's `Submitting` states missing from ours, for the
    /// table's summary (the assertion still counts it).
    static func isOnlyMissingSubmitting(_ difference: String) -> Bool {
        guard let range = difference.range(of: "states "), let split = difference.range(of: ", Prefect's worker ") else { return false }
        let prefix = difference[..<range.lowerBound]
        guard prefix.isEmpty || prefix.hasSuffix(": ") else { return false }
        let ours = difference[range.upperBound..<split.lowerBound]
        let reference = difference[split.upperBound...]
        return ours == reference.replacingOccurrences(of: "Submitting→", with: "")
    }

    /// Writes the table and forgets the rows.
    static func flush() {
        let text = markdown()
        fflush(nil)  // every C stream: the worker logs printed before must not interleave with the table
        lock.withLock { rows.removeAll() }
        if let path = ProcessInfo.processInfo.environment["PREFECT_E2E_PARITY_REPORT"], !path.isEmpty {
            do {
                try text.write(toFile: path, atomically: true, encoding: .utf8)
                FileHandle.standardError.write(Data("parity table written to \(path)\n".utf8))
                return
            } catch {
                FileHandle.standardError.write(Data("cannot write the parity table to \(path): \(error); printing it instead\n".utf8))
            }
        }
        FileHandle.standardError.write(Data(("\n" + text + "\n").utf8))
    }
}
