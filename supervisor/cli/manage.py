"""Docker's commands for containers that exist: ``ps``, ``top``, ``logs``, ``inspect``,
``stats``, ``cp``, ``limit``, ``port``, ``net``, ``stop``, ``kill``, ``rm``, ``pause``,
``unpause``. Each prints for people, or JSON with ``--json``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from supervisor.cli.command import Command, Fail, connect, pairs, parse_size, write_out
from supervisor.cli.run import COMMAND, CREATED, MAIN_JOB, ROOT, parse_publish

if TYPE_CHECKING:
    from supervisor.client import Client


def _json_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


def _dump(value: Any) -> None:
    print(json.dumps(value, indent=2))


def human_size(n: float | None) -> str:
    """``64m``-style, as the options take it (powers of 1024)."""
    if n is None:
        return "-"
    for unit in ("", "k", "m", "g"):
        if abs(n) < 1024:
            return f"{n:.0f}{unit}" if n == int(n) else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}t"


def human_age(seconds: float) -> str:
    for unit, span in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= span:
            return f"{int(seconds // span)}{unit}"
    return f"{int(seconds)}s"


def table(rows: list[list[str]]) -> None:
    """Columns as wide as their widest cell; the last one as it is."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1])


# -- ps -------------------------------------------------------------------------------------


def state_of(info: dict[str, Any]) -> str:
    """The daemon's state, or ``exited`` for an active container the CLI made whose main job
    (``run -d``'s) has ended: Docker's exited container that still takes ``exec``."""
    main = info["properties"].get(MAIN_JOB)
    if info["state"] == "active" and main and int(main) not in info["job_ids"]:
        return "exited"
    return str(info["state"])


#: A cpuset of every core is no limit (it is what the daemon reports for none).
_ALL_CORES = f"0-{(os.cpu_count() or 1) - 1}" if (os.cpu_count() or 1) > 1 else "0"


def limits_text(limits: dict[str, Any]) -> str:
    shown = []
    for key in ("mem", "cpus", "cpuset", "pids", "disk"):
        value = limits.get(key)
        if value is None or (key == "cpuset" and value == _ALL_CORES):
            continue
        if key == "mem":
            value = human_size(value)
        elif key == "disk":
            value = f"{value}m"
        shown.append(f"{key}={value}")
    return ",".join(shown) or "-"


def summary(handle: str, info: dict[str, Any], now: float) -> dict[str, Any]:
    """What ``ps`` shows of a container (its ``--json`` item)."""
    props = info["properties"]
    created = props.get(CREATED)
    return {
        "handle": handle,
        "state": state_of(info),
        "root": props.get(ROOT),
        "address": info.get("container_ip"),
        "age": None if created is None else now - int(created),
        "jobs": len(info["job_ids"]),
        "limits": info.get("limits") or {},
        "command": props.get(COMMAND),
        "properties": props,
    }


def _infos(client: Client, handles: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """(handle, info) of each, skipping one destroyed between the list and its info."""
    from supervisor.errors import UnknownHandle

    found = []
    for handle in handles:
        try:
            found.append((handle, client.info(handle)))
        except UnknownHandle:
            continue
    return found


def ps(args: argparse.Namespace) -> int:
    wanted: dict[str, str] = {}
    states: set[str] = set()
    for item in args.filter:
        key, sep, value = item.partition("=")
        if key in ("property", "label") and "=" in value:
            wanted.update(pairs([value], "--filter property"))
        elif key == "state" and sep:
            states.add(value)
        else:
            raise Fail(f"--filter {item!r}: use state=STATE or property=KEY=VALUE (label=...)")
    if not states and not args.all:
        states = {"active", "paused", "exited"}  # Docker's ps: what runs; -a for the rest
    with connect(args) as client:
        infos = _infos(client, client.list(wanted or None))
    now = time.time()
    rows = [summary(h, i, now) for h, i in infos]
    rows = [r for r in rows if r["state"] in states or not states]
    if args.quiet:
        for r in rows:
            print(r["handle"])
    elif args.json:
        _dump(rows)
    else:
        cells = [["HANDLE", "STATE", "ROOT", "ADDRESS", "AGE", "JOBS", "LIMITS", "COMMAND"]]
        for r in rows:
            command = r["command"] or "-"
            cells.append(
                [
                    r["handle"],
                    r["state"],
                    r["root"] or "-",
                    r["address"] or "-",
                    "-" if r["age"] is None else human_age(r["age"]),
                    str(r["jobs"]),
                    limits_text(r["limits"]),
                    command if len(command) <= 40 else command[:37] + "...",
                ]
            )
        table(cells)
    return 0


def _ps_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="stopped containers too")
    p.add_argument(
        "-f",
        "--filter",
        action="append",
        default=[],
        metavar="FILTER",
        help="state=STATE (active, paused, stopped, exited) or property=KEY=VALUE (label=)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="handles only")
    _json_flag(p)


# -- top, logs, inspect ------------------------------------------------------------------------

#: Columns both busybox's ps and procps' take; a root without ps lists its /proc.
PS_COLUMNS = "pid,ppid,user,stat,rss,args"
TOP_SCRIPT = (
    f"ps -o {PS_COLUMNS} 2>/dev/null || "
    'for p in /proc/[0-9]*; do echo "${p#/proc/} $(tr "\\0" " " < $p/cmdline)"; done'
)


def top(args: argparse.Namespace) -> int:
    with connect(args) as client:
        status, out, err = client.run(args.handle, TOP_SCRIPT, privileged=True)
    if status != 0:
        raise Fail(f"top: ps in {args.handle} exited {status}: {(err or '').strip()}")
    # Not the ps we ran for it.
    lines = [line for line in (out or "").splitlines() if f"ps -o {PS_COLUMNS}" not in line]
    if args.json:
        header = lines[0].split() if lines else []
        rows = [
            dict(zip(header, line.split(None, len(header) - 1), strict=False)) for line in lines[1:]
        ]
        _dump({"handle": args.handle, "processes": rows})
    else:
        print("\n".join(lines))
    return 0


def _handle_and_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("handle")
    _json_flag(p)


def main_job(client: Client, handle: str) -> int:
    """The job ``logs`` shows: the one ``run`` started (a property), else job 1."""
    return int(client.info(handle)["properties"].get(MAIN_JOB, 1))


def logs(args: argparse.Namespace) -> int:
    import base64

    with connect(args) as client:
        job = args.job if args.job is not None else main_job(client, args.handle)
        chunks = client.stream(
            args.handle, job, encoding="base64", **({} if args.follow else {"follow": False})
        )
        for name, chunk in chunks:
            if name == "cut":
                print(f"corral: the job's {chunk} was cut at the output limit", file=sys.stderr)
            elif args.json:
                data = base64.b64decode(chunk).decode("utf-8", "surrogateescape")
                print(json.dumps({"stream": name, "data": data}), flush=True)
            else:
                write_out(name, base64.b64decode(chunk))
    return 0


def _logs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--follow", action="store_true", help="go on until the job ends")
    p.add_argument("--job", type=int, help="this job's output (default: the one run started)")
    p.add_argument("handle")
    p.add_argument("--json", action="store_true", help="one {stream, data} object per chunk")


def inspect(args: argparse.Namespace) -> int:
    with connect(args) as client:
        infos = [{"handle": h, **client.info(h)} for h in args.handles]
    _dump(infos if len(infos) > 1 else infos[0])
    return 0


def _inspect_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("handles", nargs="+", metavar="HANDLE")
    _json_flag(p)  # the output is JSON either way


# -- stats -------------------------------------------------------------------------------------


def _sample(client: Client, handles: list[str]) -> dict[str, tuple[float, dict[str, Any]]]:
    return {h: (time.monotonic(), i) for h, i in _infos(client, handles)}


def _figures(
    handle: str, before: tuple[float, dict[str, Any]] | None, now: tuple[float, dict[str, Any]]
) -> dict[str, Any]:
    t1, info = now
    mem = info.get("memory_stat") or {}
    cpu = (info.get("cpu_stat") or {}).get("usage")
    cpu_percent = None
    if before is not None and cpu is not None:
        t0, old = before
        old_cpu = (old.get("cpu_stat") or {}).get("usage")
        if old_cpu is not None and t1 > t0:
            cpu_percent = (cpu - old_cpu) / 1e9 / (t1 - t0) * 100
    net = info.get("net_stat") or {}
    return {
        "handle": handle,
        "cpu_percent": cpu_percent,
        "memory_usage": mem.get("usage"),
        "memory_limit": mem.get("limit"),
        "net_rx_bytes": net.get("rx_bytes"),
        "net_tx_bytes": net.get("tx_bytes"),
        "disk_bytes": (info.get("disk_stat") or {}).get("bytes_used"),
        "pids": (info.get("pids") or {}).get("current"),
    }


def _stats_table(figures: list[dict[str, Any]]) -> list[list[str]]:
    rows = [["HANDLE", "CPU %", "MEM USAGE / LIMIT", "NET I/O", "DISK", "PIDS"]]
    for f in figures:
        cpu = "-" if f["cpu_percent"] is None else f"{f['cpu_percent']:.2f}%"
        limit = "-" if f["memory_limit"] is None else human_size(f["memory_limit"])
        rows.append(
            [
                f["handle"],
                cpu,
                f"{human_size(f['memory_usage'])} / {limit}",
                f"{human_size(f['net_rx_bytes'])} / {human_size(f['net_tx_bytes'])}",
                human_size(f["disk_bytes"]),
                "-" if f["pids"] is None else str(f["pids"]),
            ]
        )
    return rows


def stats(args: argparse.Namespace) -> int:
    with connect(args) as client:
        handles = args.handles or client.list()
        before = _sample(client, handles)
        while True:
            time.sleep(args.interval)
            now = _sample(client, args.handles or client.list())
            figures = [_figures(h, before.get(h), s) for h, s in now.items()]
            if args.json:
                print(json.dumps(figures), flush=True)
            else:
                if not args.no_stream:
                    sys.stdout.write("\033[H\033[J")  # a fresh screen, as docker stats
                table(_stats_table(figures))
                sys.stdout.flush()
            if args.no_stream:
                return 0
            before = now


def _stats_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("handles", nargs="*", metavar="HANDLE", help="default: every container")
    p.add_argument("--no-stream", action="store_true", help="one sample, then exit")
    p.add_argument(
        "--interval", type=float, default=1.0, help="seconds between samples (default 1)"
    )
    p.add_argument("--json", action="store_true", help="one JSON array per sample")


# -- cp, limit, port, net ----------------------------------------------------------------------


def _container_path(spec: str) -> tuple[str, str] | None:
    """``HANDLE:/path`` as (handle, path); None for a local path (``./a:b`` is local)."""
    handle, sep, path = spec.partition(":")
    if sep and handle and "/" not in handle and path.startswith("/"):
        return handle, path
    return None


def cp(args: argparse.Namespace) -> int:
    src, dst = _container_path(args.src), _container_path(args.dst)
    if (src is None) == (dst is None):
        raise Fail("cp copies between a container and the host: HANDLE:/PATH LOCAL or the reverse")
    with connect(args) as client:
        if src is not None:
            handle, direction = src[0], "out"
            # Files copied out are ours, as `docker cp` makes them.
            owner = f"{os.getuid()}:{os.getgid()}"
            request = [src[1], _local(args.dst), owner]
        else:
            assert dst is not None
            handle, direction = dst[0], "in"
            request = [_local(args.src), dst[1]]
        client.call("copy", handle, direction, *request)
    if args.json:
        print(
            json.dumps({"handle": handle, "direction": direction, "src": args.src, "dst": args.dst})
        )
    return 0


def _local(path: str) -> str:
    """An absolute path for the daemon, keeping a trailing / (rsync's: the contents)."""
    absolute = os.path.abspath(path)
    return absolute + "/" if path.endswith("/") and absolute != "/" else absolute


def _cp_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", metavar="SRC", help="HANDLE:/PATH or a local path")
    p.add_argument("dst", metavar="DST", help="a local path or HANDLE:/PATH")
    _json_flag(p)


def limit_value(resource: str, text: str) -> Any:
    """VALUE as the resource takes it: a size for ``mem``, a number, a core list, or JSON."""
    if text.startswith("{") or text == "null":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise Fail(f"{resource}: {text!r} is not JSON: {exc}") from None
    if resource == "mem":
        return parse_size(text, "mem")
    if resource == "bandwidth":
        rate, _, burst = text.partition(",")
        rate_bytes = parse_size(rate, "bandwidth rate")
        # Docker has no such option; a burst of 1/10 s at the rate (at least a frame) is tc's habit.
        burst_bytes = (
            parse_size(burst, "bandwidth burst") if burst else max(rate_bytes // 10, 65536)
        )
        return {"rate": rate_bytes, "burst": burst_bytes}
    if resource == "cpuset":
        return text
    try:
        return float(text) if resource == "cpus" else int(text)
    except ValueError:
        raise Fail(f"{resource}: {text!r} is not a number") from None


def limit(args: argparse.Namespace) -> int:
    value = None if args.value is None else limit_value(args.resource, args.value)
    with connect(args) as client:
        result = client.call("limit", args.handle, args.resource, value)
    if args.json:
        print(json.dumps({"handle": args.handle, "resource": args.resource, "value": result}))
    elif args.resource == "mem" and isinstance(result, int):
        print(human_size(result))
    else:
        print(
            "none" if result is None else json.dumps(result) if isinstance(result, dict) else result
        )
    return 0


def _limit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("handle")
    p.add_argument("resource", help="mem, cpus, cpu, cpuset, pids, disk, bandwidth")
    p.add_argument(
        "value",
        nargs="?",
        help="absent: read it; mem: a size (64m); bandwidth: RATE[,BURST] per second (1m)",
    )
    _json_flag(p)


def forward_text(forward: dict[str, Any]) -> str:
    """``80/tcp -> 0.0.0.0:20001``, as docker port prints."""
    address = forward.get("host_address") or "0.0.0.0"
    return f"{forward['container_port']}/tcp -> {address}:{forward['host_port']}"


def port(args: argparse.Namespace) -> int:
    with connect(args) as client:
        if args.revoke is not None:
            client.call("net", args.handle, "in", {"host_port": args.revoke, "revoke": True})
            forwards = []
        elif args.spec:
            forwards = [client.call("net", args.handle, "in", parse_publish(args.spec))]
        else:
            forwards = client.info(args.handle).get("net_in") or []
    if args.json:
        _dump(forwards)
    else:
        for forward in forwards:
            print(forward_text(forward))
    return 0


def _port_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("handle")
    p.add_argument("spec", nargs="?", metavar="[ADDR:]HOST:CTR", help="add this forward")
    p.add_argument("--revoke", type=int, metavar="HOST_PORT", help="remove the forward of it")
    _json_flag(p)


def net(args: argparse.Namespace) -> int:
    with connect(args) as client:
        if args.direction == "in":
            result = client.call("net", args.handle, "in", parse_publish(args.target))
            text = forward_text(result)
        else:
            opts = {
                "protocol": args.protocol,
                "icmp_type": args.icmp_type,
                "icmp_code": args.icmp_code,
                "log": args.log or None,
                "revoke": args.revoke or None,
            }
            opts = {k: v for k, v in opts.items() if v is not None}
            result = client.call("net", args.handle, "out", args.target, opts)
            text = f"{'revoked' if args.revoke else 'allowed'} {args.target}"
    print(json.dumps(result) if args.json else text)
    return 0


def _net_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("direction", choices=("out", "in"), help="out: allow egress; in: forward a port")
    p.add_argument("handle")
    p.add_argument(
        "target", metavar="TARGET", help="out: ADDR[/MASK][:PORT[-PORT]]; in: [ADDR:]HOST:CTR"
    )
    p.add_argument("--protocol", choices=("tcp", "udp", "icmp", "all"), help="default all")
    p.add_argument("--icmp-type", type=int)
    p.add_argument("--icmp-code", type=int)
    p.add_argument("--log", action="store_true", help="log each new connection (kernel log)")
    p.add_argument("--revoke", action="store_true", help="remove the rule")
    _json_flag(p)


# -- stop, kill, rm, pause, unpause ------------------------------------------------------------


def _each(args: argparse.Namespace, action: Any) -> int:
    """Do *action(client, handle)* to every handle; a failure is named and the rest go on
    (as Docker does), the exit status 1 if any failed."""
    from supervisor.errors import CorralError

    failed = done = 0
    results = []
    with connect(args) as client:
        for handle in args.handles:
            try:
                action(client, handle)
            except CorralError as exc:
                print(f"corral: {handle}: {exc}", file=sys.stderr)
                failed += 1
                continue
            done += 1
            results.append(handle)
            if not args.json:
                print(handle)
    if args.json:
        print(json.dumps(results))
    return 1 if failed else 0


def _handles_and_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("handles", nargs="+", metavar="HANDLE")
    _json_flag(p)


def stop(args: argparse.Namespace) -> int:
    # -t: seconds between TERM and KILL (0: KILL at once); default the daemon's stop_timeout.
    opts = {} if args.time is None else {"timeout": args.time}
    return _each(args, lambda c, h: c.call("stop", h, opts))


def _stop_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-t", "--time", type=float, metavar="SECONDS", help="wait before KILL")
    _handles_and_json(p)


def kill(args: argparse.Namespace) -> int:
    """The signal to every running job of the container (each job's process group)."""

    def signal_jobs(client: Client, handle: str) -> None:
        from supervisor.errors import InvalidState, UnknownJob

        for job in client.info(handle)["job_ids"]:
            try:
                client.signal(handle, job, args.signal)
            except (InvalidState, UnknownJob):  # it ended meanwhile
                pass

    return _each(args, signal_jobs)


def _kill_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-s", "--signal", default="KILL", help="name or number (default KILL)")
    _handles_and_json(p)


def rm(args: argparse.Namespace) -> int:
    def remove(client: Client, handle: str) -> None:
        if not args.force:
            state = state_of(client.info(handle))
            if state in ("active", "paused"):
                from supervisor.errors import InvalidState

                raise InvalidState(f"it is {state}: stop it first, or rm -f")
        client.destroy(handle)

    return _each(args, remove)


def _rm_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="destroy it even if it runs")
    _handles_and_json(p)


COMMANDS = [
    Command("ps", "list containers (as docker ps)", ps, _ps_arguments, aliases=("ls",)),
    Command("top", "the processes of a container", top, _handle_and_json),
    Command("logs", "the output of a container's main job (or --job N)", logs, _logs_arguments),
    Command("inspect", "a container's info, as JSON", inspect, _inspect_arguments),
    Command("stats", "live CPU, memory, network, disk and pids figures", stats, _stats_arguments),
    Command("cp", "copy files between a container and the host", cp, _cp_arguments),
    Command("limit", "read or set a container's limit", limit, _limit_arguments),
    Command("port", "list, add or remove a container's port forwards", port, _port_arguments),
    Command("net", "allow egress (out) or forward a port (in)", net, _net_arguments),
    Command("stop", "stop every process of containers (TERM, then KILL)", stop, _stop_arguments),
    Command("kill", "send a signal to the running jobs of containers", kill, _kill_arguments),
    Command("rm", "destroy containers (stopped ones, or any with -f)", rm, _rm_arguments),
    Command(
        "pause",
        "freeze every process of containers",
        lambda a: _each(a, lambda c, h: c.pause(h)),
        _handles_and_json,
    ),
    Command(
        "unpause",
        "let paused containers run again",
        lambda a: _each(a, lambda c, h: c.resume(h)),
        _handles_and_json,
        aliases=("resume",),
    ),
]
