// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "prefect-worker",
    products: [
        .executable(name: "prefect-worker", targets: ["prefect-worker"]),
        .executable(name: "prefect-worker-bench", targets: ["prefect-worker-bench"]),
    ],
    targets: [
        // All logic lives in the library so it can be tested without a server.
        .target(name: "PrefectWorker", dependencies: ["CLinux", "CCurl"]),
        // libcurl, which the API client drives directly (one multi handle, one thread; see CurlTransport).
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl", providers: [.apt(["libcurl4-openssl-dev"])]),
        // A few Linux/GNU calls the Glibc module does not import (pipe2, posix_spawn *_np, prctl, pidfd_open).
        .target(name: "CLinux"),
        // Thin entry point: parse arguments, run the worker, map errors to exit codes.
        .executableTarget(name: "prefect-worker", dependencies: ["PrefectWorker"]),
        // Measures this worker beside Prefect's Python worker and the server's own ceiling (scripts/bench).
        .executableTarget(name: "prefect-worker-bench", dependencies: ["PrefectWorker", "FaultProxy"]),
        // A fault-injecting HTTP proxy (503s, resets, lost answers, outages) for the end-to-end tests and the soak.
        .target(name: "FaultProxy"),
        .testTarget(name: "PrefectWorkerTests", dependencies: ["PrefectWorker"]),
        // Runs the built binary against a real Prefect server started by scripts/test.
        .testTarget(name: "EndToEndTests", dependencies: ["PrefectWorker", "FaultProxy"]),
    ]
)
