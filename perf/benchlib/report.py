"""Results as Markdown tables (one per phase, plus the headline ratios ringswitch/peer), CSV
files with every number, and PNG plots drawn by perf/plot.py in a venv with matplotlib
(installed on first use; a missing plotting stack is reported, never fatal)."""

import csv
import os
import statistics
import subprocess

from . import switches
from .system import ROOT, log

VENV = os.path.join(ROOT, ".venv")
VENV_PY = os.path.join(VENV, "bin", "python")
MATPLOTLIB = "matplotlib==3.10.8"


def _f(v, fmt="{:.3f}"):
    return "—" if v is None else fmt.format(v)


def _table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cells in rows:
        out.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(out)


def _cpu_cells(r):
    if r["switch"] in switches.KERNEL:
        return "kernel", "—", "—"
    if r.get("cpu_s") is None:
        return "—", "—", "—"
    return (f"{r['cpu_s']:.2f} ({r['cpu_pct']:.0f}%)", _f(r.get("mframes_per_cpu_s")),
            _f(r.get("ns_per_frame"), "{:.0f}"))


def throughput_table(rows):
    header = ["switch", "frame (B)", "run", "offered Mpps", "delivered Mpps", "loss %",
              "Gbit/s", "switch CPU s (% core)", "M frames / CPU-s", "CPU ns / frame", "note"]
    cells = []
    for r in rows:
        cpu, per, ns = _cpu_cells(r)
        cells.append([switches.label(r["switch"]), r["size"], r.get("run", 1),
                      _f(r.get("offered_mpps")), _f(r.get("delivered_mpps")),
                      _f(r.get("loss_pct"), "{:.1f}"), _f(r.get("gbit_s"), "{:.2f}"), cpu, per,
                      ns, r.get("note", "")])
    return _table(header, cells)


def flows_table(rows):
    header = ["switch", "flows", "offered Mpps", "delivered Mpps", "loss %", "switch CPU %",
              "M frames / CPU-s", "note"]
    cells = []
    for r in rows:
        cpu, per, _ = _cpu_cells(r)
        cells.append([switches.label(r["switch"]), r["flows"], _f(r.get("offered_mpps")),
                      _f(r.get("delivered_mpps")), _f(r.get("loss_pct"), "{:.1f}"),
                      _f(r.get("cpu_pct"), "{:.0f}") if r.get("cpu_s") is not None else cpu,
                      per, r.get("note", "")])
    return _table(header, cells)


def rfc2544_table(rows):
    """One row per switch and size: the median of the searches and their spread."""
    header = ["switch", "frame (B)", "zero-loss Mpps (median)", "spread Mpps (min–max)",
              "spread %", "each search Mpps", "Gbit/s", "generator top Mpps", "trials",
              "switch CPU % at that rate", "note"]
    cells = [[switches.label(r["switch"]), r["size"], _f(r["zero_loss_pps"] / 1e6),
              f"{r['min_pps'] / 1e6:.3f}–{r['max_pps'] / 1e6:.3f}",
              _f(r.get("spread_pct"), "{:.1f}"),
              ", ".join(f"{v / 1e6:.3f}" for v in r["search_pps"]),
              _f(r["zero_loss_pps"] * (r["size"] - 4) * 8 / 1e9, "{:.2f}"),
              _f(r["ceiling_pps"] / 1e6), r["trials"], _f(r.get("cpu_pct"), "{:.0f}"),
              r.get("note", "")] for r in rows]
    return _table(header, cells)


def latency_table(rows):
    header = ["switch", "load", "of zero-loss Mpps", "rate Mpps", "p50 µs", "p90 µs",
              "p99 µs", "p99.9 µs", "max µs", "lost", "reordered", "duplicates",
              "switch CPU %", "note"]
    cells = []
    for r in rows:
        note = r.get("note", "")
        if not r.get("kernel_stamps", True):
            note = "; ".join(n for n in (note, "receive-call times") if n)
        if r.get("sink_drops"):
            note = "; ".join(n for n in (note, f"sink socket dropped {r['sink_drops']}") if n)
        load = f"{r['load_pct']}%" if r["load_pct"] is not None else "fixed rate"
        base = r.get("zero_loss_pps")
        cells.append([switches.label(r["switch"]), load,
                      "—" if base is None else
                      f"{base / 1e6:.3f} (median of {len(r['zero_loss_searches'])})",
                      _f(r["rate_pps"] / 1e6), _f(r["lat_p50_us"], "{:.1f}"),
                      _f(r["lat_p90_us"], "{:.1f}"), _f(r["lat_p99_us"], "{:.1f}"),
                      _f(r["lat_p99_9_us"], "{:.1f}"), _f(r["lat_max_us"], "{:.0f}"),
                      r["lost"], r["reordered"], r["duplicates"],
                      _f(r.get("cpu_pct"), "{:.0f}") if r.get("cpu_s") is not None else "—",
                      note])
    return _table(header, cells)


def ping_table(rows):
    header = ["switch", "requests", "replies", "lost", "p50 µs", "p90 µs", "p99 µs",
              "max µs", "switch CPU %", "note"]
    cells = [[switches.label(r["switch"]), r["sent"], r["received"], r["lost"],
              *(_f(r.get(f"rtt_{k}_us"), "{:.0f}") for k in ("p50", "p90", "p99", "max")),
              _f(r.get("cpu_pct"), "{:.0f}"), r.get("note", "")] for r in rows]
    return _table(header, cells)


def tcp_table(rows):
    """One row per switch and stream count: medians over the runs."""
    header = ["switch", "streams", "runs", "Gbit/s (median)", "Gbit/s (min–max)",
              "retransmits", "switch CPU s (% core)", "switch CPU s / GB", "note"]
    cells = []
    for r in rows:
        if r["switch"] in switches.KERNEL:
            cpu, per_gb = "kernel", "—"
        elif r.get("cpu_s") is None:
            cpu, per_gb = "—", "—"
        else:
            cpu = f"{r['cpu_s']:.2f} ({r['cpu_pct']:.0f}%)"
            per_gb = _f(r.get("cpu_s_per_gb"))
        spread = (f"{r['min_gbit_s']:.2f}–{r['max_gbit_s']:.2f}"
                  if r.get("min_gbit_s") is not None else "—")
        cells.append([switches.label(r["switch"]), r["streams"], r["runs"],
                      _f(r.get("gbit_s"), "{:.2f}"), spread,
                      _f(r.get("retransmits"), "{:.0f}"), cpu, per_gb, r.get("note", "")])
    return _table(header, cells)


def tcp_ratios(rows):
    """Sentences: ringswitch against each other switch, per stream count (medians)."""
    ref = next((k for k in ["ringswitch", *(r["switch"] for r in rows)]
                if k in switches.RINGSWITCHES and any(r["switch"] == k for r in rows)), None)
    if not ref:
        return ""
    lines = []
    for n in sorted({r["streams"] for r in rows}):
        mine = next((r for r in rows if r["switch"] == ref and r["streams"] == n), None)
        if not mine or not mine.get("gbit_s"):
            continue
        parts = []
        for r in rows:
            if r["streams"] != n or r["switch"] == ref or not r.get("gbit_s"):
                continue
            text = f"{switches.label(r['switch'])} {mine['gbit_s'] / r['gbit_s']:.2f}×"
            if mine.get("cpu_s_per_gb") and r.get("cpu_s_per_gb"):
                text += f" (CPU s per GB {r['cpu_s_per_gb'] / mine['cpu_s_per_gb']:.2f}×)"
            parts.append(text)
        if parts:
            lines.append(f"- {n} stream{'s' if n > 1 else ''}, {switches.label(ref)} over: "
                         + ", ".join(parts))
    if not lines:
        return ""
    return ("Median Gbit/s of ringswitch over each other switch (above 1× ringswitch moves "
            "more), and in brackets the other switch's CPU seconds per GB over ringswitch's "
            "(above 1× ringswitch spends less per GB):\n\n" + "\n".join(lines))


TCP_LEGEND = (
    "iperf3 client in A (pinned to the generator CPU) → switch (the switch CPU) → iperf3 "
    "server in B (the sink CPU; by default the generator's), IPv4 between 192.0.2.1 and "
    "192.0.2.2, `iperf3 -J -t SECONDS -P STREAMS`. Gbit/s: received by the server "
    "(`end.sum_received`), median of the runs; min–max over the runs. Retransmits: the "
    "sender's (`end.sum_sent.retransmits`), median. Switch CPU s: utime+stime of the "
    "switch's processes over the client's run (% of that wall time). Switch CPU s / GB: "
    "that CPU time over the GB (10⁹ bytes) received. The Linux bridge (and the direct veth "
    "pair) have no CPU column (—): they forward in softirq in the kernel of the sender, on "
    "the client's core, where their cost is part of the sender's CPU time, not a process "
    "of their own. With vnet_hdr=on the taps carry a virtio-net header and take TSO and "
    "checksum offloads, so segments of up to 64 KiB cross the switch whole; without it the "
    "kernel cuts them into MTU-sized frames before the tap.")


def udp_label(kind):
    if kind == "baseline":
        return switches.label(kind, "UDP socket ports")
    name = "ringswitch" if kind == "ringswitch" else switches.label(kind).replace(" (tap)", "")
    return f"{name} (UDP socket ports)"


def udp_table(rows):
    header = ["switch", "frame (B)", "run", "offered Mpps", "delivered Mpps",
              "switch CPU %", "M frames / CPU-s", "note"]
    cells = [[udp_label(r["switch"]), r["size"], r.get("run", 1),
              _f(r.get("offered_mpps")), _f(r.get("delivered_mpps")),
              _f(r.get("cpu_pct"), "{:.0f}"), _f(r.get("mframes_per_cpu_s")), r.get("note", "")]
             for r in rows]
    text = _table(header, cells)
    for size in sorted({r["size"] for r in rows}):
        mine = [r["delivered_mpps"] for r in rows
                if r["switch"] == "ringswitch" and r["size"] == size and "delivered_mpps" in r]
        for kind, name in (("qemu-hub", "QEMU's hub"), ("baseline", "the baseline build")):
            theirs = [r["delivered_mpps"] for r in rows
                      if r["switch"] == kind and r["size"] == size and "delivered_mpps" in r]
            if mine and theirs and min(theirs) > 0:
                text += (f"\n\n{size} B: ringswitch delivers {min(mine) / max(theirs):.2f}–"
                         f"{max(mine) / min(theirs):.2f}× {name} (worst and best pairing of "
                         f"{len(mine)} and {len(theirs)} runs).")
    return text


def _median(rows, kind, size, key):
    vals = [r[key] for r in rows if r["switch"] == kind and r["size"] == size
            and r.get(key) is not None]
    return (statistics.median(vals), len(vals)) if vals else (None, 0)


def baseline_table(res):
    """ringswitch against the baseline build, medians over the runs: delivered frames/s
    and frames per switch CPU-second, per frame size (throughput) and on UDP socket ports."""
    cells = []
    for phase, rows in (("throughput (tap)", res.throughput), ("UDP socket ports", res.udp)):
        for size in sorted({r["size"] for r in rows if r["switch"] == "baseline"}):
            cell = [phase, size]
            for key in ("delivered_mpps", "mframes_per_cpu_s"):
                mine, n = _median(rows, "ringswitch", size, key)
                theirs, m = _median(rows, "baseline", size, key)
                ratio = f"{mine / theirs:.3f}×" if mine and theirs else "—"
                cell += [_f(mine), _f(theirs), ratio]
            cells.append([*cell[:2], f"{n} / {m}", *cell[2:]])
    return _table(["phase", "frame (B)", "runs", "delivered Mpps: ringswitch", "baseline",
                   "ringswitch / baseline", "M frames / CPU-s: ringswitch", "baseline",
                   "ringswitch / baseline"], cells)


def _best(rows, kind, size, key):
    vals = [r[key] for r in rows if r["switch"] == kind and r["size"] == size
            and r.get(key) is not None]
    return max(vals) if vals else None


def reference(res):
    """The switch the headline divides by: ringswitch, or else the first build or variant
    of it measured."""
    kinds = list(dict.fromkeys(r["switch"] for r in res.throughput))
    return next((k for k in ["ringswitch", *kinds] if k in kinds and
                 k in switches.RINGSWITCHES), "ringswitch")


def headline(res):
    """ringswitch / peer for each size measured: delivered frames/s, frames per CPU-s, and
    the (median) zero-loss rate where it was searched."""
    rows = res.throughput
    ref = reference(res)
    peers = [k for k in dict.fromkeys(r["switch"] for r in rows) if k != ref]
    sizes = sorted({r["size"] for r in rows})
    cells = []
    for size in sizes:
        mine = _best(rows, ref, size, "delivered_mpps")
        mine_cpu = _best(rows, ref, size, "mframes_per_cpu_s")
        mine_zl = next((r["zero_loss_pps"] for r in res.rfc2544
                        if r["switch"] == ref and r["size"] == size), None)
        for p in peers:
            theirs = _best(rows, p, size, "delivered_mpps")
            theirs_cpu = _best(rows, p, size, "mframes_per_cpu_s")
            theirs_zl = next((r["zero_loss_pps"] for r in res.rfc2544
                              if r["switch"] == p and r["size"] == size), None)
            ratio = lambda a, b: f"{a / b:.2f}×" if a and b else "—"  # noqa: E731
            cells.append([size, switches.label(p), ratio(mine, theirs),
                          ratio(mine_cpu, theirs_cpu), ratio(mine_zl, theirs_zl)])
    return _table(["frame (B)", "peer", "delivered frames/s", "frames per CPU-s",
                   "zero-loss rate"], cells)


CSV_KEYS = {
    "throughput": ["switch", "size", "run", "seconds", "sent", "errors", "delivered", "cpu_s",
                   "cpu_window_s", "others_cpu_s", "tries", "offered_mpps", "delivered_mpps", "loss_pct",
                   "refused_pct", "cpu_pct", "mframes_per_cpu_s", "ns_per_frame", "gbit_s",
                   "note"],
    "flows": ["switch", "size", "flows", "seconds", "sent", "errors", "delivered", "cpu_s",
              "cpu_window_s", "others_cpu_s", "offered_mpps", "delivered_mpps", "loss_pct", "cpu_pct",
              "mframes_per_cpu_s", "note"],
    "rfc2544": ["switch", "size", "searches", "zero_loss_pps", "min_pps", "max_pps",
                "spread_pct", "search_pps", "ceiling_pps", "trials", "generator_limited",
                "cpu_pct", "note"],
    "rfc2544-searches": ["switch", "size", "search", "zero_loss_pps", "ceiling_pps", "trials",
                         "generator_limited", "cpu_pct"],
    "latency": ["switch", "size", "load_pct", "zero_loss_pps", "rate_pps", "seconds", "sent",
                "delivered",
                "received", "lost", "reordered", "duplicates", "sink_drops", "kernel_stamps",
                "lat_min_us", "lat_mean_us", "lat_p50_us", "lat_p90_us", "lat_p99_us",
                "lat_p99_9_us", "lat_max_us", "cpu_s", "hist", "note"],
    "ping": ["switch", "pings", "interval_ms", "sent", "received", "lost", "duplicates",
             "rtt_min_us", "rtt_mean_us", "rtt_p50_us", "rtt_p90_us", "rtt_p99_us",
             "rtt_max_us", "seconds", "cpu_s", "cpu_pct", "others_cpu_s", "tries", "rtts",
             "note"],
    "tcp": ["switch", "streams", "runs", "gbit_s", "min_gbit_s", "max_gbit_s", "run_gbit_s",
            "retransmits", "cpu_s", "cpu_pct", "cpu_s_per_gb", "bytes_received", "note"],
    "tcp-runs": ["switch", "streams", "run", "seconds", "bytes_sent", "bytes_received",
                 "gbit_s", "sent_gbit_s", "retransmits", "cpu_s", "cpu_window_s", "cpu_pct",
                 "cpu_s_per_gb", "others_cpu_s", "disturbed", "busy", "tries", "json", "note"],
    "udp": ["switch", "size", "run", "seconds", "sent", "delivered", "cpu_s", "offered_mpps",
            "delivered_mpps", "cpu_pct", "mframes_per_cpu_s", "note"],
}
# Which Results attribute each CSV file holds (default: the file's name).
CSV_ROWS = {"rfc2544-searches": "searches", "tcp-runs": "tcp_runs"}


def _list_cell(key, x):
    """One value of a list cell: Gbit/s with 3 decimals, rates (frames/s) whole."""
    return f"{x:.3f}" if key.endswith("gbit_s") else f"{x:.0f}"


def write_csvs(out, res):
    written = []
    for name, keys in CSV_KEYS.items():
        rows = getattr(res, CSV_ROWS.get(name, name))
        if not rows:
            continue
        path = os.path.join(out, f"{name}.csv")
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["label", *keys], extrasaction="ignore")
            w.writeheader()
            for r in rows:
                label = udp_label(r["switch"]) if name == "udp" else switches.label(r["switch"])
                # Lists (each search's rate) as one cell, values joined with ';'.
                w.writerow({"label": label, **{k: ";".join(_list_cell(k, x) for x in r[k])
                                                if isinstance(r[k], list) else r[k]
                                                for k in keys if k in r}})
        written.append(path)
    return written


def markdown(res, title, summary, legend):
    parts = [f"## {title}", "", summary, ""]
    if res.throughput:
        ref = reference(res)
        parts += [f"### Headline: {'ringswitch' if ref == 'ringswitch' else ref} / peer", "",
                  headline(res), "",
                  "### Throughput per frame size", "", throughput_table(res.throughput), ""]
    if res.flows:
        parts += ["### Many flows (64 B; source and destination stations)", "",
                  flows_table(res.flows), ""]
    if res.rfc2544:
        n = sorted({r["searches"] for r in res.rfc2544})
        parts += ["### RFC 2544 zero-loss rate", "",
                  f"The median of {'/'.join(map(str, n))} whole searches per switch and size, "
                  "each on a freshly started switch, the switches taking turns between "
                  "searches; spread = the lowest and highest search.", "",
                  rfc2544_table(res.rfc2544), ""]
    if res.latency:
        parts += ["### Latency (one-way, kernel receive stamps) at a share of the zero-loss "
                  "rate", "", latency_table(res.latency), ""]
    if res.ping:
        r0 = res.ping[0]
        parts += ["### Idle round trip (ping A → switch → B → switch → A)", "",
                  f"{r0['pings']} ICMP echo requests per switch, one every "
                  f"{r0['interval_ms']:g} ms; round trips from each reply's `time=`.", "",
                  ping_table(res.ping), ""]
    if res.tcp:
        r0 = res.tcp_runs[0] if res.tcp_runs else {}
        secs = f", {r0['seconds']:.0f} s per run" if r0.get("seconds") else ""
        parts += [f"### TCP throughput (iperf3, A → switch → B{secs})", "",
                  "Each repeat runs every switch in turn on a freshly started switch (in "
                  "reverse order every other repeat); medians over the repeats.", "",
                  tcp_table(res.tcp), ""]
        ratios = tcp_ratios(res.tcp)
        if ratios:
            parts += [ratios, ""]
        parts += [TCP_LEGEND, ""]
    if res.udp:
        parts += ["### UDP socket ports (one frame per datagram, loopback)", "",
                  udp_table(res.udp), ""]
    if any(r["switch"] == "baseline" for r in res.throughput + res.udp):
        parts += [f"### ringswitch against the baseline build ({switches.baseline_name()})",
                  "", "Medians over the runs (the two builds took turns, run by run).", "",
                  baseline_table(res), ""]
    if res.skipped:
        parts += ["### Not measured", ""]
        parts += [f"- {_skipped_name(k)}: {why}" for k, why in res.skipped.items()]
        parts.append("")
    if legend:
        parts += [legend, ""]
    return "\n".join(parts)


def _skipped_name(key):
    """A "Not measured" key: a switch ("vde"), or a switch in one method ("vde (tcp)")."""
    kind, _, method = key.partition(" (")
    if kind not in switches.SELECTABLE:
        return key
    return switches.label(kind) + (f", in {method.rstrip(')')}" if method else "")


def ensure_matplotlib():
    """The venv's python with matplotlib, installing it on first use; None if impossible."""
    def ok():
        return os.path.exists(VENV_PY) and subprocess.run(
            [VENV_PY, "-c", "import matplotlib"], capture_output=True, timeout=60).returncode == 0
    if ok():
        return VENV_PY
    log(f"installing {MATPLOTLIB} into {VENV} for the plots ...")
    try:
        if not os.path.exists(VENV_PY):
            subprocess.run(["python3", "-m", "venv", VENV], check=True, capture_output=True,
                           timeout=300)
        subprocess.run([os.path.join(VENV, "bin", "pip"), "install", "-q", MATPLOTLIB],
                       check=True, capture_output=True, timeout=600, stdin=subprocess.DEVNULL)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        log(f"plots skipped: could not install matplotlib ({e})")
        return None
    return VENV_PY if ok() else None


def plots(out):
    py = ensure_matplotlib()
    if not py:
        return []
    script = os.path.join(ROOT, "perf", "plot.py")
    p = subprocess.run([py, script, out], capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        log(f"plots failed: {p.stderr.strip()[-500:]}")
        return []
    return [line for line in p.stdout.splitlines() if line.endswith(".png")]
