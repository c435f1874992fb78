/// Recognises the command of a run submitted with `flow.submit_to_work_pool()` (or an infrastructure-bound
/// flow): it has no deployment, and its `command` job variable is the pool's bundle execution step, built by
/// the submitting client (`prefect.bundles.convert_step_to_command`) as
/// `<launcher, or uv run … --python X.Y> -m <step module> [--<argument> <value>]… --key <bundle key>`.
/// Inside, Prefect's bundle executor reports RUNNING and the final state itself, so such a run is engine-owned.
enum BundleExecution {
    /// Prefect's own executor of a bundle in a local file, and its deprecated alias: recognised even when the
    /// pool names no execution step (its storage configuration changed after the run was submitted).
    static let prefectModules: Set<String> = ["prefect.bundles.execute", "prefect._experimental.bundles.execute"]

    /// The module a `bundle_execution_step` runs: the step's single key (`{"prefect_aws…execute": {…}}`).
    /// nil for anything else, as Prefect refuses such a step ("Expected exactly one function in step").
    static func module(ofStep step: JSON?) -> String? {
        guard let fields = step?.objectValue, fields.count == 1, let module = fields.keys.first,
              !module.isEmpty else { return nil }
        return module
    }

    /// True when the command's words (split as a shell would see them, also inside wrappers) run the pool's
    /// execution step as Prefect builds it, `-m <module>` followed later by `--key`, or run one of
    /// Prefect's own bundle executors.
    static func isExecution(words: [String], step: JSON?) -> Bool {
        if words.contains(where: prefectModules.contains) { return true }
        guard let module = module(ofStep: step) else { return false }
        for i in words.indices.dropLast() where words[i] == "-m" && words[i + 1] == module {
            if words[(i + 2)...].contains("--key") { return true }
        }
        return false
    }
}
