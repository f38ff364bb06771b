"""The measurements. Each switch is set up between namespaces A and B (`run_case`) and the
phases of the plan run on it before it is torn down:

- throughput: as fast as the generator can, per frame size: offered and delivered frames/s,
  loss, Gbit/s, the switch's CPU time per frame;
- flows: the same at 64 bytes with 1, 1k, 100k source and destination stations (B's
  stations taught first), to load the MAC table;
- rfc2544: the highest offered rate with zero loss (binary search over paced trials), the
  whole search run `plan.searches` times, each time on a freshly started switch;
- latency: paced runs at 10/50/90% of the median of those searches with rs-sink in B:
  one-way latency percentiles from kernel receive stamps, and loss/reordering/duplicates
  by sequence number;
- ping: idle round trips, ICMP echo from A to B through the switch (`traffic.ping`).

Order (`measure_all`): round 1 runs, switch by switch, throughput, flows and the first
search; rounds 2..N run one more search on each switch (in reverse order every other
round), so the searches of different switches interleave and drift on the machine affects
all of them alike; the last round goes on, on the same switch, with latency and ping. The
builds and variants of ringswitch (ringswitch, baseline, ringswitch-busy, ...) measured in
one run form a group (`run_group`): their throughput runs take turns, each on a freshly
started switch.

Rows are plain dicts; `report` turns them into tables, CSV and plots."""

import copy
import os
import statistics
import time

from . import switches
from .system import DISTURBED, BenchError, Topology, log, wait_quiet
from .traffic import derive, offered, ping, teach, with_sink


class Plan:
    """What to measure on each switch (from the command line)."""

    def __init__(self, **kw):
        self.sizes = kw.get("sizes", [64])
        self.duration = kw.get("duration", 3.0)
        self.repeat = kw.get("repeat", 1)
        self.flows = kw.get("flows", [])
        self.rfc_sizes = kw.get("rfc_sizes", [])
        self.searches = kw.get("searches", 1)  # RFC 2544 searches per switch and size
        self.trial = kw.get("trial", 2.0)
        self.steps = kw.get("steps", 7)
        self.loss_tolerance = kw.get("loss_tolerance", 0.0)
        self.loads = kw.get("loads", [])
        self.rates = kw.get("rates", [])  # absolute latency rates (frames/s), besides loads
        self.latency_size = kw.get("latency_size", 64)
        self.latency_duration = kw.get("latency_duration", 3.0)
        self.pings = kw.get("pings", 0)  # ICMP echo requests per switch (0: no ping phase)
        self.tcp_seconds = kw.get("tcp_seconds", 5.0)  # iperf3 -t, per run (tcp method)
        self.tcp_streams = kw.get("tcp_streams", [1, 4])  # iperf3 -P of each run
        self.ping_interval = kw.get("ping_interval", 0.002)  # seconds between requests
        self.gen_cpus = kw.get("gen_cpus", [0])
        self.switch_cpu = kw.get("switch_cpu", 1)
        self.sink_cpu = kw.get("sink_cpu")
        self.threads = kw.get("threads", 1)
        self.wait_idle = kw.get("wait_idle", 120.0)
        self.retries = kw.get("retries", 2)
        # Set by `stage`: which search this stage runs (None: none), and at what sizes.
        self.search_round = None
        self.all_search_sizes = []

    def search_sizes(self):
        """Frame sizes of the zero-loss searches: those of rfc2544, and latency's size
        when latency runs at a share of the zero-loss rate."""
        sizes = list(self.rfc_sizes)
        if self.loads and self.latency_size not in sizes:
            sizes.append(self.latency_size)
        return sizes

    def tap_phases(self):
        return bool(self.sizes or self.flows or self.rfc_sizes or self.loads or self.rates
                    or self.pings or self.search_round)

    def stage(self, rnd, rounds, throughput=True):
        """The part of the plan run on one switch in round `rnd` of `rounds`: throughput
        (unless the group ran it) and flows in the first, a zero-loss search in each,
        latency and ping in the last."""
        p = copy.copy(self)
        if rnd > 1 or not throughput:
            p.sizes = []
        if rnd > 1:
            p.flows = []
        if rnd < rounds:
            p.loads, p.rates, p.pings = [], [], 0
        p.search_round = rnd if self.search_sizes() else None
        p.all_search_sizes = self.search_sizes()
        return p


class Results:
    def __init__(self):
        self.throughput, self.flows, self.rfc2544, self.latency, self.udp = [], [], [], [], []
        self.ping = []
        self.tcp, self.tcp_runs = [], []  # tcp: medians per switch and streams; each run
        self.tcp_kinds = []  # the switches tcp was asked to measure
        self.searches = []  # one row per RFC 2544 search (switch, size, search, ...)
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
    group = [k for k in ready if k in switches.RINGSWITCHES]
    if len(group) < 2:
        group = []
    rounds = max(1, plan.searches) if plan.search_sizes() else 1
    for rnd in range(1, rounds + 1):
        for kind in pair_order(ready, rnd):
            if rnd == 1 and group and kind == group[0] and plan.sizes:
                run_group(group, plan, logs, res)
            stage = plan.stage(rnd, rounds, throughput=kind not in group)
            if stage.tap_phases():
                run_case(kind, stage, logs, res, tag=kind if rnd == 1 else f"{kind}-search{rnd}")
    res.rfc2544 = summarize_searches(res.searches, plan.rfc_sizes)
    return res


def pair_order(pair, rep):
    """The order of a group of switches in run (or round) `rep`: A B C, C B A, A B C, ...
    so that a steady drift of the machine over the runs favours none."""
    return list(pair) if rep % 2 else list(reversed(pair))


def run_group(group, plan, logs, res):
    """Throughput of the builds and variants of ringswitch: run 1 of each, then run 2 of
    each (in reverse order), ..., every run on a freshly started switch, so whatever changes
    on the machine over the runs affects them all. Their other phases then run as for any
    switch (measure_all)."""
    for rep in range(1, plan.repeat + 1):
        for kind in pair_order(group, rep):
            only = copy.copy(plan)
            only.flows, only.rfc_sizes, only.loads, only.rates, only.pings = [], [], [], [], 0
            only.search_round = None
            run_case(kind, only, logs, res, reps=[rep], tag=f"{kind}-run{rep}")


def run_case(kind, plan, logs, res, reps=None, tag=None):
    """Starts `kind` and runs every phase of `plan` (a `Plan.stage`) on it; throughput runs
    are numbered `reps` (default 1..plan.repeat). `tag` names its log files (default: the
    kind)."""
    topo = Topology()
    rnd = plan.search_round
    try:
        st = switches.start(kind, topo, plan.switch_cpu, logs, tag or kind)
        teach(st)
        _throughput(kind, st, plan, res, reps or range(1, plan.repeat + 1))
        _flows(kind, st, plan, res)
        if rnd is not None:
            _rfc2544(kind, st, plan, res, rnd)
        _latency(kind, st, plan, logs, res, median_zero_loss(res.searches, kind))
        _ping(kind, st, plan, logs, res)
        for p in topo.procs:
            if p.poll() is not None and p.returncode not in (0, None):
                log(f"{kind}: a process exited with status {p.returncode} during the runs")
    except BenchError as e:
        log(f"{kind}: {e}")
        where = f"RFC 2544 search {rnd}: " if rnd and rnd > 1 else ""
        res.skipped.setdefault(kind, where + str(e))
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


def _rfc2544(kind, st, plan, res, rnd):
    """Search `rnd` for every size: the highest rate with zero loss, appended to
    res.searches."""
    for size in plan.all_search_sizes:
        log(f"{kind}: RFC 2544 zero-loss search {rnd} of {plan.searches}, {size} B, "
            f"{plan.trial:g} s trials")
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
        res.searches.append({
            "switch": kind, "size": size, "search": rnd, "zero_loss_pps": best,
            "ceiling_pps": ceiling, "trials": len(trials), "generator_limited": limited,
            "cpu_pct": (derive(best_r, size)["cpu_pct"]
                        if best_r and best_r["cpu_s"] is not None else None)})
        log(f"  zero loss up to {best / 1e6:.3f} Mpps ({len(trials)} trials)")


def median_zero_loss(searches, kind):
    """{size: median zero-loss rate over the searches of `kind` so far}."""
    by_size = {}
    for r in searches:
        if r["switch"] == kind:
            by_size.setdefault(r["size"], []).append(r["zero_loss_pps"])
    return {size: statistics.median(v) for size, v in by_size.items()}


def summarize_searches(searches, sizes):
    """One RFC 2544 row per switch and size of `sizes`: the median zero-loss rate over the
    searches, their spread (min, max) and each search's result."""
    rows = {}
    for r in searches:
        if r["size"] in sizes:
            rows.setdefault((r["switch"], r["size"]), []).append(r)
    out = []
    for (kind, size), rs in rows.items():
        rs.sort(key=lambda r: r["search"])
        rates = [r["zero_loss_pps"] for r in rs]
        med = statistics.median(rates)
        cpus = [r["cpu_pct"] for r in rs if r["cpu_pct"] is not None]
        limited = sum(1 for r in rs if r["generator_limited"])
        note = ""
        if limited == len(rs):
            note = "no loss even at the generator's top rate"
        elif limited:
            note = f"{limited} of {len(rs)} searches: no loss at the generator's top rate"
        out.append({
            "switch": kind, "size": size, "searches": len(rs), "zero_loss_pps": med,
            "min_pps": min(rates), "max_pps": max(rates),
            "spread_pct": (max(rates) - min(rates)) / med * 100 if med else None,
            "search_pps": rates, "ceiling_pps": statistics.median(r["ceiling_pps"] for r in rs),
            "trials": sum(r["trials"] for r in rs), "generator_limited": limited == len(rs),
            "cpu_pct": statistics.median(cpus) if cpus else None, "note": note,
            "runs": [{k: r[k] for k in ("search", "zero_loss_pps", "ceiling_pps", "trials",
                                        "generator_limited", "cpu_pct")} for r in rs]})
    order = {k: i for i, k in enumerate(dict.fromkeys(r["switch"] for r in searches))}
    out.sort(key=lambda r: (order[r["switch"]], sizes.index(r["size"])))
    return out


def _latency(kind, st, plan, logs, res, zero_loss):
    """Paced runs with rs-sink at each load (a share of the median zero-loss rate at the
    latency size, `zero_loss`) and at each fixed rate."""
    size = plan.latency_size
    base = zero_loss.get(size, 0)
    searches = [r["zero_loss_pps"] for r in res.searches
                if r["switch"] == kind and r["size"] == size]
    points = [(load, base * load / 100) for load in plan.loads]
    points += [(None, float(rate)) for rate in plan.rates]
    for load, rate in points:
        if load is None:
            log(f"{kind}: latency at {rate / 1e6:.3f} Mpps")
        elif rate < 1000:
            log(f"{kind}: no zero-loss rate at {size} B; latency at {load}% skipped")
            continue
        else:
            n = len(searches)
            log(f"{kind}: latency at {load}% of {base / 1e6:.3f} Mpps (the median of {n} "
                f"search{'' if n == 1 else 'es'}) = {rate / 1e6:.3f} Mpps")
        point = load if load is not None else f"{int(rate)}pps"
        hist = os.path.join(logs, f"{kind}-latency-{point}.csv")
        sink_cpu = plan.sink_cpu if plan.sink_cpu is not None else plan.gen_cpus[0]
        r = with_sink(st, size, plan.latency_duration, plan.gen_cpus, sink_cpu, rate, hist)
        s = r.pop("sink")
        row = _row(kind, size, r, plan, plan.latency_duration, load_pct=load, rate_pps=rate,
                   zero_loss_pps=base if load is not None else None,
                   zero_loss_searches=searches if load is not None else None, hist=hist,
                   received=s["received"], lost=s["lost"],
                   reordered=s["reordered"], duplicates=s["duplicates"],
                   sink_drops=s["kernel_drops"], kernel_stamps=s["kernel_stamps"],
                   **{f"lat_{k}_us": v for k, v in s["latency_us"].items()})
        res.latency.append(row)
        log(f"  p50 {row['lat_p50_us']:.1f} µs, p99 {row['lat_p99_us']:.1f} µs, "
            f"max {row['lat_max_us']:.1f} µs, lost {row['lost']}")


def _ping(kind, st, plan, logs, res):
    """Idle round trips: `plan.pings` ICMP echo requests from A to B through the switch, one
    every `plan.ping_interval` s; percentiles of the replies' `time=` values."""
    if not plan.pings:
        return
    secs = plan.pings * plan.ping_interval
    log(f"{kind}: ping, {plan.pings} echo requests every {plan.ping_interval * 1e3:g} ms")
    rtts = os.path.join(logs, f"{kind}-ping.csv")
    cpu = plan.gen_cpus[0]
    r = undisturbed(plan, lambda: ping(st, plan.pings, plan.ping_interval, cpu, rtts), secs)
    r.update(switch=kind, rtts=rtts)
    notes = [r.pop("busy", "")] if r.get("busy") else []
    if r["others_cpu_s"] > DISTURBED * secs:
        notes.append(f"other processes used {r['others_cpu_s']:.2f} CPU-s")
    if r["duplicates"]:
        notes.append(f"{r['duplicates']} duplicate replies")
    r["note"] = "; ".join(notes)
    res.ping.append(r)
    if r["received"]:
        log(f"  p50 {r['rtt_p50_us']:.0f} µs, p99 {r['rtt_p99_us']:.0f} µs, max "
            f"{r['rtt_max_us']:.0f} µs, {r['lost']} lost")
    else:
        log(f"  no replies ({r['lost']} lost)")
