import Foundation
#if canImport(Glibc)
import Glibc
#endif
@testable import PrefectWorker
import XCTest

/// The image, built from the Containerfile and run by a real OCI engine (podman), against the real server
/// over the host's network: as config/kubernetes.yaml's pod runs it, and as Prefect's Helm chart runs it with
/// config/helm-values.yaml. Skipped, with the reason, where no OCI engine can run (see ContainerImages).
/// Every container, volume and scratch directory a test makes is removed in tearDown, the two images when
/// the class is done; the base and cache images are kept on purpose (ContainerImages).
final class ContainerTests: RunControlTestCase, @unchecked Sendable {
    private var containers: [String] = []
    private var volumes: [String] = []

    /// The repository: the fixtures are its Tests/fixtures.
    var repository: String {
        ((env.fixtures as NSString).deletingLastPathComponent as NSString).deletingLastPathComponent
    }

    override class func tearDown() {
        ContainerImages.removeAll()
        super.tearDown()
    }

    override func tearDownWithError() throws {
        let failed = (testRun?.totalFailureCount ?? 0) > 0
        for container in containers {
            if failed { print("----- log of container \(container) -----\n\(Podman.logs(container).suffix(8_000))\n----- end -----") }
            if let result = try? Podman.run(["rm", "--force", "--volumes", "--time", "0", container]), result.code != 0 {
                XCTFail("podman rm \(container): \(result.error)")
            }
        }
        for volume in volumes {
            if let result = try? Podman.run(["volume", "rm", "--force", volume]), result.code != 0 {
                XCTFail("podman volume rm \(volume): \(result.error)")
            }
        }
        containers.removeAll()
        volumes.removeAll()
        try super.tearDownWithError()
    }

    // MARK: - Helpers

    func images() throws -> ContainerImages { try ContainerImages.shared(repository: repository) }

    /// A name for a container (removed in tearDown); also its hostname, as a pod's name is.
    func containerName(_ suffix: String) -> String {
        let name = uniqueName(suffix)
        containers.append(name)
        return name
    }

    /// A named volume, removed in tearDown.
    func makeVolume() throws -> String {
        let name = uniqueName("-state")
        try Podman.check(["volume", "create", name])
        volumes.append(name)
        return name
    }

    /// Runs config/kubernetes.yaml's pod; returns the container's name and its health port.
    func runKubernetesPod(image: String, pool: String, stateVolume: String,
                          extraMounts: [String] = []) throws -> (container: String, port: UInt16) {
        let container = containerName("-pod")
        let port = E2E.closedLocalPort()
        let environment = ContainerPods.kubernetesEnvironment(apiURL: env.apiURL.absoluteString, pool: pool,
                                                              podName: container, port: port)
        try Podman.check(ContainerPods.kubernetesRunArguments(container: container, podName: container,
                                                              stateVolume: stateVolume, environment: environment,
                                                              extraMounts: extraMounts, image: image))
        return (container, port)
    }

    /// The HTTP status of GET http://127.0.0.1:PORT/PATH (0: no answer).
    func httpStatus(port: UInt16, path: String) -> Int {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "3",
                             "http://127.0.0.1:\(port)\(path)"]
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return 0 }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return Int(String(decoding: data, as: UTF8.self)) ?? 0
    }

    func waitUntilHealthy(port: UInt16, container: String) async throws {
        _ = try await E2E.eventually(timeout: 60, interval: 0.5, "GET /health on port \(port) to answer 200; log: \(Podman.logs(container).suffix(2000))") {
            try checkContainerRunning(container)
            return httpStatus(port: port, path: "/health") == 200 ? true : nil
        }
    }

    func checkContainerRunning(_ container: String) throws {
        guard Podman.isRunning(container) else {
            throw WorkerDied(description: "container \(container) stopped (exit code \(String(describing: try? Podman.exitCode(container)))); log:\n\(Podman.logs(container).suffix(3000))")
        }
    }

    func waitForFinalState(_ id: String, in container: String, timeout: Double) async throws -> JSON {
        try await api.waitForFinalState(id, timeout: timeout) { try checkContainerRunning(container) }
    }

    /// The resident memory of the container's worker (by its pid on the host), for the record.
    func printWorkerMemory(_ container: String, pid: pid_t?) {
        guard let pid, let status = E2E.readText("/proc/\(pid)/status"),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }) else { return }
        print("ContainerTests: \(container): worker (host pid \(pid)) \(line.replacingOccurrences(of: "\t", with: " "))")
    }

    /// The worker registered under `name` in `pool`.
    func assertWorkerRegistered(_ name: String, pool: String) async throws {
        let names = try await api.workers(pool: pool).compactMap { $0["name"]?.asString }
        XCTAssertTrue(names.contains(name), "workers of \(pool): \(names); expected the pod's name \(name)")
    }

    // MARK: - Tests

    /// The manifests say what the tests run: a change to either file that the tests do not follow fails here.
    func testManifestsMatchWhatTheContainerTestsRun() throws {
        let kubernetes = try XCTUnwrap(E2E.readText(repository + "/config/kubernetes.yaml"))
        let helm = try XCTUnwrap(E2E.readText(repository + "/config/helm-values.yaml"))
        XCTAssertEqual(ContainerPods.manifestMismatches(kubernetesYAML: kubernetes, helmValues: helm), [])
        // And the check can fail.
        XCTAssertFalse(ContainerPods.manifestMismatches(kubernetesYAML: kubernetes.replacingOccurrences(of: "runAsUser: 10001", with: "runAsUser: 1"),
                                                        helmValues: helm.replacingOccurrences(of: "type: process", with: "type: kubernetes")).isEmpty)
    }

    /// As config/kubernetes.yaml runs it: read-only root, uid 10001, tmpfs /tmp, state volume. A plain command
    /// completes (and sees that uid and root), /health is 200, and `podman stop` drains: the run in flight
    /// completes, the worker exits 0.
    func testKubernetesPodRunsACommandIsHealthyAndDrainsOnStop() async throws {
        let images = try images()
        let pool = try await makeProcessPool()
        // Proves the pod's security context from inside a job: uid 10001, root not writable, /tmp writable.
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": .string(#"sh -c 'test "$(id -u)" = 10001 && ! touch /probe 2>/dev/null && touch /tmp/probe && echo uid-10001-read-only-root'"#),
        ]))
        let first = try await api.createFlowRun(deployment: deployment)
        let (container, port) = try runKubernetesPod(image: images.plain, pool: pool, stateVolume: try makeVolume())

        let run = try await waitForFinalState(first, in: container, timeout: 60)
        XCTAssertEqual(run.stateType, "COMPLETED", "final state: \(run.stateSummary); log: \(Podman.logs(container).suffix(3000))")
        XCTAssertTrue(Podman.logs(container).contains("uid-10001-read-only-root"), "the job's output is streamed to the container's log")
        try await waitUntilHealthy(port: port, container: container)
        XCTAssertEqual(httpStatus(port: port, path: "/metrics"), 200)
        try await assertWorkerRegistered(container, pool: pool)
        printWorkerMemory(container, pid: try Podman.hostPID(container))

        let sleepy = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": .string("sleep 4"),
        ]))
        let second = try await api.createFlowRun(deployment: sleepy)
        track(second)
        _ = try await waitForState(second, ["RUNNING"], timeout: 40)
        let stopping = Date()
        try Podman.check(["stop", "--time", "60", container], timeout: 90)
        let elapsed = Date().timeIntervalSince(stopping)
        XCTAssertEqual(try Podman.exitCode(container), 0, "the worker's exit code; log: \(Podman.logs(container).suffix(3000))")
        XCTAssertLessThan(elapsed, 50, "the worker should exit once the run is done, well before podman's SIGKILL")
        let drained = try await api.readFlowRun(second)
        XCTAssertEqual(drained.stateType, "COMPLETED", "the run in flight when the container was stopped: \(drained.stateSummary)")
        XCTAssertTrue(Podman.logs(container).contains("draining") || Podman.logs(container).contains("waiting for runs in flight"),
                      "log: \(Podman.logs(container).suffix(2000))")
        print("ContainerTests: podman stop returned after \(String(format: "%.1f", elapsed)) s (the run in flight had up to 4 s left)")
    }

    /// `podman kill` takes the worker and its job down at once; the container restarted on the same state
    /// volume (as the kubelet restarts it in the same pod) finds the run in its journal and reports it CRASHED.
    func testKilledPodRestartedOnItsStateVolumeReportsTheLostRunCrashed() async throws {
        let images = try images()
        let pool = try await makeProcessPool()
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": .string("sleep 300"),
        ]))
        let id = try await api.createFlowRun(deployment: deployment)
        track(id)
        let (container, _) = try runKubernetesPod(image: images.plain, pool: pool, stateVolume: try makeVolume())
        _ = try await waitForState(id, ["RUNNING"], timeout: 40)

        try Podman.check(["kill", "--signal", "KILL", container])
        _ = try await E2E.eventually(timeout: 20, "container \(container) to stop after podman kill") {
            Podman.isRunning(container) ? nil : true
        }
        let lost = try await api.readFlowRun(id)
        XCTAssertEqual(lost.stateType, "RUNNING", "nobody has reported the run yet: \(lost.stateSummary)")

        try Podman.check(["start", container])
        let run = try await waitForFinalState(id, in: container, timeout: 60)
        XCTAssertEqual(run.stateType, "CRASHED", "final state: \(run.stateSummary); log: \(Podman.logs(container).suffix(3000))")
        XCTAssertTrue(run.stateMessage.contains("job process was gone"), "message: \(run.stateMessage)")
    }

    /// The image with Python and prefect runs an engine flow to COMPLETED, and its `prefect` hands other
    /// subcommands to Prefect's CLI, as the chart's init container uses it (uid 1001, read-only root).
    func testEngineFlowCompletesInTheImageWithPython() async throws {
        let images = try images()
        let pool = try await makeProcessPool()
        let deployment = try await api.createEngineDeployment(pool: pool, name: uniqueName(), flow: "hello")
        let id = try await api.createFlowRun(deployment: deployment, parameters: try E2E.json(#"{"name": "container"}"#))
        track(id)
        // The deployment's pull step changes into the fixtures directory: the same path inside.
        let (container, _) = try runKubernetesPod(image: images.python, pool: pool, stateVolume: try makeVolume(),
                                                  extraMounts: ["\(env.fixtures):\(env.fixtures):ro"])
        let run = try await waitForFinalState(id, in: container, timeout: 120)
        XCTAssertEqual(run.stateType, "COMPLETED", "final state: \(run.stateSummary); log: \(Podman.logs(container).suffix(3000))")
        // The engine ships its log records itself, a little after the run's final state.
        var logs: [String] = []
        let shipped = try? await E2E.eventually(timeout: 20, "the flow's own log line in the run's logs: \(logs.suffix(10))") { () -> Bool? in
            logs = try await api.logMessages(id)
            return logs.contains { $0.contains("hello, container!") } ? true : nil
        }
        XCTAssertNotNil(shipped, "the flow's own log lines: \(logs.suffix(10))")

        // The chart's init container: `prefect work-pool inspect` through Prefect's CLI.
        let scratch = try temporaryDirectory("scratch")
        try ContainerPods.makeScratch(in: scratch)
        let inspect = try Podman.run(["run", "--rm", "--network", "host", "--no-healthcheck", "--read-only", "--user", "1001:0", "--group-add", "1001",
                                      "--image-volume", "ignore", "--workdir", "/home/prefect",
                                      "--volume", scratch + "/home:/home/prefect", "--volume", scratch + "/tmp:/tmp",
                                      "--env", "HOME=/home/prefect", "--env", "PREFECT_API_URL=" + env.apiURL.absoluteString,
                                      "--entrypoint", "/opt/prefect/entrypoint.sh", images.python,
                                      "prefect", "work-pool", "inspect", pool], timeout: 120)
        XCTAssertEqual(inspect.code, 0, "prefect work-pool inspect: \(inspect.error.suffix(2000))")
        XCTAssertTrue(inspect.output.contains(pool), "prefect work-pool inspect printed: \(inspect.output.suffix(2000))")
    }

    /// Prefect's Helm chart, config/helm-values.yaml: its command (tini, entrypoint.sh), its `prefect worker
    /// start` arguments, uid 1001, read-only root, one emptyDir at /home/prefect and /tmp. The worker falls
    /// back to a writable state directory and says so, takes the pod's name, runs a command, answers the
    /// liveness probe and exits 0 on stop; `prefect work-pool …` in this image is one line and exit 2.
    func testHelmChartRunsTheImageWithOnlyTheImageAndTypeChanged() async throws {
        let images = try images()
        let pool = try await makeProcessPool()
        let deployment = try await api.createCommandDeployment(pool: pool, name: uniqueName(), jobVariables: .object([
            "command": .string(#"sh -c 'test "$(id -u)" = 1001 && touch "$HOME/probe" && echo chart-job-ran'"#),
        ]))
        let id = try await api.createFlowRun(deployment: deployment)
        track(id)
        let scratch = try temporaryDirectory("scratch")
        try ContainerPods.makeScratch(in: scratch)
        let container = containerName("-chart")
        let port = E2E.closedLocalPort()
        try Podman.check(ContainerPods.chartRunArguments(container: container, podName: container, scratch: scratch,
                                                         environment: ContainerPods.chartEnvironment(apiURL: env.apiURL.absoluteString, port: port),
                                                         image: images.plain, pool: pool))

        let run = try await waitForFinalState(id, in: container, timeout: 60)
        XCTAssertEqual(run.stateType, "COMPLETED", "final state: \(run.stateSummary); log: \(Podman.logs(container).suffix(3000))")
        XCTAssertTrue(Podman.logs(container).contains("chart-job-ran"))
        let fallback = "/home/prefect/.local/state/prefect-worker"
        let log = Podman.logs(container)
        XCTAssertTrue(log.contains("the state directory /var/lib/prefect-worker is not writable by uid 1001") && log.contains("in \(fallback) instead"),
                      "the worker should say where it keeps its journal; log: \(log.suffix(3000))")
        XCTAssertTrue(FileManager.default.fileExists(atPath: scratch + "/home/.local/state/prefect-worker/journal"),
                      "the journal is in the emptyDir")
        try await waitUntilHealthy(port: port, container: container)
        try await assertWorkerRegistered(container, pool: pool)
        let pid = try Podman.hostPID(container)
        // tini is PID 1 here; the worker is its child.
        let worker = ProcScan.allPIDs().first { ProcScan.stat($0)?.ppid == pid }
        printWorkerMemory(container, pid: worker)

        let other = try Podman.run(["run", "--rm", "--no-healthcheck", "--entrypoint", "/opt/prefect/entrypoint.sh", images.plain, "prefect", "work-pool", "ls"])
        XCTAssertEqual(other.code, 2, "prefect work-pool ls in the image without Python: \(other.error)")
        let lines = other.error.split(separator: "\n")
        XCTAssertEqual(lines.count, 1, "one line: \(other.error)")
        XCTAssertTrue(other.error.contains("no Prefect CLI for 'prefect work-pool ls'"), other.error)

        try Podman.check(["stop", "--time", "30", container], timeout: 60)
        XCTAssertEqual(try Podman.exitCode(container), 0, "exit code under tini; log: \(Podman.logs(container).suffix(2000))")
    }
}
