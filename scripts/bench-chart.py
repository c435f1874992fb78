#!/usr/bin/env python3
"""Draws the benchmark chart: scripts/bench-chart.py bench/results.json bench/chart.png (run by scripts/bench
with the matplotlib of .venv-bench)."""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

results = json.load(open(sys.argv[1]))
compare = results.get("compare") or {}
workers = {w["kind"]: w for w in compare.get("workers", [])}
label = {"swift": "prefect-worker\n(Swift)", "python": "prefect worker\n(Python)"}
color = {"swift": "#f05138", "python": "#3776ab"}


def get(d, *path):
    for key in path:
        d = d.get(key) if isinstance(d, dict) else None
    return d


def peak(w):
    b = w.get("command_burst") or {}
    return max(b.get("peak_rss_kb", 0), b.get("vm_hwm_kb", 0)) / 1024 or None


def rate(w, burst):
    b = w.get(burst)
    return None if b is None else (b.get("runs_per_second") or 0.0)


panels = [  # title, value of a worker, target line, log scale
    ("Idle RSS after %ds (MiB)" % compare.get("settings", {}).get("idle_seconds", 30),
     lambda w: (get(w, "idle", "rss_kb") or 0) / 1024 or None, 30, False),
    ("Idle private memory, Pss_Anon (MiB)", lambda w: (get(w, "idle", "pss_anon_kb") or 0) / 1024 or None, 8, False),
    ("Peak RSS in the %d-run burst (MiB)" % compare.get("settings", {}).get("runs", 0), peak, 45, False),
    ("Start-up to ONLINE, median (s)", lambda w: w.get("startup_median_seconds"), None, True),
    ("Plain commands: runs/s to terminal", lambda w: rate(w, "command_burst"), None, False),
    ("Engine flows: runs/s to terminal", lambda w: rate(w, "engine_burst"), None, False),
    ("CANCELLING → CANCELLED, median (s)", lambda w: get(w, "cancellation", "median_seconds"), 1.5, False),
    ("Worker CPU per plain-command run (ms)", lambda w: get(w, "command_burst", "cpu_ms_per_run"), None, True),
]
scale = results.get("scale")
fig, axes = plt.subplots(3, 3, figsize=(15, 12))
axes = axes.flatten()
for ax, (title, value, target, log) in zip(axes, panels):
    kinds = [k for k in ("swift", "python") if k in workers]
    values = [value(workers[k]) for k in kinds]
    bars = ax.bar([label[k] for k in kinds], [v or 0 for v in values], color=[color[k] for k in kinds])
    for bar, v in zip(bars, values):
        text = "n/a" if v is None else ("%.0f" % v if v >= 100 else "%.3g" % v)
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    if target is not None:
        ax.axhline(target, color="gray", linestyle="--", linewidth=1, label="target %g" % target)
        ax.legend(loc="upper left", fontsize=8)
    if title.startswith("Plain") and compare.get("ceiling"):
        c = compare["ceiling"]["runs_per_second"]
        ax.axhline(c, color="black", linestyle=":", label="server ceiling, PrefectClient %.1f" % c)
        ax.axhline(0.8 * c, color="gray", linestyle="--", linewidth=1, label="target 0.8 × that ceiling")
        if compare.get("plain_ceiling"):
            p = compare["plain_ceiling"]["runs_per_second"]
            ax.axhline(p, color="green", linestyle=":", label="server ceiling, plain client %.1f" % p)
        ax.legend(loc="upper right", fontsize=8)
        if "python" in workers and not (rate(workers["python"], "command_burst") or 0):
            starts = get(workers["python"], "command_burst", "launches_per_second")
            ax.annotate("0 COMPLETED (left PENDING)\n%s job starts/s" % ("%.3g" % starts if starts else "n/a"),
                        (kinds.index("python"), ax.get_ylim()[1] * 0.3), ha="center", va="bottom", fontsize=8)
    present = [v for v in values if v]
    if log and present and max(present) / min(present) > 20:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
ax = axes[8]
if scale and scale.get("cases"):
    cases = scale["cases"]
    bars = ax.bar([str(c["workers"]) for c in cases], [c.get("runs_per_second") or 0 for c in cases], color=color["swift"])
    for bar, c in zip(bars, cases):
        ax.annotate("%.1f%s" % (c.get("runs_per_second") or 0, "" if c["exactly_once"] else "\nNOT once"),
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom")
    for key, style, name in (("ceiling", "black", "PrefectClient"), ("plain_ceiling", "green", "plain client")):
        if scale.get(key):
            ax.axhline(scale[key]["runs_per_second"], color=style, linestyle=":",
                       label="server ceiling, %s %.1f" % (name, scale[key]["runs_per_second"]))
    ax.legend(loc="upper right", fontsize=8)
    ax.set_xlabel("our workers on one pool")
    ax.set_title("Scale on %s: %d runs, runs/s" % (scale.get("database", "?"), cases[0]["runs"]), fontsize=10)
else:
    ax.axis("off")
    ax.text(0.5, 0.5, "scale mode not run\n(scripts/bench --scale)", ha="center", va="center")
m = results["machine"]
fig.suptitle("prefect-worker vs Prefect's process worker — %s, %d CPUs (%s), prefect %s"
             % (results["date"][:10], m["nproc"], m["cpu_model"], results["versions"].get("prefect", "?")), fontsize=12)
fig.tight_layout(rect=(0, 0, 1, 0.97))
fig.savefig(sys.argv[2], dpi=90)
