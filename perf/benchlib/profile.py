"""perf/bench profile: where a switch's core goes while it forwards as fast as it can.

Sets the switch up as for throughput (default ringswitch, 64-byte frames; each switch of
--switches in turn, e.g. ringswitch-busy,ringswitch-sleep to compare poll modes), then, each over
its own generator run of --seconds: `perf stat` on the switch's processes (task clock,
context switches, and cycles/instructions where the machine exposes hardware counters — a
VM often does not, and the report says so), and `perf record -g` whose samples become a
flame graph (inferno, installed with cargo into perf/.tools on first use) and a table of
the hottest symbols, split between the kernel and userspace. Per-frame figures divide by
the frames B's interface counted in the same window."""

import os
import re
import shutil
import subprocess
import time

from . import switches, vde
from .system import ROOT, BenchError, Topology, apt_install, log, rx_packets
from .traffic import FCS, flow_args, gen_cmd, teach

TOOLS = os.path.join(ROOT, "perf", ".tools")
INFERNO = "0.12.8"
EVENTS = ["task-clock", "context-switches", "cpu-migrations", "page-faults", "cycles",
          "instructions"]


def ensure_perf():
    if shutil.which("perf"):
        return None
    return apt_install(["linux-perf"])


def ensure_inferno():
    """Paths of inferno-collapse-perf and inferno-flamegraph, or None."""
    names = ("inferno-collapse-perf", "inferno-flamegraph")
    for d in (os.path.join(TOOLS, "bin"), *os.environ.get("PATH", "").split(":")):
        paths = [os.path.join(d, n) for n in names]
        if all(os.access(p, os.X_OK) for p in paths):
            return paths
    log(f"installing inferno {INFERNO} into {TOOLS} (cargo install, once) ...")
    p = subprocess.run(["cargo", "install", "--quiet", "--locked", "--root", TOOLS,
                        "--version", INFERNO, "inferno"], capture_output=True, text=True,
                       timeout=1800, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        log(f"no flame graph: cargo install inferno failed: {p.stderr.strip()[-300:]}")
        return None
    return [os.path.join(TOOLS, "bin", n) for n in names]


def _loaded(st, seconds, args, tool_cmd):
    """Runs `tool_cmd` (a perf command over `seconds`) while rs-gen loads the switch;
    returns (tool's stderr, frames B counted during it)."""
    gen = subprocess.Popen(gen_cmd(st.ns_a, st.if_a, "--cpu", args.gen_cpu[0], "--size",
                                   64 - FCS, "--duration", seconds + 2, *flow_args(st, 1)),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        rx0 = rx_packets(st.ns_b, st.if_b)
        p = subprocess.run(tool_cmd, capture_output=True, text=True, timeout=seconds + 60)
        rx1 = rx_packets(st.ns_b, st.if_b)
    finally:
        gen.wait(timeout=seconds + 30)
    if p.returncode != 0:
        raise BenchError(f"{tool_cmd[0]} {tool_cmd[1]} failed: {p.stderr.strip()[-300:]}")
    return p.stderr, rx1 - rx0


def _stat_table(text, frames):
    rows, missing = [], []
    for ev in EVENTS:
        m = re.search(rf"^\s*([\d,.]+|<not supported>|<not counted>)\s+(\S+\s+)?{re.escape(ev)}\b",
                      text, re.M)
        if not m or not m.group(1)[0].isdigit():
            missing.append(ev)
            continue
        value = float(m.group(1).replace(",", ""))
        unit = "ms" if ev == "task-clock" else ""
        per = value / frames if frames else None
        if ev == "task-clock":
            per = value * 1e6 / frames if frames else None  # ms -> ns per frame
            rows.append(f"| {ev} | {value:,.0f} {unit} | {per:.0f} ns |" if per else
                        f"| {ev} | {value:,.0f} {unit} | — |")
        else:
            rows.append(f"| {ev} | {value:,.0f} | {per:.3f} |" if per else f"| {ev} | {value:,.0f} | — |")
    table = "| event | total | per frame |\n|---|---|---|\n" + "\n".join(rows)
    if missing:
        table += (f"\n\nNot counted on this machine: {', '.join(missing)} (hardware "
                  "performance counters are not exposed to this VM; CPU time per frame above "
                  "stands in for cycles).")
    return table


def _hot_symbols(data, by_process=False):
    """The hottest symbols of a perf.data file as a Markdown table, and the kernel's and
    userspace's shares of the samples; `by_process` adds the thread's name (comm) as the
    first key, for a switch made of several processes."""
    sort = "comm,dso,sym" if by_process else "dso,sym"
    p = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "--sort",
                        sort, "--percent-limit", "0", "-g", "none"],
                       capture_output=True, text=True, timeout=300)
    rows, kernel, user, procs = [], 0.0, 0.0, {}
    comm = r"(\S+)\s+" if by_process else "()"
    for line in p.stdout.splitlines():
        m = re.match(rf"\s*([\d.]+)%\s+{comm}(\S+)\s+\[([k.])\]\s+(.*)$", line)
        if not m:
            continue
        pct, who, dso, where = float(m.group(1)), m.group(2), m.group(3), m.group(4)
        sym = m.group(5).strip()
        if pct >= 1.5:
            rows.append(f"| {pct:.1f}% | " + (f"{who} | " if by_process else "") +
                        f"{'kernel' if where == 'k' else 'user'} | {dso} | `{sym}` |")
        if where == "k":
            kernel += pct
        else:
            user += pct
        procs[who] = procs.get(who, 0.0) + pct
    head = ("| share | " + ("thread | " if by_process else "") + "where | object | symbol |\n|"
            + "---|" * (5 if by_process else 4) + "\n")
    table = head + "\n".join(rows[:20])
    if by_process:
        table = ("Samples per thread: " + ", ".join(
            f"{k} {v:.0f}%" for k, v in sorted(procs.items(), key=lambda x: -x[1])) +
                 ".\n\n" + table)
    return table, kernel, user


def profile(args, out):
    """Profiles each switch of --switches in turn (default ringswitch): one section of
    profile.md each; with several, their files are named after them (perf-KIND.data,
    flamegraph-KIND.svg)."""
    why = ensure_perf()
    if why:
        raise SystemExit(f"perf/bench profile: no perf tool: {why}")
    kinds = args.switches or ["ringswitch"]
    sections, files = [], []
    for kind in kinds:
        why = vde.availability(kind) if kind in vde.ALL else switches.availability(kind)
        if why:
            log(f"{kind}: skipped: {why}")
            sections.append(f"## perf/bench profile: {_label(kind)}: not measured: "
                            f"{why}\n")
            continue
        suffix = f"-{kind}" if len(kinds) > 1 else ""
        text, written = _profile_one(kind, args, out, suffix)
        sections.append(text)
        files += written
    poll = switches.poll_summary()
    text = "\n".join(sections) + (f"\n{poll}\n" if poll else "")
    with open(os.path.join(out, "profile.md"), "w") as f:
        f.write(text)
    print(text)
    log(f"written under {out}: profile.md, " + ", ".join(files))
    return 0


def _label(kind):
    return vde.label(kind) if kind in vde.ALL else switches.label(kind)


def _profile_one(kind, args, out, suffix):
    """perf stat and perf record of one switch; returns (its Markdown section, the names
    of the files written)."""
    topo = Topology()
    logs = os.path.join(out, "logs")
    try:
        st = (vde.start if kind in vde.ALL else switches.start)(kind, topo, args.switch_cpu,
                                                                logs, kind)
        if not st.pids:
            raise SystemExit(f"perf/bench profile: {kind} runs in the kernel; nothing to attach to")
        teach(st)
        pids = ",".join(map(str, st.pids))
        secs = args.seconds
        log(f"{kind}: perf stat over {secs:g} s under load ...")
        stat_err, stat_frames = _loaded(st, secs, args, ["perf", "stat", "-e", ",".join(EVENTS),
                                                         "-p", pids, "--", "sleep", str(secs)])
        data = os.path.join(out, f"perf{suffix}.data")
        log(f"{kind}: perf record -g over {secs:g} s under load ...")
        _, rec_frames = _loaded(st, secs, args, ["perf", "record", "-q", "-F", "1999", "-g",
                                                 "-o", data, "-p", pids, "--", "sleep", str(secs)])
    finally:
        topo.close()
    hot, kernel, user = _hot_symbols(data, by_process=len(st.pids) > 1)
    flame = None
    inferno = ensure_inferno()
    if inferno:
        script = subprocess.run(["perf", "script", "-i", data], capture_output=True,
                                timeout=600)
        folded = subprocess.run([inferno[0]], input=script.stdout, capture_output=True,
                                timeout=600)
        flame = os.path.join(out, f"flamegraph{suffix}.svg")
        with open(flame, "wb") as f:
            f.write(subprocess.run([inferno[1], "--title",
                                    f"{_label(kind)} forwarding 64-byte frames"],
                                   input=folded.stdout, capture_output=True,
                                   timeout=600).stdout)
    text = "\n".join([
        f"## perf/bench profile: {_label(kind)}, 64-byte frames as fast as the "
        f"generator can, {secs:g} s per tool", "",
        f"perf stat window: {stat_frames:,} frames delivered ({stat_frames / secs / 1e6:.3f} Mpps).",
        "", _stat_table(stat_err, stat_frames), "",
        f"perf record window: {rec_frames:,} frames; samples {kernel:.0f}% kernel, "
        f"{user:.0f}% userspace; the symbols over 1.5%:", "", hot, "",
        f"Flame graph: {flame}" if flame else "Flame graph: not drawn (no inferno)", ""])
    return text, [os.path.basename(data)] + ([os.path.basename(flame)] if flame else [])
