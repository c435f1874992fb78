import Foundation
#if canImport(Glibc)
import Glibc
#endif
@testable import PrefectWorker
import XCTest

/// `--limit` and exactly-once submission across workers.
final class ConcurrencyTests: RunControlTestCase, @unchecked Sendable {
    func testLimitTwoRunsAtMostTwoJobsAtOnceAndDoesRunTwo() async throws {
        let pool = try await makeProcessPool()
        let log = try temporaryDirectory("overlap") + "/events.txt"
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": .string("sh -c 'echo start $PREFECT__FLOW_RUN_ID >> \(log); sleep 1.5; echo end $PREFECT__FLOW_RUN_ID >> \(log)'"),
        ]))
        var ids: [String] = []
        for _ in 0..<6 { ids.append(try await api.createFlowRun(deployment: deployment)) }
        track(ids)
        let worker = try startRunControlWorker(pool: pool, stateDir: try stateDirectory(), arguments: ["--limit", "2"])
        let runs = try await waitForFinalStates(ids, timeout: 60)

        let notCompleted = ids.filter { runs[$0]?.stateType != "COMPLETED" }.map { "\($0): \(runs[$0]?.stateSummary ?? "?")" }
        XCTAssertEqual(notCompleted, [], "runs not COMPLETED")

        // Appends are atomic and in time order: the running count after each line is the overlap.
        let lines = (E2E.readText(log) ?? "").split(separator: "\n").map { $0.split(separator: " ").map(String.init) }
        var running: Set<String> = []
        var maximum = 0
        var starts: [String: Int] = [:]
        var ends: [String: Int] = [:]
        for line in lines {
            guard line.count == 2 else { XCTFail("malformed line \(line)"); continue }
            if line[0] == "start" {
                running.insert(line[1])
                starts[line[1], default: 0] += 1
            } else {
                XCTAssertTrue(running.contains(line[1]), "end before start for \(line[1])")
                running.remove(line[1])
                ends[line[1], default: 0] += 1
            }
            maximum = max(maximum, running.count)
        }
        XCTAssertEqual(maximum, 2, "maximum number of jobs at once with --limit 2; log:\n\(E2E.readText(log) ?? "")")
        XCTAssertEqual(Set(starts.keys), Set(ids), "every run started")
        XCTAssertTrue(starts.values.allSatisfy { $0 == 1 } && ends.values.allSatisfy { $0 == 1 } && Set(ends.keys) == Set(ids),
                      "each run starts and ends once: starts \(starts), ends \(ends)")
        XCTAssertTrue(worker.isRunning)
    }

    func testThreeWorkersRunEachOfAHundredRunsExactlyOnce() async throws {
        let pool = try await makeProcessPool()
        let shared = try temporaryDirectory("shared") + "/ids.txt"
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": .string("sh -c 'echo $PREFECT__FLOW_RUN_ID >> \(shared)'"),
        ]))
        // All runs exist before the workers start, so the three compete for every one of them.
        let api = self.api!
        let ids = try await withThrowingTaskGroup(of: [String].self) { group in
            for _ in 0..<4 {
                group.addTask {
                    var mine: [String] = []
                    for _ in 0..<25 { mine.append(try await api.createFlowRun(deployment: deployment)) }
                    return mine
                }
            }
            var all: [String] = []
            for try await chunk in group { all += chunk }
            return all
        }
        XCTAssertEqual(Set(ids).count, 100)
        track(ids)
        // One state directory for the three, as workers of one user on one host share the default one.
        let stateDir = try stateDirectory()
        let workers = try (1...3).map { n in
            try startRunControlWorker(pool: pool, stateDir: stateDir, name: uniqueName("-w\(n)"))
        }
        let started = Date()
        // On timeout, still check what did happen (a run executed twice matters more than a slow one).
        var runs: [String: JSON] = [:]
        do {
            runs = try await waitForFinalStates(ids, timeout: 240, interval: 1)
            print("100 runs on 3 workers finished in \(String(format: "%.1f", Date().timeIntervalSince(started))) s")
        } catch {
            XCTFail("not all runs finished: \(error)")
            for chunk in stride(from: 0, to: ids.count, by: 100) {
                for run in try await api.readFlowRuns(Array(ids[chunk..<min(chunk + 100, ids.count)])) {
                    runs[run["id"]?.asString ?? ""] = run
                }
            }
        }

        let notCompleted = ids.filter { runs[$0]?.stateType != "COMPLETED" }.map { "\($0): \(runs[$0]?.stateSummary ?? "?")" }
        XCTAssertEqual(notCompleted, [], "runs not COMPLETED")
        let overcounted = ids.filter { (runs[$0]?["run_count"]?.asInt ?? 0) != 1 }.map { "\($0): run_count \(runs[$0]?["run_count"]?.asInt ?? -1)" }
        XCTAssertEqual(overcounted, [], "runs whose run_count is not 1")

        let lines = (E2E.readText(shared) ?? "").split(separator: "\n").map(String.init)
        var counts: [String: Int] = [:]
        for line in lines { counts[line, default: 0] += 1 }
        let finished = ids.filter { TestAPI.terminalTypes.contains(runs[$0]?.stateType ?? "") }
        XCTAssertEqual(finished.filter { counts[$0] == nil }, [], "finished runs that never executed")
        let twice = counts.filter { $0.value > 1 }.map(\.key).sorted()
        XCTAssertEqual(twice, [], "runs executed more than once")
        for id in twice.prefix(3) {
            let history = try await api.states(id).map { "\($0["timestamp"]?.asString ?? "?") \($0["type"]?.asString ?? "?")" }
            print("state history of \(id), executed \(counts[id] ?? 0) times: \(history)")
        }
        XCTAssertEqual(counts.keys.filter { !ids.contains($0) }.sorted(), [], "unexpected lines in the shared file")
        XCTAssertEqual(lines.count, ids.count, "job executions")

        let byWorker = Dictionary(grouping: ids, by: { runs[$0]?["labels"]?["prefect.worker.name"]?.asString ?? "?" }).mapValues(\.count)
        print("runs per worker: \(byWorker)")
        // Labels are best effort (a busy server may make the worker give up on them): unlabelled runs show as "?".
        let strangers = byWorker.keys.filter { $0 != "?" && !workers.map(\.label).contains($0) }
        XCTAssertEqual(strangers, [], "runs labelled with a worker name that is not one of ours: \(byWorker)")
        for worker in workers { XCTAssertTrue(worker.isRunning, "\(worker.label) died") }
    }
}
