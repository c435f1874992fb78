import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Finds the program to execute the way `execvp` would, but with the job's own `PATH`, and says clearly
/// why when it cannot.
enum ExecutableLookup {
    static let defaultPath = "/usr/local/bin:/usr/bin:/bin"

    /// `program` with a slash is taken as a path (relative to `workingDirectory`); otherwise it is searched
    /// in `path`.
    static func resolve(_ program: String, path: String?, workingDirectory: String) throws(SpawnError) -> String {
        if program.contains("/") {
            let full = program.hasPrefix("/") ? program : (workingDirectory as NSString).appendingPathComponent(program)
            try check(full, shown: program)
            return full
        }
        let searchPath = (path?.isEmpty == false ? path! : defaultPath)
        var notExecutable: String?
        for directory in searchPath.split(separator: ":", omittingEmptySubsequences: false) {
            let dir = directory.isEmpty ? workingDirectory : String(directory)
            let candidate = (dir as NSString).appendingPathComponent(program)
            var info = stat()
            guard stat(candidate, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { continue }
            if access(candidate, X_OK) == 0 { return candidate }
            notExecutable = notExecutable ?? candidate
        }
        if let notExecutable {
            throw SpawnError(message: "program '\(program)' was found at \(notExecutable) but is not executable")
        }
        throw SpawnError(message: "program '\(program)' was not found in PATH (\(searchPath))")
    }

    private static func check(_ full: String, shown: String) throws(SpawnError) {
        var info = stat()
        guard stat(full, &info) == 0 else {
            throw SpawnError(message: "program '\(shown)' was not found (\(String(cString: strerror(errno))))")
        }
        guard (info.st_mode & S_IFMT) == S_IFREG else {
            throw SpawnError(message: "program '\(shown)' is not a regular file")
        }
        guard access(full, X_OK) == 0 else {
            throw SpawnError(message: "program '\(shown)' is not executable")
        }
    }
}
