import Foundation
import PrefectWorker
#if canImport(Glibc)
import Glibc
#endif

// Block SIGTERM/SIGINT/SIGHUP before any thread exists, so only the listener thread receives them.
SignalListener.blockSignals()

func usageFailure(_ error: UsageError) -> Never {
    FileHandle.standardError.write(Data("prefect-worker: \(error.message)\nTry 'prefect-worker --help' for usage.\n".utf8))
    exit(2)
}

// Flags beat the environment, which beats ./prefect.toml, which beats the active Prefect profile.
let arguments = Array(CommandLine.arguments.dropFirst())
let sources: SettingSources
let invocation: Invocation
do {
    sources = try SettingSources.load(environment: ProcessInfo.processInfo.environment,
                                      workingDirectory: FileManager.default.currentDirectoryPath)
} catch let error as UsageError {
    // --help and --version work whatever the files hold.
    switch try? CommandLineParser.parse(arguments, environment: [:]) {
    case .help?: print(CommandLineParser.usage); exit(0)
    case .version?: print("prefect-worker \(WorkerVersion.current)"); exit(0)
    default: usageFailure(error)
    }
}
do {
    invocation = try CommandLineParser.parse(arguments, environment: sources.environment)
} catch let error as UsageError {
    usageFailure(sources.explain(error))
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
    for line in sources.summary { Log.info("settings: \(line)") }
    let worker = Worker(settings: settings)
    Task.detached {
        let code = await worker.run()
        exit(code)
    }
    // The main thread does nothing but wait for signals.
    SignalListener.run { worker.handleSignal($0) }
}
