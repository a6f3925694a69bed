"""Turns the JSON records of one benchmark suite run into a report: a
markdown file with every table and two plots (read throughput against
threads, Weir next to JuiceFS; metadata operations per second against
clients), and compares the run with the last recorded one, warning about
every measurement that fell.

    python3 bench/report.py RESULTS.jsonl OUT_DIR [--previous RESULTS.jsonl]
"""

import argparse
import json
import os
import platform
import sys

# A ratio that falls by more than this against the recorded run is
# reported. Best-of-three cells on this shared 2-core machine still move by
# 10-20% from run to run; a warning asks for a second run, not a revert.
REGRESSION = 0.25


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def table(records, title):
    lines = [f"### {title}", "", "| measurement | Weir | baseline | baseline value | ratio |", "|---|---|---|---|---|"]
    for r in records:
        lines.append(
            f"| {r['measurement']} | {r['weir']:.0f} {r['unit']} | {r['baselineName']} "
            f"| {r['baseline']:.0f} {r['unit']} | {r['ratio']:.2f} |"
        )
    return lines + [""]


def decorate(ax, ticks, xlabel, ylabel, title, log_y):
    ax.set_xscale("log", base=2)
    ax.set_xticks(ticks, [str(t) for t in ticks])
    if log_y:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)


def save(fig, path):
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_reads(records, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    reads = [r for r in records if r["bench"] == "juicefs" and r["phase"] in ("seq-read", "rand-read")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, phase, label in ((axes[0], "seq-read", "sequential read"), (axes[1], "rand-read", "random read")):
        for size, style in ((1 << 20, "-"), (4096, "--")):
            cells = sorted((r for r in reads if r["phase"] == phase and r["requestBytes"] == size),
                           key=lambda r: r["threads"])
            if not cells:
                continue
            threads = [r["threads"] for r in cells]
            req = "1 MiB" if size == 1 << 20 else "4 KiB"
            ax.plot(threads, [r["weir"] for r in cells], style, marker="o", color="tab:blue", label=f"Weir, {req}")
            ax.plot(threads, [r["baseline"] for r in cells], style, marker="s", color="tab:orange",
                    label=f"JuiceFS, {req}")
        # 4 KiB random reads are two orders below 1 MiB ones.
        decorate(ax, [1, 4, 16], "threads", "MiB/s", f"cached {label} through FUSE", phase == "rand-read")
    save(fig, path)


def plot_metadata(records, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta = [r for r in records if r["bench"] == "meta"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, masters in zip(axes, (1, 3)):
        for (op, transport), color in zip(
            sorted({(r["op"], r["transport"]) for r in meta}), ("tab:blue", "tab:green", "tab:red", "tab:purple")
        ):
            cells = sorted((r for r in meta if r["masters"] == masters and r["op"] == op
                            and r["transport"] == transport), key=lambda r: r["clients"])
            if cells:
                ax.plot([r["clients"] for r in cells], [r["weir"] for r in cells], marker="o", color=color,
                        label=f"{op} ({transport})")
        base = sorted((r for r in meta if r["masters"] == masters and r["transport"] == "unary"
                       and r["op"] == "getStatus"), key=lambda r: r["clients"])
        if base:
            ax.plot([r["clients"] for r in base], [r["baseline"] for r in base], ":", color="gray",
                    label="no-op RPC (baseline)")
        decorate(ax, [1, 4, 16, 64], "concurrent clients", "ops/s", f"master metadata ops/s, {masters} master(s)",
                 True)
    save(fig, path)


def regressions(records, previous):
    # One measurement can stand next to several baselines.
    def key(r):
        return r["bench"], r["measurement"], r.get("baselineName")

    before = {key(r): r for r in previous}
    fell = []
    for r in records:
        old = before.get(key(r))
        if old and r["ratio"] < old["ratio"] * (1 - REGRESSION):
            fell.append(f"{r['bench']}: {r['measurement']}: ratio {r['ratio']:.2f}, recorded {old['ratio']:.2f}")
    return fell


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("results")
    parser.add_argument("out_dir")
    parser.add_argument("--previous")
    parser.add_argument("--minutes", type=float)
    args = parser.parse_args()
    records = load(args.results)
    os.makedirs(args.out_dir, exist_ok=True)
    plot_reads(records, os.path.join(args.out_dir, "reads.png"))
    plot_metadata(records, os.path.join(args.out_dir, "metadata.png"))

    fell = regressions(records, load(args.previous)) if args.previous and os.path.exists(args.previous) else []
    lines = [
        "# Weir benchmark report",
        "",
        f"Made by `make bench` (`bench/suite.sh`) on {os.cpu_count()} cores, {platform.system()} "
        f"{platform.release()}, {records_date()}"
        + (f", in {args.minutes:.1f} minutes" if args.minutes else "")
        + ". Every ratio is Weir over a baseline measured in the same run; above 1 is Weir faster.",
        "",
        "![cached reads through FUSE, Weir and JuiceFS](reads.png)",
        "",
        "![master metadata operations per second](metadata.png)",
        "",
    ]
    for bench, title in (
        ("data", "Data path"),
        ("nodes", "Across two nodes"),
        ("load", "Load job"),
        ("juicefs", "Weir and JuiceFS through FUSE"),
        ("meta", "Master metadata"),
    ):
        chosen = [r for r in records if r["bench"] == bench]
        if chosen:
            lines += table(chosen, title)
    lines += ["### Against the last recorded run", ""]
    lines += [f"- WARNING {f}" for f in fell] or [f"No ratio fell by more than {REGRESSION:.0%}." if args.previous
                                                  else "No recorded run to compare with."]
    with open(os.path.join(args.out_dir, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    for f in fell:
        print(f"WARNING: regression: {f}", file=sys.stderr)


def records_date():
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")


if __name__ == "__main__":
    main()
