import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// How the container tests run the image: as config/kubernetes.yaml's pod runs it, and as Prefect's Helm
/// chart (charts/prefect-worker, with config/helm-values.yaml) runs it, translated to podman flags.
/// Every container uses the host's network, so it reaches the test server on 127.0.0.1; that is why the
/// health port is a free one instead of 8080 (several tests share the host's ports). The image's
/// HEALTHCHECK is off (`--no-healthcheck`), as Kubernetes ignores it (its probes call /health, which the
/// tests call too); podman would need systemd to schedule it.
enum ContainerPods {
    /// The environment of config/kubernetes.yaml's container: its ConfigMap, then its `env` list. The pool,
    /// the API URL, the name (`metadata.name`) and the port come from the test; the Secret's API key is
    /// left out (the test server has no authentication). `manifestMismatches` checks the rest against the file.
    static func kubernetesEnvironment(apiURL: String, pool: String, podName: String, port: UInt16) -> [String: String] {
        var environment = kubernetesFixedEnvironment
        environment["PREFECT_API_URL"] = apiURL
        environment["PREFECT_WORKER_POOL"] = pool
        environment["PREFECT_WORKER_NAME"] = podName
        environment["PREFECT_WORKER_WEBSERVER_PORT"] = String(port)
        return environment
    }

    /// The values that are the same in the manifest and in the test.
    static let kubernetesFixedEnvironment: [String: String] = [
        "PREFECT_WORKER_WORK_QUEUES": "",
        "PREFECT_WORKER_LIMIT": "4",
        "PREFECT_WORKER_PREFETCH_SECONDS": "10",
        "PREFECT_WORKER_QUERY_SECONDS": "10",
        "PREFECT_WORKER_HEARTBEAT_SECONDS": "30",
        "PREFECT_WORKER_CANCELLATION_POLL_SECONDS": "10",
        "PREFECT_LOGGING_LEVEL": "INFO",
        "PREFECT_WORKER_LOG_FORMAT": "json",
        "PREFECT_WORKER_DRAIN_TIMEOUT": "600",
        "PREFECT_WORKER_KILL_GRACE_SECONDS": "30",
        "PREFECT_WORKER_STATE_DIR": "/var/lib/prefect-worker",
        "HOME": "/var/lib/prefect-worker",
        "PREFECT_WORKER_WITH_HEALTHCHECK": "true",
        "PREFECT_WORKER_WEBSERVER_HOST": "0.0.0.0",
    ]

    /// `podman run` flags for the manifest's pod: its securityContext (uid/gid 10001, read-only root, no
    /// capabilities, no privilege escalation, the runtime's default seccomp profile), the state volume at
    /// /var/lib/prefect-worker, a tmpfs at /tmp (its emptyDir), and `args: ["start"]` after the image.
    static func kubernetesRunArguments(container: String, podName: String, stateVolume: String,
                                       environment: [String: String], extraMounts: [String] = [], image: String) -> [String] {
        ["run", "--detach", "--name", container, "--hostname", podName, "--network", "host", "--no-healthcheck",
         "--read-only", "--user", "10001:10001", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
         "--tmpfs", "/tmp:rw,nosuid,nodev,mode=1777", "--volume", stateVolume + ":/var/lib/prefect-worker"]
            + extraMounts.flatMap { ["--volume", $0] }
            + environmentFlags(environment) + [image, "start"]
    }

    /// The chart's container: `command` and `args` as its deployment template renders them for
    /// config/helm-values.yaml (type process, liveness probe enabled, no queues, limit or name).
    static let chartCommand = ["/usr/bin/tini", "-g", "--", "/opt/prefect/entrypoint.sh"]
    static func chartArguments(pool: String) -> [String] {
        ["prefect", "worker", "start", "--type", "process", "--pool", pool, "--install-policy", "prompt", "--with-healthcheck"]
    }

    /// The chart's `env` for a self-hosted server, then config/helm-values.yaml's extraEnvVars, then the port.
    static func chartEnvironment(apiURL: String, port: UInt16) -> [String: String] {
        var environment: [String: String] = [
            "HOME": "/home/prefect",
            "PREFECT_WORKER_PREFETCH_SECONDS": "10",
            "PREFECT_WORKER_QUERY_SECONDS": "5",
            "PREFECT_API_ENABLE_HTTP2": "true",
            "PREFECT_API_URL": apiURL,
            "PREFECT_KUBERNETES_CLUSTER_UID": "0c6a1b62-6d4e-4b5e-9e55-1d2b8f3e4a10",
            "PREFECT_INTEGRATIONS_KUBERNETES_OBSERVER_NAMESPACES": "prefect",
            "PREFECT_DEBUG_MODE": "false",
        ]
        environment.merge(chartExtraEnvironment) { $1 }
        environment["PREFECT_WORKER_WEBSERVER_PORT"] = String(port)
        return environment
    }

    /// config/helm-values.yaml's `worker.extraEnvVars`.
    static let chartExtraEnvironment = ["PREFECT_WORKER_DRAIN_TIMEOUT": "15", "PREFECT_WORKER_KILL_GRACE_SECONDS": "10"]

    /// `podman run` flags for the chart's pod: uid 1001 with the group Kubernetes gives a uid the image does
    /// not know (0) and fsGroup 1001, read-only root, `workingDir: /home/prefect`, its one emptyDir mounted
    /// at /home/prefect and /tmp (`scratch` holds home/ and tmp/, group 1001 and setgid as an fsGroup'd
    /// emptyDir), and the image's VOLUME ignored, as Kubernetes ignores it.
    static func chartRunArguments(container: String, podName: String, scratch: String, environment: [String: String],
                                  image: String, pool: String) -> [String] {
        ["run", "--detach", "--name", container, "--hostname", podName, "--network", "host", "--no-healthcheck",
         "--read-only", "--user", "1001:0", "--group-add", "1001", "--security-opt", "no-new-privileges",
         "--image-volume", "ignore", "--workdir", "/home/prefect",
         "--volume", scratch + "/home:/home/prefect", "--volume", scratch + "/tmp:/tmp",
         "--entrypoint", jsonArray(chartCommand)]
            + environmentFlags(environment) + [image] + chartArguments(pool: pool)
    }

    /// The chart's emptyDir: `home` and `tmp` under `directory`, as Kubernetes prepares them for fsGroup 1001.
    static func makeScratch(in directory: String) throws {
        for sub in ["home", "tmp"] {
            let path = directory + "/" + sub
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
            guard chown(path, 0, 1001) == 0, chmod(path, 0o2777) == 0 else {
                throw Podman.Failed(description: "cannot prepare \(path) for fsGroup 1001: \(String(cString: strerror(errno)))")
            }
        }
    }

    static func environmentFlags(_ environment: [String: String]) -> [String] {
        environment.sorted { $0.key < $1.key }.flatMap { ["--env", "\($0.key)=\($0.value)"] }
    }

    static func jsonArray(_ items: [String]) -> String {
        "[" + items.map { "\"\($0)\"" }.joined(separator: ",") + "]"
    }

    /// What the two files say differently from what the tests run; empty when they agree.
    static func manifestMismatches(kubernetesYAML: String, helmValues: String) -> [String] {
        var mismatches: [String] = []
        func has(_ text: String, _ pattern: String) -> Bool { text.range(of: pattern, options: .regularExpression) != nil }
        func quoted(_ value: String) -> String { NSRegularExpression.escapedPattern(for: value) }
        for (key, value) in kubernetesFixedEnvironment.sorted(by: { $0.key < $1.key }) {
            // A ConfigMap entry (`KEY: "value"`) or an env entry (`- name: KEY` then `value: value`).
            let configMap = #"(?m)^\s+\#(key): "?\#(quoted(value))"?\s*$"#
            let envEntry = #"(?m)- name: \#(key)\s*\n\s+value: "?\#(quoted(value))"?\s*$"#
            if !has(kubernetesYAML, configMap), !has(kubernetesYAML, envEntry) {
                mismatches.append("config/kubernetes.yaml does not set \(key)=\(value)")
            }
        }
        for (pattern, what) in [(#"args: \["start"\]"#, #"args: ["start"]"#), (#"runAsUser: 10001"#, "runAsUser: 10001"),
                                (#"runAsGroup: 10001"#, "runAsGroup: 10001"),
                                (#"readOnlyRootFilesystem: true"#, "readOnlyRootFilesystem: true"),
                                (#"drop: \["ALL"\]"#, #"capabilities.drop: ["ALL"]"#),
                                (#"allowPrivilegeEscalation: false"#, "allowPrivilegeEscalation: false"),
                                (#"mountPath: /var/lib/prefect-worker"#, "the state volume at /var/lib/prefect-worker"),
                                (#"mountPath: /tmp"#, "an emptyDir at /tmp"),
                                (#"fieldPath: metadata.name"#, "PREFECT_WORKER_NAME from metadata.name")]
            where !has(kubernetesYAML, pattern) {
            mismatches.append("config/kubernetes.yaml lacks \(what)")
        }
        for (key, value) in chartExtraEnvironment.sorted(by: { $0.key < $1.key })
            where !has(helmValues, #"(?m)- name: \#(key)\s*\n\s+value: "?\#(quoted(value))"?\s*$"#) {
            mismatches.append("config/helm-values.yaml's extraEnvVars do not set \(key)=\(value)")
        }
        for (pattern, what) in [(#"(?m)^\s+type: process\s*$"#, "worker.config.type: process"),
                                (#"(?m)^\s+livenessProbe:\s*\n\s+enabled: true\s*$"#, "worker.livenessProbe.enabled: true")]
            where !has(helmValues, pattern) {
            mismatches.append("config/helm-values.yaml lacks \(what)")
        }
        for key in ["command:", "args:"] where has(helmValues, #"(?m)^\s+\#(key)"#) {
            mismatches.append("config/helm-values.yaml overrides the chart's \(key) (the test runs the chart's own)")
        }
        return mismatches
    }
}
