"""``corral contain -- /bin/true``, the whole command as a user runs it (the CLI's start,
create, the job, the container's end), against ``crun run`` and bwrap on the same
rootfs, round-robin.

Two ways: ``--overlay`` on the rootfs crun's bundle uses (read-only there, as the
bundle's root is), and the default direct root on a copy of its own (writes land in
it; the first run makes its missing mount points). Also, back to back, the CLI's own
start-up (``corral ping``) beside ``python3 -I -c pass``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.host import timed
from bench.phases.common import Bench, Tool, interleave, timer
from bench.stats import summarize
from supervisor.testing import REPO

#: What the installed ``corral`` script runs (a console-scripts entry point), with the
#: checkout's code: ``-m`` would add runpy's imports, which users do not pay.
ENTRY = "import sys; from supervisor.cli import main; sys.exit(main())"


def _cli(bench: Bench, *args: str) -> list[str]:
    return [sys.executable, "-c", ENTRY, "-s", str(bench.daemon.socket), *args]


def _in_repo(cmd: list[str], pycache: Path) -> Tool:
    """A round-robin tool running *cmd* from the checkout (the CLI of this tree), its
    bytecode cached in *pycache* (as an installed package has it: a run with
    ``PYTHONDONTWRITEBYTECODE`` would compile every module at every start)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(pycache)

    def run() -> float:
        t0 = time.perf_counter()
        done = subprocess.run(
            cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=120
        )
        ms = (time.perf_counter() - t0) * 1000
        if done.returncode != 0:
            raise RuntimeError(
                f"exit {done.returncode}: {done.stderr.decode(errors='replace')[-300:]}"
            )
        return ms

    return run


def measure(bench: Bench, n: int) -> dict[str, Any]:
    """*n* recorded rounds of ``corral contain`` (overlay, direct), crun and bwrap."""
    peers = bench.peers
    pycache = peers.rootfs.parent / "pycache"
    direct_root = peers.rootfs.parent / "rootfs-contain"
    if not direct_root.exists():
        shutil.copytree(peers.rootfs, direct_root, symlinks=True)
    tools: dict[str, Tool] = {
        "corral contain --overlay": _in_repo(
            _cli(bench, "contain", "-chroot", str(peers.rootfs), "--overlay", "--", "/bin/true"),
            pycache,
        ),
        "corral contain": _in_repo(
            _cli(bench, "contain", "-chroot", str(direct_root), "--", "/bin/true"), pycache
        ),
    }
    for peer in (peers.crun, peers.bwrap):
        label = peer.cold_label
        if peer.available and peers.check(label, peer.cold_cmd()):
            tools[label] = timer(peer.cold_cmd)
        else:
            bench.errors[f"contain/{label}"] = peers.errors.get(
                label, f"{peer.tool} is not installed"
            )
    samples = interleave(bench, tools, n)
    startup = interleave(
        bench,
        {
            "corral ping": _in_repo(_cli(bench, "ping"), pycache),
            "python3 -I -c pass": lambda: timed([sys.executable, "-I", "-c", "pass"]),
        },
        max(n // 2, 10),
    )
    return {
        "samples_ms": samples,
        "stats": {k: summarize(v) for k, v in samples.items()},
        "startup_stats": {k: summarize(v) for k, v in startup.items()},
    }
