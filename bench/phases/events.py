"""Events: how soon subscribers hear of a job's exit, and what idle subscribers cost.

- Delivery: *subscribers* connections of a forked process of their own, each
  subscribed to one container's job exits; jobs run one after another in it, and
  for each, every subscriber's latency is the time its line was read less the
  time the daemon published the event (its ``time`` field; the same clock).
- Idle subscribers: ping latency (the control phase's load clients) with none,
  then with *idle* subscriptions open and idle.
"""

from __future__ import annotations

import array
import json
import multiprocessing
import os
import resource
import select
import socket
import time
from contextlib import suppress
from multiprocessing.connection import Connection
from typing import Any

from bench.host import log
from bench.phases.common import Bench
from bench.phases.control import load
from bench.stats import summarize


def measure(
    bench: Bench, subscribers: int, jobs: int, idle: int, duration: float
) -> dict[str, Any]:
    """Delivery latency to *subscribers* over *jobs* job exits; ping with *idle* subscribers."""
    out: dict[str, Any] = {"subscribers": subscribers, "jobs": jobs, "idle": idle}
    log(f"  delivery to {subscribers} subscribers, {jobs} jobs run (linked at their exit)")
    out["delivery"] = delivery(bench, subscribers, jobs)
    log(f"  delivery to {subscribers} subscribers, {jobs} jobs spawned, linked after delivery")
    out["delivery_alone"] = delivery(bench, subscribers, jobs, linked=False)
    log(f"  ping with 0 and {idle} idle subscribers")
    out["ping_without"] = load(bench, "ping", 1, [], duration)
    with idle_subscribers(bench, idle):
        out["ping_with"] = load(bench, "ping", 1, [], duration)
    return out


def _subscribe(path: str, request: list[Any]) -> socket.socket:
    """A connection subscribed with *request*, once the daemon says it watches."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)
    s.connect(path)
    s.sendall(json.dumps(request).encode() + b"\n")
    first = b""
    while not first.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError(f"subscription refused: {first!r}")
        first += chunk
    if not first.startswith(b'["watching"'):
        raise RuntimeError(f"subscription refused: {first!r}")
    return s


def delivery(bench: Bench, subscribers: int, jobs: int, linked: bool = True) -> dict[str, Any]:
    """Per subscriber and job, ms from the daemon's publishing of a job exit to the line.

    With *linked*, each job is ``run``: the runner waits in ``link``, so the daemon
    wakes it with the same exit, and it competes with the subscribers' process for
    the 2 vCPUs. Without, the job is spawned and linked only once every subscriber
    has read its exit: at the exit, only the daemon and the subscribers' process run.
    """
    with bench.daemon.client() as c:
        handle = c.create()
        try:
            ctx = multiprocessing.get_context("fork")
            recv, send = ctx.Pipe(duplex=False)
            delivered, tell = ctx.Pipe(duplex=False)
            ready = ctx.Event()
            reader = ctx.Process(
                target=_reader,
                args=(str(bench.daemon.socket), handle, subscribers, jobs, ready, send, tell),
            )
            reader.start()
            send.close()
            tell.close()
            try:
                if not ready.wait(60):
                    raise RuntimeError("the subscribers did not subscribe")
                for _ in range(jobs):
                    if linked:
                        status = c.run(handle, "true")[0]
                    else:
                        job = c.spawn(handle, "true")
                        if not delivered.poll(30):
                            raise RuntimeError(f"job {job}'s exit did not reach every subscriber")
                        delivered.recv_bytes()
                        status = c.link(handle, job)[0]
                    if status != 0:
                        raise RuntimeError(f"/bin/true exited {status}")
                    time.sleep(0.005)  # so that one delivery does not overlap the next
                latencies = array.array("d")
                latencies.frombytes(recv.recv_bytes())
                job_ids = array.array("q")
                job_ids.frombytes(recv.recv_bytes())
            finally:
                reader.join(timeout=30)
                if reader.is_alive():
                    reader.kill()
                    reader.join()
        finally:
            with suppress(Exception):
                c.destroy(handle)
    stats = summarize([x * 1000 for x in latencies])
    stats["events"] = len(latencies)
    # Per job exit: how soon the first subscriber read it, and the last. The 100 lines of
    # one exit are not independent samples: a p99 over them is the worst exit or two.
    by_job: dict[int, list[float]] = {}
    for job_id, latency in zip(job_ids, latencies, strict=True):
        by_job.setdefault(job_id, []).append(latency * 1000)
    stats["first_subscriber_ms"] = summarize([min(v) for v in by_job.values()])
    stats["last_subscriber_ms"] = summarize([max(v) for v in by_job.values()])
    stats["spread_ms"] = summarize([max(v) - min(v) for v in by_job.values()])
    return stats


def _reader(
    path: str,
    handle: str,
    subscribers: int,
    jobs: int,
    ready: Any,
    out: Connection,
    delivered: Connection,
) -> None:
    """The subscribers' process: one epoll set over every subscription.

    Each read is stamped as it is made, and does nothing else: one process serving
    100 sockets must not add its own queueing to the later ones (the lines are
    parsed once all have come). Stream sockets carry no arrival time of their own.
    """
    poll = select.epoll()
    socks = {}
    for _ in range(subscribers):
        s = _subscribe(path, ["events", {"handles": [handle], "kinds": ["job_exited"]}])
        s.setblocking(False)
        poll.register(s.fileno(), select.EPOLLIN)
        socks[s.fileno()] = s
    ready.set()
    arrivals: list[tuple[int, float, bytes]] = []
    wanted = subscribers * jobs
    received = 0
    deadline = time.monotonic() + 120
    while received < wanted and time.monotonic() < deadline:
        for fd, _ in poll.poll(1):
            stamp = time.time()
            data = os.read(fd, 1 << 16)
            received += data.count(b"\n")
            arrivals.append((fd, stamp, data))
            if received % subscribers == 0:  # every subscriber has read this exit
                delivered.send_bytes(b".")
    for s in socks.values():
        s.close()
    latencies = array.array("d")
    job_ids = array.array("q")
    pending: dict[int, bytes] = {}
    for fd, stamp, data in arrivals:
        *lines, pending[fd] = (pending.get(fd, b"") + data).split(b"\n")
        for line in lines:
            message = json.loads(line)
            if message[0] == "event":
                latencies.append(stamp - message[1]["time"])
                job_ids.append(message[1]["job_id"])
    out.send_bytes(latencies.tobytes())
    out.send_bytes(job_ids.tobytes())
    out.close()


class idle_subscribers:
    """*count* subscriptions open and idle (to a kind no container produces here)."""

    def __init__(self, bench: Bench, count: int) -> None:
        self.path = str(bench.daemon.socket)
        self.count = count
        self.socks: list[socket.socket] = []

    def __enter__(self) -> idle_subscribers:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < self.count + 256:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, self.count + 1024), hard))
        try:
            for _ in range(self.count):
                self.socks.append(_subscribe(self.path, ["events", {"kinds": ["oom"]}]))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for s in self.socks:
            s.close()
        self.socks.clear()
