import Foundation

/// Who reports a run's RUNNING and final states.
enum StateOwner: String, Sendable, Equatable {
    /// The job is a Prefect engine (`python -m prefect.engine`, a submitted flow's bundle execution step),
    /// which reports its own states.
    case engine
    /// The job is a plain program; the worker reports RUNNING, then COMPLETED/FAILED/CRASHED from its exit.
    case worker
}

/// One flow run's job, typed and validated: what the launcher needs.
struct JobConfiguration: Sendable, Equatable {
    /// Prefect's default for process workers when `command` is null.
    static let defaultCommand = "python -m prefect.engine"

    /// The command as configured; nil means the engine default.
    var command: String?
    /// The program and its arguments, split without a shell.
    var arguments: [String]
    /// Variables to add to the worker's environment (null values were dropped: they add nothing).
    var environment: [String: String]
    /// nil means a fresh temporary directory, removed after the run.
    var workingDirectory: String?
    var name: String?
    var labels: [String: String]
    var streamOutput: Bool
    var stateOwner: StateOwner
    /// Stop the job and report the run FAILED (TimedOut) after this many seconds; nil = no limit.
    var timeoutSeconds: Double?
    /// Per-job cgroup limits: `memory_max` and `cpu_max`, applied to the job's cgroup.
    var limits: CgroupLimits = .none
    /// Values kept out of every log line while the run lives: the secrets of the blocks its configuration
    /// refers to (`BlockReferences`).
    var secrets: [String] = []

    /// Types and checks the rendered configuration. Values are coerced the way Prefect's pydantic models do
    /// (env numbers and booleans become strings with Python's spelling; "true"/"false" become booleans).
    /// `bundleExecutionStep` is the pool's (`WorkPool.bundleExecutionStep`): a command that runs it is
    /// engine-owned unless `state_owner` says otherwise.
    init(_ rendered: RenderedJob, bundleExecutionStep: JSON? = nil) throws(JobConfigurationError) {
        let config = rendered.configuration

        switch config["command"] ?? .null {
        case .null: command = nil
        case .string(let s): command = s.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty ? nil : s
        case let other: throw JobConfigurationError("job variable 'command' must be a string, got \(other.typeName)")
        }
        do {
            arguments = try CommandLineSplitter.split(command ?? Self.defaultCommand)
        } catch {
            throw JobConfigurationError("cannot parse command \(Self.quoted(command ?? "")): \(error)")
        }
        if arguments.isEmpty { throw JobConfigurationError("command \(Self.quoted(command ?? "")) is empty") }

        switch config["env"] ?? .null {
        case .null: environment = [:]
        case .object(let fields):
            var env: [String: String] = [:]
            for (key, value) in fields {
                switch value {
                case .null: continue
                case .string(let s): env[key] = s
                case .int, .double, .bool: env[key] = value.pythonString
                case .array, .object:
                    throw JobConfigurationError("job variable 'env': value of \(key) must be a string, number or boolean, got \(value.typeName)")
                }
                if key.isEmpty || key.contains("=") || key.contains("\0") {
                    throw JobConfigurationError("job variable 'env': \(Self.quoted(key)) is not a valid environment variable name")
                }
            }
            environment = env
        case let other: throw JobConfigurationError("job variable 'env' must be an object, got \(other.typeName)")
        }

        switch config["working_dir"] ?? .null {
        case .null: workingDirectory = nil
        case .string(let s): workingDirectory = s.isEmpty ? nil : s
        case let other: throw JobConfigurationError("job variable 'working_dir' must be a path string, got \(other.typeName)")
        }

        switch config["name"] ?? .null {
        case .null: name = nil
        case .string(let s): name = s
        case let other: throw JobConfigurationError("job variable 'name' must be a string, got \(other.typeName)")
        }

        switch config["labels"] ?? .null {
        case .null: labels = [:]
        case .object(let fields):
            var strings: [String: String] = [:]
            for (key, value) in fields {
                guard case .string(let s) = value else {
                    throw JobConfigurationError("job variable 'labels': value of \(key) must be a string, got \(value.typeName)")
                }
                strings[key] = s
            }
            labels = strings
        case let other: throw JobConfigurationError("job variable 'labels' must be an object, got \(other.typeName)")
        }

        streamOutput = try Self.boolean(config["stream_output"] ?? .bool(true), name: "stream_output")

        // `state_owner` is ours: read it from the configuration if the pool's template maps it, else from the variables.
        switch config["state_owner"] ?? rendered.variables["state_owner"] ?? .null {
        case .null: stateOwner = Self.defaultOwner(command: command, bundleExecutionStep: bundleExecutionStep)
        case .string(let s):
            guard let owner = StateOwner(rawValue: s.lowercased()) else {
                throw JobConfigurationError("job variable 'state_owner' must be 'engine' or 'worker', got \(Self.quoted(s))")
            }
            stateOwner = owner
        case let other: throw JobConfigurationError("job variable 'state_owner' must be 'engine' or 'worker', got \(other.typeName)")
        }
        // `timeout_seconds` is ours too, read the same way, so pools with Prefect's own template can use it.
        timeoutSeconds = try Self.timeout(config["timeout_seconds"] ?? rendered.variables["timeout_seconds"] ?? .null)
        // Cgroup limits: like `state_owner`, read even when the pool's template does not map them.
        limits = try CgroupLimits(memoryMax: config["memory_max"] ?? rendered.variables["memory_max"] ?? .null,
                                  cpuMax: config["cpu_max"] ?? rendered.variables["cpu_max"] ?? .null)
    }

    /// A number of seconds >= 0 (a numeric string is accepted, as pydantic would); null or 0 = no limit, as
    /// for a Prefect flow's `timeout_seconds`.
    static func timeout(_ value: JSON) throws(JobConfigurationError) -> Double? {
        let seconds: Double
        switch value {
        case .null: return nil
        case .int(let n): seconds = Double(n)
        case .double(let d): seconds = d
        case .string(let s) where Double(s.trimmingCharacters(in: .whitespaces)) != nil:
            seconds = Double(s.trimmingCharacters(in: .whitespaces))!
        case .string(let s) where s.trimmingCharacters(in: .whitespaces).isEmpty: return nil
        default:
            throw JobConfigurationError("job variable 'timeout_seconds' must be a number of seconds or null, got \(value.typeName) \(value.encoded())")
        }
        guard seconds.isFinite, seconds >= 0 else {
            throw JobConfigurationError("job variable 'timeout_seconds' must be a number of seconds >= 0 or null, got \(value.encoded())")
        }
        return seconds == 0 ? nil : seconds
    }

    /// The engine owns states when the command is the default or runs `prefect.engine` /
    /// `prefect flow-run execute` anywhere in it, also behind a shell wrapper (`sh -c 'cd /app && python -m
    /// prefect.engine'`), or runs a submitted flow's bundle (`BundleExecution`: the pool's execution step, or
    /// Prefect's own `prefect.bundles.execute`); any other program is a plain command the worker reports for.
    static func defaultOwner(command: String?, bundleExecutionStep: JSON? = nil) -> StateOwner {
        guard let command else { return .engine }
        // Words as a shell would see them inside wrappers: split on blanks, quotes and operators.
        let words = command.split(whereSeparator: { " \t\n\r'\"();&|`".contains($0) }).map(String.init)
        if words.contains("prefect.engine") { return .engine }
        if BundleExecution.isExecution(words: words, step: bundleExecutionStep) { return .engine }
        for i in words.indices.dropLast(2) where (words[i] == "prefect" || words[i].hasSuffix("/prefect"))
            && words[i + 1] == "flow-run" && words[i + 2] == "execute" {
            return .engine
        }
        return .worker
    }

    static func boolean(_ value: JSON, name: String) throws(JobConfigurationError) -> Bool {
        switch value {
        case .bool(let b): return b
        case .int(0): return false
        case .int(1): return true
        case .string(let s):
            switch s.lowercased() {
            case "true", "t", "yes", "y", "on", "1": return true
            case "false", "f", "no", "n", "off", "0": return false
            default: break
            }
        default: break
        }
        throw JobConfigurationError("job variable '\(name)' must be a boolean, got \(value.typeName) \(value.encoded())")
    }

    static func quoted(_ s: String) -> String { JSON.string(s).encoded() }
}
