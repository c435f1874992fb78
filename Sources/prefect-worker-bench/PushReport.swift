import Foundation

/// Turns a `push` measurement into bench/push.json (targets judged) and the table of bench/push.md.
struct PushReport {
    var file: PushFile

    init(push: PushResult, command: String, versions: [String: String]) {
        file = PushFile(date: ISO8601DateFormatter().string(from: Date()), command: command, machine: Proc.machine(),
                        versions: versions, push: push, targets: [])
        file.targets = Self.targets(push)
    }

    func variant(_ name: String) -> PushVariantResult? { file.push.variants.first { $0.name == name } }

    static func targets(_ push: PushResult) -> [Target] {
        func find(_ name: String) -> PushVariantResult? { push.variants.first { $0.name == name } }
        let ours = find("after"), refused = find("after-refused"), before = find("before"), theirs = find("prefect")
        var targets: [Target] = []
        for (label, pick) in [("idle", { (v: PushVariantResult) in v.idle }), ("\(push.settings.busyRuns) runs in flight", { $0.busy })] {
            guard let a = ours.flatMap(pick) else { continue }
            let b = theirs.flatMap(pick)
            targets.append(Target(metric: "API requests per minute, \(label)", target: "≤ Prefect's worker",
                                  value: String(format: "%.2f", a.perMinute) + (b.map { String(format: " vs %.2f", $0.perMinute) } ?? " (Prefect's worker not measured)"),
                                  met: b.map { a.perMinute <= $0.perMinute }))
        }
        if let ours {
            targets.append(Target(metric: "CANCELLING → CANCELLED (median of \(ours.samples.count))", target: "≤ 0.3 s",
                                  value: format(ours.cancelMedianSeconds) + failures(ours),
                                  met: ours.cancelMedianSeconds.map { $0 <= 0.3 && failed(ours) == 0 } ?? false))
            targets.append(Target(metric: "Run created → job started, default 10 s poll (median of \(ours.samples.count))", target: "≤ 0.5 s",
                                  value: format(ours.dispatchMedianSeconds), met: ours.dispatchMedianSeconds.map { $0 <= 0.5 } ?? false))
        }
        if let refused {
            // Before push, cancellations were polled every 0.5 s; a refused socket polls at that cadence again.
            // Five samples at random moments of a 0.5 s poll scatter over 0–0.5 s plus the stop: "no worse" is
            // judged on the bound that poll gives (and on before's median, when it was measured, if higher).
            let bound = max(0.5, before?.cancelMedianSeconds ?? 0)
            targets.append(Target(metric: "Socket refused: CANCELLING → CANCELLED (median)", target: "no worse than before push: within one 0.5 s poll",
                                  value: format(refused.cancelMedianSeconds) + failures(refused)
                                      + (before?.cancelMedianSeconds.map { " (before: " + format($0) + ")" } ?? ""),
                                  met: refused.cancelMedianSeconds.map { $0 <= bound && failed(refused) == 0 } ?? false))
            // Five random moments of a 10 s poll scatter over 0–10 s: "no worse" is judged on the bound a poll
            // gives (every run started within one poll interval and a second), the medians are shown.
            let worst = refused.samples.compactMap(\.dispatchSeconds).max()
            targets.append(Target(metric: "Socket refused: run created → job started (median; max)", target: "no worse than before: within one 10 s poll",
                                  value: format(refused.dispatchMedianSeconds) + "; max " + format(worst)
                                      + (before?.dispatchMedianSeconds.map { " (before: median " + format($0) + ")" } ?? ""),
                                  met: worst.map { $0 <= 11 && refused.samples.allSatisfy { $0.dispatchSeconds != nil } }))
        }
        return targets
    }

    /// "6.07 (18 in 178 s)": the rate with the count it comes from.
    static func rate(_ window: RequestWindow?) -> String {
        window.map { String(format: "%.2f (%d in %.0f s)", $0.perMinute, $0.requests, $0.seconds) } ?? "n/a"
    }

    static func format(_ value: Double?) -> String { value.map { String(format: "%.2f s", $0) } ?? "n/a" }
    static func failed(_ v: PushVariantResult) -> Int { v.samples.filter { $0.finalState != "CANCELLED" || !$0.jobGone }.count }
    static func failures(_ v: PushVariantResult) -> String { failed(v) > 0 ? " (\(failed(v)) of \(v.samples.count) failed)" : "" }

    var allMet: Bool { file.targets.allSatisfy { $0.met != false } }

    func markdown() -> String {
        let push = file.push
        let s = push.settings
        let order = ["after", "after-refused", "before", "prefect"]
        let variants = push.variants.sorted { (order.firstIndex(of: $0.name) ?? 9) < (order.firstIndex(of: $1.name) ?? 9) }
        var md = "# Push versus poll: prefect-worker beside Prefect's worker\n\n"
        md += "Measured \(file.date) with `\(file.command)` on \(file.machine.nproc) CPUs (\(file.machine.cpuModel)), "
        md += "\(file.machine.memoryMib) MiB, Linux \(file.machine.kernel).\n"
        md += "Versions: " + file.versions.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ") + ".\n\n"
        md += """
        Every worker runs at once against one Prefect server (SQLite), with its defaults (10 s poll, 10 s prefetch, \
        30 s heartbeat; Prefect's worker: `prefect worker start --type process`), each through its own counting \
        proxy (the end-to-end tests' fault proxy with no faults: it counts HTTP requests by method and path and \
        carries one request per connection; a WebSocket upgrade counts as one request, its frames as none). \
        "Socket refused": the proxy answers WebSocket upgrades 503 (as a proxy or load balancer that does not pass \
        WebSockets), so the worker falls back to polling: cancellations every 0.5 s once two upgrades in a row were \
        refused, runs every 10 s.
        - **Requests per minute**: the requests counted in a window ÷ its minutes; idle for \(Int(s.idleSeconds)) s \
        (10 s after all were ONLINE); then with \(s.busyRuns) runs of `\(s.busyJob)` in flight, \(Int(s.busySeconds)) s \
        once every job had started. Windows of minutes, since one poll more or less in a 60 s window is 1/min.
        - **Run created → job started**: \(s.samples) runs per worker, created \(String(format: "%g", s.sampleSpreadSeconds / 2)) s \
        apart on average (uniformly random 0–\(String(format: "%g", s.sampleSpreadSeconds)) s, so at random moments \
        of the poll); from the run's `created` (server) to the time its job wrote first thing (`date +%s.%N`).
        - **CANCELLING → CANCELLED**: the same runs, 0.5–1.5 s after the worker had the job's pid (ours: RUNNING); \
        the two states' timestamps as the server stored them; the job's process must be gone too.
        - **run_deployment fan-out**: a parent engine flow calls run_deployment for \(s.fanoutChildren) children of \
        \(String(format: "%g", s.fanoutChildSeconds)) s at once (`scripts/bench-flows/fanout.py`, each child awaited \
        with poll_interval=\(String(format: "%g", s.fanoutPollSeconds)) s); parent created → parent COMPLETED \
        (server timestamps); one worker at a time.


        """
        md += "| | " + variants.map(\.title).joined(separator: " | ") + " |\n"
        md += "|---|" + variants.map { _ in "---|" }.joined() + "\n"
        func row(_ label: String, _ cell: (PushVariantResult) -> String) {
            md += "| \(label) | " + variants.map(cell).joined(separator: " | ") + " |\n"
        }
        row("API requests/min, idle") { Self.rate($0.idle) }
        row("API requests/min, \(s.busyRuns) runs in flight") { Self.rate($0.busy) }
        row("CANCELLING → CANCELLED, median (samples)") { v in
            Self.format(v.cancelMedianSeconds) + " (" + v.samples.map { Self.format($0.cancelSeconds) }.joined(separator: ", ") + ")" + Self.failures(v)
        }
        row("run created → job started, median (samples)") { v in
            Self.format(v.dispatchMedianSeconds) + " (" + v.samples.map { Self.format($0.dispatchSeconds) }.joined(separator: ", ") + ")"
        }
        row("fan-out of \(s.fanoutChildren), parent created → COMPLETED") { v in
            guard !v.fanout.isEmpty else { return "not measured" }
            return v.fanout.map { sample in
                Self.format(sample.seconds) + (sample.finalState == "COMPLETED" ? "" : " \(sample.finalState)")
                    + " (children RUNNING " + sample.childRunningSeconds.map { String(format: "%.1f", $0) }.joined(separator: ", ") + " s after created)"
            }.joined(separator: "; ")
        }
        md += "\n## Targets\n\n| metric | target | value | met |\n|---|---|---|---|\n"
        for target in file.targets {
            md += "| \(target.metric) | \(target.target) | \(target.value) | \(target.met.map { $0 ? "yes" : "**no**" } ?? "n/a") |\n"
        }
        md += "\n## Where the requests go\n\nRequests per endpoint in each window (pool names and ids generalised).\n"
        for v in variants {
            for (label, window) in [("idle", v.idle), ("\(s.busyRuns) runs in flight", v.busy)] {
                guard let window else { continue }
                md += "\n**\(v.title), \(label)** (\(window.requests) in \(Int(window.seconds.rounded())) s):\n"
                md += window.byEndpoint.map { "`\($0.endpoint)` \($0.count)" }.joined(separator: ", ") + "\n"
            }
        }
        let errors = variants.flatMap { v in v.errors.map { "\(v.title): \($0)" } + v.samples.compactMap { $0.error.map { "\(v.title): run \($0)" } } }
        if !errors.isEmpty {
            md += "\n## Errors\n\n" + errors.map { "- \($0)" }.joined(separator: "\n") + "\n"
        }
        var commands: [String] = []
        for command in variants.map(\.command) where !commands.contains(command) { commands.append(command) }
        md += "\nCommands (P: the pool, N: the worker's name): " + commands.map { "`\($0)`" }.joined(separator: "; ") + ".\n"
        return md
    }
}
