import Foundation
import XCTest
@testable import PrefectWorker
#if canImport(Glibc)
import Glibc
#endif

/// The pure parts of per-job cgroups: limits, detection, usage, the out-of-memory decision.
final class CgroupLimitsTests: XCTestCase {
    private func memory(_ value: JSON) throws -> String? { try CgroupLimits(memoryMax: value, cpuMax: .null).memory?.value }
    private func cpu(_ value: JSON) throws -> String? { try CgroupLimits(memoryMax: .null, cpuMax: value).cpu?.value }

    func testMemoryMax() throws {
        let cases: [(JSON, String?)] = [
            (.null, nil), ("", nil), ("max", "max"), ("MAX", "max"), (.int(1_048_576), "1048576"), ("4096", "4096"),
            ("512M", "536870912"), ("512m", "536870912"), ("512Mi", "536870912"), ("1.5G", "1610612736"),
            ("64K", "65536"), ("2Gi", "2147483648"), ("1T", "1099511627776"), (" 512M ", "536870912"),
        ]
        for (value, expected) in cases {
            XCTAssertEqual(try memory(value), expected, "\(value)")
        }
        for bad: JSON in ["abc", "-1", "512X", "M", "1e3", "512 M", .int(0), .int(-5), .bool(true), .double(1.5), .array([])] {
            XCTAssertThrowsError(try memory(bad), "\(bad)") { error in
                XCTAssertTrue("\(error)".contains("memory_max"), "\(error)")
            }
        }
        XCTAssertEqual(try CgroupLimits(memoryMax: "512M", cpuMax: .null).memory?.asWritten, "512M")
    }

    func testCPUMax() throws {
        let cases: [(JSON, String?)] = [
            (.null, nil), ("", nil), ("0.5", "50000 100000"), (.int(2), "200000 100000"), (.double(0.25), "25000 100000"),
            ("1", "100000 100000"), ("max", "max 100000"), ("50000 100000", "50000 100000"), ("max 200000", "max 200000"),
            ("0.001", "1000 100000"), ("  1.5 ", "150000 100000"),
        ]
        for (value, expected) in cases {
            XCTAssertEqual(try cpu(value), expected, "\(value)")
        }
        for bad: JSON in ["0", "-1", "abc", "50 100000", "50000 10", "50000 100000 1", "1e2", .int(0), .bool(true), .object([:])] {
            XCTAssertThrowsError(try cpu(bad), "\(bad)") { error in
                XCTAssertTrue("\(error)".contains("cpu_max"), "\(error)")
            }
        }
    }

    private func host(available: Set<String>, enabled: Set<String>) -> CgroupHost {
        CgroupHost(mount: "/sys/fs/cgroup", cgroup: "/system.slice/prefect-worker.service",
                   directory: "/sys/fs/cgroup/system.slice/prefect-worker.service", available: available, enabled: enabled)
    }

    func testWhyLimitsCannotBeApplied() throws {
        let both = try CgroupLimits(memoryMax: "512M", cpuMax: "0.5")
        XCTAssertEqual(both.requiredControllers.map(\.controller), ["memory", "cpu"])
        XCTAssertNil(CgroupLimits.none.unavailableReason(host: nil, whyNoHost: "x"), "no limit, nothing missing")
        XCTAssertNil(both.unavailableReason(host: host(available: ["cpu", "memory"], enabled: ["cpu", "memory", "pids"]), whyNoHost: ""))

        let noHost = try XCTUnwrap(both.unavailableReason(host: nil, whyNoHost: "the worker runs in the host's root cgroup"))
        for fragment in ["memory_max 512M needs the cgroup v2 memory controller", "cpu_max 0.5 needs the cgroup v2 cpu controller",
                         "no delegated cgroup v2 (the worker runs in the host's root cgroup)", "Delegate=cpu memory pids", "--cgroupns=private"] {
            XCTAssertTrue(noHost.contains(fragment), "'\(noHost)' should contain '\(fragment)'")
        }
        let memoryOnly = try CgroupLimits(memoryMax: "512M", cpuMax: .null)
        let missing = try XCTUnwrap(memoryOnly.unavailableReason(host: host(available: ["cpu"], enabled: ["cpu"]), whyNoHost: ""))
        for fragment in ["memory_max 512M needs the cgroup v2 memory controller", "/system.slice/prefect-worker.service",
                         "cgroup.controllers: cpu", "Delegate="] {
            XCTAssertTrue(missing.contains(fragment), "'\(missing)' should contain '\(fragment)'")
        }
        XCTAssertFalse(missing.contains("cpu_max"), missing)
        let none = try XCTUnwrap(memoryOnly.unavailableReason(host: host(available: [], enabled: []), whyNoHost: ""))
        XCTAssertTrue(none.contains("cgroup.controllers: none"), none)
    }

    func testJobVariablesAreReadAlsoWhenThePoolsTemplateLacksThem() throws {
        // A template of Prefect's own (no memory_max or cpu_max): the values come from the job variables.
        let prefect = try JobTemplate(JobTemplate.prefectProcessTemplate)
        let rendered = try prefect.render(values: ["memory_max": "512M", "cpu_max": .double(0.5)], environment: [:])
        XCTAssertNil(rendered.configuration["memory_max"])
        let job = try JobConfiguration(rendered)
        XCTAssertEqual(job.limits, CgroupLimits(memory: .init(value: "536870912", asWritten: "512M"), cpu: .init(value: "50000 100000", asWritten: "0.5")))

        // Our default template maps them.
        let ours = try JobTemplate(JobTemplate.defaultProcessTemplate).render(values: ["memory_max": "1G"], environment: [:])
        XCTAssertEqual(ours.configuration["memory_max"], "1G")
        XCTAssertEqual(try JobConfiguration(ours).limits.memory?.value, "1073741824")
        XCTAssertNil(try JobConfiguration(ours).limits.cpu)
        XCTAssertEqual(try JobConfiguration(JobTemplate(JobTemplate.defaultProcessTemplate).render(values: [:], environment: [:])).limits, .none)

        let bad = try prefect.render(values: ["memory_max": "lots"], environment: [:])
        XCTAssertThrowsError(try JobConfiguration(bad)) { error in
            XCTAssertTrue("\(error)".contains("memory_max"), "\(error)")
        }
    }
}

final class CgroupHostTests: XCTestCase {
    // The lines of a hybrid host (cgroup v1 controllers, cgroup2 at /sys/fs/cgroup/unified).
    let hybrid = """
    31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
    32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
    35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
    """

    func testTheCgroup2MountIsFoundInMountinfo() {
        XCTAssertEqual(CgroupHost.cgroup2Mount(mountinfo: hybrid)?.mountPoint, "/sys/fs/cgroup/unified")
        XCTAssertEqual(CgroupHost.cgroup2Mount(mountinfo: hybrid)?.root, "/")
        // Unified host, with optional fields before the separator.
        let unified = "29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot"
        XCTAssertEqual(CgroupHost.cgroup2Mount(mountinfo: unified)?.mountPoint, "/sys/fs/cgroup")
        // A container's bind mount of a subtree, with an escaped space in the mount point.
        let container = "900 800 0:26 /docker/abc /my\\040cgroup ro,relatime - cgroup2 cgroup2 rw"
        XCTAssertEqual(CgroupHost.cgroup2Mount(mountinfo: container)?.mountPoint, "/my cgroup")
        XCTAssertEqual(CgroupHost.cgroup2Mount(mountinfo: container)?.root, "/docker/abc")
        XCTAssertNil(CgroupHost.cgroup2Mount(mountinfo: "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu"))
        XCTAssertNil(CgroupHost.cgroup2Mount(mountinfo: ""))
    }

    func testTheOwnCgroupIsTheZeroLine() {
        XCTAssertEqual(CgroupHost.ownCgroup(procSelfCgroup: "9:name=systemd:/\n4:memory:/x\n0::/\n"), "/")
        XCTAssertEqual(CgroupHost.ownCgroup(procSelfCgroup: "0::/system.slice/prefect-worker.service\n"), "/system.slice/prefect-worker.service")
        XCTAssertEqual(CgroupHost.ownCgroup(procSelfCgroup: "0::/gone (deleted)\n"), "/gone")
        XCTAssertNil(CgroupHost.ownCgroup(procSelfCgroup: "4:memory:/x\n"), "cgroup v1 only")
    }

    func testTheDirectoryOfTheOwnCgroup() {
        XCTAssertEqual(CgroupHost.directory(of: "/a/b", mountPoint: "/sys/fs/cgroup/unified", root: "/"), "/sys/fs/cgroup/unified/a/b")
        XCTAssertEqual(CgroupHost.directory(of: "/", mountPoint: "/sys/fs/cgroup", root: "/"), "/sys/fs/cgroup")
        XCTAssertEqual(CgroupHost.directory(of: "/docker/abc/x", mountPoint: "/sys/fs/cgroup", root: "/docker/abc"), "/sys/fs/cgroup/x")
        XCTAssertEqual(CgroupHost.directory(of: "/docker/abc", mountPoint: "/sys/fs/cgroup", root: "/docker/abc"), "/sys/fs/cgroup")
        XCTAssertNil(CgroupHost.directory(of: "/docker/other", mountPoint: "/sys/fs/cgroup", root: "/docker/abc"))
        XCTAssertNil(CgroupHost.directory(of: "/docker/abcd", mountPoint: "/sys/fs/cgroup", root: "/docker/abc"))
    }

    func testRunNamesAreSafe() {
        XCTAssertEqual(CgroupHost.runName("88b252c0-56a5-43a6-864c-4e657a92b520"), "run-88b252c0-56a5-43a6-864c-4e657a92b520")
        XCTAssertEqual(CgroupHost.runName("../a b/ü"), "run-.._a_b__")
        XCTAssertEqual(CgroupHost.runName(String(repeating: "x", count: 500)).count, 204)
    }

    func testTheHostsRootCgroupIsNotUsed() throws {
        // This process's own cgroup (in the test runner: the host's root, or a container's) is never set up
        // by `detect` unless it is delegated; here only the outcome's shape is checked against /proc.
        let detection = CgroupHost.detect(mountinfo: "", procSelfCgroup: "0::/\n")
        XCTAssertNil(detection.host)
        XCTAssertTrue(detection.reason.contains("no cgroup v2"), detection.reason)
        let noLine = CgroupHost.detect(mountinfo: hybrid, procSelfCgroup: "4:memory:/x\n")
        XCTAssertTrue(noLine.reason.contains("names no cgroup v2 path"), noLine.reason)
    }
}

final class CgroupUsageTests: XCTestCase {
    func testUsageIsReadFromCPUStatAndMemoryFiles() {
        let stat = "usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\nnice_usec 0\nnr_periods 3\n"
        let usage = CgroupUsage(cpuStat: stat, memoryPeak: "13107200\n", memoryEvents: "low 0\nhigh 0\nmax 4\noom 1\noom_kill 2\noom_group_kill 1\n")
        XCTAssertEqual(usage, CgroupUsage(usageUsec: 1_234_567, userUsec: 1_000_000, systemUsec: 234_567, memoryPeak: 13_107_200, oomKills: 2))
        XCTAssertEqual(usage.summary, "cpu 1.235 s (user 1.000 s, system 0.235 s), memory peak 12.5 MiB, 2 OOM kill(s)")
        let noMemory = CgroupUsage(cpuStat: stat, memoryPeak: nil, memoryEvents: nil)
        XCTAssertNil(noMemory.memoryPeak)
        XCTAssertNil(noMemory.oomKills)
        XCTAssertEqual(noMemory.summary, "cpu 1.235 s (user 1.000 s, system 0.235 s)")
    }

    func testOutOfMemoryDecision() throws {
        let limits = try CgroupLimits(memoryMax: "512M", cpuMax: .null)
        func usage(_ kills: UInt64?) -> CgroupUsage { CgroupUsage(usageUsec: 1, userUsec: 1, systemUsec: 0, oomKills: kills) }
        // | OOM kills | exit        | state                  |
        let cases: [(UInt64?, ExitStatus, Bool)] = [
            (1, .signaled(SIGKILL), true), (3, .exited(1), true), (1, .exited(0), false),
            (0, .signaled(SIGKILL), false), (nil, .signaled(SIGKILL), false),
        ]
        for (kills, exit, crashed) in cases {
            let final = FinalState.outOfMemory(usage: usage(kills), limits: limits, exit: exit)
            XCTAssertEqual(final?.type == .crashed, crashed, "\(String(describing: kills)) \(exit)")
            if crashed { XCTAssertTrue(final?.message.contains("out of memory (memory_max 512M)") == true, final?.message ?? "") }
        }
        XCTAssertNil(FinalState.outOfMemory(usage: nil, limits: limits, exit: .signaled(SIGKILL)), "no cgroup")
        let unlimited = FinalState.outOfMemory(usage: usage(1), limits: .none, exit: .signaled(SIGKILL))
        XCTAssertTrue(unlimited?.message.contains("out of memory (no memory_max") == true, unlimited?.message ?? "")
    }
}

/// A cgroup this test process creates under the cgroup v2 mount, removed (after killing what is left in it,
/// all of it started by the test) in tearDown.
final class UnitTestCgroup {
    let directory: String

    init() throws {
        guard let mountinfo = CgroupFile.read("/proc/self/mountinfo"), let mount = CgroupHost.cgroup2Mount(mountinfo: mountinfo)?.mountPoint,
              access(mount + "/cgroup.procs", W_OK) == 0 else {
            throw XCTSkip("no writable cgroup v2 mount here; starting jobs inside a cgroup cannot be tested")
        }
        directory = mount + "/prefect-worker-unit-" + UUID().uuidString.prefix(8).lowercased()
        guard mkdir(directory, 0o755) == 0 else { throw SpawnError(message: "cannot create \(directory): \(errnoText())") }
    }

    var host: CgroupHost {
        CgroupHost(mount: "", cgroup: directory, directory: directory, available: [], enabled: [])
    }

    func remove() {
        let children = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.hasPrefix("run-") }
        for dir in children.map({ directory + "/" + $0 }) + [directory] {
            for _ in 0..<100 where CgroupFile.read(dir + "/cgroup.events")?.contains("populated 1") == true {
                _ = CgroupFile.write(dir + "/cgroup.kill", "1")
                usleep(20_000)
            }
        }
        for child in children { _ = rmdir(directory + "/" + child) }
        if rmdir(directory) != 0 { XCTFail("cannot remove \(directory): \(errnoText())") }
    }
}

/// Every `ProcessTests` test again, with each child started inside a cgroup by clone3 (CLONE_INTO_CGROUP):
/// the same process group, descriptors, environment, directory, signals and failures as posix_spawn.
class CgroupSpawnTests: ProcessTests, @unchecked Sendable {
    private var cgroup: UnitTestCgroup?
    private var fd: Int32 = -1

    override func setUpWithError() throws {
        try super.setUpWithError()
        let cgroup = try UnitTestCgroup()
        self.cgroup = cgroup
        fd = open(cgroup.directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        XCTAssertGreaterThanOrEqual(fd, 0)
        ProcessTestSupport.spawnCgroupFD.withLock { $0 = fd }
    }

    override func tearDownWithError() throws {
        ProcessTestSupport.spawnCgroupFD.withLock { $0 = nil }
        if fd >= 0 { close(fd) }
        cgroup?.remove()
        try super.tearDownWithError()
    }

    func testChildStartsInsideTheCgroup() async throws {
        let directory = try XCTUnwrap(cgroup?.directory)
        let process = try ProcessTestSupport.shell("cat /proc/self/cgroup")
        let output = try XCTUnwrap(ProcessTestSupport.readAll(process.stdout))
        _ = ProcessTestSupport.readAll(process.stderr)
        let status = await ChildProcesses.shared.waitForExit(process.pid)
        XCTAssertEqual(status, .exited(0))
        let line = output.split(separator: "\n").first { $0.hasPrefix("0::") }
        XCTAssertTrue(line.map { directory.hasSuffix(String($0.dropFirst(3))) } == true, "\(String(describing: line)) for \(directory)")
        XCTAssertTrue(CgroupFile.read(directory + "/cpu.stat")?.contains("usage_usec") == true)
    }
}

/// `CgroupSpawnTests` again without clone3: the forked child moves itself into the cgroup before execve.
final class CgroupFallbackSpawnTests: CgroupSpawnTests, @unchecked Sendable {
    override func setUpWithError() throws {
        try super.setUpWithError()
        CgroupSpawn.clone3Allowed.withLock { $0 = false }
    }

    override func tearDownWithError() throws {
        CgroupSpawn.clone3Allowed.withLock { $0 = true }
        try super.tearDownWithError()
    }

    /// Declared here so test discovery lists this class (with every inherited test).
    func testFallbackIsInUse() {
        XCTAssertFalse(CgroupSpawn.clone3Allowed.withLock { $0 })
    }
}

/// The declared teardown with a run's cgroup: a descendant that left the group and the session, cleared its
/// environment and ignores SIGTERM is still killed, and the cgroup ends empty.
final class CgroupTeardownTests: XCTestCase, @unchecked Sendable {
    func testTeardownKillsEveryMemberOfTheCgroup() async throws {
        let test = try UnitTestCgroup()
        defer { test.remove() }
        let runID = "unit-" + UUID().uuidString.lowercased()
        let cgroup = try XCTUnwrap(try RunCgroup.prepare(host: test.host, whyNoHost: "", runID: runID, limits: .none))
        XCTAssertEqual(cgroup.path, test.directory + "/run-" + runID)
        var request = ProcessTestSupport.request(ProcessTestSupport.sh, ["-c", #"trap "" TERM; setsid env -i /bin/sh -c 'trap "" TERM; echo $$; exec sleep 300' & sleep 300"#],
                                                 captureOutput: true)
        request.cgroupFD = cgroup.fd
        let process = try ChildProcesses.shared.spawn(request)
        let line = try XCTUnwrap(ProcessTestSupport.readLine(try XCTUnwrap(process.stdout)), "the escapee's pid")
        let escapee = try XCTUnwrap(pid_t(line))
        XCTAssertTrue(ProcessTestSupport.waitUntilIgnoring(escapee, SIGTERM))
        XCTAssertTrue(Set(cgroup.processes()).isSuperset(of: [process.pid, escapee]), "\(cgroup.processes())")
        XCTAssertEqual(ProcFS.processes(ofRun: runID), [], "invisible to the /proc scan")

        let exited = ExitFlag()
        let waiter = Task { let s = await ChildProcesses.shared.waitForExit(process.pid); exited.set(s); return s }
        let started = Date()
        let outcome = await Teardown.terminate(grace: 0.5).run(processGroup: process.pid, runID: runID, cgroup: cgroup, leaderExit: exited.latch)
        XCTAssertEqual(outcome, .killed)
        XCTAssertGreaterThanOrEqual(Date().timeIntervalSince(started), 0.5)
        XCTAssertFalse(cgroup.isPopulated, "cgroup.events says populated 0")
        let status = await waiter.value
        XCTAssertEqual(status, .signaled(SIGKILL))
        XCTAssertTrue(ProcessTestSupport.waitUntilDead(escapee))
        let usage = await cgroup.finish(log: Logger.console.forRun(runID))
        XCTAssertGreaterThan(usage.usageUsec, 0)
        XCTAssertFalse(FileManager.default.fileExists(atPath: cgroup.path), "removed")
        if let out = process.stdout { close(out) }
        if let err = process.stderr { close(err) }
    }

    func testLimitsAreWrittenOrTheRunIsRefused() throws {
        let test = try UnitTestCgroup()
        defer { test.remove() }
        let limits = try CgroupLimits(memoryMax: "64M", cpuMax: .null)
        // This host's subtree has no memory controller: refused before anything is created.
        XCTAssertThrowsError(try RunCgroup.prepare(host: test.host, whyNoHost: "", runID: "x", limits: limits)) { error in
            XCTAssertTrue("\(error)".contains("memory_max 64M needs the cgroup v2 memory controller"), "\(error)")
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: test.directory + "/run-x"))
        XCTAssertThrowsError(try RunCgroup.prepare(host: nil, whyNoHost: "no cgroup v2 file system is mounted", runID: "x", limits: limits)) { error in
            XCTAssertTrue("\(error)".contains("no delegated cgroup v2 (no cgroup v2 file system is mounted)"), "\(error)")
        }
        XCTAssertNil(try RunCgroup.prepare(host: nil, whyNoHost: "", runID: "x", limits: .none), "no cgroup, no limit: as before")
    }
}
