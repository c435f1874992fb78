import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif
import Synchronization

/// Loads a response body, keeping at most `limit` bytes of it: a body announced or found to be larger is
/// abandoned as soon as that is known and reported as an error. (URLSession on Linux may still read and
/// buffer some of the body before the cancel takes effect: the limit bounds what the worker keeps.)
final class ResponseLoader: NSObject, URLSessionDataDelegate, @unchecked Sendable { // state is in `tasks`
    struct TooLarge: Error {
        let bytes: Int64
    }

    private struct Transfer {
        var continuation: CheckedContinuation<(Data, URLResponse), Error>
        var data = Data()
        var response: URLResponse?
        var failure: Error?
    }

    private let limit: Int
    private let tasks = Mutex<[Int: Transfer]>([:])

    init(limit: Int) {
        self.limit = limit
    }

    func load(_ request: URLRequest, in session: URLSession) async throws -> (Data, URLResponse) {
        let task = session.dataTask(with: request)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                tasks.withLock { $0[task.taskIdentifier] = Transfer(continuation: continuation) }
                task.resume()
            }
        } onCancel: {
            task.cancel()
        }
    }

    func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive response: URLResponse,
                    completionHandler: @escaping (URLSession.ResponseDisposition) -> Void) {
        let announced = response.expectedContentLength
        let tooLarge = announced > Int64(limit)
        tasks.withLock { tasks in
            tasks[dataTask.taskIdentifier]?.response = response
            if tooLarge { tasks[dataTask.taskIdentifier]?.failure = TooLarge(bytes: announced) }
        }
        completionHandler(tooLarge ? .cancel : .allow)
        if tooLarge { dataTask.cancel() } // .cancel alone does not stop the transfer on Linux
    }

    func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive data: Data) {
        let overLimit = tasks.withLock { tasks -> Bool in
            guard var transfer = tasks[dataTask.taskIdentifier], transfer.failure == nil else { return false }
            if transfer.data.count + data.count > limit {
                transfer.failure = TooLarge(bytes: Int64(transfer.data.count + data.count))
                transfer.data = Data()
                tasks[dataTask.taskIdentifier] = transfer
                return true
            }
            transfer.data.append(data)
            tasks[dataTask.taskIdentifier] = transfer
            return false
        }
        if overLimit { dataTask.cancel() }
    }

    func urlSession(_ session: URLSession, task: URLSessionTask, didCompleteWithError error: Error?) {
        guard let transfer = tasks.withLock({ $0.removeValue(forKey: task.taskIdentifier) }) else { return }
        if let failure = transfer.failure {
            transfer.continuation.resume(throwing: failure)
        } else if let error {
            transfer.continuation.resume(throwing: error)
        } else if let response = transfer.response ?? task.response {
            transfer.continuation.resume(returning: (transfer.data, response))
        } else {
            transfer.continuation.resume(throwing: URLError(.badServerResponse))
        }
    }
}
