import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Runs `body` with this process's stderr (where `Log` writes) going to a file; returns what was written.
/// The file is removed afterwards.
func capturingStderr(_ body: () async throws -> Void) async rethrows -> String {
    let path = NSTemporaryDirectory() + "stderr-\(UUID().uuidString)"
    let file = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    let saved = dup(STDERR_FILENO)
    dup2(file, STDERR_FILENO)
    defer {
        dup2(saved, STDERR_FILENO)
        close(saved)
        close(file)
        unlink(path)
    }
    try await body()
    return (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
}
