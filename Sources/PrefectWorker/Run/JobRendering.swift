import Foundation

/// A run's job configuration: the pool's base job template (Prefect's default when the pool has none) rendered
/// with the deployment's and the run's job variables, then its block references and `{{ prefect.variables.* }}`
/// resolved from the server, read for each run (no cache: an edited block applies to the next run).
enum JobRendering {
    static func configuration(for run: FlowRun, deployment: Deployment?, pool: WorkPool, environment: [String: String],
                              client: PrefectClient) async throws -> JobConfiguration {
        let template = try JobTemplate(pool.hasEmptyTemplate ? JobTemplate.defaultProcessTemplate : pool.baseJobTemplate!)
        let values = JobTemplate.mergeJobVariables(deployment: deployment?.jobVariables, flowRun: run.jobVariables)
        var rendered = try template.render(values: values, environment: environment)
        let blocks = try await BlockReferences.resolve(.object(rendered.configuration), from: client)
        rendered.configuration = blocks.configuration.objectValue ?? [:]
        let names = Templating.variableNames(in: .object(rendered.configuration))
        if !names.isEmpty {
            var variables: [String: JSON?] = [:]
            for name in names { variables[name] = try await client.readVariable(name)?.value }
            rendered.configuration = Templating.resolveVariables(.object(rendered.configuration), variables).objectValue ?? [:]
        }
        return try JobConfiguration(rendered, secrets: blocks.secrets, bundleExecutionStep: pool.bundleExecutionStep)
    }
}

extension FlowRunSupervisor {
    func configuration(for run: FlowRun, deployment: Deployment?, pool: WorkPool) async throws -> JobConfiguration {
        try await JobRendering.configuration(for: run, deployment: deployment, pool: pool, environment: settings.environment, client: client)
    }

    /// The job's environment (`JobEnvironment`).
    nonisolated func environment(for run: FlowRun, job: JobConfiguration, flowName: String?, deployment: Deployment?,
                                 parameters: String, parametersFile: String) -> [String: String] {
        JobEnvironment.make(settings: settings, workerID: dependencies.lookups.workerID, run: run, job: job, flowName: flowName,
                            deployment: deployment, parameters: parameters, parametersFile: parametersFile, log: log)
    }
}
