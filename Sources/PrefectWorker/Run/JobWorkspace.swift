import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The files a job gets: a private directory (mode 0700) holding the parameters file (mode 0600), and a
/// temporary working directory when the job configuration names none. Both are removed after the run.
struct JobWorkspace: Sendable {
    let privateDirectory: String
    let parametersFile: String
    let workingDirectory: String
    let ownsWorkingDirectory: Bool

    static func temporaryRoot(_ environment: [String: String]) -> String {
        let tmp = environment["TMPDIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
        return tmp.hasSuffix("/") ? String(tmp.dropLast()) : tmp
    }

    /// Creates the directories and writes `parameters` (JSON text). Throws a message naming the path.
    static func create(parameters: String, workingDirectory: String?, environment: [String: String]) throws(JobConfigurationError) -> JobWorkspace {
        let root = temporaryRoot(environment)
        if let workingDirectory {
            var info = stat()
            guard stat(workingDirectory, &info) == 0 else {
                throw JobConfigurationError("working_dir '\(workingDirectory)' does not exist")
            }
            guard (info.st_mode & S_IFMT) == S_IFDIR else {
                throw JobConfigurationError("working_dir '\(workingDirectory)' is not a directory")
            }
        }
        let privateDirectory = try makeTemporaryDirectory(root + "/prefect-worker-XXXXXX")
        let parametersFile = privateDirectory + "/parameters.json"
        let fd = open(parametersFile, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else {
            let reason = errnoText()
            rmdir(privateDirectory)
            throw JobConfigurationError("cannot create parameters file \(parametersFile): \(reason)")
        }
        Log.writeAll(fd, parameters)
        close(fd)
        var ownsWorkingDirectory = false
        var directory = workingDirectory ?? ""
        if workingDirectory == nil {
            do {
                directory = try makeTemporaryDirectory(root + "/prefect-run-XXXXXX")
                ownsWorkingDirectory = true
            } catch {
                removeTree(privateDirectory)
                throw error
            }
        }
        return JobWorkspace(privateDirectory: privateDirectory, parametersFile: parametersFile,
                            workingDirectory: directory, ownsWorkingDirectory: ownsWorkingDirectory)
    }

    func remove() {
        Self.removeTree(privateDirectory)
        if ownsWorkingDirectory { Self.removeTree(workingDirectory) }
    }

    private static func makeTemporaryDirectory(_ template: String) throws(JobConfigurationError) -> String {
        var bytes = Array(template.utf8CString)
        guard let result = bytes.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw JobConfigurationError("cannot create a temporary directory from \(template): \(errnoText())")
        }
        return String(cString: result)
    }

    static func removeTree(_ path: String) {
        try? FileManager.default.removeItem(atPath: path)
    }
}
