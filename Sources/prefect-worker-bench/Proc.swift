import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// What /proc says about a measured process: memory, CPU time, children.
enum Proc {
    /// `kB` fields of a `Key:   123 kB` file (`/proc/PID/status`, `/proc/PID/smaps_rollup`).
    static func kilobytes(_ path: String) -> [String: Int] {
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return [:] }
        var fields: [String: Int] = [:]
        for line in text.split(separator: "\n") {
            let parts = line.split(whereSeparator: { $0 == ":" || $0 == " " || $0 == "\t" })
            if parts.count >= 3, parts[2] == "kB", let value = Int(parts[1]) { fields[String(parts[0])] = value }
        }
        return fields
    }

    static func status(_ pid: pid_t) -> [String: Int] { kilobytes("/proc/\(pid)/status") }
    static func smapsRollup(_ pid: pid_t) -> [String: Int] { kilobytes("/proc/\(pid)/smaps_rollup") }

    /// The fields after the command name in `/proc/PID/stat` (index 0 is field 3, the state).
    static func statFields(_ pid: pid_t) -> [Substring]? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let paren = stat.lastIndex(of: ")") else { return nil }
        return stat[stat.index(after: paren)...].split(separator: " ")
    }

    static let ticksPerSecond = Double(sysconf(Int32(_SC_CLK_TCK)))

    /// utime + stime of the process itself (fields 14 and 15), in seconds; children not included.
    static func cpuSeconds(_ pid: pid_t) -> Double? {
        guard let fields = statFields(pid), fields.count > 12,
              let utime = Double(fields[11]), let stime = Double(fields[12]) else { return nil }
        return (utime + stime) / ticksPerSecond
    }

    /// pid → parent pid for every process.
    static func parentMap() -> [pid_t: pid_t] {
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [:] }
        var map: [pid_t: pid_t] = [:]
        for name in names {
            guard let pid = pid_t(name), let fields = statFields(pid), fields.count > 1, let ppid = pid_t(fields[1]) else { continue }
            map[pid] = ppid
        }
        return map
    }

    static func descendants(of root: pid_t, parents: [pid_t: pid_t]? = nil) -> [pid_t] {
        let parents = parents ?? parentMap()
        var children: [pid_t: [pid_t]] = [:]
        for (pid, ppid) in parents { children[ppid, default: []].append(pid) }
        var result: [pid_t] = []
        var queue = children[root] ?? []
        while let pid = queue.popLast(), result.count < 100_000 {
            result.append(pid)
            queue += children[pid] ?? []
        }
        return result
    }

    static func commandLine(_ pid: pid_t) -> String {
        guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return "?" }
        return String(decoding: data.map { $0 == 0 ? 0x20 : $0 }, as: UTF8.self).trimmingCharacters(in: .whitespaces)
    }

    /// Machine facts for the report.
    static func machine() -> MachineInfo {
        let cpuinfo = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let model = cpuinfo.split(separator: "\n").first { $0.hasPrefix("model name") }
            .map { String($0.split(separator: ":", maxSplits: 1).last ?? "").trimmingCharacters(in: .whitespaces) } ?? "unknown"
        let memory = kilobytes("/proc/meminfo")["MemTotal"] ?? 0
        var uts = utsname()
        uname(&uts)
        let release = withUnsafeBytes(of: &uts.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        return MachineInfo(nproc: Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))), cpuModel: model,
                           memoryMib: memory / 1024, kernel: release)
    }
}
