#!/usr/bin/env python3
"""perf/plot.py RESULTS_DIR: draws the PNG plots of a perf/bench run from its CSV files
(needs matplotlib; perf/bench runs it with the venv's python):

- throughput.png: delivered Mpps and Gbit/s against frame size, one line per switch;
- cpu-per-frame.png: frames forwarded per CPU-second of the switch, per frame size;
- latency-cdf.png: one-way latency distribution (CDF, log scale) per switch, one panel per
  load level, from rs-sink's HDR histograms;
- ping-cdf.png: idle round-trip distribution (CDF, log scale) per switch, from each ping
  reply's time;
- tcp.png: TCP throughput (iperf3) per switch, a bar per stream count (median, with the
  min–max of the runs), and the switch's CPU seconds per GB received.

Prints the path of every file written."""

import csv
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def by_switch(rows):
    out = {}
    for r in rows:
        out.setdefault(r["label"], []).append(r)
    return out


def best_per_size(rows, key):
    """{size: best value of key over the repeats}."""
    out = {}
    for r in rows:
        v = num(r.get(key))
        if v is None:
            continue
        size = int(r["size"])
        out[size] = max(out.get(size, v), v)
    return dict(sorted(out.items()))


# Line styles of ringswitch's poll modes (perf/bench --switches ringswitch-busy,...).
POLL_STYLES = {"busy": "-.", "sleep": ":", "adaptive": (0, (5, 1))}


def style(label):
    if label.startswith("ringswitch baseline"):  # perf/bench --baseline: the build compared
        return {"linewidth": 2.0, "linestyle": "--", "zorder": 3}
    if label.startswith("ringswitch --poll "):  # a variant: same binary, another poll mode
        mode = label.split()[2]
        return {"linewidth": 2.2, "linestyle": POLL_STYLES.get(mode, "--"), "zorder": 3}
    if label.startswith("ringswitch vnet_hdr="):  # a variant: its taps with vnet_hdr=on
        return {"linewidth": 2.2, "linestyle": (0, (3, 1, 1, 1)), "zorder": 3}
    return {"linewidth": 2.6, "zorder": 3} if label.startswith("ringswitch") else {"linewidth": 1.4}


def lines(ax, rows, key):
    """One line per switch: the best `key` over the repeats against frame size."""
    for label, rs in by_switch(rows).items():
        pts = best_per_size(rs, key)
        ax.plot(list(pts), list(pts.values()), marker="o", label=label, **style(label))


def throughput(out, rows):
    if not rows:
        return None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    lines(ax1, rows, "delivered_mpps")
    lines(ax2, rows, "gbit_s")
    ax1.set(xlabel="frame size (bytes, with FCS)", ylabel="delivered Mpps",
            title="Frames per second")
    ax2.set(xlabel="frame size (bytes, with FCS)", ylabel="Gbit/s (without FCS)",
            title="Bit rate")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
    ax1.legend(fontsize=8)
    fig.suptitle("Port A -> switch -> port B, as fast as the generator can")
    fig.tight_layout()
    path = os.path.join(out, "throughput.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cpu_per_frame(out, rows):
    rows = [r for r in rows if num(r.get("mframes_per_cpu_s"))]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    lines(ax, rows, "mframes_per_cpu_s")
    ax.set(xlabel="frame size (bytes, with FCS)", ylabel="M frames per CPU-second",
           title="Forwarding work per frame (switch core)")
    ax.grid(True, alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out, "cpu-per-frame.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latency_cdf(out, rows):
    rows = [r for r in rows if r.get("hist") and os.path.exists(r["hist"])]
    if not rows:
        return None
    rows = [r for r in rows if r.get("load_pct")]  # % loads; fixed rates are in the table
    if not rows:
        return None
    loads = sorted({int(float(r["load_pct"])) for r in rows})
    fig, axes = plt.subplots(1, len(loads), figsize=(6 * len(loads), 5), squeeze=False)
    for ax, load in zip(axes[0], loads):
        for r in rows:
            if int(float(r["load_pct"])) != load:
                continue
            pts = [(num(p["latency_us"]), num(p["percentile"])) for p in read(r["hist"])]
            pts = [(x, y) for x, y in pts if x and y is not None]
            if pts:
                label = r["label"]
                ax.plot([x for x, _ in pts], [y for _, y in pts], label=label, **style(label))
        ax.set_xscale("log")
        ax.set(xlabel="one-way latency (µs, log)", ylabel="percentile",
               title=f"{load}% of each switch's zero-loss rate")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Latency CDF (kernel receive stamp minus send stamp)")
    fig.tight_layout()
    path = os.path.join(out, "latency-cdf.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ping_cdf(out, rows):
    rows = [r for r in rows if r.get("rtts") and os.path.exists(r["rtts"])]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in rows:
        v = sorted(x for x in (num(p["rtt_us"]) for p in read(r["rtts"])) if x)
        if v:
            label = r["label"]
            ax.plot(v, [100 * (i + 1) / len(v) for i in range(len(v))], label=label,
                    **style(label))
    ax.set_xscale("log")
    ax.set(xlabel="round trip (µs, log)", ylabel="percentile",
           title="Idle round trip: ping A -> B -> A through the switch")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out, "ping-cdf.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def tcp(out, rows):
    """Grouped bars: one group per switch, one bar per stream count."""
    rows = [r for r in rows if num(r.get("gbit_s")) is not None]
    if not rows:
        return None
    labels = list(dict.fromkeys(r["label"] for r in rows))
    streams = sorted({int(r["streams"]) for r in rows})
    width = 0.8 / len(streams)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.5))
    for i, n in enumerate(streams):
        xs, gbit, lo, hi, cx, cpu = [], [], [], [], [], []
        for j, label in enumerate(labels):
            r = next((r for r in rows if r["label"] == label and int(r["streams"]) == n),
                     None)
            if r is None:
                continue
            x = j - 0.4 + width * (i + 0.5)
            g = num(r["gbit_s"])
            xs.append(x)
            gbit.append(g)
            lo.append(g - (num(r.get("min_gbit_s")) or g))
            hi.append((num(r.get("max_gbit_s")) or g) - g)
            if num(r.get("cpu_s_per_gb")) is not None:
                cx.append(x)
                cpu.append(num(r["cpu_s_per_gb"]))
        name = f"{n} stream{'s' if n > 1 else ''}"
        ax1.bar(xs, gbit, width, yerr=[lo, hi], capsize=3, label=name)
        ax2.bar(cx, cpu, width, label=name)
    for j, label in enumerate(labels):
        if not any(r["label"] == label and num(r.get("cpu_s_per_gb")) is not None
                   for r in rows):
            ax2.text(j, 0, "forwards in the\nsender's kernel:\nno CPU of its own",
                     ha="center", va="bottom", fontsize=7, color="0.4")
    for ax in (ax1, ax2):
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=25, ha="right", fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    ax1.set(ylabel="Gbit/s received (median; bars: min–max of the runs)",
            title="TCP throughput, iperf3 A -> B")
    ax2.set(ylabel="switch CPU seconds per GB received (median)",
            title="Switch CPU per GB (none for in-kernel switches)")
    fig.tight_layout()
    path = os.path.join(out, "tcp.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: perf/plot.py RESULTS_DIR")
    out = sys.argv[1]
    tput = read(os.path.join(out, "throughput.csv"))
    lat = read(os.path.join(out, "latency.csv"))
    pings = read(os.path.join(out, "ping.csv"))
    tcps = read(os.path.join(out, "tcp.csv"))
    for path in (throughput(out, tput), cpu_per_frame(out, tput), latency_cdf(out, lat),
                 ping_cdf(out, pings), tcp(out, tcps)):
        if path:
            print(path)


if __name__ == "__main__":
    main()
