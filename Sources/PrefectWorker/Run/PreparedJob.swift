import Foundation

/// A job ready to start, built from its configuration before anything runs: its workspace (working directory
/// and parameters file), its environment, the program resolved on the job's PATH, its own cgroup with its
/// limits, and its attempt control session. `remove()` undoes all of it after the job.
struct PreparedJob: Sendable {
    let workspace: JobWorkspace
    let environment: [String: String]
    let executable: String
    let arguments: [String]
    let cgroup: RunCgroup?
    let control: AttemptControlSession?

    /// Why the job cannot start: the run is CRASHED with `message`; `stage` says what failed for the log line.
    struct Failure: Error {
        var stage: String
        var message: String
    }

    static func prepare(run: FlowRun, job: JobConfiguration, deployment: Deployment?, flowName: String?, settings: Settings,
                        workerID: String?, cgroups: CgroupHost.Detection, log: Logger) throws(Failure) -> PreparedJob {
        let parameters = (run.parameters ?? .object([:])).encoded()
        let workspace: JobWorkspace
        do {
            workspace = try JobWorkspace.create(parameters: parameters, workingDirectory: job.workingDirectory,
                                                environment: settings.environment)
        } catch {
            throw Failure(stage: "prepare", message: error.message)
        }
        var env = JobEnvironment.make(settings: settings, workerID: workerID, run: run, job: job, flowName: flowName,
                                      deployment: deployment, parameters: parameters, parametersFile: workspace.parametersFile, log: log)
        // Every job gets its attempt control session, as under Prefect's worker: an engine anywhere in it (also
        // behind a command we take for a plain one) learns of a cancellation or a hand-back before our SIGTERM.
        var control: AttemptControlSession?
        do {
            control = try AttemptControlSession(log: log)
        } catch {
            log.warning("\(error); the job runs without it: a cancellation then stops it as a crash")
        }
        env.merge(control?.environment ?? [:]) { $1 }
        var arguments = job.arguments
        let executable: String
        let cgroup: RunCgroup?
        do {
            executable = try resolveProgram(&arguments, commandIsDefault: job.command == nil, env: env, directory: workspace.workingDirectory)
            // The job's own cgroup, with its limits, before anything starts (RunCgroup).
            cgroup = try RunCgroup.prepare(host: cgroups.host, whyNoHost: cgroups.reason, runID: run.id, limits: job.limits)
        } catch {
            control?.close()
            workspace.remove()
            throw Failure(stage: "start", message: error.message)
        }
        return PreparedJob(workspace: workspace, environment: env, executable: executable, arguments: arguments,
                           cgroup: cgroup, control: control)
    }

    /// Closes the control session, removes the cgroup and the workspace.
    func remove() {
        control?.close()
        cgroup?.remove()
        workspace.remove()
    }

    /// Resolves the program with the job's PATH. The default engine command falls back from `python` to
    /// `python3`, since many Linux hosts have only the latter.
    static func resolveProgram(_ arguments: inout [String], commandIsDefault: Bool, env: [String: String], directory: String) throws(SpawnError) -> String {
        do {
            return try ExecutableLookup.resolve(arguments[0], path: env["PATH"], workingDirectory: directory)
        } catch {
            guard commandIsDefault, arguments[0] == "python",
                  let python3 = try? ExecutableLookup.resolve("python3", path: env["PATH"], workingDirectory: directory)
            else { throw error }
            arguments[0] = "python3"
            return python3
        }
    }
}
