"""What the daemon served: requests by command, their errors and latencies.

The server records every request here; plugins read it through
:attr:`supervisor.api.DaemonView.requests` (the metrics plugin exports it).
A lone ``ping``, answered on its fast path, is only counted: timing it would
cost more than answering it.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

#: Upper bounds (seconds) of the latency buckets, as Prometheus histograms have them.
BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    math.inf,
)


@dataclass
class CommandStats:
    """The requests of one command: how many, how many failed, and how long they took."""

    count: int = 0
    errors: int = 0
    #: Seconds, summed over the timed requests.
    seconds: float = 0.0
    #: Timed requests per latency bucket (not cumulative), aligned with :data:`BUCKETS`.
    buckets: list[int] = field(default_factory=lambda: [0] * len(BUCKETS))


class RequestStats:
    """Requests served since the daemon started, by command."""

    def __init__(self) -> None:
        self.commands: dict[str, CommandStats] = {}
        #: Pings answered on the fast path (no command lookup, no timing).
        self.pings = 0

    def record(self, command: str, seconds: float, failed: bool) -> None:
        """Count one request of *command* that took *seconds* (and failed, or not)."""
        stats = self.commands.get(command)
        if stats is None:
            stats = self.commands[command] = CommandStats()
        stats.count += 1
        stats.errors += failed
        stats.seconds += seconds
        stats.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
