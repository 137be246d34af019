"""Cold run: a fresh container running /bin/true, its exit status checked, then gone.

Every tool runs once per round, round-robin. For Corral the phase also splits
each run into its three requests and, with the daemon's own log lines, into the
steps between them, and measures the daemon's CPU per run.
"""

from __future__ import annotations

import datetime
import json
import statistics
import time
from pathlib import Path
from typing import Any

from bench.phases.common import Bench, Tool, daemon_cpu_per_call, interleave, timer
from bench.stats import summarize


def measure(bench: Bench, n: int) -> dict[str, Any]:
    """*n* recorded rounds of cold runs of Corral and of every peer that runs at all."""
    peers, daemon = bench.peers, bench.daemon
    phases: dict[str, list[float]] = {"create": [], "run": [], "destroy": []}

    marks: dict[str, list[float]] = {}  # handle -> wall clock at each request/reply

    def corral_cold() -> float:
        """One Corral cold run over a new connection; its wall ms."""
        t0 = time.perf_counter()
        w0 = time.time()
        with daemon.client() as c:
            handle = c.create()
            t1, w1 = time.perf_counter(), time.time()
            status, _, err = c.run(handle, "/bin/true")
            t2, w2 = time.perf_counter(), time.time()
            c.destroy(handle)
        t3, w3 = time.perf_counter(), time.time()
        if status != 0:
            raise RuntimeError(f"/bin/true exited {status}: {err}")
        if bench.recording:
            phases["create"].append((t1 - t0) * 1000)
            phases["run"].append((t2 - t1) * 1000)
            phases["destroy"].append((t3 - t2) * 1000)
            marks[handle] = [w0, w1, w2, w3]
        return (t3 - t0) * 1000

    tools: dict[str, Tool] = {"corral": corral_cold}
    for peer in peers.cold_peers():
        label = peer.cold_label
        if not peer.available:
            bench.errors[f"cold/{label}"] = f"{peer.tool} is not installed"
            continue
        if peers.check(label, peer.cold_cmd()):
            tools[label] = timer(peer.cold_cmd)
        else:
            bench.errors[f"cold/{label}"] = peers.errors[label]
    samples = interleave(bench, tools, n)
    # The back-to-back runs for the CPU figure are not samples of the round-robin.
    bench.recording = False
    daemon_cpu = daemon_cpu_per_call(daemon, corral_cold, 20)
    bench.recording = True
    return {
        "samples_ms": samples,
        "stats": {k: summarize(v) for k, v in samples.items()},
        "corral_phases": {k: summarize(v) for k, v in phases.items()},
        "corral_phase_samples_ms": phases,
        "corral_daemon_cpu_ms_per_run": daemon_cpu,
        "corral_timeline_ms": corral_timeline(daemon.log, marks),
    }


def corral_timeline(log_path: Path, marks: dict[str, list[float]]) -> dict[str, Any]:
    """Split Corral's cold runs with the daemon's own log lines (info level, UTC timestamps).

    For each run, the client's four marks (create sent, create reply = run sent, run
    reply = destroy sent, destroy reply) and every log line naming the container are
    put in time order; each gap is labelled "previous -> next" and summarized over
    the runs, in the order the gaps occur. Events that plugins log (e.g. "network
    attached") show up by themselves, so the split follows the code as it is.
    """
    client = ("create sent", "create reply", "run reply", "destroy reply")
    per_handle: dict[str, list[tuple[float, str]]] = {
        h: list(zip(w, client, strict=True)) for h, w in marks.items()
    }
    extra: dict[str, list[float]] = {}
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        handle = rec.get("handle")
        if handle not in per_handle or "timestamp" not in rec:
            continue
        when = datetime.datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")).timestamp()
        event = str(rec.get("event"))
        if event == "state changed":
            event = f"{rec.get('old')} -> {rec.get('new')}"
        per_handle[handle].append((when, event))
        for key, value in rec.items():  # durations the daemon logs itself: ms, prepare_ms...
            if (key == "ms" or key.endswith("_ms")) and isinstance(value, int | float):
                extra.setdefault(f"{event}: {key} (logged by the daemon)", []).append(float(value))
    spans: dict[str, list[float]] = {}
    position: dict[str, list[int]] = {}
    for events in per_handle.values():
        events.sort()
        for i in range(1, len(events)):
            label = f"{events[i - 1][1]} → {events[i][1]}"
            spans.setdefault(label, []).append((events[i][0] - events[i - 1][0]) * 1000)
            position.setdefault(label, []).append(i)
    order = sorted(spans, key=lambda k: statistics.median(position[k]))
    out = {k: summarize(spans[k]) | {"runs": len(spans[k])} for k in order}
    out.update({k: summarize(v) | {"runs": len(v)} for k, v in extra.items()})
    return out
