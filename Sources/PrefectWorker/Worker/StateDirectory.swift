import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The state directory the worker uses: the configured one when the worker can write there, else the first
/// writable fallback. An image run under another uid than it was built for (Prefect's Helm chart runs uid
/// 1001; our image's directory belongs to 10001) then still keeps its journal and outbox, and says where.
enum StateDirectory {
    /// Where to go instead, in order: `$XDG_STATE_HOME/prefect-worker`, `$HOME/.local/state/prefect-worker`
    /// (the chart's `HOME` is a writable emptyDir), `/tmp/prefect-worker-<uid>`.
    static func fallbacks(environment: [String: String], uid: uid_t) -> [String] {
        func nonEmpty(_ key: String) -> String? { environment[key].flatMap { $0.isEmpty ? nil : $0 } }
        var paths: [String] = []
        if let xdg = nonEmpty("XDG_STATE_HOME") { paths.append(xdg + "/prefect-worker") }
        if let home = nonEmpty("HOME"), home != "/" { paths.append(home + "/.local/state/prefect-worker") }
        paths.append("/tmp/prefect-worker-\(uid)")
        return paths
    }

    /// The directory to use and, when it is not `configured`, the one warning line that says why and where.
    /// When nothing is writable, `configured` is kept: preparing it then fails with an error naming it.
    static func resolve(_ configured: String, fallbacks: [String],
                        isWritable: (String) -> Bool = isWritable) -> (path: String, warning: String?) {
        if isWritable(configured) { return (configured, nil) }
        guard let fallback = fallbacks.first(where: { $0 != configured && isWritable($0) }) else {
            return (configured, nil)
        }
        return (fallback, "the state directory \(configured) is not writable by uid \(getuid()); keeping the journal of launched runs in \(fallback) instead (set PREFECT_WORKER_STATE_DIR or --state-dir to a writable directory that survives restarts)")
    }

    /// Creates `path` (and its parents, mode 0700) if missing; true when this process can create files in it.
    static func isWritable(_ path: String) -> Bool {
        try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true,
                                                 attributes: [.posixPermissions: 0o700])
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue else {
            return false
        }
        return access(path, W_OK | X_OK) == 0
    }
}
