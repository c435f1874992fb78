/// The worker's version, printed by `--version` and sent in the User-Agent.
public enum WorkerVersion {
    /// This build's version.
    public static let current = "0.1.0"
}
