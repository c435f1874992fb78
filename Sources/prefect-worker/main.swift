import Foundation
import PrefectWorker
#if canImport(Glibc)
import Glibc
#endif

// Block SIGTERM/SIGINT/SIGHUP before any thread exists, so only the listener thread receives them.
SignalListener.blockSignals()

let invocation: Invocation
do {
    invocation = try CommandLineParser.parse(Array(CommandLine.arguments.dropFirst()), environment: ProcessInfo.processInfo.environment)
} catch let error as UsageError {
    FileHandle.standardError.write(Data("prefect-worker: \(error.message)\nTry 'prefect-worker --help' for usage.\n".utf8))
    exit(2)
}

switch invocation {
case .help:
    print(CommandLineParser.usage)
    exit(0)
case .version:
    print("prefect-worker \(WorkerVersion.current)")
    exit(0)
case .start(let settings):
    Log.configure(level: settings.logLevel, format: settings.logFormat)
    let worker = Worker(settings: settings)
    Task.detached {
        let code = await worker.run()
        exit(code)
    }
    // The main thread does nothing but wait for signals.
    SignalListener.run { worker.handleSignal($0) }
}
