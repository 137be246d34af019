"""Each job's peak memory, from its own cgroup (``plugins/cgroups/jobs.py``), and the OOM
kills in it: cgroup v1 counts a kill only in the victim's own memory cgroup, so the
container's count must add its jobs'."""

from __future__ import annotations

from supervisor.client import Client
from tests.conftest import Daemon, cgroup_layout, cgroup_of, wait_until

MB = 1 << 20


def test_memory_peak_is_the_jobs_own_while_another_job_holds_memory(
    client: Client, container: str
) -> None:
    # dd holds its 128 MiB buffer while it waits to write into a pipe nobody reads.
    holder = client.spawn(
        container, "dd if=/dev/zero bs=128M count=1 | sleep 1000", discard_output=True
    )
    wait_until(
        lambda: client.info(container)["memory_stat"]["usage"] > 128 * MB,
        what="the other job to hold its 128 MiB",
    )
    status, _, err, report = client.run(
        container, "dd if=/dev/zero of=/dev/null bs=64M count=1", usage=True
    )
    assert status == 0, err
    peak = report["usage"]["memory_peak"]
    # Its 64 MiB buffer and a few hundred KiB of its own (the shell, page tables); the
    # container's peak is above 192 MiB.
    assert 64 * MB <= peak < 72 * MB, peak
    small = client.run(container, "echo hi", usage=True)[3]["usage"]["memory_peak"]
    assert 0 < small < 4 * MB, small
    client.signal(container, holder, "KILL")
    held = client.link(container, holder, usage=True)[3]["usage"]["memory_peak"]
    assert 128 * MB <= held < 136 * MB, held
    assert client.info(container)["memory_stat"]["max_usage"] >= 192 * MB


def test_an_oom_kill_in_a_job_counts_for_the_container_after_the_job_is_gone(
    daemon: Daemon, client: Client
) -> None:
    handle = client.create({"limits": {"mem": 64 * MB}})
    try:
        job = client.spawn(handle, "dd if=/dev/zero of=/dev/null bs=300M count=1")
        assert client.link(handle, job)[0] == 128 + 9  # the job, and its cgroup, forgotten
        info = wait_until(
            lambda: (i := client.info(handle))["state"] == "stopped" and i,
            what="the container to stop at the OOM",
        )
        assert info["events"].count("out of memory") == 1
        assert info["memory_stat"]["oom_count"] == 1
        memory = cgroup_of(daemon, handle, "memory")
        if cgroup_layout(daemon)["memory"].version == 1:
            # The kill is counted in the job's memory cgroup only: kept with its count.
            own = (memory / "memory.oom_control").read_text().split()
            assert own[own.index("oom_kill") + 1] == "0"
            assert (memory / f"job-{job}").is_dir()
    finally:
        client.destroy(handle)
