import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Copies a job's output pipe to the worker's own stdout or stderr, line by line, each line prefixed with
/// the flow run id, so output of concurrent jobs does not interleave mid-line. Secrets in the output are
/// replaced (see `Redactor`) before a line goes anywhere.
final class OutputPump: Sendable {
    private static let maxLineBytes = 64 * 1024

    private let watch: FDPoller.Watch
    /// Opened once the pipe is closed.
    private let done = Latch()

    /// Starts pumping `fd` (which the pump then owns and closes) to `destination` (or nowhere, if nil), giving
    /// each line also to `onLine`, in order, both with secrets redacted.
    init(fd: Int32, prefix: String, destination: Int32?, redactor: Redactor = Redactor(secrets: [String]()),
         onLine: (@Sendable (String) -> Void)? = nil) {
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        // The buffer is only touched on the poller thread, by the handler below.
        let buffer = Box()
        let done = self.done
        watch = FDPoller.shared.watch(fd) { fd in
            var chunk = [UInt8](repeating: 0, count: 16 * 1024)
            while true {
                let n = read(fd, &chunk, chunk.count)
                if n > 0 {
                    buffer.bytes.append(contentsOf: chunk[0..<n])
                    Self.emitLines(&buffer.bytes, prefix: prefix, destination: destination, redactor: redactor, onLine: onLine, flush: false)
                } else if n < 0, errno == EINTR {
                    continue
                } else if n < 0, errno == EAGAIN {
                    return true
                } else {
                    // End of file (every writer closed it) or an error: flush what is left and stop.
                    Self.emitLines(&buffer.bytes, prefix: prefix, destination: destination, redactor: redactor, onLine: onLine, flush: true)
                    close(fd)
                    done.open()
                    return false
                }
            }
        }
    }

    /// Waits until the pipe is closed by every writer (the job and anything it left running), or at most
    /// `timeout` seconds: a descendant may hold the pipe open forever, and then we stop reading it.
    func finish(timeout: Double) async {
        let watch = self.watch
        let done = self.done
        let timer = Task {
            try? await Task.sleep(seconds: timeout)
            if !Task.isCancelled {
                FDPoller.shared.remove(watch) {
                    close(watch.fd)
                    done.open()
                }
            }
        }
        await done.waitThroughCancellation()
        timer.cancel()
    }

    static func emitLines(_ bytes: inout [UInt8], prefix: String, destination: Int32?, redactor: Redactor,
                          onLine: (@Sendable (String) -> Void)?, flush: Bool) {
        var out = ""
        var start = 0
        func emit(_ line: ArraySlice<UInt8>) {
            let text = redactor.redact(String(decoding: line, as: UTF8.self))
            if destination != nil { out += prefix + text + "\n" }
            onLine?(text)
        }
        for (i, byte) in bytes.enumerated() where byte == UInt8(ascii: "\n") {
            emit(bytes[start..<i])
            start = i + 1
        }
        if flush, start < bytes.count {
            emit(bytes[start...])
            start = bytes.count
        } else if bytes.count - start > maxLineBytes {
            // An over-long line goes out in pieces; never cut through a secret, nor just before one may end.
            let cut = bytes[start...].withUnsafeBufferPointer { redactor.safeCut($0, proposed: maxLineBytes) }
            emit(bytes[start..<(start + cut)])
            start += cut
        }
        bytes.removeFirst(start)
        if let destination, !out.isEmpty { Log.writeAll(destination, out) }
    }

    private final class Box: @unchecked Sendable { // confined to the FDPoller thread
        var bytes: [UInt8] = []
    }
}
