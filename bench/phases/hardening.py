"""Hardening: what the jobs' default seccomp filter and the container's own ids (a user
namespace with a block of host ids) cost a cold run (create, /bin/true, destroy) and an
exec (/bin/true in a running container), against the same with each turned off
(``seccomp: false``, ``userns: false``), round-robin in the same run."""

from __future__ import annotations

import time
from contextlib import ExitStack
from functools import partial
from typing import Any

from bench.phases.common import Bench, Tool, interleave, run_true
from bench.stats import ratio, summarize

#: The features measured, and the create CONFIG that turns each off.
FEATURES: dict[str, dict[str, Any]] = {"seccomp": {"seccomp": False}, "userns": {"userns": False}}
#: create CONFIG of each kind: the defaults (every feature on), then each one off.
KINDS: dict[str, dict[str, Any]] = {"default": {}} | {
    f"{feature} off": config for feature, config in FEATURES.items()
}


def measure(bench: Bench, n: int) -> dict[str, Any]:
    """*n* recorded rounds of cold runs and of execs of each kind."""
    daemon = bench.daemon

    def cold(config: dict[str, Any]) -> float:
        t0 = time.perf_counter()
        with daemon.client() as c:
            handle = c.create(config)
            status, _, err = c.run(handle, "/bin/true")
            c.destroy(handle)
        ms = (time.perf_counter() - t0) * 1000
        if status != 0:
            raise RuntimeError(f"/bin/true exited {status}: {err}")
        return ms

    cold_tools: dict[str, Tool] = {f"cold, {k}": partial(cold, c) for k, c in KINDS.items()}
    cold_samples = interleave(bench, cold_tools, n)
    with ExitStack() as stack:
        client = stack.enter_context(daemon.client())
        handles = {k: client.create(config) for k, config in KINDS.items()}
        for handle in handles.values():
            stack.callback(client.destroy, handle)
        exec_tools: dict[str, Tool] = {
            f"exec, {k}": partial(run_true, client, h) for k, h in handles.items()
        }
        exec_samples = interleave(bench, exec_tools, n)
    samples = cold_samples | exec_samples
    stats = {k: summarize(v) for k, v in samples.items()}

    def median(what: str, kind: str) -> float:
        return float(stats[f"{what}, {kind}"]["median"])

    return {
        "samples_ms": samples,
        "stats": stats,
        "added_ms": {
            feature: {
                what: median(what, "default") - median(what, f"{feature} off")
                for what in ("cold", "exec")
            }
            for feature in FEATURES
        },
        "ratio": {
            feature: {
                what: ratio(median(what, "default"), median(what, f"{feature} off"))
                for what in ("cold", "exec")
            }
            for feature in FEATURES
        },
    }
