"""The measurements. Each switch is set up once (`Case`) and every phase of the plan runs on
it before it is torn down:

- throughput: as fast as the generator can, per frame size: offered and delivered frames/s,
  loss, Gbit/s, the switch's CPU time per frame;
- flows: the same at 64 bytes with 1, 1k, 100k source and destination stations (B's
  stations taught first), to load the MAC table;
- rfc2544: the highest offered rate with zero loss (binary search over paced trials);
- latency: paced runs at 10/50/90% of that rate with rs-sink in B: one-way latency
  percentiles from kernel receive stamps, and loss/reordering/duplicates by sequence number.

With --baseline, ringswitch and the baseline build are measured as a pair (`run_pair`): their
throughput runs alternate, each on a freshly started switch, so that drift on the machine
affects both alike.

Rows are plain dicts; `report` turns them into tables, CSV and plots."""

import copy
import os
import time

from . import switches
from .system import DISTURBED, BenchError, Topology, log, wait_quiet
from .traffic import derive, offered, teach, with_sink


class Plan:
    """What to measure on each switch (from the command line)."""

    def __init__(self, **kw):
        self.sizes = kw.get("sizes", [64])
        self.duration = kw.get("duration", 3.0)
        self.repeat = kw.get("repeat", 1)
        self.flows = kw.get("flows", [])
        self.rfc_sizes = kw.get("rfc_sizes", [])
        self.trial = kw.get("trial", 2.0)
        self.steps = kw.get("steps", 7)
        self.loss_tolerance = kw.get("loss_tolerance", 0.0)
        self.loads = kw.get("loads", [])
        self.rates = kw.get("rates", [])  # absolute latency rates (frames/s), besides loads
        self.latency_size = kw.get("latency_size", 64)
        self.latency_duration = kw.get("latency_duration", 3.0)
        self.gen_cpus = kw.get("gen_cpus", [0])
        self.switch_cpu = kw.get("switch_cpu", 1)
        self.sink_cpu = kw.get("sink_cpu")
        self.threads = kw.get("threads", 1)
        self.wait_idle = kw.get("wait_idle", 120.0)
        self.retries = kw.get("retries", 2)


    def tap_phases(self):
        return bool(self.sizes or self.flows or self.rfc_sizes or self.loads or self.rates)


class Results:
    def __init__(self):
        self.throughput, self.flows, self.rfc2544, self.latency, self.udp = [], [], [], [], []
        self.skipped = {}  # switch -> reason


def measure_all(kinds, plan, logs):
    res = Results()
    ready = []
    for kind in kinds:
        why = switches.availability(kind)
        if why:
            log(f"{kind}: skipped: {why}")
            res.skipped[kind] = why
            continue
        ready.append(kind)
    pair = [k for k in switches.RINGSWITCHES if k in ready]
    for kind in ready:
        if len(pair) < 2 or kind not in pair:
            run_case(kind, plan, logs, res)
        elif kind == pair[0]:
            run_pair(pair, plan, logs, res)
    return res


def pair_order(pair, rep):
    """The order of the pair in throughput run `rep`: A B, B A, A B, ... so that a steady
    drift of the machine over the runs favours neither."""
    return list(pair) if rep % 2 else list(reversed(pair))


def run_pair(pair, plan, logs, res):
    """ringswitch and the baseline build. Throughput: run 1 of each, then run 2 of each
    (in turn first), ..., every run on a freshly started switch, so whatever changes on the
    machine over the runs affects both. The other phases then run on each as for any switch."""
    if plan.sizes:
        for rep in range(1, plan.repeat + 1):
            for kind in pair_order(pair, rep):
                only = copy.copy(plan)
                only.flows, only.rfc_sizes, only.loads, only.rates = [], [], [], []
                run_case(kind, only, logs, res, reps=[rep], tag=f"{kind}-run{rep}")
    rest = copy.copy(plan)
    rest.sizes = []
    if rest.tap_phases():
        for kind in pair:
            run_case(kind, rest, logs, res)


def run_case(kind, plan, logs, res, reps=None, tag=None):
    """Starts `kind` and runs every phase of `plan` on it; throughput runs are numbered
    `reps` (default 1..plan.repeat). `tag` names its log files (default: the kind)."""
    topo = Topology()
    try:
        st = switches.start(kind, topo, plan.switch_cpu, logs, tag or kind)
        teach(st)
        _throughput(kind, st, plan, res, reps or range(1, plan.repeat + 1))
        _flows(kind, st, plan, res)
        zero_loss = _rfc2544(kind, st, plan, logs, res)
        _latency(kind, st, plan, logs, res, zero_loss)
        for p in topo.procs:
            if p.poll() is not None and p.returncode not in (0, None):
                log(f"{kind}: a process exited with status {p.returncode} during the runs")
    except BenchError as e:
        log(f"{kind}: {e}")
        res.skipped.setdefault(kind, str(e))
    finally:
        topo.close()


def _note_for(r, duration, extra=""):
    notes = [extra] if extra else []
    if r.get("others_cpu_s", 0) > DISTURBED * duration:
        notes.append(f"other processes used {r['others_cpu_s']:.2f} CPU-s")
    if r.get("errors"):
        d = derive(r, r["size"])
        notes.append(f"{d['refused_pct']:.1f}% refused at port A (queue full)")
    return "; ".join(notes)


def undisturbed(plan, fn, duration):
    """Runs `fn()` again (up to plan.retries times) while other work disturbed it."""
    for attempt in range(plan.retries + 1):
        busy = wait_quiet(plan.wait_idle)
        r = fn()
        r["tries"] = attempt + 1
        if r["others_cpu_s"] <= DISTURBED * duration and not busy:
            return r
        time.sleep(0.5)
    r["busy"] = busy
    return r


def _row(kind, size, r, plan, duration, **extra):
    r.update(switch=kind, size=size, **extra)
    r.update(derive(r, size))
    r["note"] = _note_for(r, duration, r.pop("busy", ""))
    return r


def _throughput(kind, st, plan, res, reps):
    for size in plan.sizes:
        for rep in reps:
            log(f"{kind}: throughput {size} B, {plan.duration:g} s, run {rep}")
            r = undisturbed(plan, lambda: offered(st, size, plan.duration, plan.gen_cpus,
                                                  threads=plan.threads), plan.duration)
            row = _row(kind, size, r, plan, plan.duration, run=rep)
            res.throughput.append(row)
            log(f"  offered {row['offered_mpps']:.3f} Mpps, delivered "
                f"{row['delivered_mpps']:.3f} Mpps")


def _flows(kind, st, plan, res):
    for n in plan.flows:
        log(f"{kind}: {n} flows, 64 B, {plan.duration:g} s")
        teach(st, n)
        r = undisturbed(plan, lambda: offered(st, 64, plan.duration, plan.gen_cpus, flows=n,
                                              threads=plan.threads), plan.duration)
        row = _row(kind, 64, r, plan, plan.duration, flows=n)
        res.flows.append(row)
        log(f"  delivered {row['delivered_mpps']:.3f} Mpps")
    if plan.flows:
        teach(st)


def _zero_loss(r, tolerance):
    tried = r["sent"] + r["errors"]
    return tried > 0 and (tried - r["delivered"]) <= tolerance / 100 * tried


def _rfc2544(kind, st, plan, logs, res):
    """Per size: the highest rate with zero loss. Returns {size: frames/s}."""
    found = {}
    sizes = list(plan.rfc_sizes)
    if plan.loads and plan.latency_size not in sizes:
        sizes.append(plan.latency_size)  # latency needs the zero-loss rate at its size
    for size in sizes:
        log(f"{kind}: RFC 2544 zero-loss search, {size} B, {plan.trial:g} s trials")
        wait_quiet(plan.wait_idle)
        top = offered(st, size, plan.trial, plan.gen_cpus, threads=plan.threads)
        ceiling = (top["sent"] + top["errors"]) / top["seconds"]
        trials = [(ceiling, top)]
        if _zero_loss(top, plan.loss_tolerance):
            best, best_r, limited = ceiling, top, True
        else:
            lo, hi, best, best_r, limited = 0.0, ceiling, 0.0, None, False
            for _ in range(plan.steps):
                mid = (lo + hi) / 2
                r = offered(st, size, plan.trial, plan.gen_cpus, rate=mid, threads=plan.threads)
                trials.append((mid, r))
                if not _zero_loss(r, plan.loss_tolerance):
                    # One retry: on a shared VM a single stall of the switch's core (another
                    # tenant, a host interrupt) overflows a tap queue at any rate.
                    r = offered(st, size, plan.trial, plan.gen_cpus, rate=mid,
                                threads=plan.threads)
                    trials.append((mid, r))
                if _zero_loss(r, plan.loss_tolerance):
                    lo, best, best_r = mid, mid, r
                else:
                    hi = mid
                if hi - lo < 0.02 * ceiling:
                    break
        row = {"switch": kind, "size": size, "zero_loss_pps": best, "ceiling_pps": ceiling,
               "trials": len(trials), "generator_limited": limited,
               "cpu_pct": (best_r["cpu_s"] / best_r["seconds"] * 100
                           if best_r and best_r["cpu_s"] is not None else None),
               "note": "no loss even at the generator's top rate" if limited else ""}
        log(f"  zero loss up to {best / 1e6:.3f} Mpps ({len(trials)} trials)")
        if size in plan.rfc_sizes:
            res.rfc2544.append(row)
        found[size] = best
    return found


def _latency(kind, st, plan, logs, res, zero_loss):
    size = plan.latency_size
    base = zero_loss.get(size, 0)
    points = [(load, base * load / 100) for load in plan.loads]
    points += [(None, float(rate)) for rate in plan.rates]
    for load, rate in points:
        if load is None:
            log(f"{kind}: latency at {rate / 1e6:.3f} Mpps")
        elif rate < 1000:
            log(f"{kind}: no zero-loss rate at {size} B; latency at {load}% skipped")
            continue
        else:
            log(f"{kind}: latency at {load}% of {base / 1e6:.3f} Mpps ({rate / 1e6:.3f} Mpps)")
        point = load if load is not None else f"{int(rate)}pps"
        hist = os.path.join(logs, f"{kind}-latency-{point}.csv")
        sink_cpu = plan.sink_cpu if plan.sink_cpu is not None else plan.gen_cpus[0]
        r = with_sink(st, size, plan.latency_duration, plan.gen_cpus, sink_cpu, rate, hist)
        s = r.pop("sink")
        row = _row(kind, size, r, plan, plan.latency_duration, load_pct=load, rate_pps=rate,
                   hist=hist, received=s["received"], lost=s["lost"],
                   reordered=s["reordered"], duplicates=s["duplicates"],
                   sink_drops=s["kernel_drops"], kernel_stamps=s["kernel_stamps"],
                   **{f"lat_{k}_us": v for k, v in s["latency_us"].items()})
        res.latency.append(row)
        log(f"  p50 {row['lat_p50_us']:.1f} µs, p99 {row['lat_p99_us']:.1f} µs, "
            f"max {row['lat_max_us']:.1f} µs, lost {row['lost']}")
