import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The worker's delegated cgroup v2 subtree, in which each job gets its own cgroup.
///
/// cgroup v2 allows no processes in a cgroup whose children have controllers enabled, so the worker moves
/// itself into a `worker/` leaf, enables the controllers it can in its
/// cgroup's `cgroup.subtree_control`, and starts each job in a sibling `run-<flow run id>`:
///
///     <worker's cgroup>/            cgroup.subtree_control: +cpu +memory +pids (what was offered)
///         worker/                   the worker
///         run-<flow run id>/        one job and all its descendants
struct CgroupHost: Sendable, Equatable {
    /// Where cgroup2 is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid host).
    var mount: String
    /// The worker's cgroup as `/proc/self/cgroup` names it (`/system.slice/prefect-worker.service`).
    var cgroup: String
    /// Its directory under the mount.
    var directory: String
    /// Controllers the worker's cgroup was given (`cgroup.controllers`).
    var available: Set<String>
    /// Controllers enabled for its children (`cgroup.subtree_control`): what limits can use.
    var enabled: Set<String>

    /// The controllers the worker enables for its jobs when they are offered.
    static let wanted = ["cpu", "memory", "pids"]

    /// The cgroup directory of a run: `run-<id>`, with anything but letters, digits, `-`, `_` and `.` as `_`.
    func runDirectory(_ runID: String) -> String {
        directory + "/" + Self.runName(runID)
    }

    static func runName(_ runID: String) -> String {
        let safe = runID.unicodeScalars.map { $0.isASCII && (CharacterSet.alphanumerics.contains($0) || "-_.".unicodeScalars.contains($0)) ? Character($0) : "_" }
        return "run-" + String(String(safe).prefix(200))
    }

    // MARK: - Detection (pure)

    /// The mount point of the first cgroup2 file system in `/proc/self/mountinfo`, and the mount's root.
    static func cgroup2Mount(mountinfo: String) -> (mountPoint: String, root: String)? {
        for line in mountinfo.split(separator: "\n") {
            // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER-OPTIONS
            let fields = line.split(separator: " ").map(String.init)
            guard let dash = fields.firstIndex(of: "-"), dash >= 5, dash + 1 < fields.count, fields[dash + 1] == "cgroup2" else { continue }
            return (unescape(fields[4]), unescape(fields[3]))
        }
        return nil
    }

    /// The process's cgroup v2 path from `/proc/self/cgroup` (the `0::/path` line).
    static func ownCgroup(procSelfCgroup: String) -> String? {
        for line in procSelfCgroup.split(separator: "\n") where line.hasPrefix("0::") {
            var path = String(line.dropFirst(3))
            // A cgroup that was removed under us reads "/path (deleted)".
            if path.hasSuffix(" (deleted)") { path = String(path.dropLast(10)) }
            return path.hasPrefix("/") ? path : nil
        }
        return nil
    }

    /// The directory of `cgroup` under a cgroup2 mount whose root is `root` (not "/" when a container bind-mounts
    /// a subtree); nil when the cgroup is not inside the mounted part.
    static func directory(of cgroup: String, mountPoint: String, root: String) -> String? {
        let base = mountPoint.hasSuffix("/") && mountPoint.count > 1 ? String(mountPoint.dropLast()) : mountPoint
        if root == "/" { return cgroup == "/" ? base : base + cgroup }
        if cgroup == root { return base }
        guard cgroup.hasPrefix(root + "/") else { return nil }
        return base + cgroup.dropFirst(root.count)
    }

    /// mountinfo escapes space, tab, newline and backslash as \ooo.
    static func unescape(_ field: String) -> String {
        guard field.contains("\\") else { return field }
        var out = [UInt8]()
        let bytes = Array(field.utf8)
        var i = 0
        while i < bytes.count {
            if bytes[i] == UInt8(ascii: "\\"), i + 3 < bytes.count,
               let code = UInt8(String(decoding: bytes[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                out.append(code)
                i += 4
            } else {
                out.append(bytes[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    static func words(_ text: String?) -> Set<String> {
        Set((text ?? "").split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init))
    }

    // MARK: - Start-up (acts)

    /// What start-up found: a usable subtree, or why there is none (the worker then runs jobs as without cgroups).
    enum Detection: Sendable {
        case usable(CgroupHost)
        case unusable(reason: String)

        var host: CgroupHost? { if case .usable(let host) = self { host } else { nil } }
        var reason: String { if case .unusable(let reason) = self { reason } else { "" } }
    }

    /// Finds the cgroup v2 mount and the worker's own cgroup and, if that cgroup is delegated to us (not the
    /// host's root cgroup, writable), moves the worker into `worker/` and enables the controllers it was
    /// offered. Logs one line saying what it found and what it will do.
    static func setUp() -> Detection {
        let detection = detect(mountinfo: CgroupFile.read("/proc/self/mountinfo"), procSelfCgroup: CgroupFile.read("/proc/self/cgroup"))
        switch detection {
        case .unusable(let reason):
            Log.info("cgroups: \(reason); jobs run in the worker's cgroup, and stray processes of a stopped job are found by the run id in their environment")
        case .usable(let host):
            let enabled = host.enabled.isEmpty ? "none (the worker's cgroup was given none: memory_max and cpu_max cannot be applied)" : host.enabled.sorted().joined(separator: " ")
            Log.info("cgroups: cgroup v2 at \(host.mount), worker's cgroup \(host.cgroup) is delegated; the worker moved into \(host.cgroup == "/" ? "" : host.cgroup)/worker and starts each job in its own \(host.cgroup == "/" ? "" : host.cgroup)/run-<flow run id>, killed as a whole on stop; controllers for job limits: \(enabled)")
        }
        return detection
    }

    static func detect(mountinfo: String?, procSelfCgroup: String?) -> Detection {
        guard let (mountPoint, root) = mountinfo.flatMap(cgroup2Mount(mountinfo:)) else {
            return .unusable(reason: "no cgroup v2 file system is mounted")
        }
        guard let cgroup = procSelfCgroup.flatMap(ownCgroup(procSelfCgroup:)) else {
            return .unusable(reason: "cgroup v2 is mounted at \(mountPoint), but /proc/self/cgroup names no cgroup v2 path for the worker")
        }
        guard let directory = directory(of: cgroup, mountPoint: mountPoint, root: root) else {
            return .unusable(reason: "the worker's cgroup \(cgroup) is outside the cgroup v2 mount at \(mountPoint)")
        }
        // The host's root cgroup has no cgroup.type; it belongs to the host, never to us.
        let fm = FileManager.default
        guard fm.fileExists(atPath: directory + "/cgroup.type") else {
            return .unusable(reason: "the worker runs in the host's root cgroup (\(cgroup) at \(mountPoint)), which is not delegated to it")
        }
        for file in ["", "/cgroup.procs", "/cgroup.subtree_control"] where access(directory + file, W_OK) != 0 {
            return .unusable(reason: "the worker's cgroup \(cgroup) at \(mountPoint) is not delegated to it (\(directory + file): \(errnoText()))")
        }
        let leaf = directory + "/worker"
        if mkdir(leaf, 0o755) != 0 && errno != EEXIST {
            return .unusable(reason: "cannot create \(leaf) (\(errnoText()))")
        }
        // Only the worker moves: other processes in its cgroup are not ours to move (a test runner, a
        // container's init). While they stay, controllers cannot be enabled for the jobs (see below).
        guard CgroupFile.write(leaf + "/cgroup.procs", "\(getpid())") else {
            let why = errnoText()
            _ = rmdir(leaf)
            return .unusable(reason: "cannot move the worker into \(leaf) (\(why))")
        }
        let now = CgroupFile.read("/proc/self/cgroup").flatMap(ownCgroup(procSelfCgroup:))
        guard now == (cgroup == "/" ? "" : cgroup) + "/worker" else {
            let why = errnoText()
            _ = rmdir(leaf)
            return .unusable(reason: "cannot move the worker into \(leaf) (\(why))")
        }
        // Normal when the worker is started from a shell (the demo, a terminal session: the shell stays in
        // the session's cgroup), so INFO: jobs still get their own cgroups, only limits cannot be applied.
        let shared = CgroupFile.read(directory + "/cgroup.procs").map(words) ?? []
        if !shared.isEmpty {
            Log.info("cgroups: other processes (pid \(shared.sorted().joined(separator: ", "))) are in the worker's cgroup \(cgroup); while they are, no controller can be enabled for jobs (run the worker as the only process of its service or container)")
        }
        let available = words(CgroupFile.read(directory + "/cgroup.controllers"))
        var enabled = words(CgroupFile.read(directory + "/cgroup.subtree_control"))
        let missing = wanted.filter { available.contains($0) && !enabled.contains($0) }
        if !missing.isEmpty {
            if !CgroupFile.write(directory + "/cgroup.subtree_control", missing.map { "+" + $0 }.joined(separator: " ")) {
                // The expected outcome while other processes share the cgroup (said above); a surprise otherwise.
                let line = "cgroups: cannot enable \(missing.joined(separator: " ")) in \(directory)/cgroup.subtree_control (\(errnoText())); limits that need them will be refused"
                if shared.isEmpty { Log.warning(line) } else { Log.info(line) }
            }
            enabled = words(CgroupFile.read(directory + "/cgroup.subtree_control"))
        }
        return .usable(CgroupHost(mount: mountPoint, cgroup: cgroup, directory: directory, available: available, enabled: enabled))
    }
}

/// Small file reads and writes for cgroup and /proc files, errno intact for the message.
enum CgroupFile {
    static func read(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var data = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            data.append(contentsOf: buffer[0..<n])
        }
        return String(decoding: data, as: UTF8.self)
    }

    /// One write(2) of the whole text, as cgroup files want it; false (errno set) on failure.
    static func write(_ path: String, _ text: String) -> Bool {
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { return false }
        defer { let saved = errno; close(fd); errno = saved }
        let bytes = Array(text.utf8)
        let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        return n == bytes.count
    }
}
