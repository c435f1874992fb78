import Foundation

/// bench/soak.json (the measurement with its goals judged) and bench/soak.md.
struct SoakReport {
    struct File: Codable, Sendable {
        var date: String
        var command: String
        var machine: MachineInfo
        var versions: [String: String]
        var soak: SoakResult
        var goals: [Target]
    }

    var file: File

    init(soak: SoakResult, command: String, versions: [String: String]) {
        file = File(date: ISO8601DateFormatter().string(from: Date()), command: command, machine: Proc.machine(),
                    versions: versions, soak: soak, goals: SoakReport.goals(soak))
    }

    static func goals(_ s: SoakResult) -> [Target] {
        let crashedText = "\(s.wronglyCrashedOrFailed.count) CRASHED/FAILED although executed; \(s.crashed.count) CRASHED in all, \(s.failed.count) FAILED"
            + (s.crashedOnTheWay.isEmpty ? "" : "; \(s.crashedOnTheWay.count) CRASHED on the way and then set otherwise")
        var goals = [
            Target(metric: "Runs COMPLETED", target: "all \(s.created)", value: "\(s.completed)", met: s.completed == s.created && s.extraRuns == 0),
            Target(metric: "Lost (never executed, not COMPLETED)", target: "0", value: "\(s.lost.count)", met: s.lost.isEmpty),
            Target(metric: "Executed twice or more (ledger)", target: "0", value: "\(s.duplicated.count)", met: s.duplicated.isEmpty),
            Target(metric: "Wrongly CRASHED", target: "0", value: crashedText,
                   met: s.wronglyCrashedOrFailed.isEmpty && s.crashed.isEmpty),
        ]
        let wait = s.wait.maxSeconds.map { String(format: "%.1f s", $0) } ?? "n/a"
        goals.append(Target(metric: "Longest wait, scheduled → claimed (first PENDING)", target: String(format: "≤ outage + 30 s = %.0f s", s.wait.goalSeconds),
                            value: wait + (s.wait.unclaimed > 0 ? " (\(s.wait.unclaimed) never claimed)" : ""),
                            met: s.wait.maxSeconds.map { $0 <= s.wait.goalSeconds && s.wait.unclaimed == 0 }))
        return goals
    }

    var allMet: Bool { file.goals.allSatisfy { $0.met == true } }

    func markdown() -> String {
        let s = file.soak
        let c = s.settings
        let m = file.machine
        let v = file.versions
        var out: [String] = []
        out.append("# prefect-worker fault soak\n")
        out.append("- Date: \(file.date)")
        out.append("- Machine: \(m.nproc) CPUs (`nproc`), \(m.cpuModel), \(m.memoryMib) MiB memory, Linux \(m.kernel)")
        out.append("- Versions: prefect \(v["prefect"] ?? "?"), \(v["swift"] ?? "swift ?"), prefect-worker \(v["worker"] ?? "?")"
                   + (v["postgresql"].map { ", PostgreSQL \($0)" } ?? ""))
        out.append("- Command: `\(file.command)`")
        out.append("- Set-up: Prefect server on \(s.database); \(c.workers) prefect-worker processes (release build) on one `process` pool, all "
                   + "talking to the server through a fault proxy: \(pct(c.failRate)) of requests answered 503, \(pct(c.resetRate)) "
                   + "connection resets (half before forwarding, half after: the request took effect, its answer is lost)")
        out.append("- Load: \(c.runs) runs of one deployment whose command is `\(c.job)`, created at \(num(c.rate)) runs/s "
                   + "directly at the server; one total outage of \(num(c.outageSeconds)) s (every connection to the proxy reset on accept) "
                   + "\(num(c.outageAfterSeconds)) s after the first creation\n")

        out.append("## Goals\n")
        out.append("| Measure | Goal | Measured | Met |")
        out.append("|---|---|---|---|")
        for t in file.goals {
            out.append("| \(t.metric) | \(t.target) | \(t.value) | \(t.met.map { $0 ? "yes" : "**no**" } ?? "n/a") |")
        }
        out.append("")

        out.append("## Figures\n")
        out.append("| | |")
        out.append("|---|---|")
        out.append("| Runs created / of the deployment | \(s.created) / \(s.created + s.extraRuns) |")
        out.append("| Final states | \(s.states.map { "\($0.state) \($0.count)" }.joined(separator: ", ")) |")
        out.append("| Executions (ledger lines) / distinct runs | \(s.executions) / \(s.executedRuns)"
                   + (s.unknownLedgerLines > 0 ? "; \(s.unknownLedgerLines) unknown ids" : "") + " |")
        out.append("| COMPLETED without a ledger line | \(s.completedWithoutExecution.count) |")
        out.append("| Not final at the end | \(s.notFinal.count) |")
        out.append(String(format: "| Creation of all runs | %.0f s |", s.creationSeconds))
        out.append("| Wall time, first creation → last final state (server timestamps) | \(s.wallSeconds.map { String(format: "%.0f s", $0) } ?? "n/a") |")
        out.append("| First creation → every run seen final | \(s.settledSeconds.map { String(format: "%.0f s", $0) } ?? "not within the bound (\(num(c.boundSeconds)) s after the last creation)") |")
        out.append(String(format: "| Outage | %.1f s, from %.0f s; %@ runs PENDING or RUNNING when it began; %d connections reset |",
                          s.outage.seconds, s.outage.startOffsetSeconds, s.outage.runsInFlightAtStart < 0 ? "?" : String(s.outage.runsInFlightAtStart),
                          s.outage.refusedConnections))
        let w = s.wait
        out.append("| Wait, scheduled → first PENDING: longest / p95 / median | \(sec(w.maxSeconds)) / \(sec(w.p95Seconds)) / \(sec(w.medianSeconds)); \(w.over) run(s) over \(num(w.goalSeconds)) s |")
        if !w.slowest.isEmpty {
            out.append("| Slowest claims | \(w.slowest.map { "`\($0.id)` \(sec($0.seconds))" }.joined(separator: ", ")) |")
        }
        let p = s.proxy
        out.append("| Fault proxy | \(p.requests) requests, \(p.forwarded) forwarded, \(p.injected503) answered 503, \(p.resetsBeforeForward) reset before and \(p.resetsAfterForward) after forwarding, \(p.refusedWhileDown) connections reset during the outage, \(p.upstreamErrors) upstream errors |")
        out.append("| Worker peak RSS | \(s.workerPeakRssKb.map(mib).joined(separator: ", ")) |")
        out.append("| Worker CPU (utime+stime) | \(s.workerCpuSeconds.map { String(format: "%.1f s", $0) }.joined(separator: ", ")) |")
        if !s.workerExitedEarly.isEmpty {
            out.append("| Workers that exited during the soak | \(s.workerExitedEarly.joined(separator: "; ")) |")
        }
        out.append("")

        if !s.evidence.isEmpty {
            out.append("## Runs that went wrong (at most 20; state history from `/flow_run_states/`, worker log lines naming the run)\n")
            for e in s.evidence {
                out.append("### `\(e.id)`: \(e.problem) (ledger: \(e.executions))\n")
                out.append("```")
                out += e.history
                if !e.workerLogLines.isEmpty {
                    out.append("--- worker logs")
                    out += e.workerLogLines
                }
                out.append("```\n")
            }
        }

        out.append("## Method\n")
        out += [
            "- The bench creates each run with `POST /deployments/{id}/create_flow_run` (an idempotency key each, so a retried creation never adds a run), paced at the rate above, directly at the server: runs keep arriving during the outage. The server's expected start time of a run is its creation time.",
            "- Workers: `prefect-worker start --pool soak --name soak-N --state-dir D --drain-timeout 10 --kill-grace-seconds 2` with `PREFECT_API_URL` = the proxy, `PREFECT_WORKER_QUERY_SECONDS=\(num(c.querySeconds))` and prefetch 0.",
            "- The fault proxy (Sources/FaultProxy, the one the end-to-end tests use) runs inside the bench; each connection carries one request. During the outage it resets every connection as soon as it is accepted.",
            "- After the last creation the bench waits (at most \(num(c.boundSeconds)) s) until every run of the deployment is final, then \(num(c.graceSeconds)) s more with the faults on (a late duplicate or a late wrong report would show), then stops the workers with the faults off and reads the ledger, the runs and every run's state history.",
            "- Lost = never in the ledger and not COMPLETED. Executed twice = in the ledger more than once. Wrongly CRASHED = CRASHED or FAILED although the ledger shows the job ran (the job cannot fail otherwise); CRASHED counts all CRASHED runs too. Wait = the first SCHEDULED state's scheduled time → the first PENDING state's timestamp (server clock).",
        ]
        return out.joined(separator: "\n") + "\n"
    }

    func pct(_ x: Double) -> String { "\(num(x * 100)) %" }
    /// At most one decimal, none when whole.
    func num(_ x: Double) -> String {
        let text = String(format: "%.1f", x)
        return text.hasSuffix(".0") ? String(text.dropLast(2)) : text
    }
    func sec(_ x: Double?) -> String { x.map { String(format: "%.1f s", $0) } ?? "n/a" }
}
