#!/opt/corral/venv/bin/python
"""Corral's benchmark: Corral against crun, runc, bubblewrap, unshare, nsenter and podman.

Run as root from the repository:

    /opt/corral/venv/bin/python bench/run.py            # full run (several minutes)
    /opt/corral/venv/bin/python bench/run.py --quick    # short run for development

It installs the peers (bench/install-peers.sh), starts a private corrald
(supervisor.testing.PrivateDaemon, as the tests do), measures cold runs, exec,
density, the control plane and output streaming, and writes bench/RESULTS.md
and bench/results.json. See bench/README.md for what is measured and how.
Everything it creates (containers, cgroups, mounts, bundles, the daemon) is
removed before it exits, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
# Import the modules next to this one as the package `bench`, from the repository. Run as a
# script, Python put bench/ itself first on sys.path: it goes, so none of them shadows a module.
sys.path[:] = [str(REPO), *(p for p in sys.path if Path(p).resolve() != BENCH)]

from bench import report  # noqa: E402
from bench.daemon import BenchDaemon  # noqa: E402
from bench.host import Janitor, V1Controllers, leftovers, loadavg, log, machine, versions  # noqa: E402
from bench.peers import Peers  # noqa: E402
from bench.phases import (  # noqa: E402
    ci,
    cli,
    cold,
    contain,
    control,
    density,
    events,
    hardening,
    images,
    jobs,
    profile,
    shaping,
    stream,
)
from bench.phases import exec as exec_  # noqa: E402
from bench.phases.common import Bench  # noqa: E402

PHASES = (
    "cold",
    "contain",
    "exec",
    "density",
    "control",
    "stream",
    "jobs",
    "events",
    "ci",
    "shaping",
    "hardening",
    "images",
    "cli",
    "profile",
)


def parse_args() -> argparse.Namespace:
    """The command line, with the defaults of a full or a --quick run filled in."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="few iterations (development)")
    parser.add_argument("--runs", type=int, help="cold and exec rounds (default 250, quick 30)")
    parser.add_argument("--density", type=int, help="idle containers (default 500, quick 50)")
    parser.add_argument("--only", default=",".join(PHASES), help="comma list of phases to run")
    parser.add_argument(
        "--no-install", action="store_true", help="do not run bench/install-peers.sh"
    )
    parser.add_argument(
        "--out", type=Path, default=BENCH, help="where RESULTS.md and results.json go"
    )
    args = parser.parse_args()
    q = args.quick
    args.runs = args.runs or (30 if q else 250)
    args.density = args.density or (50 if q else 500)
    args.warmup = 3 if q else 10
    args.out = args.out.resolve()
    return args


def plan(bench: Bench, args: argparse.Namespace) -> list[tuple[str, Callable[[], Any]]]:
    """The phases in their order, each with the sizes of a full or a --quick run."""
    q = args.quick
    return [
        ("cold", lambda: cold.measure(bench, args.runs)),
        ("contain", lambda: contain.measure(bench, 30 if q else 100)),
        ("exec", lambda: exec_.measure(bench, args.runs)),
        ("density", lambda: density.measure(bench, args.density)),
        (
            "control",
            lambda: control.measure(bench, 50 if q else 200, [1, 10, 100], 1.5 if q else 5.0),
        ),
        ("stream", lambda: stream.measure(bench, 100_000_000 if q else 500_000_000, 1 if q else 3)),
        ("jobs", lambda: jobs.measure(bench, 2000, 200 if q else 2000)),
        ("events", lambda: events.measure(bench, 100, 50 if q else 300, 1000, 1.5 if q else 5.0)),
        ("ci", lambda: ci.measure(bench, 10 if q else 30, 5 if q else 10)),
        ("shaping", lambda: shaping.measure(bench, args.runs)),
        ("hardening", lambda: hardening.measure(bench, args.runs)),
        ("images", lambda: images.measure(bench, 3 if q else 10, 30 if q else 200, 100)),
        ("cli", lambda: cli.measure(bench, 30 if q else 100)),
        ("profile", lambda: profile.measure(bench, 40 if q else 150)),
    ]


def run_phases(bench: Bench, args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Run the phases asked for; one failing is recorded and the next one runs."""
    phases = set(args.only.split(","))
    for name, fn in plan(bench, args):
        if name not in phases:
            continue
        log(f"phase {name}")
        try:
            results[name] = fn()
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            results["errors"][name] = f"{type(exc).__name__}: {exc}"
            log(f"phase {name} failed:\n{traceback.format_exc()}")
            if not bench.daemon.running:
                results["errors"]["corrald"] = "daemon died: " + bench.daemon.log_tail(2000)
                break
            # The peers' containers only: the run's cgroups and the nftables table are
            # also the live daemon's, which the next phases use.
            bench.janitor.clean_peers()


def install_peers() -> dict[str, Any]:
    """Run bench/install-peers.sh; its exit status and the end of its output."""
    log("installing peers (bench/install-peers.sh)")
    inst = subprocess.run(["bash", str(BENCH / "install-peers.sh")], capture_output=True, text=True)
    sys.stderr.write(inst.stdout + inst.stderr)
    return {"exit": inst.returncode, "output": (inst.stdout + inst.stderr)[-2000:]}


def crun_check(peers: Peers, label: str) -> str:
    """Whether crun runs a container now ("runs", or why it fails)."""
    ok = peers.check(label, peers.crun.cold_cmd())
    return "runs" if ok else f"fails: {peers.errors.get(label, '')}"


#: Held for a whole run: two runs at once would share the hugetlb hierarchy the cgroup
#: quirk mounts (one unmounting it under the other's crun, which then makes its cgroups
#: in the bare mount point on the host's /sys/fs/cgroup) and measure each other.
LOCK = Path("/run/lock/corral-bench.lock")


def one_run_at_a_time() -> None:
    """Wait for a run under way on this machine to end (the lock goes with our process)."""
    import fcntl

    LOCK.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log(f"another bench run holds {LOCK}: waiting for it to end")
        fcntl.flock(fd, fcntl.LOCK_EX)


def main() -> int:
    """One run: set up, the phases, clean up, RESULTS.md and results.json; the exit status."""
    args = parse_args()
    if os.geteuid() != 0:
        print("bench/run.py must run as root (it starts containers)", file=sys.stderr)
        return 2

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # so the clean-up in `finally` runs

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    one_run_at_a_time()

    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": args.quick,
        "settings": {
            "runs": args.runs,
            "density": args.density,
            "warmup": args.warmup,
            "phases": sorted(set(args.only.split(","))),
        },
        "machine": machine(),
        "errors": {},
    }
    if not args.no_install:
        results["install_peers"] = install_peers()

    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="cbench-", dir="/tmp"))
    prefix = f"cbench{os.getpid()}-"
    janitor = Janitor(prefix, workdir)
    quirk = V1Controllers()
    daemon: BenchDaemon | None = None
    status = 0
    try:
        peers = Peers(workdir, janitor)
        results["peers_available"] = peers.available
        if peers.crun.available:
            results["crun_without_quirk"] = crun_check(peers, "crun-pre")
        quirk.__enter__()
        results["cgroup_quirk"] = quirk.report
        if peers.crun.available:
            results["crun_with_quirk"] = crun_check(peers, "crun-post")
        daemon = BenchDaemon(workdir, prefix, 1_000_000_000 if args.quick else 1_200_000_000)
        log("starting a private corrald")
        daemon.start()
        log(f"corrald pid {daemon.pid}, plugins {daemon.plugins}")
        results["versions"] = versions(daemon.plugins)
        bench = Bench(daemon, peers, janitor, results["errors"], args.warmup, args.out)
        run_phases(bench, args, results)
        daemon.note_log()
        results["corral_notes"] = daemon.notes
        log("stopping corrald and cleaning up")
        daemon.stop()
        janitor.clean()
    except KeyboardInterrupt as exc:
        results["errors"]["interrupted"] = str(exc) or "interrupted"
        status = 130
    except Exception as exc:
        results["errors"]["fatal"] = f"{type(exc).__name__}: {exc}"
        log(traceback.format_exc())
        status = 1
    finally:
        clean_up(daemon, janitor, quirk, workdir, results)
        results["cleanup"] = leftovers(prefix, workdir)
        if "versions" not in results:
            results["versions"] = versions(daemon.plugins if daemon else [])
        (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
        report.report(results, args.out / "RESULTS.md")
        log(f"wrote {args.out / 'RESULTS.md'} and {args.out / 'results.json'}")
    return status


def clean_up(
    daemon: BenchDaemon | None,
    janitor: Janitor,
    quirk: V1Controllers,
    workdir: Path,
    results: dict[str, Any],
) -> None:
    """Remove everything of the run; every step runs even if an earlier one fails."""
    with suppress(Exception):
        if daemon is not None:
            daemon.stop()
    with suppress(Exception):
        janitor.clean()
    with suppress(Exception):
        quirk.__exit__(None, None, None)  # after every cgroup of the run is gone
    results["cgroup_quirk"] = quirk.report
    mounted_in_workdir = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if str(workdir) in line.split()[4]
    ]
    if mounted_in_workdir:
        results["errors"]["mounts in the work dir"] = (
            mounted_in_workdir  # never rm -rf through a mount
        )
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    results["janitor_notes"] = janitor.notes
    results["machine"]["loadavg_end"] = loadavg()


if __name__ == "__main__":
    sys.exit(main())
