"""The metrics plugin: Prometheus metrics over HTTP on loopback and in a textfile.

Real daemons with a ``[metrics]`` table, scraped as Prometheus would, every
scrape parsed with ``prometheus_client.parser``; and the units: the ``listen``
setting, the renderer against ``prometheus_client``'s own, the HTTP server.
"""

from __future__ import annotations

import functools
import math
import os
import socket
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.process_collector import ProcessCollector

from plugins.metrics import http
from plugins.metrics.collect import (
    CONTENT_TYPE,
    ContainerSample,
    Snapshot,
    exposition,
    process_collector,
    registry_of,
)
from plugins.metrics.process import DaemonProcessCollector, open_fds
from plugins.metrics.settings import Address, Settings
from supervisor.api import BUCKETS, CommandStats
from supervisor.client import Client
from supervisor.errors import CorralError, UnknownHandle
from supervisor.settings import ConfigError, parse_table
from tests.conftest import NOTHING_LEFT, Daemon, cgroup_parents, leftovers, wait_until
from tests.net.conftest import table_rules

#: Samples of a scrape: ``{(name, frozenset(labels.items())): value}``.
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    """A TCP port of 127.0.0.1 nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, parsed by ``prometheus_client``."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def get(url: str) -> tuple[int, str, str]:
    """(status, content type, body) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=30) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


class Scraper:
    """A daemon with ``[metrics] listen`` on a free port of 127.0.0.1, and a textfile."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.port = free_port()
        self.textfile = daemon.dir / "corral.prom"
        daemon.configure(
            {
                "metrics": {
                    "listen": f"127.0.0.1:{self.port}",
                    "textfile": self.textfile,
                    "textfile_interval": 1,
                }
            }
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/metrics"

    def scrape(self) -> Samples:
        status, content_type, body = get(self.url)
        assert status == 200, body
        assert content_type == CONTENT_TYPE
        return parse(body)


@pytest.fixture(scope="module")
def scraper(artifacts: tuple[Path, Path]) -> Iterator[Scraper]:
    d = Daemon(*artifacts)
    s = Scraper(d)
    d.start()
    yield s
    d.close()


@pytest.fixture
def mclient(scraper: Scraper) -> Iterator[Client]:
    with scraper.daemon.client() as c:
        yield c


# -- a real scrape --------------------------------------------------------------------


def test_a_scrape_parses_and_matches_info_for_a_container_with_limits_and_a_job(
    scraper: Scraper, mclient: Client
) -> None:
    handle = mclient.create({"limits": {"mem": 64 * 1024 * 1024, "pids": 40}, "disk_size_mb": 16})
    try:
        mclient.spawn(handle, "sleep 600")
        mclient.run(handle, "head -c 100000 /dev/zero > /tmp/filler")  # linked: not counted
        before = mclient.info(handle)
        samples = scraper.scrape()
        after = mclient.info(handle)

        def of(name: str) -> float:
            return value(samples, f"corral_container_{name}", handle=handle)

        # What does not move between the two infos is equal.
        assert of("memory_limit_bytes") == after["memory_stat"]["limit"] == 64 * 1024 * 1024
        assert of("pids_limit") == after["pids"]["max"] == 40
        assert of("pids") == after["pids"]["current"] == before["pids"]["current"]
        assert of("disk_limit_bytes") == after["disk_stat"]["limit"] == 16 * 1024 * 1024
        assert of("oom_kills_total") == after["memory_stat"]["oom_count"] == 0
        assert of("jobs") == len(after["job_ids"]) == 1
        assert of("jobs_running") == 1
        for state in ("active", "paused", "stopped"):
            assert value(samples, "corral_container_state", handle=handle, state=state) == (
                state == "active"
            )
        # Counters lie between the two infos; the rest is there and sane.
        assert before["cpu_stat"]["usage"] / 1e9 <= of("cpu_usage_seconds_total")
        assert of("cpu_usage_seconds_total") <= after["cpu_stat"]["usage"] / 1e9
        for key, name in (
            ("rx_bytes", "network_receive_bytes_total"),
            ("tx_bytes", "network_transmit_bytes_total"),
            ("rx_packets", "network_receive_packets_total"),
            ("tx_packets", "network_transmit_packets_total"),
        ):
            assert before["net_stat"][key] <= of(name) <= after["net_stat"][key], name
        assert 0 < of("memory_usage_bytes") <= of("memory_max_usage_bytes")
        assert after["disk_stat"]["bytes_used"] > 0 and of("disk_used_bytes") > 0
        assert value(samples, "corral_containers", state="active") == len(mclient.list())
        assert value(samples, "process_resident_memory_bytes") > 0
        assert value(samples, "corral_metrics_collection_seconds") > 0
    finally:
        mclient.destroy(handle)
    after_destroy = scraper.scrape()
    assert not any(dict(labels).get("handle") == handle for _, labels in after_destroy)


def test_a_limit_changed_after_create_is_the_one_scraped(scraper: Scraper, mclient: Client) -> None:
    handle = mclient.create({"limits": {"mem": 64 * 1024 * 1024}})
    try:
        mclient.call("limit", handle, "mem", 32 * 1024 * 1024)
        mclient.call("limit", handle, "pids", 30)
        samples = scraper.scrape()
        info = mclient.info(handle)
        of = functools.partial(value, samples, handle=handle)
        assert of("corral_container_memory_limit_bytes") == info["memory_stat"]["limit"]
        assert info["memory_stat"]["limit"] == 32 * 1024 * 1024
        assert of("corral_container_pids_limit") == info["pids"]["max"] == 30
    finally:
        mclient.destroy(handle)


def test_the_disk_used_by_a_container_without_quota_is_scraped(
    scraper: Scraper, mclient: Client
) -> None:
    handle = mclient.create()
    try:
        mclient.run(handle, "head -c 3000000 /dev/urandom > /tmp/filler")
        # A layer's usage is walked again once the last walk is 2 s old.
        wait_until(
            lambda: (
                value(scraper.scrape(), "corral_container_disk_used_bytes", handle=handle)
                >= 3_000_000
            ),
            what="the written file to count",
        )
        assert mclient.info(handle)["disk_stat"]["bytes_used"] >= 3_000_000
    finally:
        mclient.destroy(handle)


def _cgroup_files_open(daemon: Daemon, handle: str) -> list[str]:
    """The files of the container's cgroups the daemon has open."""
    found = []
    for fd in Path(f"/proc/{daemon.pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue
        if target.startswith("/sys/fs/cgroup/") and f"/{handle}/" in target:
            found.append(target)
    return found


def test_the_counter_files_kept_open_are_closed_at_destroy(
    scraper: Scraper, mclient: Client
) -> None:
    handle = mclient.create()
    try:
        watched = set(_cgroup_files_open(scraper.daemon, handle))  # the OOM watcher's
        samples = scraper.scrape()
        assert value(samples, "corral_container_pids", handle=handle) >= 1
        kept = set(_cgroup_files_open(scraper.daemon, handle)) - watched
        assert any(name.endswith("/pids.current") for name in kept), kept
        # Read again through the same files: a job's processes count.
        mclient.spawn(handle, "sleep 600 & sleep 600")
        wait_until(
            lambda: value(scraper.scrape(), "corral_container_pids", handle=handle) >= 3,
            what="the job's processes to count",
        )
        assert set(_cgroup_files_open(scraper.daemon, handle)) == kept | watched
    finally:
        mclient.destroy(handle)
    assert _cgroup_files_open(scraper.daemon, handle) == []


def test_a_container_without_limits_has_no_limit_samples(scraper: Scraper, mclient: Client) -> None:
    handle = mclient.create()
    try:
        samples = scraper.scrape()
        names = {name for name, labels in samples if ("handle", handle) in labels}
        assert "corral_container_memory_usage_bytes" in names
        assert "corral_container_memory_limit_bytes" not in names  # unlimited: no sample
        assert "corral_container_disk_limit_bytes" not in names
        assert value(samples, "corral_container_jobs_running", handle=handle) == 0
    finally:
        mclient.destroy(handle)


def test_states_paused_and_stopped_and_jobs_that_end(scraper: Scraper, mclient: Client) -> None:
    handle = mclient.create()
    try:
        job = mclient.spawn(handle, "sleep 600")
        mclient.pause(handle)
        samples = scraper.scrape()
        assert value(samples, "corral_container_state", handle=handle, state="paused") == 1
        assert value(samples, "corral_container_state", handle=handle, state="active") == 0
        assert value(samples, "corral_containers", state="paused") >= 1
        assert value(samples, "corral_container_jobs_running", handle=handle) == 1
        mclient.resume(handle)
        mclient.stop(handle, kill=True)
        samples = scraper.scrape()
        assert value(samples, "corral_container_state", handle=handle, state="stopped") == 1
        assert value(samples, "corral_container_jobs_running", handle=handle) == 0
        assert value(samples, "corral_container_jobs", handle=handle) == 1  # not linked yet
        mclient.link(handle, job)
        assert value(scraper.scrape(), "corral_container_jobs", handle=handle) == 0
    finally:
        mclient.destroy(handle)


def test_a_job_that_ends_is_no_longer_running(scraper: Scraper, mclient: Client) -> None:
    handle = mclient.create()
    try:
        mclient.spawn(handle, "sleep 0.3")
        assert value(scraper.scrape(), "corral_container_jobs_running", handle=handle) == 1
        wait_until(
            lambda: value(scraper.scrape(), "corral_container_jobs_running", handle=handle) == 0,
            what="the job to be seen ended",
        )
    finally:
        mclient.destroy(handle)


def test_request_counters_grow_after_requests(scraper: Scraper, mclient: Client) -> None:
    handle = mclient.create()
    try:
        before = scraper.scrape()
        for _ in range(5):
            mclient.info(handle)
        with pytest.raises(UnknownHandle):
            mclient.info("no-such-container")
        mclient.ping()
        with pytest.raises(CorralError, match="unknown command"):
            mclient.call("no-such-command")
        after = scraper.scrape()
    finally:
        mclient.destroy(handle)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - before.get((name, frozenset(labels.items())), 0)

    assert grew("corral_requests_total", command="info") == 6
    assert grew("corral_request_errors_total", command="info") == 1
    assert grew("corral_request_duration_seconds_count", command="info") == 6
    assert grew("corral_request_duration_seconds_bucket", command="info", le="+Inf") == 6
    assert grew("corral_request_duration_seconds_sum", command="info") > 0
    assert grew("corral_requests_total", command="ping") == 1
    assert grew("corral_requests_total", command="(unknown)") == 1
    assert grew("corral_request_errors_total", command="(unknown)") == 1
    # The buckets are cumulative, the last one holding them all.
    buckets = [
        value(after, "corral_request_duration_seconds_bucket", command="info", le=le)
        for le in ("0.0005", "0.001", "0.0025", "0.005", "0.01", "0.1", "1.0", "10.0", "+Inf")
    ]
    assert buckets == sorted(buckets)
    assert buckets[-1] == value(after, "corral_request_duration_seconds_count", command="info")


def test_the_textfile_is_written_and_parses(scraper: Scraper, mclient: Client) -> None:
    handle = mclient.create()
    try:
        textfile = scraper.textfile

        def shows_it() -> bool:
            text = textfile.read_text() if textfile.exists() else ""
            return f'handle="{handle}"' in text

        wait_until(shows_it, timeout=5, what="the textfile to show the new container")
        samples = parse(textfile.read_text())
        assert value(samples, "corral_container_state", handle=handle, state="active") == 1
        assert stat.S_IMODE(textfile.stat().st_mode) == 0o644
        leftover = [p.name for p in textfile.parent.iterdir() if p.name.endswith(".tmp")]
        assert leftover == []
    finally:
        mclient.destroy(handle)


def test_other_paths_and_methods_and_huge_requests(scraper: Scraper) -> None:
    base = f"http://127.0.0.1:{scraper.port}"
    assert get(f"{base}/")[0] == 404
    assert get(f"{base}/metricsx")[0] == 404
    assert get(f"{base}/metrics?name[]=x")[0] == 200
    post = urllib.request.Request(scraper.url, data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(post, timeout=10)
    assert refused.value.code == 405
    with socket.create_connection(("127.0.0.1", scraper.port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nX: " + b"y" * 20000 + b"\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 431 ")
    with socket.create_connection(("127.0.0.1", scraper.port), timeout=10) as s:
        s.sendall(b"nonsense\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 400 ")


def test_many_stuck_clients_do_not_stop_a_scrape(scraper: Scraper) -> None:
    stuck = [socket.create_connection(("127.0.0.1", scraper.port)) for _ in range(40)]
    try:
        time.sleep(0.2)
        # Past the limit of open connections, the newest are closed at once...
        closed = 0
        for s in stuck:
            s.settimeout(0.01)
            try:
                closed += s.recv(1) == b""
            except TimeoutError:
                pass
        assert closed >= 40 - http.MAX_CONNECTIONS
    finally:
        for s in stuck:
            s.close()
    # ...and once they are gone, the endpoint answers.
    wait_until(lambda: get(scraper.url)[0] == 200, what="a scrape after the stuck clients")


# -- refusals at start ----------------------------------------------------------------


def refusal(daemon: Daemon) -> str:
    """The one error line of a daemon that refused to start (it exits 1)."""
    with pytest.raises(RuntimeError, match="corrald exited 1"):
        daemon.start()
    text = daemon.log.read_text()
    errors = [line for line in text.splitlines() if '"level": "error"' in line]
    assert len(errors) == 1 and "Traceback" not in text, text
    assert '"event": "corrald cannot start"' in errors[0]
    return errors[0]


def test_an_address_in_use_stops_the_daemon_and_nothing_else_changes(
    artifacts: tuple[Path, Path],
) -> None:
    d = Daemon(*artifacts)
    taken = socket.create_server(("127.0.0.1", 0))
    try:
        port = taken.getsockname()[1]
        d.configure({"metrics": {"listen": f"127.0.0.1:{port}"}})
        line = refusal(d)
        assert f"[metrics] listen: cannot serve the metrics on 127.0.0.1:{port}" in line
        assert "Address already in use" in line
        # Refused before anything was made: no container, cgroup or nftables table.
        assert leftovers(d) == NOTHING_LEFT
        assert not any(p.exists() for p in cgroup_parents(d))
        assert table_rules(d.net["table"]) is None
    finally:
        taken.close()
        d.close()


def test_a_restart_on_an_address_in_use_leaves_the_containers_running(
    artifacts: tuple[Path, Path],
) -> None:
    d = Daemon(*artifacts)
    port = free_port()
    d.configure({"metrics": {"listen": f"127.0.0.1:{port}"}})
    try:
        with d.start().client() as c:
            handle = c.create()
            c.spawn(handle, "sleep 600")
        assert d.terminate() == 0  # the container is detached, still running
        inits = d.inits()
        with socket.create_server(("127.0.0.1", port)):
            d.log.unlink()
            assert "[metrics] listen" in refusal(d)
            assert d.inits() == inits
        with d.start().client() as c:
            assert c.info(handle)["state"] == "active"
            assert len(c.info(handle)["job_ids"]) == 1
        status, _, body = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and f'handle="{handle}"' in body
    finally:
        d.close()


def test_a_non_loopback_address_is_refused(artifacts: tuple[Path, Path]) -> None:
    d = Daemon(*artifacts, {"metrics": {"listen": f"0.0.0.0:{free_port()}"}})
    try:
        line = refusal(d)
        assert "[metrics] listen: " in line and "is not a loopback address" in line
    finally:
        d.close()


def test_a_textfile_in_a_missing_directory_is_refused(artifacts: tuple[Path, Path]) -> None:
    d = Daemon(*artifacts)
    d.configure({"metrics": {"textfile": d.dir / "nowhere" / "corral.prom"}})
    try:
        assert "[metrics] textfile:" in refusal(d)
    finally:
        d.close()


def test_the_textfile_is_removed_at_a_clean_stop(artifacts: tuple[Path, Path]) -> None:
    d = Daemon(*artifacts)
    textfile = d.dir / "corral.prom"
    d.configure({"metrics": {"textfile": textfile}})
    try:
        d.start()
        wait_until(textfile.exists, what="the first textfile")
        assert d.terminate() == 0
        assert not textfile.exists()
    finally:
        d.close()


# -- units ----------------------------------------------------------------------------


def settings(**table: Any) -> Settings:
    return parse_table(Settings, table, "metrics")


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:9464", Address("127.0.0.1", 9464)),
        ("127.8.9.10:1", Address("127.8.9.10", 1)),
        ("[::1]:65535", Address("::1", 65535)),
        ("[0:0::1]:80", Address("::1", 80)),
    ],
)
def test_listen_takes_loopback_addresses(text: str, address: Address) -> None:
    assert settings(listen=text).listen == address


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("0.0.0.0:9464", "is not a loopback address"),
        ("10.1.2.3:9464", "is not a loopback address"),
        ("[::]:9464", "is not a loopback address"),
        ("[::ffff:127.0.0.1]:9464", "is not a loopback address"),
        ("localhost:9464", "is not an IP address"),
        ("::1:9464", "goes in brackets"),
        ("127.0.0.1", "is not HOST:PORT"),
        ("127.0.0.1:0", "is not HOST:PORT"),
        ("127.0.0.1:65536", "is not HOST:PORT"),
        ("127.0.0.1:http", "is not HOST:PORT"),
        (":9464", "is not an IP address"),
        (9464, "must be a string"),
    ],
)
def test_listen_refuses_anything_but_a_loopback_address(value: Any, words: str) -> None:
    with pytest.raises(ConfigError, match=r"^\[metrics\] listen: ") as refused:
        settings(listen=value)
    assert words in str(refused.value)


def test_textfile_and_interval_are_checked() -> None:
    assert settings() == Settings()
    assert settings().listen is None and settings().textfile is None
    assert settings(textfile="/var/lib/x/corral.prom").textfile == Path("/var/lib/x/corral.prom")
    with pytest.raises(ConfigError, match=r"\[metrics\] textfile: .* does not end in .prom"):
        settings(textfile="/tmp/corral.txt")
    with pytest.raises(ConfigError, match=r"\[metrics\] textfile: must be an absolute path"):
        settings(textfile="corral.prom")
    assert settings(textfile_interval=2).textfile_interval == 2.0
    with pytest.raises(ConfigError, match=r"\[metrics\] textfile_interval: must be seconds >= 1"):
        settings(textfile_interval=0.5)


def snapshot(handles: list[str]) -> Snapshot:
    """A snapshot with every kind of value: limits and none, nulls, histograms, a failed
    command, odd label values."""
    full = {
        "state": "active",
        "job_ids": [1, 2],
        "memory_stat": {"usage": 577536, "max_usage": 761856, "limit": 67108864, "oom_count": 2},
        "cpu_stat": {"usage": 3549708123},
        "pids": {"current": 2, "max": 50},
        "disk_stat": {"bytes_used": 123456789012, "limit": 16777216},
        "net_stat": {"rx_bytes": 10, "tx_bytes": 90, "rx_packets": 1, "tx_packets": 1},
    }
    bare = {
        "state": "stopped",
        "job_ids": [],
        "memory_stat": {"usage": None, "max_usage": None, "limit": None, "oom_count": None},
        "pids": {"current": None, "max": None},
    }
    containers = [ContainerSample(h, full if i % 2 else bare, i % 3) for i, h in enumerate(handles)]
    counts = [0] * len(BUCKETS)
    counts[2], counts[-1] = 5, 1
    commands = {
        "info": CommandStats(6, 1, 12.5, counts),
        "(unknown)": CommandStats(1, 1, 0.0001, [1] + [0] * (len(BUCKETS) - 1)),
    }
    return Snapshot(containers, commands, pings=7, seconds=0.0123)


def test_the_rendering_is_prometheus_clients_own_byte_for_byte() -> None:
    snap = snapshot(["a1", "b.2", 'we"ird\\one\nx', "é"])
    assert exposition(snap) == generate_latest(registry_of(snap))
    process = process_collector()
    assert exposition(snap, [process]).startswith(exposition(snap))
    assert b"process_resident_memory_bytes" in exposition(snap, [process])


@pytest.mark.parametrize("number", [0, 7, 999_999, 1_000_000, 1_234_567, 2**62, 0.5, 1e-7, -3])
def test_every_number_is_written_as_prometheus_client_writes_it(number: float) -> None:
    figures = {
        "state": "active",
        "job_ids": [],
        "memory_stat": {"usage": number, "max_usage": True, "limit": "12", "oom_count": number},
        "pids": {"current": number, "max": None},
        "cpu_stat": {"usage": number},
    }
    snap = Snapshot([ContainerSample("h", figures, 0)], {}, pings=0, seconds=0.0)
    assert exposition(snap) == generate_latest(registry_of(snap))


def test_the_rendering_parses_and_says_what_the_snapshot_holds() -> None:
    samples = parse(exposition(snapshot(["a", "b"])).decode())
    assert value(samples, "corral_requests_total", command="ping") == 7
    assert value(samples, "corral_requests_total", command="info") == 6
    assert value(samples, "corral_request_errors_total", command="info") == 1
    assert value(samples, "corral_request_duration_seconds_bucket", command="info", le="0.001") == 0
    assert (
        value(samples, "corral_request_duration_seconds_bucket", command="info", le="0.0025") == 5
    )
    assert value(samples, "corral_request_duration_seconds_bucket", command="info", le="+Inf") == 6
    assert value(samples, "corral_request_duration_seconds_sum", command="info") == 12.5
    assert (
        "corral_request_duration_seconds_count",
        frozenset({("command", "ping")}),
    ) not in samples
    assert value(samples, "corral_containers", state="stopped") == 1
    assert value(samples, "corral_container_cpu_usage_seconds_total", handle="b") == 3.549708123
    assert value(samples, "corral_container_oom_kills_total", handle="b") == 2
    assert value(samples, "corral_container_disk_used_bytes", handle="b") == 123456789012
    assert value(samples, "corral_container_jobs", handle="b") == 2
    assert value(samples, "corral_container_jobs_running", handle="b") == 1
    assert not any(
        dict(labels).get("handle") == "a" and "memory" in name for name, labels in samples
    )
    assert math.isclose(value(samples, "corral_metrics_collection_seconds"), 0.0123)


def test_the_server_answers_one_request_per_connection() -> None:
    """The HTTP server alone, on a port of its own, with a page that counts its calls."""
    calls = 0

    async def page() -> bytes:
        nonlocal calls
        calls += 1
        return b"x 1.0\n"

    async def main() -> list[bytes]:
        sock = http.bind(Address("127.0.0.1", free_port()))
        port = sock.getsockname()[1]
        replies = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(http.serve, sock, page, CONTENT_TYPE)
            for request in (
                b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                b"HEAD /metrics HTTP/1.0\n\n",
                b"GET /other HTTP/1.1\r\n\r\n",
            ):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                async with stream:
                    await stream.send_all(request)
                    reply = b""
                    while chunk := await stream.receive_some(65536):
                        reply += chunk
                replies.append(reply)
            nursery.cancel_scope.cancel()
        return replies

    got, head, missing = trio.run(main)
    assert got.startswith(b"HTTP/1.1 200 OK\r\n")
    assert f"Content-Type: {CONTENT_TYPE}\r\n".encode() in got
    assert b"Content-Length: 6\r\n" in got and b"Connection: close\r\n" in got
    assert got.endswith(b"\r\n\r\nx 1.0\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and head.endswith(b"\r\n\r\n")
    assert missing.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert calls == 2


def test_the_process_metrics_are_prometheus_clients_with_open_files_counted_by_stat() -> None:
    ours = {m.name: m for m in DaemonProcessCollector().collect()}
    theirs = {m.name: m for m in ProcessCollector(registry=None).collect()}
    assert set(ours) == set(theirs) and len(ours) == 6
    for name, metric in theirs.items():
        assert (ours[name].type, ours[name].documentation) == (metric.type, metric.documentation)
        assert [s.name for s in ours[name].samples] == [s.name for s in metric.samples]
    for name in ("process_start_time_seconds", "process_max_fds"):
        assert ours[name].samples[0].value == theirs[name].samples[0].value
    # The listing counts the fd it reads the directory through; stat(2) has none open.
    listed = len(os.listdir("/proc/self/fd")) - 1
    assert open_fds() == listed == theirs["process_open_fds"].samples[0].value - 1
