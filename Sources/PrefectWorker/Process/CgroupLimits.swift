import Foundation

/// A job's resource limits from the job variables `memory_max` and `cpu_max`, checked and put in the form
/// cgroup v2 takes (`memory.max`, `cpu.max`).
///
/// - `memory_max`: `"max"`, a number of bytes, or a number with a binary suffix as `memory.max` reads it:
///   `K`, `M`, `G`, `T` (also written `Ki`, `Mi`, `Gi`, `Ti`, Kubernetes style), e.g. `"512M"`, `"1.5G"`.
/// - `cpu_max`: a number of CPUs (`"0.5"`, `2`: quota = CPUs × 100 ms per 100 ms period), `"max"`, or the raw
///   `cpu.max` form `"QUOTA PERIOD"` in microseconds (`"50000 100000"`, `"max 100000"`).
struct CgroupLimits: Sendable, Equatable {
    /// One limit: what is written to the cgroup file, and the job variable as the user wrote it (for messages).
    struct Limit: Sendable, Equatable {
        var value: String
        var asWritten: String
    }

    /// For `memory.max`: bytes or "max".
    var memory: Limit?
    /// For `cpu.max`: "QUOTA PERIOD" or "max PERIOD".
    var cpu: Limit?

    static let none = CgroupLimits()

    init(memory: Limit? = nil, cpu: Limit? = nil) {
        self.memory = memory
        self.cpu = cpu
    }

    var isEmpty: Bool { memory == nil && cpu == nil }

    /// The cgroup v2 controllers the limits need, each with the job variable that needs it.
    var requiredControllers: [(controller: String, variable: String)] {
        (memory.map { [("memory", "memory_max \($0.asWritten)")] } ?? []) + (cpu.map { [("cpu", "cpu_max \($0.asWritten)")] } ?? [])
    }

    /// The default CFS period, as the kernel uses.
    static let cpuPeriod = 100_000

    /// Reads `memory_max` and `cpu_max` (null or "" means no limit).
    init(memoryMax: JSON, cpuMax: JSON) throws(JobConfigurationError) {
        memory = try Self.memory(memoryMax)
        cpu = try Self.cpu(cpuMax)
    }

    static func memory(_ value: JSON) throws(JobConfigurationError) -> Limit? {
        let text: String
        switch value {
        case .null: return nil
        case .int(let bytes):
            guard bytes > 0 else { throw JobConfigurationError("job variable 'memory_max' must be positive, got \(bytes)") }
            return Limit(value: String(bytes), asWritten: String(bytes))
        case .string(let s): text = s.trimmingCharacters(in: .whitespaces)
        default: throw JobConfigurationError("job variable 'memory_max' must be a string such as \"512M\" or \"max\", got \(value.typeName)")
        }
        if text.isEmpty { return nil }
        if text.lowercased() == "max" { return Limit(value: "max", asWritten: text) }
        let bad = JobConfigurationError("job variable 'memory_max' must be \"max\", a number of bytes or a number with K, M, G or T (e.g. \"512M\"), got \(JSON.string(text).encoded())")
        var number = text
        var unit: Double = 1
        let units: [(String, Double)] = [("ki", 0x1p10), ("mi", 0x1p20), ("gi", 0x1p30), ("ti", 0x1p40),
                                         ("k", 0x1p10), ("m", 0x1p20), ("g", 0x1p30), ("t", 0x1p40)]
        for (suffix, size) in units where number.lowercased().hasSuffix(suffix) {
            number = String(number.dropLast(suffix.count))
            unit = size
            break
        }
        guard !number.isEmpty, number.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }),
              let amount = Double(number), amount > 0 else { throw bad }
        let bytes = (amount * unit).rounded()
        guard bytes >= 1, bytes < 9.2e18 else { throw bad }
        return Limit(value: String(UInt64(bytes)), asWritten: text)
    }

    static func cpu(_ value: JSON) throws(JobConfigurationError) -> Limit? {
        let bad = { (got: String) in
            JobConfigurationError("job variable 'cpu_max' must be a number of CPUs (e.g. \"0.5\"), \"max\", or \"QUOTA PERIOD\" in microseconds (e.g. \"50000 100000\"), got \(got)")
        }
        let text: String
        switch value {
        case .null: return nil
        case .int(let n): text = String(n)
        case .double(let d): text = String(d)
        case .string(let s): text = s.trimmingCharacters(in: .whitespaces)
        default: throw bad(value.typeName)
        }
        if text.isEmpty { return nil }
        let words = text.split(separator: " ", omittingEmptySubsequences: true)
        if words.count == 2 {
            guard let period = Int(words[1]), (1000...1_000_000).contains(period) else { throw bad(JSON.string(text).encoded()) }
            if words[0].lowercased() == "max" { return Limit(value: "max \(period)", asWritten: text) }
            guard let quota = Int(words[0]), quota >= 1000 else { throw bad(JSON.string(text).encoded()) }
            return Limit(value: "\(quota) \(period)", asWritten: text)
        }
        guard words.count == 1 else { throw bad(JSON.string(text).encoded()) }
        if text.lowercased() == "max" { return Limit(value: "max \(cpuPeriod)", asWritten: text) }
        guard text.allSatisfy({ $0.isASCII && ($0.isNumber || $0 == ".") }), let cpus = Double(text), cpus > 0 else {
            throw bad(JSON.string(text).encoded())
        }
        // The kernel refuses a quota under 1 ms.
        let quota = max(1000, Int((cpus * Double(cpuPeriod)).rounded()))
        return Limit(value: "\(quota) \(cpuPeriod)", asWritten: text)
    }

    /// Why the limits cannot be applied on this host (nil when they can): names the missing controller and
    /// how to delegate it. The run is then CRASHED before it starts.
    func unavailableReason(host: CgroupHost?, whyNoHost: String) -> String? {
        let needed = requiredControllers
        guard !needed.isEmpty else { return nil }
        let how = "delegate it to the worker: under systemd, Delegate=cpu memory pids in the unit; in Docker or Podman, --cgroupns=private with /sys/fs/cgroup mounted writable; see the README section 'Per-job cgroups and limits'"
        guard let host else {
            let what = needed.map { "\($0.variable) needs the cgroup v2 \($0.controller) controller" }.joined(separator: " and ")
            return "\(what), but the worker has no delegated cgroup v2 (\(whyNoHost)); \(how)"
        }
        let missing = needed.filter { !host.enabled.contains($0.controller) }
        guard !missing.isEmpty else { return nil }
        let what = missing.map { "\($0.variable) needs the cgroup v2 \($0.controller) controller" }.joined(separator: " and ")
        let offered = host.available.isEmpty ? "none" : host.available.sorted().joined(separator: " ")
        return "\(what), which is not available in the worker's cgroup \(host.cgroup) (its cgroup.controllers: \(offered)); \(how)"
    }
}
