import Foundation
#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import XCTest

/// The two images the container tests run, built from the repository's Containerfile as its header
/// describes for builds without a registry: RUNTIME_IMAGE is the locally made Debian base, and
/// `--build-context build=DIR` puts the static release binary where the build stage would have put it, so
/// that stage (and its swift image) is skipped; both come from scripts/container-prepare. `plain` is the
/// image without Python; `python` has PIP_REQUIREMENTS with prefect pinned like the test server.
///
/// Built once per test process, removed by `removeAll()`. Kept on purpose across runs: the base image
/// (scripts/container-prepare) and `cacheImage`, the Python image's `runtime` stage (apt packages, Python,
/// prefect from PyPI), whose layers the next build reuses, so a test run does not download prefect again.
struct ContainerImages: Sendable {
    let plain: String
    let python: String
    /// Where the Containerfile and config/ (config/container/: the image's own scripts) are.
    let repository: String

    static let cacheImage = "localhost/prefect-worker-test-cache:runtime-python"
    /// Pinned like scripts/setup pins the server (fastapi: Prefect 3.8.8 does not work with later ones).
    static let pipRequirements = "prefect==3.8.8 fastapi==0.141.1"

    private static let built = Mutex<Result<ContainerImages, Error>?>(nil)

    /// The images, built on first use; a failed build fails every test that asks again, without rebuilding.
    /// Throws XCTSkip when scripts/container-prepare did not run (no OCI engine here).
    static func shared(repository: String) throws -> ContainerImages {
        let environment = ProcessInfo.processInfo.environment
        guard let base = environment["PREFECT_E2E_CONTAINER_BASE"], !base.isEmpty,
              let binary = environment["PREFECT_E2E_STATIC_WORKER"], !binary.isEmpty else {
            throw XCTSkip("PREFECT_E2E_CONTAINER_BASE and PREFECT_E2E_STATIC_WORKER are not set: scripts/test sets them when an OCI engine can run here (scripts/container-prepare exits 3 when none can)")
        }
        return try built.withLock { cached in
            if let cached { return try cached.get() }
            let result = Result { try build(base: base, binary: binary, repository: repository) }
            cached = result
            return try result.get()
        }
    }

    /// Removes the images built by `shared` (never the base or the cache image).
    static func removeAll() {
        built.withLock { cached in
            guard case .success(let images)? = cached else { return }
            for image in [images.plain, images.python] {
                if let result = try? Podman.run(["rmi", "--force", image]), result.code != 0 {
                    print("ContainerImages: could not remove \(image): \(result.error)")
                }
            }
            cached = nil
        }
    }

    private static func build(base: String, binary: String, repository: String) throws -> ContainerImages {
        if let reason = Podman.unavailableReason() {
            throw Podman.Failed(description: "scripts/container-prepare found an OCI engine, but now: \(reason)")
        }
        // The build context: what the run stage copies (config/container/); the repository's .dockerignore would
        // leave the rest out anyway. The binary goes where the build stage puts it: out/prefect-worker.
        let context = try E2E.makeTemporaryDirectory("container-context")
        defer { try? FileManager.default.removeItem(atPath: context) }
        let fm = FileManager.default
        try fm.copyItem(atPath: repository + "/Containerfile", toPath: context + "/Containerfile")
        try fm.createDirectory(atPath: context + "/config", withIntermediateDirectories: true)
        try fm.copyItem(atPath: repository + "/config/container", toPath: context + "/config/container")
        let stage = context + "/build-stage"
        try fm.createDirectory(atPath: stage + "/out", withIntermediateDirectories: true)
        try fm.copyItem(atPath: binary, toPath: stage + "/out/prefect-worker")
        // Stripped, as the build stage strips it.
        let strip = Process()
        strip.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        strip.arguments = ["strip", stage + "/out/prefect-worker"]
        try strip.run()
        strip.waitUntilExit()

        // pip in the build trusts what this host trusts (a TLS-inspecting proxy's CA, as on CI machines):
        // a pip.conf naming the host's CA bundle, mounted only while the build runs (it leaves an empty
        // /etc/xdg/pip directory in the image).
        var buildMounts: [String] = []
        let environment = ProcessInfo.processInfo.environment
        if let bundle = [environment["PIP_CERT"], environment["SSL_CERT_FILE"], "/etc/ssl/certs/ca-certificates.crt"]
            .compactMap({ $0 }).first(where: { fm.isReadableFile(atPath: $0) }) {
            let pip = context + "/pip"
            try fm.createDirectory(atPath: pip, withIntermediateDirectories: true)
            try fm.copyItem(atPath: bundle, toPath: pip + "/ca.crt")
            try Data("[global]\ncert = /etc/xdg/pip/ca.crt\n".utf8).write(to: URL(fileURLWithPath: pip + "/pip.conf"))
            buildMounts = ["--volume", pip + ":/etc/xdg/pip:ro"]
        }

        let tag = "localhost/prefect-worker-test:\(getpid())-\(UUID().uuidString.prefix(8).lowercased())"
        // Docker's image format: OCI's has no HEALTHCHECK, and users' images are mostly built by docker.
        let common = ["build", "--format", "docker", "--layers", "--network", "host", "-f", context + "/Containerfile",
                      "--build-arg", "RUNTIME_IMAGE=" + base, "--build-context", "build=" + stage] + buildMounts
        let python = ["--build-arg", "PIP_REQUIREMENTS=" + pipRequirements]
        func timed(_ what: String, _ body: () throws -> Void) rethrows {
            let start = Date()
            try body()
            print("ContainerImages: \(what) in \(String(format: "%.1f", Date().timeIntervalSince(start))) s")
        }
        // The Python image's runtime stage first, under a fixed name, so its layers stay for the next run;
        // the image it replaces (when the Containerfile or the base changed) is removed.
        let previous = try? Podman.check(["image", "inspect", "--format", "{{.Id}}", cacheImage])
        try timed("built the runtime stage with Python (\(cacheImage))") {
            try Podman.check(common + python + ["--target", "runtime", "-t", cacheImage, context], timeout: 900)
        }
        let current = try? Podman.check(["image", "inspect", "--format", "{{.Id}}", cacheImage])
        if let previous, previous != current { _ = try? Podman.run(["rmi", previous]) }

        let images = ContainerImages(plain: tag, python: tag + "-python", repository: repository)
        try timed("built \(images.plain)") {
            try Podman.check(common + ["-t", images.plain, context], timeout: 600)
        }
        do {
            try timed("built \(images.python)") {
                try Podman.check(common + python + ["-t", images.python, context], timeout: 600)
            }
        } catch {
            _ = try? Podman.run(["rmi", "--force", images.plain])
            throw error
        }
        for image in [images.plain, images.python] {
            let size = (try? Podman.imageSize(image)).flatMap { $0 }.map { String(format: "%.1f MB", Double($0) / 1e6) } ?? "?"
            print("ContainerImages: \(image) is \(size)")
        }
        return images
    }
}
