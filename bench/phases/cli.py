"""The ``corral`` command's own cost: ``corral ping`` against a bare interpreter, and
``corral run --rm -- /bin/true`` against ``crun run`` and ``bwrap`` on the same rootfs.

The CLI runs as installed (scripts/install.sh): ``corral`` is the C front built from
this checkout (supervisor/cli/front.c: ``run`` and ``contain`` on their common path),
``corral-py`` beside it the Python CLI's launcher (``python -I``, no pip wrapper), on
this checkout's code with its bytecode compiled (an install compiles it; without, every
run would compile its modules again). ``corral ping`` goes through the front to Python,
as a user's does; ``run`` is also timed through ``corral-py`` alone (the Python path).
"""

from __future__ import annotations

import compileall
import sys
from pathlib import Path
from typing import Any

from bench.host import timed
from bench.phases.common import Bench, Tool, add_cold_peers, interleave, timer
from bench.stats import ratio, summarize
from executors.build import FRONT_PYTHON_CLI, build_front

REPO = Path(__file__).resolve().parents[2]
BARE = ["/usr/bin/python3", "-I", "-c", "pass"]


def launcher(workdir: Path) -> Path:
    """``corral-py`` as install.sh writes it, importing this checkout (in ``WORKDIR/cli``:
    the bench daemon's directory is ``WORKDIR/corral``)."""
    (workdir / "cli").mkdir(exist_ok=True)
    path = workdir / "cli" / FRONT_PYTHON_CLI
    path.write_text(
        f"#!{sys.executable} -I\nimport sys\nsys.path.insert(0, {str(REPO)!r})\n"
        "from supervisor.cli import finish, main\nfinish(main())\n"
    )
    path.chmod(0o755)
    return path


def front(workdir: Path) -> Path:
    """``corral``, the C front, built from this checkout beside :func:`launcher`'s."""
    return build_front(launcher(workdir).with_name("corral"))


def measure(bench: Bench, n: int) -> dict[str, Any]:
    """*n* rounds of each round-robin: start-up (ping, bare python), then cold runs."""
    compileall.compile_dir(REPO / "supervisor", quiet=1)
    peers = bench.peers
    corral, python = str(front(peers.rootfs.parent)), str(launcher(peers.rootfs.parent))
    socket = str(bench.daemon.socket)
    startup = interleave(
        bench,
        {
            "python3 -I -c pass": timer(lambda: BARE),
            "corral ping": timer(lambda: [corral, "-s", socket, "ping"]),
        },
        n,
    )
    args = ["-s", socket, "run", "--rm", "--rootfs", str(peers.rootfs), "--", "/bin/true"]
    run, run_python = [corral, *args], [python, *args]
    for cmd in (run, run_python):
        timed(cmd)  # it runs at all (raises with its stderr otherwise)
    tools: dict[str, Tool] = {
        "corral run --rm": timer(lambda: run),
        "corral-py run --rm": timer(lambda: run_python),
    }
    add_cold_peers(bench, tools, "cli")
    runs = interleave(bench, tools, n)
    stats = {k: summarize(v) for k, v in {**startup, **runs}.items()}

    def median(name: str) -> float | None:
        return stats.get(name, {}).get("median")

    return {
        "samples_ms": {**startup, **runs},
        "stats": stats,
        "ratios": {
            "ping_vs_python": ratio(median("corral ping"), median("python3 -I -c pass")),
            "run_vs_crun": ratio(median("corral run --rm"), median(peers.crun.cold_label)),
            "run_vs_bwrap": ratio(median("corral run --rm"), median(peers.bwrap.cold_label)),
            "python_run_vs_crun": ratio(
                median("corral-py run --rm"), median(peers.crun.cold_label)
            ),
        },
    }
