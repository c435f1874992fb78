extension CommandLineParser {
    /// The text of `--help`: a fixed head, then each setting's lines from `SettingTable`, flags first.
    public static let usage = usageText(SettingTable.all)

    static func usageText(_ settings: [Setting]) -> String {
        var options: [String] = []
        var environment: [String] = []
        for setting in settings {
            switch setting.help {
            case .option(let lines): options.append(lines)
            case .environment(let lines): environment.append(lines)
            case .within: break
            }
        }
        return """
        Usage: prefect-worker start --pool NAME [options]
               prefect-worker --help | --version

        Runs Prefect flow runs from a `process` work pool as local subprocesses,
        like `prefect worker start --type process`.

        Options for `start` (a flag beats the environment variable in brackets):

        """ + options.joined(separator: "\n") + "\n\nEnvironment:\n" + environment.joined(separator: "\n")
    }
}
