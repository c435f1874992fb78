import Foundation

/// Turns the measurements into bench/results.json (with the targets judged) and the table in bench/results.md.
struct Report {
    var results: Results

    init(compare: CompareResult?, scale: ScaleResult?, mode: String, command: String, versions: [String: String]) {
        let date = ISO8601DateFormatter().string(from: Date())
        results = Results(date: date, mode: mode, command: command, machine: Proc.machine(), versions: versions,
                          compare: compare, scale: scale, targets: [])
        results.targets = Report.targets(compare: compare, scale: scale)
    }

    var swift: WorkerResult? { results.compare?.workers.first { $0.kind == "swift" } }
    var python: WorkerResult? { results.compare?.workers.first { $0.kind == "python" } }
    var swiftStatic: WorkerResult? { results.compare?.workers.first { $0.kind == WorkerKind.swiftStatic.rawValue } }

    // MARK: - Targets

    static func targets(compare: CompareResult?, scale: ScaleResult?) -> [Target] {
        let ours = compare?.workers.first { $0.kind == "swift" }
        let theirs = compare?.workers.first { $0.kind == "python" }
        let release = compare?.workers.first { $0.kind == WorkerKind.swiftStatic.rawValue }
        var targets: [Target] = []
        // The idle targets are judged on the release binary (`--static-swift-stdlib`) when it was measured.
        if let idle = release?.idle {
            targets.append(Target(metric: "Idle RSS after \(Int(idle.idleSeconds.rounded())) s, static build (dynamic build: \(ours?.idle.map { mib($0.rssKb) } ?? "n/a"))",
                                  target: "≤ 30 MB", value: "\(mib(idle.rssKb)) = \(mb(idle.rssKb))", met: idle.rssKb * 1024 <= 30_000_000))
        } else if let idle = ours?.idle {
            targets.append(Target(metric: "Idle RSS after \(Int(idle.idleSeconds.rounded())) s", target: "≤ 30 MiB",
                                  value: mib(idle.rssKb), met: idle.rssKb <= 30 * 1024))
        }
        if let idle = release?.idle ?? ours?.idle {
            let privateKb = max(idle.pssAnonKb, idle.privateDirtyKb)
            targets.append(Target(metric: "Idle private memory (Pss_Anon / Private_Dirty)" + (release?.idle == nil ? "" : ", static build"),
                                  target: "≤ 8 MiB", value: "\(mib(idle.pssAnonKb)) / \(mib(idle.privateDirtyKb))", met: privateKb <= 8 * 1024))
        }
        if let burst = release?.commandBurst {
            let peak = max(burst.peakRssKb, burst.vmHwmKb)
            let dynamic = ours?.commandBurst.map { mib(max($0.peakRssKb, $0.vmHwmKb)) } ?? "n/a"
            targets.append(Target(metric: "Peak RSS in a \(burst.runs)-run burst, static build (max of sampled VmRSS and VmHWM; dynamic build: \(dynamic))",
                                  target: "≤ 40 MB", value: "\(mib(peak)) = \(mb(peak))", met: peak * 1024 <= 40_000_000))
        } else if let burst = ours?.commandBurst {
            let peak = max(burst.peakRssKb, burst.vmHwmKb)
            targets.append(Target(metric: "Peak RSS in a \(burst.runs)-run burst (max of sampled VmRSS and VmHWM)",
                                  target: "≤ 40 MB", value: mib(peak), met: peak * 1024 <= 40_000_000))
        }
        if let a = ours?.startupMedianSeconds {
            if let b = theirs?.startupMedianSeconds {
                targets.append(Target(metric: "Start-up to ONLINE (median)", target: "≥ 10× faster than Python",
                                      value: String(format: "%.3f s vs %.2f s: %.0f× faster", a, b, b / a), met: b / a >= 10))
            } else {
                targets.append(Target(metric: "Start-up to ONLINE (median)", target: "≥ 10× faster than Python",
                                      value: String(format: "%.3f s (Python not measured)", a), met: nil))
            }
        }
        if let burst = ours?.commandBurst, let ceiling = compare?.ceiling {
            let rate = burst.runsPerSecond ?? 0
            let fraction = rate / ceiling.runsPerSecond
            targets.append(Target(metric: "Burst throughput, \(burst.runs) plain commands",
                                  target: "≥ 0.8 × server ceiling, 0 lost or crashed",
                                  value: String(format: "%.1f runs/s = %.2f × ceiling (%.1f runs/s); %d not COMPLETED",
                                                rate, fraction, ceiling.runsPerSecond, burst.notCompleted),
                                  met: fraction >= 0.8 && burst.notCompleted == 0))
        }
        if let cancel = ours?.cancellation {
            targets.append(Target(metric: "CANCELLING → CANCELLED (median of \(cancel.samples.count))", target: "≤ 1.0 s",
                                  value: cancel.medianSeconds.map { String(format: "%.2f s", $0) } ?? "n/a"
                                      + (cancel.failed > 0 ? " (\(cancel.failed) failed)" : ""),
                                  met: cancel.medianSeconds.map { $0 <= 1.0 && cancel.failed == 0 } ?? false))
        }
        if let a = ours?.commandBurst?.cpuMsPerRun {
            if let b = theirs?.commandBurst?.cpuMsPerRun {
                targets.append(Target(metric: "Worker CPU per run (plain-command burst)", target: "≤ 1/10 of Python",
                                      value: String(format: "%.2f ms vs %.2f ms: 1/%.1f", a, b, b / max(a, 0.0001)),
                                      met: a * 10 <= b))
            } else {
                targets.append(Target(metric: "Worker CPU per run (plain-command burst)", target: "≤ 1/10 of Python",
                                      value: String(format: "%.2f ms (Python not measured)", a), met: nil))
            }
        }
        if let scale, !scale.cases.isEmpty {
            let workers = scale.cases.map { String($0.workers) }.joined(separator: ", ")
            let failures = scale.cases.filter { !$0.exactlyOnce || $0.notCompleted > 0 }
            targets.append(Target(metric: "Exactly once with \(workers) workers on one pool (\(scale.database))",
                                  target: "every run executed once, COMPLETED",
                                  value: failures.isEmpty ? "yes" : failures.map { "\($0.workers) workers: missing \($0.missing), duplicated \($0.duplicated), not COMPLETED \($0.notCompleted)" }.joined(separator: "; "),
                                  met: failures.isEmpty))
        }
        return targets
    }

    /// What makes a smoke run fail: our worker did not do its job (not: a target missed).
    func smokeProblems() -> [String] {
        guard let ours = swift else { return ["our worker was not measured"] }
        var problems = ours.errors
        for burst in [ours.commandBurst, ours.engineBurst].compactMap({ $0 }) where burst.notCompleted > 0 {
            problems.append("\(burst.notCompleted) of \(burst.runs) \(burst.job) runs did not complete: " + burst.states.map { "\($0.state) \($0.count)" }.joined(separator: ", "))
        }
        if ours.commandBurst == nil { problems.append("no command burst") }
        if let cancel = ours.cancellation, cancel.failed > 0 { problems.append("\(cancel.failed) cancellation(s) failed") }
        return problems
    }

    // MARK: - Markdown

    func markdown() -> String {
        var out: [String] = []
        let m = results.machine
        let v = results.versions
        out.append("# prefect-worker benchmark\n")
        out.append("- Date: \(results.date) (mode: \(results.mode))")
        out.append("- Machine: \(m.nproc) CPUs (`nproc`), \(m.cpuModel), \(m.memoryMib) MiB memory, Linux \(m.kernel)")
        out.append("- Versions: prefect \(v["prefect"] ?? "?"), fastapi \(v["fastapi"] ?? "?"), \(v["swift"] ?? "swift ?"), prefect-worker \(v["worker"] ?? "?")"
                   + (v["postgresql"].map { ", PostgreSQL \($0)" } ?? ""))
        out.append("- Command: `\(results.command)`\n")

        if let compare = results.compare {
            let s = compare.settings
            out.append("## Side by side (Prefect server on \(compare.database))\n")
            let release = swiftStatic
            out.append("| Metric | \(WorkerKind.swift.title) | \(WorkerKind.python.title) |" + (release == nil ? "" : " \(WorkerKind.swiftStatic.title) |"))
            out.append("|---|---|---|" + (release == nil ? "" : "---|"))
            func row(_ name: String, _ value: (WorkerResult) -> String?) {
                let a = swift.flatMap(value) ?? "—"
                let b = python.flatMap(value) ?? (python == nil ? "not measured" : "—")
                let c = release.map { value($0) ?? "—" }
                out.append("| \(name) | \(a) | \(b) |" + (c.map { " \($0) |" } ?? ""))
            }
            row("Start-up: process start → ONLINE (median of \(s.startupSamples))") { w in
                w.startupMedianSeconds.map { String(format: "%.3f s", $0) + " (" + w.startupSeconds.map { String(format: "%.3f", $0) }.joined(separator: ", ") + ")" }
            }
            row("Idle after \(Int(s.idleSeconds)) s: RSS") { $0.idle.map { mib($0.rssKb) } }
            row("Idle: Pss_Anon / Private_Dirty") { $0.idle.map { "\(mib($0.pssAnonKb)) / \(mib($0.privateDirtyKb))" } }
            row("Idle: child processes of the worker") { w in
                w.idle.map { $0.children == 0 ? "none" : "\($0.children): " + $0.childrenCommands.joined(separator: "; ") }
            }
            burstRows(row, s.runs, "`\(s.commandJob)`", \.commandBurst, ceiling: compare.ceiling)
            if s.engineRuns > 0 {
                burstRows(row, s.engineRuns, "engine flows (flows.py:hello)", \.engineBurst, ceiling: nil)
            }
            if s.cancelSamples > 0 {
                row("Cancellation: CANCELLING set → CANCELLED seen (median of \(s.cancelSamples), `\(s.cancelJob)`)") { w in
                    w.cancellation.map { c in
                        (c.medianSeconds.map { String(format: "%.2f s", $0) } ?? "n/a") + " ("
                            + c.samples.map { $0.seconds.map { String(format: "%.2f", $0) } ?? $0.finalState }.joined(separator: ", ") + ")"
                            + (c.failed > 0 ? " — \(c.failed) failed" : "")
                    }
                }
                row("Cancellation: same, server timestamps (median)") { w in
                    w.cancellation.flatMap { median($0.samples.compactMap(\.serverSeconds)) }.map { String(format: "%.2f s", $0) }
                }
            }
            row("Errors") { $0.errors.isEmpty ? "none" : $0.errors.joined(separator: "; ") }
            if let c = compare.ceiling {
                out.append("")
                out.append(String(format: "Server ceiling on %@ (%d pre-created runs, PENDING → RUNNING → COMPLETED by set_state alone, one task per run on one PrefectClient, 8 connections): **%.1f runs/s** (%.2f s, %d not accepted; the client itself used %.2f s of CPU). Creating runs: %.1f runs/s.",
                                  c.database, c.runs, c.runsPerSecond, c.seconds, c.notAccepted, c.clientCpuSeconds, c.createRunsPerSecond))
            }
            if let p = compare.plainCeiling {
                out.append("")
                out.append(String(format: "The same with the bench's own plain-socket client (8 runs at a time, one connection per request): %.1f runs/s (%.2f s, %d not accepted; client CPU %.2f s).",
                                  p.runsPerSecond, p.seconds, p.notAccepted, p.clientCpuSeconds))
            }
            out.append("")
        }

        if let scale = results.scale {
            out.append("## Scale: our workers on one pool (Prefect server on \(scale.database))\n")
            if let c = scale.ceiling {
                out.append(String(format: "Server ceiling on %@ (PrefectClient, as above): **%.1f runs/s** (%d runs, %d not accepted; client CPU %.2f s).", c.database, c.runsPerSecond, c.runs, c.notAccepted, c.clientCpuSeconds))
            }
            if let p = scale.plainCeiling {
                out.append(String(format: "With the plain-socket client: %.1f runs/s (%d not accepted; client CPU %.2f s).", p.runsPerSecond, p.notAccepted, p.clientCpuSeconds))
            }
            out.append("")
            out.append("| Workers | Runs | First scheduled → all terminal | Throughput | × ceiling | Final states | Executions (file lines) | Exactly once | Peak RSS per worker | CPU per worker |")
            out.append("|---|---|---|---|---|---|---|---|---|---|")
            for c in scale.cases {
                let states = c.states.map { "\($0.state) \($0.count)" }.joined(separator: ", ")
                let once = (c.exactlyOnce ? "yes" : "NO (missing \(c.missing), duplicated \(c.duplicated), unknown \(c.unknown))")
                    + (c.extraRuns > 0 ? "; \(c.extraRuns) extra run(s) created" : "")
                out.append("| \(c.workers) | \(c.runs) | \(c.seconds.map { String(format: "%.2f s", $0) } ?? "not all terminal") | \(c.runsPerSecond.map { String(format: "%.1f runs/s", $0) } ?? "—") | \(c.fractionOfCeiling.map { String(format: "%.2f", $0) } ?? "—") | \(states) | \(c.executions) | \(once) | \(c.workerPeakRssKb.map(mib).joined(separator: ", ")) | \(c.workerCpuSeconds.map { String(format: "%.2f s", $0) }.joined(separator: ", ")) |")
            }
            out.append("")
        }

        out.append("## Targets\n")
        out.append("| Metric | Target | Measured | Met |")
        out.append("|---|---|---|---|")
        for t in results.targets {
            out.append("| \(t.metric) | \(t.target) | \(t.value) | \(t.met.map { $0 ? "yes" : "**no**" } ?? "n/a") |")
        }
        out.append("")
        out.append(Report.method(results.compare?.settings))
        return out.joined(separator: "\n") + "\n"
    }

    func burstRows(_ row: (String, (WorkerResult) -> String?) -> Void, _ runs: Int, _ what: String,
                   _ path: KeyPath<WorkerResult, BurstResult?>, ceiling: CeilingResult?) {
        row("Burst of \(runs) \(what): first scheduled → all terminal") { w in
            w[keyPath: path].map { b in
                guard let rate = b.runsPerSecond, let seconds = b.seconds else {
                    return "\(b.completed) of \(b.runs) COMPLETED within \(Int(b.boundSeconds)) s"
                }
                let fraction = ceiling.map { String(format: " = %.2f × ceiling", rate / $0.runsPerSecond) } ?? ""
                return String(format: "**%.1f runs/s** (%.2f s)%@", rate, seconds, fraction)
            }
        }
        row("  final states") { w in w[keyPath: path].map { $0.states.map { "\($0.state) \($0.count)" }.joined(separator: ", ") } }
        if results.compare?.workers.contains(where: { !($0[keyPath: path]?.otherMessages ?? []).isEmpty }) == true {
            row("  messages of runs not COMPLETED") { w in
                w[keyPath: path].flatMap { $0.otherMessages }.map { messages in
                    messages.isEmpty ? "none" : messages.map { "\($0.count) × \($0.state.replacingOccurrences(of: "|", with: "/"))" }.joined(separator: "; ")
                }
            }
        }
        row("  jobs started: first scheduled → last start") { w in
            w[keyPath: path].map { b in
                b.launchSeconds.map { String(format: "%.2f s (%.1f starts/s)", $0, b.launchesPerSecond ?? 0) } ?? "\(b.launched) of \(b.runs) started"
            }
        }
        row("  peak RSS: sampled every 100 ms / VmHWM") { w in w[keyPath: path].map { "\(mib($0.peakRssKb)) / \(mib($0.vmHwmKb))" } }
        row("  worker CPU (utime+stime) per run") { w in
            w[keyPath: path].map { String(format: "%.2f ms (%.2f s in all)", $0.cpuMsPerRun, $0.cpuSeconds) }
        }
    }

    static func method(_ s: CompareSettings?) -> String {
        var lines = ["## Method and notes\n"]
        if let s {
            lines.append("- Both workers are started by the bench with the same environment: `PREFECT_API_URL`, `PREFECT_WORKER_QUERY_SECONDS=\(fmt(s.querySeconds))`, `PREFECT_WORKER_PREFETCH_SECONDS=\(fmt(s.prefetchSeconds))` (Prefect's also gets its own `PREFECT_HOME`); the same kind of pool (`process`, Prefect's default template, created by the bench), the same deployments and jobs. Ours: `prefect-worker start --pool P --name N --state-dir D --drain-timeout 10 --kill-grace-seconds 2`; Prefect's: `prefect worker start --pool P --type process --name N`. They are measured one after the other (ours first), never at the same time.")
        }
        lines += [
            "- Start-up: from just before the process is spawned until `POST /work_pools/{pool}/workers/filter {}` (polled every 50 ms) lists the worker's name as ONLINE; each sample is a fresh process with a fresh name. The last one stays up for everything after.",
            "- Idle memory: the worker process only, read from `/proc/PID/status` (VmRSS) and `/proc/PID/smaps_rollup` (Pss_Anon, Private_Dirty) that many seconds after it started, on an empty pool. 1 MiB = 1024 kB as /proc reports them.",
            "- Bursts: the runs are created (2 at a time on SQLite, where more concurrent writers only buy 503s; 4 on PostgreSQL) with one scheduled start time T a few seconds ahead (far enough for all of them to exist before T; the creation rate is learnt from the ceiling phase and the previous burst) while the worker is idle and ONLINE; with prefetch 0 no worker claims one before T. Throughput = runs / (last terminal state timestamp − T), server timestamps. The bench counts terminal runs every 250 ms and stops at the bound (60 s + 0.5 s per run for commands, 120 s + 6 s per run for engine flows, counted from T).",
            "- Prefect's worker never proposes RUNNING or COMPLETED for a run with an explicit `command`: it leaves it PENDING/Submitting for ever (protocol reference, section 7). Its command burst therefore completes 0 runs; it is measured honestly as such, and its dispatch rate is shown as \"jobs started\" (the Submitting state, proposed just before the spawn; ours: RUNNING's start_time). Its burst ends when every run is terminal or Submitting (+3 s to confirm nothing else happens).",
            "- Peak RSS: VmRSS of the worker process sampled every 100 ms from before the runs are created until the end; VmHWM is read after the burst (it is the peak since the worker started, so it includes the start-up).",
            "- Static build: our worker built with `swift build -c release --static-swift-stdlib` (the release binary: the Swift runtime and Foundation linked in, libcurl and libc still shared), measured after the dynamic build on the same server with its own pool: start-up once, idle memory and the plain-command burst. The idle and peak memory targets are judged on it; the dynamic build's figures are shown beside them.",
            "- CPU per run: utime+stime of the worker process only (`/proc/PID/stat` fields 14 and 15 ÷ CLK_TCK; jobs are not counted), from the scheduled time T (nothing can be claimed earlier) until the burst is seen to be over, divided by the number of runs.",
            "- Cancellation: one run of the job at a time; once its job runs (ours: RUNNING with an infrastructure pid; Prefect's: an infrastructure pid) and after a random 0.5–1.5 s, `POST /flow_runs/{id}/set_state {\"state\":{\"type\":\"CANCELLING\"}}`, then `GET /flow_runs/{id}` every 50 ms until CANCELLED (at most 60 s). A sample counts only if the run is CANCELLED and the job process is gone. Our worker polls for CANCELLING every 0.5 s (its default), so its latency is that poll interval's phase plus the teardown and report.",
            "- Server ceiling: the server's pace for the state changes alone, without any job: `set_state` PENDING, RUNNING, COMPLETED for each pre-created SCHEDULED run, one task per run on one PrefectClient (libcurl, 8 requests in flight, like the worker's). A worker additionally polls, labels the run, records the pid, ships logs and events and reads the run before its final state. It is measured a second time with the bench's own plain-socket HTTP client (8 runs at a time, one connection per request), which needs more connections (no keep-alive) than the worker's client.",
            "- The bench's own calls (creating runs, counting, reading, polling the workers list) use that plain-socket client, not URLSession, so the measuring tool does not spin on CPU beside the measured worker. Created runs carry an idempotency key, so a retried creation never adds a run.",
            "- The worker's API client is libcurl used directly (one multi handle, one thread sleeping in `curl_multi_poll`). The URLSession client it replaced (swift-corelibs-foundation) kept a socket's write-readiness source registered while it waited for the answer, so it spun: about 1.3 s of CPU for a 2 s wait, which made the worker's CPU per run grow with the server's response time.",
            "- Scale: N of our workers on one pool, the server on PostgreSQL 15 (throwaway cluster on a free local port); each job is `sh -c 'echo \"$PREFECT__FLOW_RUN_ID\" >> FILE'`; exactly once = every run's id is in FILE exactly once and nothing else is.",
            "- Targets: idle RSS ≤ 30 MB (static build) with ≤ 8 MiB private; peak RSS in a 200-run burst ≤ 40 MB (static build); start-up to ONLINE ≥ 10× faster than Python; burst throughput ≥ 0.8× the server's ceiling with 0 lost or wrongly crashed; CANCELLING → CANCELLED ≤ 1.0 s; CPU per run ≤ 1/10 of Python's.",
        ]
        return lines.joined(separator: "\n") + "\n"
    }
}

func mib(_ kb: Int) -> String { String(format: "%.1f MiB", Double(kb) / 1024) }
func mb(_ kb: Int) -> String { String(format: "%.1f MB", Double(kb) * 1024 / 1_000_000) }
func fmt(_ x: Double) -> String { x == x.rounded() ? String(Int(x)) : String(x) }
