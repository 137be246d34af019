"""Metrics scrapes with the density phase's containers present.

Part of the density phase (:func:`bench.phases.density.corral` calls it while
its N containers run): the cost of one ``GET /metrics`` from the metrics
plugin, as Prometheus would scrape it, and whether the daemon's memory stays
flat over many scrapes.

- Timed scrapes back to back (the fs plugin's 2-second cache of each writable
  layer's usage is then fresh), and a few spaced by more than that cache's
  life (the case of a real scrape interval, 15 s or so, where every container's
  layer is walked again). For each: the wall time of the HTTP request, and the
  daemon's own figure of the time it spent reading the containers
  (``corral_metrics_collection_seconds``).
- The daemon's RSS before and after :data:`RSS_SCRAPES` more scrapes (every
  :data:`RSS_EVERY` in between), and its CPU time per scrape over them.
"""

from __future__ import annotations

import os
import re
import time
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench.daemon import BenchDaemon
from bench.host import cpu_ticks, log, rss_kib
from bench.stats import summarize

#: Scrapes timed back to back, after a few to warm up.
TIMED = 50
WARMUP = 5
#: Scrapes timed with a pause longer than the fs plugin's usage cache (2 s) before each.
SPACED = 10
SPACED_PAUSE = 2.2
#: Scrapes over which the daemon's memory must stay flat, and how often it is sampled.
RSS_SCRAPES = 1000
RSS_EVERY = 100
#: What "flat" allows: the allocator's page-level noise, not a leak per scrape.
FLAT_KIB = 1024

_COLLECTION = re.compile(rb"^corral_metrics_collection_seconds (\S+)$", re.M)


def _scrape(url: str) -> tuple[float, float, bytes]:
    """One scrape: (wall ms, the daemon's collection ms, the body)."""
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as reply:
        body: bytes = reply.read()
    wall = (time.perf_counter() - t0) * 1000
    found = _COLLECTION.search(body)
    return wall, float(found.group(1)) * 1000 if found else float("nan"), body


def measure(daemon: BenchDaemon, containers: int) -> dict[str, Any]:
    """Scrape the daemon's metrics with *containers* containers present."""
    url = daemon.metrics_url
    out: dict[str, Any] = {"containers": containers, "url": url}
    for _ in range(WARMUP):
        _scrape(url)
    _, _, body = _scrape(url)
    families = list(text_string_to_metric_families(body.decode()))
    out["families"] = len(families)
    out["samples"] = sum(len(f.samples) for f in families)
    out["lines"] = body.count(b"\n")
    out["bytes"] = len(body)
    with_handle = {s.labels["handle"] for f in families for s in f.samples if "handle" in s.labels}
    out["containers_in_scrape"] = len(with_handle)

    log(f"  {TIMED} scrapes back to back")
    walls, collections = [], []
    for _ in range(TIMED):
        wall, collection, _ = _scrape(url)
        walls.append(wall)
        collections.append(collection)
    out["back_to_back_ms"] = summarize(walls)
    out["back_to_back_collection_ms"] = summarize(collections)

    log(f"  {SPACED} scrapes {SPACED_PAUSE} s apart")
    walls, collections = [], []
    for _ in range(SPACED):
        time.sleep(SPACED_PAUSE)
        wall, collection, _ = _scrape(url)
        walls.append(wall)
        collections.append(collection)
    out["spaced_ms"] = summarize(walls)
    out["spaced_collection_ms"] = summarize(collections)

    log(f"  {RSS_SCRAPES} scrapes for the daemon's memory")
    tick = 1000 / os.sysconf("SC_CLK_TCK")
    rss = [rss_kib(daemon.pid)]
    cpu0, _ = cpu_ticks(daemon.pid)
    t0 = time.perf_counter()
    for i in range(1, RSS_SCRAPES + 1):
        _scrape(url)
        if i % RSS_EVERY == 0:
            rss.append(rss_kib(daemon.pid))
    elapsed = time.perf_counter() - t0
    cpu1, _ = cpu_ticks(daemon.pid)
    out["rss_scrapes"] = RSS_SCRAPES
    out["rss_kib"] = rss  # before, then every RSS_EVERY scrapes
    out["rss_growth_kib"] = rss[-1] - rss[0]
    out["rss_flat"] = rss[-1] - rss[0] <= FLAT_KIB
    out["rss_scrapes_wall_ms_each"] = elapsed * 1000 / RSS_SCRAPES
    out["daemon_cpu_ms_per_scrape"] = (cpu1 - cpu0) * tick / RSS_SCRAPES
    return out
