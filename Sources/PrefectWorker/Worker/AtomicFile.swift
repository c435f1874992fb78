import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Replaces a file's content atomically and durably: write a temporary file beside it (every byte, short
/// writes continued), fsync it, rename it over the file, fsync the directory. A reader sees the old content
/// or the new, never part of either; once `write` returns, the new content survives a crash.
enum AtomicFile {
    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    static func write(_ data: Data, to path: String, mode: mode_t = 0o600) throws(Failure) {
        let temporary = path + ".tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
        guard fd >= 0 else { throw Failure(description: "cannot create \(temporary): \(errnoText())") }
        var failure: String?
        data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) in
            var offset = 0
            while offset < raw.count {
                let n = Glibc.write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n < 0, errno == EINTR { continue }
                if n <= 0 {
                    failure = "cannot write \(temporary) (\(offset) of \(raw.count) bytes written): \(n < 0 ? errnoText() : "no progress")"
                    return
                }
                offset += n
            }
        }
        if failure == nil, fsync(fd) != 0 { failure = "cannot fsync \(temporary): \(errnoText())" }
        if close(fd) != 0, failure == nil { failure = "cannot close \(temporary): \(errnoText())" }
        if let failure {
            unlink(temporary)
            throw Failure(description: failure)
        }
        guard rename(temporary, path) == 0 else {
            let why = errnoText()
            unlink(temporary)
            throw Failure(description: "cannot rename \(temporary) to \(path): \(why)")
        }
        syncDirectory(of: path)
    }

    /// Removes the file, durably.
    static func remove(_ path: String) {
        if unlink(path) == 0 { syncDirectory(of: path) }
    }

    /// `write` on `queue`: a slow fsync (tens of ms on a busy disk) then holds a thread of that queue, not one
    /// of the few threads all async code runs on. Writes to one file must not overlap: await each one, or
    /// submit them to one serial queue. Writes to different files may run at once (the file system then
    /// commits their fsyncs together).
    static func write(_ data: Data, to path: String, mode: mode_t = 0o600, on queue: DispatchQueue) async throws(Failure) {
        let result = await withCheckedContinuation { (continuation: CheckedContinuation<Result<Void, Failure>, Never>) in
            queue.async {
                do throws(Failure) {
                    try write(data, to: path, mode: mode)
                    continuation.resume(returning: .success(()))
                } catch {
                    continuation.resume(returning: .failure(error))
                }
            }
        }
        try result.get()
    }

    /// `remove` on `queue` (see `write(_:to:mode:on:)`).
    static func remove(_ path: String, on queue: DispatchQueue) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            queue.async {
                remove(path)
                continuation.resume()
            }
        }
    }

    /// A rename or unlink is durable only once the directory holding it is synced.
    private static func syncDirectory(of path: String) {
        let fd = open((path as NSString).deletingLastPathComponent, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return }
        fsync(fd)
        close(fd)
    }
}
