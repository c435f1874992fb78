/// A work pool's base job template, and how it becomes one flow run's job configuration
/// (Prefect's `BaseJobConfiguration.from_template_and_values`).
public struct JobTemplate: Sendable {
    var jobConfiguration: [String: JSON]
    /// `variables.properties`: the declared job variables and their schemas.
    var properties: [String: JSON]

    init(_ baseJobTemplate: JSON) throws(JobConfigurationError) {
        guard let fields = baseJobTemplate.objectValue else {
            throw JobConfigurationError("the work pool's base job template is not a JSON object")
        }
        guard let configuration = fields["job_configuration"]?.objectValue else {
            throw JobConfigurationError("the work pool's base job template has no 'job_configuration' object")
        }
        // Like Prefect (`variables.get("properties", {})`), a template without properties declares no variables.
        let variables = fields["variables"] ?? .object([:])
        guard variables.objectValue != nil else {
            throw JobConfigurationError("the work pool's base job template has no valid 'variables.properties': 'variables' is not an object")
        }
        let properties: [String: JSON]
        switch variables["properties"] ?? .null {
        case .null: properties = [:]
        case .object(let declared): properties = declared
        default: throw JobConfigurationError("the work pool's base job template has a 'variables.properties' entry that is not an object")
        }
        self.jobConfiguration = configuration
        self.properties = properties
    }

    /// The template the worker gives a process pool that has none: Prefect's, plus this worker's own job
    /// variables (`ownVariables`), so they show in the UI with their descriptions.
    public static let defaultProcessTemplate: JSON = {
        guard case .object(var template) = prefectProcessTemplate,
              case .object(var configuration)? = template["job_configuration"],
              case .object(var variables)? = template["variables"],
              case .object(var properties)? = variables["properties"] else { return prefectProcessTemplate }
        for (name, schema) in ownVariables {
            configuration[name] = .string("{{ \(name) }}")
            properties[name] = schema
        }
        template["job_configuration"] = .object(configuration)
        variables["properties"] = .object(properties)
        template["variables"] = .object(variables)
        return .object(template)
    }()

    /// Job variables of this worker that Prefect's process worker does not have. A pool's template may lack
    /// them; `JobConfiguration` then reads them from the job variables directly.
    static let ownVariables: [String: JSON] = [
        // The run's time limit (timeout_seconds).
        "timeout_seconds": .object([
            "anyOf": .array([.object(["type": "number"]), .object(["type": "null"])]), "default": .null,
            "title": "Timeout Seconds",
            "description": "If the flow run's process runs longer than this many seconds, the worker stops its process tree (SIGTERM, then SIGKILL after the kill grace period) and reports the run FAILED (TimedOut). Empty means no limit.",
        ]),
        // Per-job cgroup limits.
        "memory_max": .object([
            "anyOf": .array([.object(["type": "string"]), .object(["type": "integer"]), .object(["type": "null"])]), "default": .null,
            "title": "Memory Limit",
            "description": "Memory limit of the flow run's process tree, in cgroup v2 memory.max syntax: \"512M\", \"2G\", a number of bytes, or \"max\". Needs the cgroup v2 memory controller delegated to the worker; a run whose limit cannot be applied is CRASHED before it starts.",
        ]),
        "cpu_max": .object([
            "anyOf": .array([.object(["type": "string"]), .object(["type": "number"]), .object(["type": "null"])]), "default": .null,
            "title": "CPU Limit",
            "description": "CPU limit of the flow run's process tree: a number of CPUs (\"0.5\", \"2\"), \"max\", or cgroup v2 cpu.max syntax \"QUOTA PERIOD\" in microseconds (\"50000 100000\"). Needs the cgroup v2 cpu controller delegated to the worker; a run whose limit cannot be applied is CRASHED before it starts.",
        ]),
    ]

    /// Prefect's default template for process work pools (`ProcessWorker.get_default_base_job_template()`).
    static let prefectProcessTemplate: JSON = {
        func nullable(_ type: String, title: String, description: String, extra: [String: JSON] = [:]) -> JSON {
            var inner: [String: JSON] = ["type": .string(type)]
            inner.merge(extra) { $1 }
            return .object(["anyOf": .array([.object(inner), .object(["type": "null"])]), "default": .null,
                            "title": .string(title), "description": .string(description)])
        }
        return .object([
            "job_configuration": .object([
                "command": "{{ command }}", "env": "{{ env }}", "labels": "{{ labels }}", "name": "{{ name }}",
                "stream_output": "{{ stream_output }}", "working_dir": "{{ working_dir }}",
            ]),
            "variables": .object([
                "type": "object",
                "properties": .object([
                    "name": nullable("string", title: "Name", description: "Name given to infrastructure created by a worker."),
                    "env": .object([
                        "type": "object", "title": "Environment Variables",
                        "description": "Environment variables to set when starting a flow run.",
                        "additionalProperties": .object(["anyOf": .array([.object(["type": "string"]), .object(["type": "null"])])]),
                    ]),
                    "labels": .object([
                        "type": "object", "title": "Labels",
                        "description": "Labels applied to infrastructure created by a worker.",
                        "additionalProperties": .object(["type": "string"]),
                    ]),
                    "command": nullable("string", title: "Command",
                                        description: "The command to use when starting a flow run. In most cases, this should be left blank and the command will be automatically generated by the worker."),
                    "stream_output": .object([
                        "type": "boolean", "default": true, "title": "Stream Output",
                        "description": "If enabled, workers will stream output from flow run processes to local standard output.",
                    ]),
                    "working_dir": nullable("string", title: "Working Directory",
                                            description: "If provided, workers will open flow run processes within the specified path as the working directory. Otherwise, a temporary directory will be created.",
                                            extra: ["format": "path"]),
                ]),
            ]),
        ])
    }()

    /// Merges deployment job variables with the flow run's (env per key, everything else replaced), as
    /// `BaseJobConfiguration._get_configuration` does.
    static func mergeJobVariables(deployment: JSON?, flowRun: JSON?) -> [String: JSON] {
        var merged = deployment?.objectValue ?? [:]
        var run = flowRun?.objectValue ?? [:]
        if case .object(var env)? = merged["env"], case .object(let runEnv)? = run["env"] {
            env.merge(runEnv) { $1 }
            merged["env"] = .object(env)
            run["env"] = nil
        }
        merged.merge(run) { $1 }
        return merged
    }

    /// Renders the job configuration for the given job variables. Prefect variables
    /// (`{{ prefect.variables.x }}`) are left for `Templating.resolveVariables`.
    func render(values: [String: JSON], environment: [String: String]) throws(JobConfigurationError) -> RenderedJob {
        var configuration = jobConfiguration
        try checkPlaceholders()

        // 1. Defaults that are not null.
        var variables: [String: JSON] = [:]
        for (name, schema) in properties {
            if let value = schema["default"], !value.isNull { variables[name] = value }
        }
        // 2. Default env goes into the configuration before job variables replace it.
        if case .object(let defaultEnv)? = variables["env"], !defaultEnv.isEmpty {
            if case .object(let env)? = configuration["env"] {
                configuration["env"] = .object(env.merging(defaultEnv) { $1 })
            } else {
                configuration["env"] = .object(defaultEnv)
            }
        }
        // 3. Job variables, with dotted keys ("env.FOO") expanded; the nested form wins.
        variables.merge(Self.expandDottedKeys(values)) { $1 }
        // 4. A literal env in the configuration is merged with the variables' env.
        if case .object(let env)? = configuration["env"], case .object(let variableEnv)? = variables["env"], !variableEnv.isEmpty {
            configuration["env"] = .object(env.merging(variableEnv) { $1 })
        }
        let applied = Templating.apply(.object(configuration), values: variables, environment: environment)
        return RenderedJob(configuration: applied?.objectValue ?? [:], variables: variables)
    }

    /// Every `{{ name }}` in the configuration must be a declared variable (the server checks this when the
    /// template is saved; a template that slipped through must not launch a half-configured job).
    func checkPlaceholders() throws(JobConfigurationError) {
        for placeholder in Templating.placeholders(in: .object(jobConfiguration)) where placeholder.kind == .standard {
            let root = String(placeholder.name.prefix { $0 != "." && $0 != "[" })
            if properties[root] == nil {
                throw JobConfigurationError("placeholder \(placeholder.fullMatch) in the work pool's job template refers to unknown variable '\(root)'")
            }
        }
    }

    static func expandDottedKeys(_ values: [String: JSON]) -> [String: JSON] {
        var result: [String: JSON] = [:]
        for (key, value) in values where key.contains(".") {
            let path = key.split(separator: ".").map(String.init)
            result = setting(path[...], to: value, in: result)
        }
        for (key, value) in values where !key.contains(".") {
            if case .object(let dotted)? = result[key], case .object(let nested) = value {
                result[key] = .object(deepMerge(dotted, nested))
            } else {
                result[key] = value
            }
        }
        return result
    }

    private static func setting(_ path: ArraySlice<String>, to value: JSON, in object: [String: JSON]) -> [String: JSON] {
        var object = object
        guard let key = path.first else { return object }
        if path.count == 1 {
            object[key] = value
        } else {
            object[key] = .object(setting(path.dropFirst(), to: value, in: object[key]?.objectValue ?? [:]))
        }
        return object
    }

    private static func deepMerge(_ base: [String: JSON], _ top: [String: JSON]) -> [String: JSON] {
        var out = base
        for (key, value) in top {
            if case .object(let a)? = out[key], case .object(let b) = value {
                out[key] = .object(deepMerge(a, b))
            } else {
                out[key] = value
            }
        }
        return out
    }
}

/// The job configuration after placeholders were applied, and the variables used.
struct RenderedJob: Sendable, Equatable {
    var configuration: [String: JSON]
    var variables: [String: JSON]
}

/// A job configuration that cannot be launched; the run is reported CRASHED with this message.
struct JobConfigurationError: Error, Equatable, CustomStringConvertible, Sendable {
    var message: String
    init(_ message: String) { self.message = message }
    var description: String { message }
}
