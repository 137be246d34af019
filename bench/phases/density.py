"""Density: N idle containers (one `sleep` each) started, measured, destroyed.

Corral over one connection (``create`` + ``spawn``), then crun (``run -d``).
Memory per container besides the workload is the PSS of every other process in
the container's pid namespace, plus processes on the host per container, plus
for Corral the daemon's own PSS growth over N. With Corral's N containers
running, the metrics plugin is scraped (:mod:`.scrape`).
"""

from __future__ import annotations

import os
import time
from typing import Any

from bench.daemon import BenchDaemon
from bench.host import SLEEP_SECONDS, Proc, is_idle_sleep, log, meminfo, processes, smaps
from bench.phases import scrape
from bench.phases.common import Bench
from bench.stats import per, summarize


def measure(bench: Bench, n: int) -> dict[str, Any]:
    """*n* idle containers of Corral, then of crun (if installed)."""
    out: dict[str, Any] = {"n": n}
    out["corral"] = corral(bench.daemon, n)
    if bench.peers.crun.available:
        out["crun"] = crun(bench, n)
    else:
        bench.errors["density/crun"] = "crun is not installed"
    return out


def corral(daemon: BenchDaemon, n: int) -> dict[str, Any]:
    """Start *n* idle Corral containers, measure their memory, destroy them."""
    res: dict[str, Any] = {}
    with daemon.client() as c:  # warm the daemon's code paths before the baseline
        h = c.create()
        c.destroy(h)
    time.sleep(0.5)
    daemon0 = smaps(daemon.pid)
    mem0 = meminfo()
    handles: list[str] = []
    per_start: list[float] = []
    t0 = time.perf_counter()
    try:
        with daemon.client() as c:
            for _i in range(n):
                s = time.perf_counter()
                h = c.create()
                handles.append(h)
                c.spawn(h, f"sleep {SLEEP_SECONDS}")
                per_start.append((time.perf_counter() - s) * 1000)
    except Exception as exc:
        res["error"] = f"after {len(handles)} containers: {type(exc).__name__}: {exc}"
        log(f"corral density stopped: {res['error']}")
    res["start_s"] = time.perf_counter() - t0
    res["started"] = len(handles)
    res["per_container_start_ms"] = summarize(per_start)
    time.sleep(1.0)  # let the last ones settle before measuring memory
    res.update(corral_memory(daemon, daemon0, mem0, len(handles)))
    try:
        res["metrics_scrape"] = scrape.measure(daemon, len(handles))
    except Exception as exc:
        res["metrics_scrape"] = {"error": f"{type(exc).__name__}: {exc}"}
        log(f"metrics scrapes failed: {res['metrics_scrape']['error']}")
    t0 = time.perf_counter()
    per_destroy: list[float] = []
    with daemon.client() as c:
        for h in handles:
            s = time.perf_counter()
            c.destroy(h)
            per_destroy.append((time.perf_counter() - s) * 1000)
    res["destroy_s"] = time.perf_counter() - t0
    res["per_container_destroy_ms"] = summarize(per_destroy)
    return res


def corral_memory(
    daemon: BenchDaemon, daemon0: dict[str, int], mem0: dict[str, int], count: int
) -> dict[str, Any]:
    """Memory of *count* running Corral containers, against the daemon's *daemon0* smaps
    and the host's *mem0* meminfo from before the first one."""
    procs = processes()
    inits = daemon.container_inits()
    init_ns = {p.pidns: p for p in inits}
    overhead_kib: list[int] = []
    workload_kib: list[int] = []
    running = 0
    extra: dict[str, int] = {}
    by_ns: dict[str, list[Proc]] = {}
    for p in procs:
        if p.pidns in init_ns:
            by_ns.setdefault(p.pidns, []).append(p)
    for ns, members in by_ns.items():
        overhead = 0
        workload = 0
        for p in members:
            pss = smaps(p.pid).get("Pss", 0)
            if is_idle_sleep(p):
                running += 1
                workload += pss
            elif p.pid == init_ns[ns].pid:
                overhead += pss
            else:  # anything else in the container is not the workload either
                overhead += pss
                extra[p.comm] = extra.get(p.comm, 0) + 1
        overhead_kib.append(overhead)
        workload_kib.append(workload)
    host_helpers = [
        p
        for p in procs
        if p.pidns not in init_ns
        and p.pid != daemon.pid
        and any(str(daemon.depot).encode() in a for a in p.argv)
    ]
    daemon1 = smaps(daemon.pid)
    mem1 = meminfo()
    growth = {k: daemon1.get(k, 0) - daemon0.get(k, 0) for k in ("Rss", "Pss")}
    inits_pss = sum(overhead_kib)
    return {
        "running_workloads": running,
        "containers_seen": len(by_ns),
        "init_pss_kib": summarize([float(x) for x in overhead_kib]),
        "workload_pss_kib": summarize([float(x) for x in workload_kib]),
        "other_processes_in_containers": extra,
        "host_helper_processes": len(host_helpers),
        "processes_besides_workload_per_container": per(
            len(by_ns) + sum(extra.values()) + len(host_helpers), count
        ),
        "daemon_before_kib": daemon0,
        "daemon_after_kib": daemon1,
        "daemon_growth_kib": growth,
        "daemon_growth_pss_per_container_kib": per(growth["Pss"], count),
        "pss_per_container_kib": per(inits_pss + growth["Pss"], count),
        "host_memavailable_drop_per_container_kib": per(
            mem0["MemAvailable"] - mem1["MemAvailable"], count
        ),
    }


def crun(bench: Bench, n: int) -> dict[str, Any]:
    """Start *n* idle crun containers (``run -d``), measure their memory, delete them."""
    peers = bench.peers
    res: dict[str, Any] = {}
    mem0 = meminfo()
    names: list[str] = []
    per_start: list[float] = []
    t0 = time.perf_counter()
    try:
        for _i in range(n):
            name = peers.name("crun-dense")
            s = time.perf_counter()
            peers.crun.start_idle(name)
            names.append(name)
            per_start.append((time.perf_counter() - s) * 1000)
    except Exception as exc:
        res["error"] = f"after {len(names)} containers: {exc}"
    res["start_s"] = time.perf_counter() - t0
    res["started"] = len(names)
    res["per_container_start_ms"] = summarize(per_start)
    time.sleep(1.0)
    procs = processes()
    host_ns = os.readlink("/proc/self/ns/pid")
    sleeps = [p for p in procs if is_idle_sleep(p) and p.pidns != host_ns]
    ns_set = {p.pidns for p in sleeps}
    others = [p for p in procs if p.pidns in ns_set and not is_idle_sleep(p)]
    helpers = [p for p in procs if p.comm in ("crun", "conmon") and p.pidns == host_ns]
    overhead = sum(smaps(p.pid).get("Pss", 0) for p in others + helpers)
    mem1 = meminfo()
    count = len(names)
    res.update(
        {
            "running_workloads": len(sleeps),
            "other_processes_in_containers": len(others),
            "host_helper_processes": len(helpers),
            "processes_besides_workload_per_container": per(len(others) + len(helpers), count),
            "pss_per_container_kib": per(overhead, count),
            "workload_pss_kib": summarize([float(smaps(p.pid).get("Pss", 0)) for p in sleeps]),
            "host_memavailable_drop_per_container_kib": per(
                mem0["MemAvailable"] - mem1["MemAvailable"], count
            ),
        }
    )
    t0 = time.perf_counter()
    per_destroy: list[float] = []
    for name in names:
        s = time.perf_counter()
        peers.crun.delete(name, check=True)
        per_destroy.append((time.perf_counter() - s) * 1000)
    res["destroy_s"] = time.perf_counter() - t0
    res["per_container_destroy_ms"] = summarize(per_destroy)
    return res
