"""Exec: /bin/true in a container that is already running, round-robin.

Corral runs it over one open connection; crun and runc ``exec`` into containers
started with ``run -d``; ``nsenter -a`` enters the crun container's process (the
Corral container's init when there is no OCI peer).
"""

from __future__ import annotations

import functools
from contextlib import suppress
from functools import partial
from typing import Any

from bench.host import timed
from bench.phases.common import Bench, Tool, daemon_cpu_per_call, interleave, run_true, timer
from bench.stats import summarize


def measure(bench: Bench, n: int) -> dict[str, Any]:
    """*n* recorded rounds of exec in Corral, crun, runc and with nsenter."""
    peers, daemon = bench.peers, bench.daemon
    tools: dict[str, Tool] = {}
    client = daemon.client()
    handle = client.create()

    corral_exec = tools["corral run"] = partial(run_true, client, handle)
    nsenter_pid = None
    oci = (peers.crun, peers.runc)
    for peer in oci:
        if not peer.available:
            bench.errors[f"exec/{peer.tool}"] = f"{peer.tool} is not installed"
            continue
        name = peers.name(f"{peer.tool}-exec")
        try:
            peer.start_idle(name)
            pid = peer.pid(name)
            nsenter_pid = nsenter_pid or pid
            cmd = peer.exec_cmd(name)
            timed(cmd)
            tools[f"{peer.tool} exec"] = timer(functools.partial(list, cmd))
        except Exception as exc:
            bench.errors[f"exec/{peer.tool}"] = str(exc)
    target = "crun container"
    if nsenter_pid is None:  # no OCI peer: enter the Corral container's init instead
        inits = daemon.container_inits()
        nsenter_pid = inits[0].pid if inits else None
        target = "Corral container init"
    if nsenter_pid is not None:
        cmd = peers.nsenter.exec_cmd(nsenter_pid)
        try:
            timed(cmd)
            tools["nsenter -a"] = timer(lambda: cmd)
        except Exception as exc:
            bench.errors["exec/nsenter"] = str(exc)
    try:
        samples = interleave(bench, tools, n)
        daemon_cpu = daemon_cpu_per_call(daemon, corral_exec, 50)
    finally:
        with suppress(Exception):
            client.destroy(handle)
        client.close()
        for peer in oci:
            for name in peer.containers():
                if "-exec-" in name:
                    peer.delete(name)
    return {
        "samples_ms": samples,
        "stats": {k: summarize(v) for k, v in samples.items()},
        "nsenter_target": target,
        "corral_daemon_cpu_ms_per_run": daemon_cpu,
    }
