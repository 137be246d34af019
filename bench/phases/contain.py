"""``corral contain -- /bin/true``, the whole command as a user runs it (the CLI's start,
create, the job, the container's end), against ``crun run`` and bwrap on the same
rootfs, round-robin.

Two ways: ``--overlay`` on the rootfs crun's bundle uses (read-only there, as the
bundle's root is), and the default direct root on a copy of its own (writes land in
it; the first run makes its missing mount points). The CLI runs as installed, as in
the ``cli`` phase (``bench/phases/cli.py``: the C front, ``corral-py`` beside it,
compiled bytecode); ``--overlay`` is also timed through ``corral-py`` alone (the
Python path).
"""

from __future__ import annotations

import compileall
import shutil
from typing import Any

from bench.host import timed
from bench.phases.cli import REPO, front, launcher
from bench.phases.common import Bench, Tool, add_cold_peers, interleave, timer
from bench.stats import ratio, summarize


def measure(bench: Bench, n: int) -> dict[str, Any]:
    """*n* recorded rounds of ``corral contain`` (overlay, direct), crun and bwrap."""
    compileall.compile_dir(REPO / "supervisor", quiet=1)
    peers = bench.peers
    args = ["-s", str(bench.daemon.socket), "contain"]
    corral = [str(front(peers.rootfs.parent)), *args]
    python = [str(launcher(peers.rootfs.parent)), *args]
    direct_root = peers.rootfs.parent / "rootfs-contain"
    if not direct_root.exists():
        shutil.copytree(peers.rootfs, direct_root, symlinks=True)
    overlay = [*corral, "-chroot", str(peers.rootfs), "--overlay", "--", "/bin/true"]
    direct = [*corral, "-chroot", str(direct_root), "--", "/bin/true"]
    overlay_python = [*python, *overlay[len(corral) :]]
    for cmd in (overlay, direct, overlay_python):
        timed(cmd)  # it runs at all (raises with its stderr otherwise)
    tools: dict[str, Tool] = {
        "corral contain --overlay": timer(lambda: overlay),
        "corral contain": timer(lambda: direct),
        "corral-py contain --overlay": timer(lambda: overlay_python),
    }
    add_cold_peers(bench, tools, "contain")
    samples = interleave(bench, tools, n)
    stats = {k: summarize(v) for k, v in samples.items()}

    def median(name: str) -> float | None:
        return stats.get(name, {}).get("median")

    return {
        "samples_ms": samples,
        "stats": stats,
        "ratios": {
            "overlay_vs_crun": ratio(median("corral contain --overlay"), median("crun run")),
            "direct_vs_crun": ratio(median("corral contain"), median("crun run")),
            "python_overlay_vs_crun": ratio(
                median("corral-py contain --overlay"), median("crun run")
            ),
        },
    }
