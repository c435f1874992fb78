import Foundation

/// What a job's environment is made of, in order (later wins): the worker's environment (less the variables
/// of a systemd service), the job's `env`, then what identifies the run, the API to report to, and the run's
/// parameters. The flow's and the deployment's names are set when they are known and not empty, as Prefect's
/// `_base_attribution_environment` sets them.
enum JobEnvironment {
    /// Environment variables a job must not inherit from a systemd-managed worker.
    static let serviceVariables: Set<String> = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"]

    static func make(settings: Settings, workerID: String?, run: FlowRun, job: JobConfiguration, flowName: String?,
                     deployment: Deployment?, parameters: String, parametersFile: String, log: Logger) -> [String: String] {
        var env = settings.environment.filter { !serviceVariables.contains($0.key) }
        env.merge(job.environment) { $1 }
        env["PREFECT__FLOW_RUN_ID"] = run.id
        env["PREFECT_API_URL"] = settings.apiURL.absoluteString
        if let key = settings.apiKey { env["PREFECT_API_KEY"] = key }
        if let auth = settings.authString { env["PREFECT_API_AUTH_STRING"] = auth }
        env["PREFECT__WORKER_NAME"] = settings.workerName
        if let workerID { env["PREFECT__WORKER_ID"] = workerID }
        if let flowID = run.flowID { env["PREFECT__FLOW_ID"] = flowID }
        if let flowName, !flowName.isEmpty { env["PREFECT__FLOW_NAME"] = flowName }
        if let deploymentID = run.deploymentID { env["PREFECT__DEPLOYMENT_ID"] = deploymentID }
        if let name = deployment?.name, !name.isEmpty { env["PREFECT__DEPLOYMENT_NAME"] = name }
        env["PREFECT_FLOW_RUN_PARAMETERS_FILE"] = parametersFile
        // Linux refuses a single environment string over 128 KiB (MAX_ARG_STRLEN); the file always has them.
        let entryBytes = "PREFECT_FLOW_RUN_PARAMETERS=".utf8.count + parameters.utf8.count + 1
        if entryBytes <= 128 * 1024 {
            env["PREFECT_FLOW_RUN_PARAMETERS"] = parameters
        } else {
            env["PREFECT_FLOW_RUN_PARAMETERS"] = nil
            log.warning("parameters are \(parameters.utf8.count) bytes, too large for one environment variable; the job gets them only through PREFECT_FLOW_RUN_PARAMETERS_FILE")
        }
        return env
    }
}
