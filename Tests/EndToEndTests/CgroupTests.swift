import Foundation
#if canImport(Glibc)
import Glibc
#endif
@testable import PrefectWorker
import XCTest

/// A cgroup v2 subtree a test creates for one worker, found and handled independently of the worker's own
/// cgroup code. Only what the test created is ever written to or removed.
final class TestCgroupSubtree: @unchecked Sendable {
    /// The cgroup2 mount point (from /proc/self/mountinfo).
    let mount: String
    /// The subtree's top: `<mount>/prefect-worker-test-<hex>`.
    let top: String
    /// Where the worker is started (`top`, or a nested cgroup under it).
    let workerCgroup: String

    /// The first cgroup2 mount, read from /proc/self/mountinfo, if it is writable.
    static func writableMount() -> String? {
        guard let info = E2E.readText("/proc/self/mountinfo") else { return nil }
        for line in info.split(separator: "\n") {
            let f = line.split(separator: " ").map(String.init)
            if let dash = f.firstIndex(of: "-"), dash + 1 < f.count, f[dash + 1] == "cgroup2", dash >= 5,
               access(f[4] + "/cgroup.procs", W_OK) == 0 {
                return f[4]
            }
        }
        return nil
    }

    /// Creates `<mount>/prefect-worker-test-<hex>` (and `nested` below it, whose cgroup.controllers are then
    /// empty, since the test enables nothing in the top's subtree_control).
    init(nested: String? = nil) throws {
        guard let mount = Self.writableMount() else {
            throw XCTSkip("no writable cgroup v2 mount on this host (/proc/self/mountinfo); per-job cgroups cannot be tested here")
        }
        self.mount = mount
        let hex = UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "").prefix(10)
        top = mount + "/prefect-worker-test-\(hex)"
        guard mkdir(top, 0o755) == 0 else { throw E2E.Timeout(description: "cannot create \(top): \(String(cString: strerror(errno)))") }
        if let nested {
            workerCgroup = top + "/" + nested
            guard mkdir(workerCgroup, 0o755) == 0 else { throw E2E.Timeout(description: "cannot create \(workerCgroup)") }
        } else {
            workerCgroup = top
        }
    }

    /// The cgroup path as /proc/PID/cgroup names it (relative to the mount).
    func relative(_ directory: String) -> String { String(directory.dropFirst(mount.count)) }

    /// A launcher that moves itself into the worker's cgroup, then execs the worker binary.
    var launcher: [String] { ["/bin/sh", "-c", #"echo $$ > "$0/cgroup.procs" && exec "$@""#, workerCgroup] }

    static func read(_ path: String) -> String { E2E.readText(path) ?? "" }

    func populated(_ directory: String) -> Bool { Self.read(directory + "/cgroup.events").contains("populated 1") }

    /// Every cgroup directory under `top` (included), deepest first.
    func directoriesDeepestFirst() -> [String] {
        var found: [String] = []
        func walk(_ dir: String) {
            found.append(dir)
            for name in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] {
                var isDir: ObjCBool = false
                if FileManager.default.fileExists(atPath: dir + "/" + name, isDirectory: &isDir), isDir.boolValue { walk(dir + "/" + name) }
            }
        }
        walk(top)
        return found.sorted { $0.count > $1.count }
    }

    /// Kills whatever is left in the subtree (all of it was started by the test), waits until it is
    /// unpopulated and removes every cgroup in it, leaf first. Returns what could not be removed.
    @discardableResult
    func remove() -> [String] {
        let deadline = Date().addingTimeInterval(10)
        while populated(top), Date() < deadline {
            _ = try? "1".write(toFile: top + "/cgroup.kill", atomically: false, encoding: .utf8)
            usleep(50_000)
        }
        var left: [String] = []
        for dir in directoriesDeepestFirst() where rmdir(dir) != 0 {
            left.append("\(dir): \(String(cString: strerror(errno)))")
        }
        return left
    }
}

/// Per-job cgroup v2, against the real server, with the worker started in a fresh subtree.
final class CgroupTests: RunControlTestCase, @unchecked Sendable {
    private var subtrees: [TestCgroupSubtree] = []

    override func tearDownWithError() throws {
        try super.tearDownWithError()  // stops the workers first
        for subtree in subtrees {
            let left = subtree.remove()
            XCTAssertEqual(left, [], "cgroups the test created could not be removed")
        }
        subtrees.removeAll()
    }

    private func subtree(nested: String? = nil) throws -> TestCgroupSubtree {
        let subtree = try TestCgroupSubtree(nested: nested)
        subtrees.append(subtree)
        return subtree
    }

    private func startWorker(pool: String, in subtree: TestCgroupSubtree, killGrace: Double = 2, stateDir: String? = nil,
                             name: String? = nil) async throws -> WorkerProcess {
        let worker = try startWorker(pool: pool, name: name, arguments: Self.fastArguments + [
            "--kill-grace-seconds", String(format: "%g", killGrace), "--state-dir", try stateDir ?? stateDirectory(),
        ], launcher: subtree.launcher)
        let line = await worker.waitForLog(containing: "cgroups:", timeout: 20)
        XCTAssertNotNil(line, "the worker should log what it found about cgroups; log: \(worker.log.suffix(2000))")
        return worker
    }

    /// A deployment whose job ignores SIGTERM and leaves a descendant that also ignores it, in a new session with
    /// an empty environment (so the /proc scan by run id cannot see it); the descendant writes its pid to
    /// `dir/escaped`.
    private func escapingJobDeployment(pool: String, dir: String) async throws -> String {
        let command = #"sh -c 'setsid env -i /bin/sh -c "trap \"\" TERM; echo \$\$ > \#(dir)/escaped; exec sleep 300" & trap "" TERM; sleep 300'"#
        return try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": .string(command),
        ]))
    }

    /// The escaped descendant of `escapingJobDeployment`'s job, once it has written its pid and become `sleep`.
    private func escapedDescendant(in dir: String) async throws -> pid_t {
        try await E2E.eventually(timeout: 15, "the escaping descendant to write its pid") { () -> pid_t? in
            guard let text = E2E.readText("\(dir)/escaped"), let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)),
                  ProcScan.stat(pid)?.state != nil, E2E.readText("/proc/\(pid)/cmdline")?.hasPrefix("sleep") == true else { return nil }
            return pid
        }
    }

    /// Whether `pid` is gone (or a zombie) within `seconds`.
    private func isGone(_ pid: pid_t, within seconds: Double, _ what: String) async -> Bool {
        let gone = try? await E2E.eventually(timeout: seconds, what) { () -> Bool? in
            let state = ProcScan.stat(pid)?.state
            return state == nil || state == "Z" ? true : nil
        }
        return gone != nil
    }

    private func cgroupOf(_ pid: pid_t) -> String? {
        E2E.readText("/proc/\(pid)/cgroup")?.split(separator: "\n").first { $0.hasPrefix("0::") }.map { String($0.dropFirst(3)) }
    }

    func testAWorkerInADelegatedSubtreeRunsEachJobInItsOwnChildCgroup() async throws {
        let subtree = try subtree()
        let out = try temporaryDirectory("cgroup-of-job")
        let pool = try await makeProcessPool()
        // The job's first command reads its own cgroup: it must already be in the run's cgroup. The jobs then
        // wait (up to 30 s) for the test to release them, so both run at once.
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": .string("sh -c 'cat /proc/self/cgroup > \(out)/$PREFECT__FLOW_RUN_ID; i=0; while [ ! -e \(out)/release ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done'"),
        ]))
        let worker = try await startWorker(pool: pool, in: subtree)
        let found = worker.log.split(separator: "\n").first { $0.contains("cgroups:") }.map(String.init) ?? ""
        XCTAssertTrue(found.contains("is delegated") && found.contains(subtree.mount), "start-up line: \(found)")
        XCTAssertEqual(cgroupOf(worker.pid), subtree.relative(subtree.top) + "/worker", "the worker moves into its worker/ leaf")

        let ids = [try await api.createFlowRun(deployment: deployment), try await api.createFlowRun(deployment: deployment)]
        track(ids)
        // While the jobs run, their cgroups exist beside worker/, each with its job in it. A run's cgroup is made
        // just before its job is spawned into it, so it may be seen empty for a moment: wait for both.
        let seen = try await E2E.eventually(timeout: 30, "the run cgroups of \(ids) to exist with their jobs in them") { () -> Bool? in
            try checkWorkersAlive()
            return ids.allSatisfy { subtree.populated(subtree.top + "/" + CgroupHost.runName($0)) } ? true : nil
        }
        XCTAssertTrue(seen)
        FileManager.default.createFile(atPath: out + "/release", contents: nil)
        let runs = try await waitForFinalStates(ids, timeout: 60)
        for id in ids {
            XCTAssertEqual(runs[id]?.stateType, "COMPLETED", runs[id]?.stateSummary ?? "")
            let inside = E2E.readText("\(out)/\(id)")?.split(separator: "\n").first { $0.hasPrefix("0::") }.map(String.init)
            XCTAssertEqual(inside, "0::" + subtree.relative(subtree.top) + "/run-" + id, "the job's own first look at its cgroup")
            let started = await waitForLogLine(worker, run: id, containing: "started command", timeout: 1)
            XCTAssertTrue(started?.contains("(cgroup \(subtree.top)/run-\(id))") == true, "started line: \(started ?? "none")")
        }
        // Each run's cgroup is removed once its job is gone.
        let removed = try? await E2E.eventually(timeout: 10, "the run cgroups to be removed") { () -> Bool? in
            ids.allSatisfy { !FileManager.default.fileExists(atPath: subtree.top + "/run-" + $0) } ? true : nil
        }
        XCTAssertNotNil(removed, "left: \((try? FileManager.default.contentsOfDirectory(atPath: subtree.top)) ?? [])")
        XCTAssertTrue(worker.isRunning)
    }

    /// A worker started from a shell shares its cgroup with that shell (a terminal session, scripts/demo): the
    /// worker moves into worker/ alone and says, at INFO, that controllers cannot be enabled while the others
    /// stay; no WARNING, since that is normal there and jobs still run in their own cgroups.
    func testAWorkerSharingItsCgroupWithItsShellSaysSoAtInfoAndStillRunsJobsInTheirOwnCgroups() async throws {
        let subtree = try subtree()
        let out = try temporaryDirectory("shared-cgroup")
        let pool = try await makeProcessPool()
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": .string("sh -c 'cat /proc/self/cgroup > \(out)/$PREFECT__FLOW_RUN_ID'"),
        ]))
        // The shell that stays: a `sleep` this test starts and moves into the subtree before the worker joins it.
        let shell = Process()
        shell.executableURL = URL(fileURLWithPath: "/bin/sleep")
        shell.arguments = ["120"]
        shell.standardInput = FileHandle.nullDevice
        shell.standardOutput = FileHandle.nullDevice
        shell.standardError = FileHandle.nullDevice
        try shell.run()
        defer {
            // Ours to stop (tearDown would also empty the subtree with cgroup.kill).
            if shell.isRunning { kill(shell.processIdentifier, SIGKILL) }
        }
        XCTAssertTrue(CgroupFile.write(subtree.workerCgroup + "/cgroup.procs", "\(shell.processIdentifier)"), "cannot move the sleep into the subtree")
        let worker = try await startWorker(pool: pool, in: subtree)
        let line = await worker.waitForLog(containing: "cgroups: other processes", timeout: 20)
        let text = try XCTUnwrap(line, "no line about the shared cgroup in: \(worker.log)")
        XCTAssertTrue(text.contains(" INFO "), text)
        XCTAssertTrue(text.contains("(pid \(shell.processIdentifier))"), text)
        XCTAssertEqual(cgroupOf(worker.pid), subtree.relative(subtree.top) + "/worker")
        XCTAssertEqual(cgroupOf(shell.processIdentifier), subtree.relative(subtree.top), "the shell stays where it was")

        let id = try await api.createFlowRun(deployment: deployment)
        track(id)
        let run = try await waitForFinalState(id, timeout: 30)
        XCTAssertEqual(run.stateType, "COMPLETED", run.stateSummary)
        let inside = E2E.readText("\(out)/\(id)")?.split(separator: "\n").first { $0.hasPrefix("0::") }.map(String.init)
        XCTAssertEqual(inside, "0::" + subtree.relative(subtree.top) + "/run-" + id, "the job runs in its own cgroup")
        worker.isServing = false
        _ = worker.stop()
        let warnings = worker.log.split(separator: "\n").filter { $0.contains(" WARNING ") }
        XCTAssertEqual(warnings, [], "a shared cgroup is normal for a worker started from a shell")
    }

    func testCancellingAJobWhoseDescendantCalledSetsidAndClearedItsEnvironmentLeavesNothing() async throws {
        let subtree = try subtree()
        let dir = try temporaryDirectory("escape")
        let pool = try await makeProcessPool()
        // A descendant in a new session with an empty environment, ignoring SIGTERM: invisible to the /proc scan.
        let deployment = try await escapingJobDeployment(pool: pool, dir: dir)
        let worker = try await startWorker(pool: pool, in: subtree)
        let id = try await api.createFlowRun(deployment: deployment)
        track(id)
        let jobPID = try await waitForJobPID(id, timeout: 30)
        let escaped = try await escapedDescendant(in: dir)
        let stat = try XCTUnwrap(ProcScan.stat(escaped))
        XCTAssertNotEqual(stat.session, ProcScan.stat(jobPID)?.session, "the descendant left the job's session")
        XCTAssertFalse(ProcScan.environment(of: escaped, contains: "PREFECT__FLOW_RUN_ID=\(id)"), "its environment is clear")
        XCTAssertFalse(ProcScan.processes(ofRun: id).contains { $0.pid == escaped }, "the /proc scan cannot see it")
        XCTAssertEqual(cgroupOf(escaped), subtree.relative(subtree.top) + "/run-" + id, "but it is in the run's cgroup")

        let result = try await setState(id, "CANCELLING")
        XCTAssertEqual(result["status"]?.asString, "ACCEPT", "set CANCELLING: \(result)")
        let run = try await waitForFinalState(id, timeout: 40)
        XCTAssertEqual(run.stateType, "CANCELLED", run.stateSummary)
        XCTAssertTrue(run.stateMessage.contains("SIGKILL"), "the tree ignored SIGTERM, so it was killed: \(run.stateMessage)")

        let gone = await isGone(escaped, within: 5, "the escaped descendant \(escaped) to be gone")
        XCTAssertTrue(gone, "the descendant outlived the cancellation: \(ProcScan.describe([ProcScan.stat(escaped)].compactMap { $0 }))")
        XCTAssertEqual(ProcScan.processes(ofRun: id).map(\.pid), [], "processes of the run left")
        XCTAssertFalse(FileManager.default.fileExists(atPath: subtree.top + "/run-" + id), "the run's cgroup was removed")
        let cgroups = try FileManager.default.contentsOfDirectory(atPath: subtree.top).filter { $0.hasPrefix("run-") }
        XCTAssertEqual(cgroups, [], "no run cgroup is left")
        XCTAssertTrue(worker.isRunning)
    }

    func testAJobAdoptedAfterAWorkerCrashIsStillStoppedAsAWholeThroughItsCgroup() async throws {
        let subtree = try subtree()
        let dir = try temporaryDirectory("adopted")
        let stateDir = try stateDirectory()
        let pool = try await makeProcessPool()
        let deployment = try await escapingJobDeployment(pool: pool, dir: dir)
        let first = try await startWorker(pool: pool, in: subtree, stateDir: stateDir)
        let id = try await api.createFlowRun(deployment: deployment)
        track(id)
        let jobPID = try await waitForJobPID(id, timeout: 30)
        let escaped = try await escapedDescendant(in: dir)
        await killWorker(first)
        XCTAssertTrue(subtree.populated(subtree.top + "/run-" + id), "the job outlives the worker in its cgroup")

        let second = try await startWorker(pool: pool, in: subtree, stateDir: stateDir)
        let adopted = await waitForLogLine(second, run: id, containing: "adopting job pid \(jobPID)", timeout: 20)
        XCTAssertNotNil(adopted, "log: \(second.log.suffix(3000))")
        let result = try await setState(id, "CANCELLING")
        XCTAssertEqual(result["status"]?.asString, "ACCEPT", "set CANCELLING: \(result)")
        let run = try await waitForFinalState(id, timeout: 40)
        XCTAssertEqual(run.stateType, "CANCELLED", run.stateSummary)
        let gone = await isGone(escaped, within: 5, "the escaped descendant \(escaped) to be gone")
        XCTAssertTrue(gone, "the env-cleared descendant of the adopted job outlived the cancellation")
        let removed = try? await E2E.eventually(timeout: 5, "the run's cgroup to be removed") { () -> Bool? in
            FileManager.default.fileExists(atPath: subtree.top + "/run-" + id) ? nil : true
        }
        XCTAssertNotNil(removed)
        XCTAssertTrue(second.isRunning)
    }

    func testStoppingTheWorkerStopsAJobsWholeTreeThroughItsCgroup() async throws {
        let subtree = try subtree()
        let dir = try temporaryDirectory("shutdown")
        let pool = try await makeProcessPool()
        let deployment = try await escapingJobDeployment(pool: pool, dir: dir)
        let worker = try await startWorker(pool: pool, in: subtree)
        let id = try await api.createFlowRun(deployment: deployment)
        track(id)
        _ = try await waitForJobPID(id, timeout: 30)
        let escaped = try await escapedDescendant(in: dir)
        // SIGTERM drains; the second stops the jobs.
        kill(worker.pid, SIGTERM)
        _ = await worker.waitForLog(containing: "no longer claiming runs", timeout: 5)
        kill(worker.pid, SIGTERM)
        worker.isServing = false
        let code = await worker.waitForExit(timeout: 30)
        XCTAssertEqual(code, 0, "log: \(worker.log.suffix(2000))")
        let run = try await api.readFlowRun(id)
        XCTAssertEqual(run.stateType, "CRASHED", run.stateSummary)
        XCTAssertTrue(run.stateMessage.contains("SIGKILL"), run.stateMessage)
        let state = ProcScan.stat(escaped)?.state
        XCTAssertTrue(state == nil || state == "Z", "the env-cleared descendant outlived the worker's stop: \(String(describing: state))")
        XCTAssertFalse(FileManager.default.fileExists(atPath: subtree.top + "/run-" + id), "the run's cgroup was removed")
    }

    func testCPUStatUsageOfTheWholeTreeAppearsInTheRunsUsageLine() async throws {
        let subtree = try subtree()
        let pool = try await makeProcessPool()
        // CPU burnt by a background grandchild the job never waits for (it only polls for its file).
        let dir = try temporaryDirectory("busy")
        try "i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; touch \(dir)/done\n".write(toFile: dir + "/busy.sh", atomically: true, encoding: .utf8)
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": .string("sh -c '(sh \(dir)/busy.sh &) ; while [ ! -e \(dir)/done ]; do sleep 0.05; done'"),
        ]))
        let worker = try await startWorker(pool: pool, in: subtree)
        let id = try await api.createFlowRun(deployment: deployment)
        track(id)
        let run = try await waitForFinalState(id, timeout: 60)
        XCTAssertEqual(run.stateType, "COMPLETED", run.stateSummary)
        let usageLine = await waitForLogLine(worker, run: id, containing: "cgroup usage:", timeout: 5)
        let line = try XCTUnwrap(usageLine, "no usage line; log: \(Self.lines(of: worker.log, mentioning: id))")
        let pattern = #"cgroup usage: cpu ([0-9.]+) s \(user ([0-9.]+) s, system ([0-9.]+) s\)"#
        let regex = try NSRegularExpression(pattern: pattern)
        let match = try XCTUnwrap(regex.firstMatch(in: line, range: NSRange(line.startIndex..., in: line)), line)
        let values = (1...3).map { Double(line[Range(match.range(at: $0), in: line)!])! }
        print("usage line: \(line)")
        XCTAssertGreaterThan(values[0], 0.1, "the busy grandchild's CPU time is counted: \(line)")
        XCTAssertEqual(values[0], values[1] + values[2], accuracy: 0.01, "usage = user + system: \(line)")
        // The closing line reports the whole tree's CPU from the cgroup (rusage misses the unwaited grandchild).
        let closingLine = await waitForLogLine(worker, run: id, containing: "exited with code 0 after", timeout: 5)
        let closing = try XCTUnwrap(closingLine, "no closing line; log: \(Self.lines(of: worker.log, mentioning: id))")
        let cpu = try NSRegularExpression(pattern: #"CPU ([0-9.]+) s user \+ ([0-9.]+) s system"#)
        let cpuMatch = try XCTUnwrap(cpu.firstMatch(in: closing, range: NSRange(closing.startIndex..., in: closing)), closing)
        let user = Double(closing[Range(cpuMatch.range(at: 1), in: closing)!])!
        XCTAssertEqual(user, values[1], accuracy: 0.011, "the closing line's user CPU is the cgroup's: \(closing) / \(line)")
    }

    func testAnEngineRunInItsCgroupCompletesAndReportsItsUsage() async throws {
        let subtree = try subtree()
        let pool = try await makeProcessPool()
        let deployment = try await api.createEngineDeployment(pool: pool, name: uniqueName(), flow: "hello")
        let worker = try await startWorker(pool: pool, in: subtree)
        let id = try await api.createFlowRun(deployment: deployment)
        track(id)
        let run = try await waitForFinalState(id, timeout: 90)
        XCTAssertEqual(run.stateType, "COMPLETED", run.stateSummary)
        let usage = await waitForLogLine(worker, run: id, containing: "cgroup usage: cpu ", timeout: 5)
        XCTAssertNotNil(usage, "log: \(Self.lines(of: worker.log, mentioning: id))")
        let cpu = Double(usage?.components(separatedBy: "cgroup usage: cpu ").last?.prefix { $0.isNumber || $0 == "." } ?? "") ?? 0
        XCTAssertGreaterThan(cpu, 0.2, "a Python engine uses some CPU: \(usage ?? "")")
        XCTAssertFalse(FileManager.default.fileExists(atPath: subtree.top + "/run-" + id))
    }

    func testProcessesAJobLeavesBehindAreKilledWithItsCgroup() async throws {
        let subtree = try subtree()
        let dir = try temporaryDirectory("left")
        let pool = try await makeProcessPool()
        // Exits at once, leaving a daemonised sleep in a new session.
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": .string("sh -c 'setsid sleep 300 > /dev/null 2>&1 & echo $! > \(dir)/left'"),
        ]))
        let worker = try await startWorker(pool: pool, in: subtree)
        let id = try await api.createFlowRun(deployment: deployment)
        track(id)
        let run = try await waitForFinalState(id, timeout: 30)
        XCTAssertEqual(run.stateType, "COMPLETED", run.stateSummary)
        let pid = try XCTUnwrap(E2E.readText(dir + "/left").flatMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) })
        let said = await waitForLogLine(worker, run: id, containing: "leaving 1 process(es) in its cgroup", timeout: 5)
        XCTAssertTrue(said?.contains("pid \(pid)") == true, "log: \(Self.lines(of: worker.log, mentioning: id))")
        let gone = await isGone(pid, within: 5, "the left-behind sleep \(pid) to be gone")
        XCTAssertTrue(gone)
        XCTAssertFalse(FileManager.default.fileExists(atPath: subtree.top + "/run-" + id))
    }

    func testMemoryMaxWithoutTheMemoryControllerIsCrashedBeforeStartWithAClearMessage() async throws {
        // The worker's cgroup is nested under one whose subtree_control the test leaves empty: no controllers,
        // whatever the host offers.
        let subtree = try subtree(nested: "service")
        let marker = try temporaryDirectory("marker") + "/started"
        let pool = try await makeProcessPool()
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": .string("touch \(marker)"), "memory_max": "512M",
        ]))
        let worker = try await startWorker(pool: pool, in: subtree)
        XCTAssertEqual(cgroupOf(worker.pid), subtree.relative(subtree.workerCgroup) + "/worker")
        let id = try await api.createFlowRun(deployment: deployment)
        track(id)
        let run = try await waitForFinalState(id, timeout: 30)
        XCTAssertEqual(run.stateType, "CRASHED", run.stateSummary)
        for fragment in ["memory_max 512M", "memory controller", subtree.relative(subtree.workerCgroup), "Delegate=", "--cgroupns=private"] {
            XCTAssertTrue(run.stateMessage.contains(fragment), "message should contain '\(fragment)': \(run.stateMessage)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: marker), "the job must not have started")
        let history = try await stateHistory(id)
        XCTAssertFalse(history.contains("RUNNING"), "state history: \(history)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: subtree.workerCgroup + "/run-" + id), "no run cgroup is left")
    }

    func testCPUMaxOnAWorkerWithoutACgroupIsCrashedBeforeStartWithAClearMessage() async throws {
        let marker = try temporaryDirectory("marker") + "/started"
        let pool = try await makeProcessPool()
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": .string("touch \(marker)"), "cpu_max": "0.5",
        ]))
        // Started as every other end-to-end worker: in the test's own cgroup, which it does not manage.
        let worker = try startRunControlWorker(pool: pool, stateDir: try stateDirectory())
        let id = try await api.createFlowRun(deployment: deployment)
        track(id)
        let run = try await waitForFinalState(id, timeout: 30)
        XCTAssertEqual(run.stateType, "CRASHED", run.stateSummary)
        for fragment in ["cpu_max 0.5", "cpu controller", "no delegated cgroup v2", "Delegate="] {
            XCTAssertTrue(run.stateMessage.contains(fragment), "message should contain '\(fragment)': \(run.stateMessage)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: marker), "the job must not have started")
        XCTAssertTrue(worker.log.contains("cgroups: "), "the worker says what it found about cgroups")
    }

    // MARK: - Enforcement: only where the controllers are delegated

    private func subtreeWithControllers(_ needed: [String]) throws -> TestCgroupSubtree {
        let subtree = try subtree()
        let offered = Set(TestCgroupSubtree.read(subtree.top + "/cgroup.controllers").split(whereSeparator: \.isWhitespace).map(String.init))
        let missing = needed.filter { !offered.contains($0) }
        if !missing.isEmpty {
            throw XCTSkip("the cgroup v2 \(missing.joined(separator: " ")) controller(s) are not delegated on this host (\(subtree.mount)/cgroup.subtree_control has '\(TestCgroupSubtree.read(subtree.mount + "/cgroup.subtree_control").trimmingCharacters(in: .whitespacesAndNewlines))'); enforcement of \(needed.map { $0 + "_max" }.joined(separator: " and ")) cannot be tested here")
        }
        return subtree
    }

    func testMemoryMaxIsEnforcedAndAnOOMKillIsCrashedAsOutOfMemory() async throws {
        let subtree = try subtreeWithControllers(["memory"])
        let pool = try await makeProcessPool()
        // 1 GiB written under a 64 MiB limit.
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": "python3 -c 'b = b\"x\" * (1 << 30); print(len(b))'", "memory_max": "64M",
        ]))
        let worker = try await startWorker(pool: pool, in: subtree)
        let id = try await api.createFlowRun(deployment: deployment)
        track(id)
        let run = try await waitForFinalState(id, timeout: 60)
        XCTAssertEqual(run.stateType, "CRASHED", run.stateSummary)
        XCTAssertTrue(run.stateMessage.contains("out of memory (memory_max 64M)"), run.stateMessage)
        let usage = await waitForLogLine(worker, run: id, containing: "cgroup usage:", timeout: 5)
        XCTAssertTrue(usage?.contains("memory peak") == true, "memory.peak is reported: \(usage ?? "none")")
        XCTAssertFalse(FileManager.default.fileExists(atPath: subtree.top + "/run-" + id))
    }

    func testCPUMaxIsEnforced() async throws {
        let subtree = try subtreeWithControllers(["cpu"])
        let pool = try await makeProcessPool()
        // Spins for 3 s of wall time under a limit of 0.2 CPUs: at most ~0.6 s of CPU.
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": "python3 -c 'import time\nt = time.time()\nwhile time.time() - t < 3: pass'", "cpu_max": "0.2",
        ]))
        let worker = try await startWorker(pool: pool, in: subtree)
        let id = try await api.createFlowRun(deployment: deployment)
        track(id)
        let run = try await waitForFinalState(id, timeout: 60)
        XCTAssertEqual(run.stateType, "COMPLETED", run.stateSummary)
        let usageLine = await waitForLogLine(worker, run: id, containing: "cgroup usage: cpu ", timeout: 5)
        let line = try XCTUnwrap(usageLine)
        let cpu = Double(line.components(separatedBy: "cgroup usage: cpu ")[1].prefix { $0.isNumber || $0 == "." }) ?? -1
        XCTAssertGreaterThan(cpu, 0.2, line)
        XCTAssertLessThan(cpu, 1.0, "0.2 CPUs for 3 s: \(line)")
    }
}
