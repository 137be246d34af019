"""What a scrape reads from the daemon, and the Prometheus metric families made of it.

A scrape is two steps. :func:`take` reads the daemon on the event loop: every
live container's figures (``DaemonView.stats``: the counters and gauges of
``info``, with its keys and units, each plugin reading all the containers at
once) and a copy of the request counters, into a :class:`Snapshot` of plain
values. :func:`exposition` then renders it in the Prometheus text format, as
``prometheus_client`` renders the families of a :class:`SnapshotCollector` in
a registry made for that one scrape: nothing is kept from one scrape to the
next, and the rendering may run in a worker thread, away from the daemon's
state.

Labels are bounded: ``handle`` (the daemon's containers), ``state`` (three),
``command`` (the commands the daemon knows, and ``(unknown)``/``(invalid)``
for the rest; the core never counts a name a client made up). No job id, path
or address is a label.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from plugins.metrics.process import DaemonProcessCollector
from supervisor.api import (
    BUCKETS,
    CommandStats,
    DaemonView,
)

#: The text format ``generate_latest`` writes (the classic one: every name here is
#: plain ``[a-z_]``, so it is the same text in the newer ``version=1.0.0``, which
#: older Prometheus servers do not know).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Metric and label names :func:`render` writes as they are (the classic character set).
_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
#: Samples of OpenMetrics only, which the classic format writes as families of their own.
_OPENMETRICS_ONLY = ("_created", "_gsum", "_gcount")

#: The states a container clients see can be in.
STATES = ("active", "paused", "stopped")
#: A job can run only in these states: a stop kills every job before the container
#: is stopped.
RUNNING_STATES = frozenset({"active", "paused"})


@dataclass(frozen=True)
class ContainerSample:
    """One container as a scrape saw it."""

    handle: str
    #: Its figures (``DaemonView.stats``: the counters and gauges of its ``info``).
    info: dict[str, Any]
    #: Its jobs whose leader still runs.
    running_jobs: int


@dataclass(frozen=True)
class Snapshot:
    """The daemon as one scrape saw it, in plain values."""

    containers: list[ContainerSample]
    #: Requests by command (copies).
    commands: dict[str, CommandStats]
    #: Pings answered on the fast path (counted, not timed).
    pings: int
    #: Seconds :func:`take` took.
    seconds: float


async def take(daemon: DaemonView) -> Snapshot:
    """Read every live container's figures and the request counters.

    The figures are ``DaemonView.stats``: the counters and gauges of ``info``
    (``state``, ``job_ids``, ``memory_stat``, ``cpu_stat``, ``pids``,
    ``disk_stat``, ``net_stat``), each plugin reading all the containers in one
    call (one ``/proc/net/dev`` for every veth, one worker-thread job for every
    layer to walk), rather than 500 ``info`` payloads with their limits.
    """
    started = time.perf_counter()
    live = daemon.live()
    figures = await daemon.stats(live)
    samples: list[ContainerSample] = []
    for container in live:
        info = figures.get(container.handle)
        if info is None:  # destroyed since live() listed it
            continue
        # A stop kills every job: whatever the daemon has not heard of yet is not running.
        running = info.get("jobs_running", 0) if info.get("state") in RUNNING_STATES else 0
        samples.append(ContainerSample(container.handle, info, running))
    requests = daemon.requests
    commands = {
        name: CommandStats(s.count, s.errors, s.seconds, list(s.buckets))
        for name, s in requests.commands.items()
    }
    return Snapshot(samples, commands, requests.pings, time.perf_counter() - started)


def _value(info: dict[str, Any], table: str, key: str) -> float | None:
    """``info[table][key]`` as a number, None when absent or null."""
    section = info.get(table)
    if not isinstance(section, dict):
        return None
    value = section.get(key)
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


#: Per-container gauges read from ``info``: (name after ``corral_container_``, help,
#: info table, key).
_GAUGES = (
    ("memory_usage_bytes", "memory used now (swap counted)", "memory_stat", "usage"),
    ("memory_max_usage_bytes", "most memory ever used", "memory_stat", "max_usage"),
    ("memory_limit_bytes", "memory limit (absent: unlimited)", "memory_stat", "limit"),
    ("pids", "tasks in the container now, its init included", "pids", "current"),
    ("pids_limit", "tasks allowed (absent: unlimited)", "pids", "max"),
    ("disk_used_bytes", "bytes used by the container's writable layer", "disk_stat", "bytes_used"),
    ("disk_limit_bytes", "size of the container's disk (absent: no quota)", "disk_stat", "limit"),
)
#: Per-container counters read from ``info``: the same, and how many of its unit make one
#: of the metric's (nanoseconds in a second).
_COUNTERS = (
    ("cpu_usage_seconds", "CPU time used by the container's processes", "cpu_stat", "usage", 1e9),
    (
        "oom_kills",
        "processes the kernel OOM-killed in the container",
        "memory_stat",
        "oom_count",
        1,
    ),
    ("network_receive_bytes", "bytes the container received", "net_stat", "rx_bytes", 1),
    ("network_transmit_bytes", "bytes the container sent", "net_stat", "tx_bytes", 1),
    ("network_receive_packets", "packets the container received", "net_stat", "rx_packets", 1),
    ("network_transmit_packets", "packets the container sent", "net_stat", "tx_packets", 1),
)


STATE_DOC = "1 for the container's state, 0 for the others"
JOBS_DOC = "jobs the container holds: running, or ended and not yet linked"
RUNNING_DOC = "jobs whose leader still runs"


class SnapshotCollector(Collector):
    """The metric families of one :class:`Snapshot`."""

    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from self.daemon()
        yield from self.containers()

    def daemon(self) -> Iterator[Metric]:
        """The daemon's families: requests, containers by state, this scrape's reading time."""
        snap = self.snapshot
        total = CounterMetricFamily(
            "corral_requests", "requests served, by command (pings included)", labels=["command"]
        )
        errors = CounterMetricFamily(
            "corral_request_errors",
            "requests answered with an error, by command",
            labels=["command"],
        )
        latency = HistogramMetricFamily(
            "corral_request_duration_seconds",
            "time to answer a request, by command (pings answered on the fast path are "
            "counted in corral_requests_total only)",
            labels=["command"],
        )
        names = sorted(set(snap.commands) | ({"ping"} if snap.pings else set()))
        for name in names:
            stats = snap.commands.get(name) or CommandStats()
            total.add_metric([name], stats.count + (snap.pings if name == "ping" else 0))
            errors.add_metric([name], stats.errors)
            if stats.count:
                latency.add_metric([name], _buckets(stats.buckets), stats.seconds)
        yield from (total, errors, latency)
        states = GaugeMetricFamily(
            "corral_containers", "containers clients see, by state", labels=["state"]
        )
        counts = dict.fromkeys(STATES, 0)
        for c in snap.containers:
            state = c.info.get("state")
            if state in counts:
                counts[state] += 1
        for state, count in counts.items():
            states.add_metric([state], count)
        yield states
        yield GaugeMetricFamily(
            "corral_metrics_collection_seconds",
            "time this scrape took to read the daemon's containers",
            value=snap.seconds,
        )

    def containers(self) -> Iterator[Metric]:
        """The per-container families (:func:`render_containers` writes their text faster)."""
        containers = self.snapshot.containers
        state = GaugeMetricFamily("corral_container_state", STATE_DOC, labels=["handle", "state"])
        for c in containers:
            current = c.info.get("state")
            for name in STATES:
                state.add_metric([c.handle, name], 1 if name == current else 0)
        yield state
        for name, doc, table, key in _GAUGES:
            family = GaugeMetricFamily(f"corral_container_{name}", doc, labels=["handle"])
            for c in containers:
                value = _value(c.info, table, key)
                if value is not None:  # unknown or unlimited: no sample
                    family.add_metric([c.handle], value)
            yield family
        for name, doc, table, key, per_unit in _COUNTERS:
            counter = CounterMetricFamily(f"corral_container_{name}", doc, labels=["handle"])
            for c in containers:
                value = _value(c.info, table, key)
                if value is not None:
                    counter.add_metric([c.handle], value / per_unit)
            yield counter
        jobs = GaugeMetricFamily("corral_container_jobs", JOBS_DOC, labels=["handle"])
        running = GaugeMetricFamily("corral_container_jobs_running", RUNNING_DOC, labels=["handle"])
        for c in containers:
            jobs.add_metric([c.handle], len(c.info.get("job_ids", ())))
            running.add_metric([c.handle], c.running_jobs)
        yield from (jobs, running)


def _buckets(counts: list[int]) -> list[tuple[str, float]]:
    """Cumulative Prometheus buckets from per-bucket counts aligned with ``BUCKETS``."""
    out = []
    total = 0
    for bound, count in zip(BUCKETS, counts, strict=True):
        total += count
        out.append((floatToGoString(bound), float(total)))
    return out


def process_collector() -> Collector:
    """``process_*``: the daemon's own CPU, memory, open files and start time, from
    /proc/self at each scrape (made once: it reads the boot time when made)."""
    return DaemonProcessCollector()


def registry_of(snapshot: Snapshot, others: Iterable[Collector] = ()) -> CollectorRegistry:
    """A registry of this one scrape: *snapshot*'s collector, then the *others*."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot))
    for collector in others:
        registry.register(collector)
    return registry


def exposition(snapshot: Snapshot, others: Iterable[Collector] = ()) -> bytes:
    """The metrics of *snapshot* and of the *others* collectors, in the Prometheus text format.

    What ``generate_latest(registry_of(snapshot, others))`` writes, byte for byte
    (a test holds it to that): the daemon's families and the *others* through
    :func:`render`, the per-container families by :func:`render_containers`,
    which writes their text straight from the snapshot. Pure computation on plain
    values (and /proc): it may run in a worker thread.
    """
    collector = SnapshotCollector(snapshot)
    return b"".join(
        (
            render(collector.daemon()),
            render_containers(snapshot.containers),
            render(family for other in others for family in other.collect()),
        )
    )


def _header(name: str, doc: str, kind: str) -> str:
    doc = doc.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {doc}\n# TYPE {name} {kind}\n"


def _go(value: float) -> str:
    """``floatToGoString(value)``, at once for the small whole numbers most samples are."""
    if type(value) is int and 0 <= value < 1_000_000:  # repr(float) has no exponent there
        return f"{value}.0"
    return floatToGoString(value)


def _numbers(containers: list[ContainerSample], table: str, key: str) -> list[float | None]:
    """:func:`_value` of each container's figures."""
    out: list[float | None] = []
    for c in containers:
        section = c.info.get(table)
        value = section.get(key) if type(section) is dict else None
        out.append(value if type(value) is int or type(value) is float else None)
    return out


def render_containers(containers: list[ContainerSample]) -> bytes:
    """The text of :meth:`SnapshotCollector.containers`' families, written from the samples.

    Making ~8,000 ``Sample`` objects for 500 containers, then the text of each,
    took most of a scrape's rendering; here each container's label is escaped
    once and each line is one format.
    """
    labels = ['{handle="' + _label_value(c.handle) + '"' for c in containers]
    out = [_header("corral_container_state", STATE_DOC, "gauge")]
    append = out.append
    for c, label in zip(containers, labels, strict=True):
        current = c.info.get("state")
        for state in STATES:
            flag = "1.0" if state == current else "0.0"
            append(f'corral_container_state{label},state="{state}"}} {flag}\n')
    for name, doc, table, key in _GAUGES:
        full = f"corral_container_{name}"
        append(_header(full, doc, "gauge"))
        for label, value in zip(labels, _numbers(containers, table, key), strict=True):
            if value is not None:  # unknown or unlimited: no sample
                append(f"{full}{label}}} {_go(value)}\n")
    for name, doc, table, key, per_unit in _COUNTERS:
        full = f"corral_container_{name}_total"
        append(_header(full, doc, "counter"))
        for label, count in zip(labels, _numbers(containers, table, key), strict=True):
            if count is not None:
                append(f"{full}{label}}} {_go(count if per_unit == 1 else count / per_unit)}\n")
    append(_header("corral_container_jobs", JOBS_DOC, "gauge"))
    for c, label in zip(containers, labels, strict=True):
        append(f"corral_container_jobs{label}}} {_go(len(c.info.get('job_ids', ())))}\n")
    append(_header("corral_container_jobs_running", RUNNING_DOC, "gauge"))
    for c, label in zip(containers, labels, strict=True):
        append(f"corral_container_jobs_running{label}}} {_go(c.running_jobs)}\n")
    return "".join(out).encode()


def _label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def render(families: Iterable[Metric]) -> bytes:
    """The families in the Prometheus text format (0.0.4), byte for byte as
    ``prometheus_client.exposition.generate_latest`` writes them (a test holds it to that).

    Two to three times faster: ``generate_latest`` checks and escapes the metric
    and label names of every sample, 45-55 ms for the 8,700 lines of 500
    containers on the development VM, against 20 ms here. Here a family's name
    is checked once, a label set's names and escaped values are written once per
    scrape (a container's handle labels 17 families), and label values only are
    escaped. Families of other
    types than gauge, counter and histogram (which these collectors never make),
    or with names outside the classic set, are refused rather than written wrong.
    """
    out: list[str] = []
    append = out.append
    # Label sets written, by their pairs.
    written: dict[tuple[tuple[str, str], ...], str] = {}
    for metric in families:
        name, kind = metric.name, metric.type
        if kind not in ("gauge", "counter", "histogram") or not _NAME_RE.fullmatch(name):
            raise ValueError(f"cannot render {kind} {name!r}")
        exposed = name + "_total" if kind == "counter" else name
        doc = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
        append(f"# HELP {exposed} {doc}\n# TYPE {exposed} {kind}\n")
        for sample in metric.samples:
            labels = sample.labels
            if sample.timestamp is not None or sample.name.endswith(_OPENMETRICS_ONLY):
                raise ValueError(f"cannot render sample {sample.name!r} of {name!r}")
            if labels:
                key = tuple(labels.items())
                pairs = written.get(key)
                if pairs is None:
                    if not all(_LABEL_RE.fullmatch(k) for k in labels):
                        raise ValueError(f"cannot render labels {list(labels)} of {name!r}")
                    pairs = written[key] = ",".join(
                        f'{k}="{_label_value(v)}"' for k, v in sorted(labels.items())
                    )
                append(f"{sample.name}{{{pairs}}} {floatToGoString(sample.value)}\n")
            else:
                append(f"{sample.name} {floatToGoString(sample.value)}\n")
    return "".join(out).encode()
