"""RESULTS.md from the results, one function per section, in the order they appear.

Every section takes the whole results dict and returns its lines, starting with
the blank line before its heading; a section with nothing to show returns none.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.stats import fastest_peer, ratio

Results = dict[str, Any]

TARGETS = {
    "cold": "<= 1.0x `crun run` (median)",
    "exec": "<= 1.5x nsenter (median)",
    "density_pss": "<= 200 KiB PSS per idle container besides the workload at 500",
    "density_start": "500 started no slower than 500 `crun run -d` (<= 1.0x)",
    "ping_p99": "ping p99 < 5 ms at 100 clients",
    "scrape": "< 50 ms per metrics scrape at 500 containers (median)",
    "scrape_rss": "daemon RSS flat over 1,000 scrapes (grows <= 1 MiB)",
    "stream_text": ">= 500 MB/s for text (MB = 10^6 bytes)",
    "stream_binary": ">= 1 GB/s for binary, base64 or raw",
    "slow_readers": "daemon RSS flat with 100 slow `stream` readers (grows <= 1 MiB from "
    "their first second to their last)",
    "events": "a job's exit reaches 100 subscribers with p99 < 2 ms",
    "keystroke": "keystroke to echo through a terminal job: p99 < 2 ms, within 3x of a host pty",
    "signal": "`signal` to a running job: p50 < 1 ms",
    "ci_job": "< 50 ms per CI job (config + prepare + cleanup, median)",
    "ci_stage": "< 10 ms per CI stage beyond `sh` (median)",
    "shaping": "a bandwidth limit adds < 0.3 ms to a cold run (median)",
    "seccomp_cold": "the jobs' seccomp filter adds < 0.5 ms to a cold run (median)",
    "seccomp_exec": "the jobs' seccomp filter adds nothing measurable to an exec (< 0.05 ms, median)",
    "userns_cold": "the container's own ids (user namespace) add < 0.5 ms to a cold run (median)",
    "userns_exec": "the container's own ids add nothing measurable to an exec (< 0.05 ms, median)",
    "contain": "`corral contain -- /bin/true` <= 1.5x `crun run` (median)",
    "image_pull": "<= 1.0x `skopeo copy` + `umoci unpack` (median)",
    "image_create": "<= 1.1x create from a rootfs directory (median)",
    "image_disk": "layers' disk does not grow with the number of containers",
    "cli_ping": "`corral ping` <= 1.5x `python3 -I -c pass` (median)",
    "cli_run": "`corral run --rm -- /bin/true` <= 1.5x `crun run` (median)",
}


def report(results: Results, path: Path) -> None:
    """Write RESULTS.md for *results* to *path*."""
    path.write_text(render(results))


def render(results: Results) -> str:
    """RESULTS.md for *results*."""
    lines: list[str] = []
    for section in SECTIONS:
        lines += section(results)
    return "\n".join(lines) + "\n"


# -- cells and rows ------------------------------------------------------------------------


def esc(text: str) -> str:
    """Text for a Markdown table cell (a `|` would end the cell, also inside backticks)."""
    return text.replace("|", "\\|")


def fmt(x: Any, digits: int = 2) -> str:
    """A figure for a cell: floats with *digits* decimals, "–" for none."""
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def ratio_row(
    metric: str,
    corral: float | None,
    peer_name: str,
    peer: float | None,
    target: str,
    ok: bool | None,
    unit: str,
    lower_better: bool = True,
) -> str:
    """A row of the summary: Corral's figure, the peer's, their ratio, the target, the verdict.

    *peer_name* "–" means there is no peer; *ok* None means the target is not judged.
    """
    r = ratio(corral, peer)
    verdict = "–" if ok is None else ("**met**" if ok else "**not met**")
    way = "lower is better" if lower_better else "higher is better"
    peer_cell = "no peer" if peer_name == "–" else f"{esc(peer_name)}: {fmt(peer)} {unit}"
    ratio_cell = "–" if r is None else f"{fmt(r)}x ({way})"
    return (
        f"| {esc(metric)} | {fmt(corral)} {unit} | {peer_cell} | {ratio_cell} | {target} "
        f"| {verdict} |"
    )


def stats_table(title: str, stats: dict[str, Any], note: str = "") -> list[str]:
    """A section with one row per tool of *stats*, fastest first."""
    out = ["", f"## {title}", ""]
    if note:
        out += [note, ""]
    out += [
        "| tool | n | median | p90 | p99 | mean | min | max |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k, v in sorted(stats.items(), key=lambda kv: kv[1].get("median", 1e18)):
        if v.get("n"):
            out.append(
                f"| {k} | {v['n']} | {fmt(v['median'])} | {fmt(v['p90'])} | {fmt(v['p99'])} | "
                f"{fmt(v['mean'])} | {fmt(v['min'])} | {fmt(v['max'])} |"
            )
    return out


# -- the head of the file --------------------------------------------------------------------


def header(r: Results) -> list[str]:
    """Title, and which run wrote the file."""
    return [
        "# Corral benchmark results",
        "",
        f"Written by `bench/run.py{' --quick' if r['quick'] else ''}` on {r['date']} "
        f"({'QUICK run: fewer iterations, not the full figures' if r['quick'] else 'full run'}). "
        "See bench/README.md for the method. Times in ms unless stated; ratio = Corral / peer.",
    ]


def machine(r: Results) -> list[str]:
    """CPU, memory, kernel and the load average at start and end."""
    m = r["machine"]
    return [
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores; memory {m['memory_gib']} GiB; kernel {m['kernel']}; "
        f"Debian {m['debian']}",
        f"- load average at start {' '.join(m['loadavg_start'])}, at end {' '.join(m.get('loadavg_end', []))} "
        "(the machine is shared: other test suites may run at the same time)",
    ]


def versions(r: Results) -> list[str]:
    """Every tool's version."""
    return [
        "",
        "## Versions",
        "",
        "| tool | version |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in r["versions"].items()),
    ]


# -- the summary ---------------------------------------------------------------------------


def summary(r: Results) -> list[str]:
    """Each of Corral's figures against its peer and its target."""
    lines = [
        "",
        "## Summary: Corral against the targets",
        "",
        "| metric | Corral | best / reference peer | ratio | target | |",
        "|---|---|---|---|---|---|",
    ]
    for rows in (
        cold_rows,
        exec_rows,
        density_rows,
        scrape_rows,
        control_rows,
        stream_rows,
        jobs_rows,
        events_rows,
        ci_rows,
        shaping_rows,
        hardening_rows,
        contain_rows,
        images_rows,
    ):
        lines += rows(r)
    if r["quick"]:
        lines += [
            "",
            "Targets stated at 500 containers / 100 clients are not judged on a quick run "
            "when it uses fewer.",
        ]
    return lines


def cold_rows(r: Results) -> list[str]:
    """Cold run median against crun (the target) and against the fastest peer."""
    cold = r.get("cold", {}).get("stats", {})
    if not cold.get("corral", {}).get("n"):
        return []
    c = cold["corral"]["median"]
    crun = cold.get("crun run", {}).get("median")
    rows = [
        ratio_row(
            "cold run, median",
            c,
            "crun run",
            crun,
            TARGETS["cold"],
            None if crun is None else c <= crun,
            "ms",
        )
    ]
    best = fastest_peer(cold, "corral")
    if best:
        rows.append(
            ratio_row("cold run, median", c, f"best peer ({best[0]})", best[1], "–", None, "ms")
        )
    return rows


def exec_rows(r: Results) -> list[str]:
    """Exec median against nsenter (the target) and against the fastest peer if another."""
    ex = r.get("exec", {}).get("stats", {})
    if not ex.get("corral run", {}).get("n"):
        return []
    c = ex["corral run"]["median"]
    ns = ex.get("nsenter -a", {}).get("median")
    rows = [
        ratio_row(
            "exec, median",
            c,
            "nsenter -a",
            ns,
            TARGETS["exec"],
            None if ns is None else c <= 1.5 * ns,
            "ms",
        )
    ]
    best = fastest_peer(ex, "corral run")
    if best and best[0] != "nsenter -a":
        rows.append(
            ratio_row("exec, median", c, f"best peer ({best[0]})", best[1], "–", None, "ms")
        )
    return rows


def density_rows(r: Results) -> list[str]:
    """Memory per container, start and destroy times against crun; judged only at 500."""
    d = r.get("density", {})
    if not d.get("corral"):
        return []
    dc, dk = d["corral"], d.get("crun", {})
    n = d["n"]
    pss = dc.get("pss_per_container_kib")
    judged = n >= 500 and dc["started"] == n and pss is not None
    ok = None
    if dk.get("start_s") and dc["started"] == n and dk.get("started") == n:
        ok = dc["start_s"] <= dk["start_s"] if n >= 500 else None
    return [
        ratio_row(
            f"PSS per idle container besides workload, N={n}",
            pss,
            "crun",
            dk.get("pss_per_container_kib"),
            TARGETS["density_pss"],
            pss <= 200 if judged else None,
            "KiB",
        ),
        ratio_row(
            f"start {n} idle containers (wall)",
            dc["start_s"],
            "crun run -d",
            dk.get("start_s"),
            TARGETS["density_start"],
            ok,
            "s",
        ),
        ratio_row(
            f"destroy {n} containers (wall)",
            dc.get("destroy_s"),
            "crun delete -f",
            dk.get("destroy_s"),
            "–",
            None,
            "s",
        ),
    ]


def _scrapes(r: Results) -> dict[str, Any]:
    """The metrics scrapes of the density phase (empty when there were none)."""
    m: dict[str, Any] = r.get("density", {}).get("corral", {}).get("metrics_scrape") or {}
    return {} if "error" in m else m


def scrape_rows(r: Results) -> list[str]:
    """A metrics scrape's cost and the daemon's memory over many; judged only at 500."""
    m = _scrapes(r)
    if not m:
        return []
    n = m["containers"]
    spaced, back = m["spaced_ms"].get("median"), m["back_to_back_ms"].get("median")
    return [
        ratio_row(
            f"metrics scrape, {n} containers, median (scrapes > 2 s apart)",
            spaced,
            "–",
            None,
            TARGETS["scrape"],
            spaced < 50 if n >= 500 and spaced is not None else None,
            "ms",
        ),
        ratio_row(
            f"metrics scrape, {n} containers, median (back to back)",
            back,
            "–",
            None,
            "–",
            None,
            "ms",
        ),
        ratio_row(
            f"daemon RSS growth over {m['rss_scrapes']} scrapes, {n} containers",
            float(m["rss_growth_kib"]),
            "–",
            None,
            TARGETS["scrape_rss"],
            m["rss_flat"] if n >= 500 else None,
            "KiB",
        ),
    ]


def control_rows(r: Results) -> list[str]:
    """ping p99 at the most clients measured; judged only at 100 or more."""
    cp = r.get("control", {}).get("levels", {})
    top = max((int(k.split("/")[1]) for k in cp if k.startswith("ping/")), default=None)
    if top is None:
        return []
    p = cp[f"ping/{top}"]
    return [
        ratio_row(
            f"ping p99 at {top} clients",
            p.get("p99"),
            "–",
            None,
            TARGETS["ping_p99"],
            (p.get("p99", 1e9) < 5) if top >= 100 else None,
            "ms",
        )
    ]


def stream_rows(r: Results) -> list[str]:
    """Each stream's median MB/s against the same job with nobody streaming."""
    rows = []
    for label, v in r.get("stream", {}).get("variants", {}).items():
        mm = v.get("mb_per_s", {})
        text = v.get("encoding") == "utf-8" or label.startswith("yes")
        if mm.get("n"):
            rows.append(
                ratio_row(
                    f"stream `{label}`, median",
                    mm["median"],
                    "the same job writing a file, nobody streaming",
                    v.get("job_alone_mb_per_s", {}).get("median"),
                    TARGETS["stream_text" if text else "stream_binary"],
                    mm["median"] >= (500 if text else 1000),
                    "MB/s",
                    lower_better=False,
                )
            )
    slow = r.get("stream", {}).get("slow_readers", {})
    samples = slow.get("rss_each_second_kib") or []
    if len(samples) >= 2:
        growth = samples[-1] - samples[0]
        rows.append(
            ratio_row(
                f"daemon RSS growth with {slow['readers']} slow `stream` readers, "
                f"over {len(samples) - 1} s",
                float(growth),
                "–",
                None,
                TARGETS["slow_readers"],
                growth <= 1024 if slow["readers"] >= 100 else None,
                "KiB",
            )
        )
    return rows


def jobs_rows(r: Results) -> list[str]:
    """Keystroke round trip (p99, against a host pty's) and signal delivery (p50)."""
    j = r.get("jobs", {})
    rows = []
    key, floor = j.get("keystroke_ms", {}), j.get("host_pty_ms", {})
    if key.get("n"):
        ok = key["p99"] < 2 and bool(floor.get("n")) and key["p99"] <= 3 * floor["p99"]
        rows.append(
            ratio_row(
                "keystroke to echo, terminal job, p99",
                key["p99"],
                "the same through a pty on the host",
                floor.get("p99"),
                TARGETS["keystroke"],
                ok,
                "ms",
            )
        )
    sig = j.get("signal_ms", {})
    if sig.get("n"):
        rows.append(
            ratio_row(
                "signal to a running job, p50",
                sig["median"],
                "–",
                None,
                TARGETS["signal"],
                sig["median"] < 1,
                "ms",
            )
        )
    return rows


# -- the phases in detail ----------------------------------------------------------------------


def cold(r: Results) -> list[str]:
    """Every tool's cold run, and Corral's split by request, by log line and its CPU."""
    stats = r.get("cold", {}).get("stats", {})
    if not stats:
        return []
    lines = stats_table(
        "Cold run: create, run /bin/true, exit status, destroy (ms)",
        stats,
        "Interleaved round-robin, one sample per tool per round. Corral: create, run, destroy "
        "over one new connection per run.",
    )
    ph = r["cold"].get("corral_phases", {})
    if not ph:
        return lines
    lines += [
        "",
        "Corral's cold run by request (ms):",
        "",
        "| request | median | p90 | p99 |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {k} | {fmt(v.get('median'))} | {fmt(v.get('p90'))} | {fmt(v.get('p99'))} |"
        for k, v in ph.items()
    ]
    tl = r["cold"].get("corral_timeline_ms", {})
    if tl:
        lines += [
            "",
            "The same runs split by the daemon's own log lines (info level, its timestamps) "
            "between the client's requests and replies (ms):",
            "",
            "| span | runs | median | p90 | p99 |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {esc(k)} | {v.get('runs')} | {fmt(v.get('median'))} | {fmt(v.get('p90'))} | "
            f"{fmt(v.get('p99'))} |"
            for k, v in tl.items()
        ]
    cpu = r["cold"].get("corral_daemon_cpu_ms_per_run", {})
    if cpu:
        lines += [
            "",
            f"Daemon CPU per cold run: {fmt(cpu.get('daemon'))} ms in corrald, "
            f"{fmt(cpu.get('daemon_children'))} ms in its zygote, launchers, inits and jobs, "
            f"for {fmt(cpu.get('wall'))} ms wall ({cpu.get('calls')} runs).",
        ]
    return lines


def exec_(r: Results) -> list[str]:
    """Every tool's exec, and the daemon's CPU per Corral exec."""
    stats = r.get("exec", {}).get("stats", {})
    if not stats:
        return []
    lines = stats_table(
        "Exec in a running container: /bin/true (ms)",
        stats,
        f"Interleaved round-robin. nsenter enters the {r['exec'].get('nsenter_target')}. "
        "Corral: `run` over one open connection.",
    )
    cpu = r["exec"].get("corral_daemon_cpu_ms_per_run", {})
    if cpu:
        lines += [
            "",
            f"Daemon CPU per Corral exec: {fmt(cpu.get('daemon'))} ms for {fmt(cpu.get('wall'))} ms wall.",
        ]
    return lines


#: The density table's rows: label, the figure from one side's results, decimals.
DENSITY_ROWS: list[tuple[str, Callable[[dict[str, Any]], Any], int]] = [
    ("started / running workloads", lambda x: f"{x['started']} / {x['running_workloads']}", 2),
    ("wall time to start all (s)", lambda x: x["start_s"], 2),
    (
        "per container start, median / p90 / p99 (ms)",
        lambda x: (
            f"{fmt(x['per_container_start_ms']['median'])} / {fmt(x['per_container_start_ms']['p90'])}"
            f" / {fmt(x['per_container_start_ms']['p99'])}"
        ),
        2,
    ),
    ("PSS per container besides the workload (KiB)", lambda x: x["pss_per_container_kib"], 1),
    ("  of which container init PSS, median (KiB)", lambda x: x["init_pss_kib"]["median"], 1),
    (
        "  of which daemon PSS growth / N (KiB)",
        lambda x: x["daemon_growth_pss_per_container_kib"],
        1,
    ),
    (
        "daemon RSS growth / N (KiB)",
        lambda x: x["daemon_growth_kib"]["Rss"] / x["started"],
        1,
    ),
    (
        "daemon RSS before → after (KiB)",
        lambda x: f"{x['daemon_before_kib']['Rss']} → {x['daemon_after_kib']['Rss']}",
        2,
    ),
    (
        "processes per container besides the workload",
        lambda x: x["processes_besides_workload_per_container"],
        2,
    ),
    ("workload (sleep) PSS, median (KiB)", lambda x: x["workload_pss_kib"]["median"], 1),
    (
        "host MemAvailable drop / N, incl. kernel objects and workload (KiB, noisy)",
        lambda x: x["host_memavailable_drop_per_container_kib"],
        0,
    ),
    ("wall time to destroy all (s)", lambda x: x["destroy_s"], 2),
    (
        "per container destroy, median (ms)",
        lambda x: x["per_container_destroy_ms"]["median"],
        2,
    ),
]


def density(r: Results) -> list[str]:
    """Corral and crun side by side, N idle containers."""
    d = r.get("density", {})
    if not d.get("corral"):
        return []
    dc, dk = d["corral"], d.get("crun", {})

    def cell(key: Callable[[dict[str, Any]], Any], x: dict[str, Any], digits: int) -> str:
        # A side that failed or is missing lacks some figures: a dash, not an error.
        try:
            return fmt(key(x), digits)
        except (KeyError, TypeError):
            return "–"

    lines = [
        "",
        f"## Density: {d['n']} idle containers, one `sleep` each",
        "",
        "| | Corral | crun |",
        "|---|---|---|",
    ]
    lines += [
        f"| {label} | {cell(key, dc, digits)} | {cell(key, dk, digits)} |"
        for label, key, digits in DENSITY_ROWS
    ]
    for side in ("corral", "crun"):
        if d.get(side, {}).get("error"):
            lines += ["", f"{side} density error: {d[side]['error']}"]
    return lines


def scrape(r: Results) -> list[str]:
    """The metrics scrapes with the density phase's containers present."""
    m = _scrapes(r)
    error = r.get("density", {}).get("corral", {}).get("metrics_scrape", {}).get("error")
    if error:
        return ["", "## Metrics scrape", "", f"error: {esc(error)}"]
    if not m:
        return []

    def row(label: str, stats: dict[str, Any]) -> str:
        return (
            f"| {label} | {stats['n']} | {fmt(stats['median'])} | {fmt(stats['p90'])} | "
            f"{fmt(stats['p99'])} | {fmt(stats['max'])} |"
        )

    return [
        "",
        f"## Metrics scrape with {m['containers']} containers",
        "",
        f"`GET /metrics` from the metrics plugin (`[metrics] listen`), each a new connection, "
        f"{m['lines']} lines, {m['samples']} samples in {m['families']} families, "
        f'{m["bytes"]} bytes, {m["containers_in_scrape"]} containers in it. "collection" is '
        "the daemon's own figure (`corral_metrics_collection_seconds`): reading every "
        "container's figures (`DaemonView.stats`); the rest of the wall time is rendering "
        "the text (in a worker thread) and HTTP. Back to back, the fs plugin's 2-second cache "
        "of each writable layer's usage is fresh; scrapes more than 2 s apart (as Prometheus "
        "scrapes, every 15 s or so) find it stale and look at every layer again (an empty "
        "one is seen empty with one `getdents`, the others are walked).",
        "",
        "| scrapes | n | median | p90 | p99 | max |",
        "|---|---|---|---|---|---|",
        row("back to back, wall (ms)", m["back_to_back_ms"]),
        row("back to back, collection (ms)", m["back_to_back_collection_ms"]),
        row("> 2 s apart, wall (ms)", m["spaced_ms"]),
        row("> 2 s apart, collection (ms)", m["spaced_collection_ms"]),
        "",
        f"Over {m['rss_scrapes']} more scrapes back to back "
        f"({fmt(m['rss_scrapes_wall_ms_each'])} ms each, daemon CPU "
        f"{fmt(m['daemon_cpu_ms_per_scrape'])} ms per scrape, its worker threads included), "
        f"the daemon's RSS (KiB, before and every 100 scrapes): "
        f"{' → '.join(str(x) for x in m['rss_kib'])}; growth {m['rss_growth_kib']} KiB.",
    ]


def control(r: Results) -> list[str]:
    """Throughput, latency and daemon CPU per request type and number of clients."""
    cp = r.get("control", {}).get("levels", {})
    if not cp:
        return []
    c = r["control"]
    lines = [
        "",
        f"## Control plane with {c['containers']} containers present",
        "",
        f"Each client is its own process with its own connection, sending the next request as "
        f"soon as the reply arrives, for {c['duration_s']} s after a warm-up. "
        f"Creating the {c['containers']} containers took {fmt(c.get('create_all_s'))} s.",
        "",
        "| request | clients | throughput (req/s, higher is better) | median | p90 | p99 | max | errors | daemon CPU % |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k, v in cp.items():
        lines.append(
            f"| {k.split('/')[0]} | {v['clients']} | {fmt(v['throughput_per_s'], 0)} | {fmt(v.get('median'), 3)} | "
            f"{fmt(v.get('p90'), 3)} | {fmt(v.get('p99'), 3)} | {fmt(v.get('max'), 3)} | {v['errors']} | "
            f"{fmt(v['daemon_cpu_percent'], 0)} |"
        )
    return lines


def events_rows(r: Results) -> list[str]:
    """Delivery p99 (the target), and ping p99 with idle subscribers against none."""
    e = r.get("events")
    if not e:
        return []
    d, without, with_ = e["delivery"], e["ping_without"], e["ping_with"]
    return [
        ratio_row(
            f"event delivery p99, {e['subscribers']} subscribers",
            d.get("p99"),
            "–",
            None,
            TARGETS["events"],
            d.get("p99", 1e9) < 2,
            "ms",
        ),
        ratio_row(
            f"ping p99, 1 client, {e['idle']} idle subscribers",
            with_.get("p99"),
            "no subscriber",
            without.get("p99"),
            "–",
            None,
            "ms",
        ),
    ]


def shaping_rows(r: Results) -> list[str]:
    """What a bandwidth limit adds to a cold run (the target)."""
    s = r.get("shaping", {}).get("stats", {})
    if not s.get("limited", {}).get("n") or not s.get("plain", {}).get("n"):
        return []
    added = s["limited"]["median"] - s["plain"]["median"]
    return [
        ratio_row(
            "cold run with a bandwidth limit, median",
            s["limited"]["median"],
            "without",
            s["plain"]["median"],
            TARGETS["shaping"],
            added < 0.3,
            "ms",
        )
    ]


def contain_rows(r: Results) -> list[str]:
    """``corral contain`` against ``crun run`` (the target)."""
    s = r.get("contain", {}).get("stats", {})
    mine, crun = s.get("corral contain --overlay", {}), s.get("crun run", {})
    if not mine.get("n") or not crun.get("n"):
        return []
    return [
        ratio_row(
            "`corral contain --overlay -- /bin/true`, median",
            mine["median"],
            "crun run",
            crun["median"],
            TARGETS["contain"],
            mine["median"] <= 1.5 * crun["median"],
            "ms",
        )
    ]


def contain(r: Results) -> list[str]:
    """``corral contain`` against crun and bwrap."""
    c = r.get("contain")
    if not c:
        return []
    note = (
        "`corral contain -chroot ROOTFS [--overlay] -- /bin/true` as a user runs it (the "
        "installed CLI's start, create, the job, the container gone; `corral` is the C "
        "front, `corral-py` the Python CLI alone), round-robin with `crun run` and bwrap "
        "on the same rootfs (the direct root on a copy), ms:"
    )
    return stats_table("contain", c["stats"], note)


def shaping(r: Results) -> list[str]:
    """Cold runs with and without a bandwidth limit, and their creates."""
    sh = r.get("shaping")
    if not sh:
        return []
    s, c = sh["stats"], sh["create"]
    lines = [
        "",
        "## Shaping",
        "",
        f"Cold runs (create, `/bin/true`, destroy) round-robin, with `network.bandwidth` "
        f"{sh['bandwidth']} and without (ms):",
        "",
        "| | n | median | p90 | create median |",
        "|---|---|---|---|---|",
    ]
    for kind in ("plain", "limited"):
        lines.append(
            f"| {kind} | {s[kind].get('n')} | {fmt(s[kind].get('median'))} | "
            f"{fmt(s[kind].get('p90'))} | {fmt(c[kind].get('median'))} |"
        )
    return lines


def hardening_rows(r: Results) -> list[str]:
    """What the seccomp filter and the container's own ids add to a cold run and to an exec
    (the targets)."""
    h = r.get("hardening")
    if not h:
        return []
    rows = []
    for feature, off in (("seccomp", "seccomp false"), ("userns", "userns false")):
        for what, limit in (("cold", 0.5), ("exec", 0.05)):
            on, base = h["stats"][f"{what}, default"], h["stats"][f"{what}, {feature} off"]
            rows.append(
                ratio_row(
                    f"{what} with {feature}, median",
                    on.get("median"),
                    off,
                    base.get("median"),
                    TARGETS[f"{feature}_{what}"],
                    h["added_ms"][feature][what] < limit,
                    "ms",
                )
            )
    return rows


def hardening(r: Results) -> list[str]:
    """Cold runs and execs with the defaults, and with seccomp or the own ids turned off."""
    h = r.get("hardening")
    if not h:
        return []
    added = "; ".join(
        f"{feature}: cold {fmt(h['added_ms'][feature]['cold'], 3)} ms "
        f"({fmt(h['ratio'][feature]['cold'], 3)}x), exec {fmt(h['added_ms'][feature]['exec'], 3)} "
        f"ms ({fmt(h['ratio'][feature]['exec'], 3)}x)"
        for feature in h["added_ms"]
    )
    return stats_table(
        "Hardening",
        h["stats"],
        "Round-robin in the same run: containers created with the defaults (the default "
        "seccomp filter, ids of their own), with `seccomp: false` and with `userns: false` "
        f"(ms). Added by each (median): {added}.",
    )


def events(r: Results) -> list[str]:
    """Event delivery latency, and ping with and without idle subscribers."""
    e = r.get("events")
    if not e:
        return []
    lines = [
        "",
        "## Events",
        "",
        f"{e['subscribers']} subscriptions to one container's job exits, in a process of their "
        f"own; {e['jobs']} jobs one after another, `run` (the runner waits in `link` and is "
        "woken by the same exit), then spawned and linked once every subscriber has read the "
        "exit (at the exit only the daemon and the subscribers' process run). Latency: from "
        "the daemon's publishing of the exit (the event's `time`) to the line being read by "
        "each subscriber (ms).",
        "",
        "| jobs | lines read | n | median | p90 | p99 | mean | min | max |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for how, key in (("run", "delivery"), ("spawn, link after", "delivery_alone")):
        d = e.get(key)
        if not d:
            continue
        rows = [("every subscriber", dict(d, n=d["events"]))]
        rows += [
            (label, d[field])
            for label, field in (
                ("first subscriber of each exit", "first_subscriber_ms"),
                ("last subscriber of each exit", "last_subscriber_ms"),
                ("last less first, each exit", "spread_ms"),
            )
            if d.get(field)
        ]
        for label, x in rows:
            lines.append(
                f"| {how} | {label} | {x['n']} | {fmt(x.get('median'), 3)} | "
                f"{fmt(x.get('p90'), 3)} | {fmt(x.get('p99'), 3)} | {fmt(x.get('mean'), 3)} | "
                f"{fmt(x.get('min'), 3)} | {fmt(x.get('max'), 3)} |"
            )
    lines += [
        "",
        "The 100 lines of one exit are not independent: the p99 of every subscriber is the "
        "worst exit or two of the run.",
        "",
        f"`ping` from one client, with no subscriber and with {e['idle']} idle subscriptions "
        "open (ms):",
        "",
        "| subscribers | throughput (req/s) | median | p90 | p99 | max |",
        "|---|---|---|---|---|---|",
    ]
    for label, p in (("0", e["ping_without"]), (str(e["idle"]), e["ping_with"])):
        lines.append(
            f"| {label} | {fmt(p['throughput_per_s'], 0)} | {fmt(p.get('median'), 3)} | "
            f"{fmt(p.get('p90'), 3)} | {fmt(p.get('p99'), 3)} | {fmt(p.get('max'), 3)} |"
        )
    return lines


def ci_rows(r: Results) -> list[str]:
    """The GitLab driver's cost per job and per stage, as the runner runs it (every
    ``*_exec`` the C ``corral-gitlab-fast``), against the goals."""
    c = r.get("ci")
    if not c or "gitlab, C" not in c["overhead"]:
        return []
    way = c["overhead"]["gitlab, C"]
    sh = c["stats"][f"sh on the host, {c['stages']} stages"].get("median")
    return [
        ratio_row(
            "CI job (corral-gitlab-fast config + prepare + cleanup)",
            way["job_ms"],
            "–",
            None,
            TARGETS["ci_job"],
            way["job_goal_met"],
            "ms",
        ),
        ratio_row(
            f"CI stage (corral-gitlab-fast, beyond sh; {c['stages']} stages)",
            way["stage_ms"],
            "sh per stage",
            sh / c["stages"] if sh else None,
            TARGETS["ci_stage"],
            way["stage_goal_met"],
            "ms",
        ),
    ]


def ci(r: Results) -> list[str]:
    """Whole CI jobs through the drivers and with sh; the overhead split per job and stage."""
    c = r.get("ci")
    if not c:
        return []
    lines = stats_table(
        "CI executors",
        c["stats"],
        f"Whole jobs (ms): config, prepare, {c['stages']} or 0 empty stages, cleanup, through "
        "the GitLab driver (a process per stage as the runner runs it: every stage in C, or "
        "every stage in Python; or called in the bench's process) and the GitHub hooks (a process per hook); the same stages with `sh` on "
        "the host; and what a Python process costs before it does anything.",
    )
    lines += [
        "",
        "| driver | per job (0 stages) | per stage beyond sh | whole job / sh |",
        "|---|---|---|---|",
    ]
    for way, o in c["overhead"].items():
        lines.append(
            f"| {way} | {fmt(o['job_ms'])} ms | {fmt(o['stage_ms'])} ms | "
            f"{fmt(o['job_ratio_to_sh'])}x |"
        )
    return lines


def stream(r: Results) -> list[str]:
    """MB/s of each job streamed, and of the same job alone."""
    st = r.get("stream", {}).get("variants", {})
    if not st:
        return []
    s = r["stream"]
    lines = [
        "",
        f"## Stream: a job writing {s['bytes'] / 1e6:.0f} MB to stdout, read with `stream`",
        "",
        "MB/s = 10^6 bytes of job output per second, from `spawn` to the final `[]`, counted "
        "after decoding (higher is better). 'Job alone': the same script in a Corral "
        "container writing to a file in its home, nobody streaming: the producer's own "
        "speed, a ceiling for the stream.",
        "",
        "| job, encoding | runs | stream median | min | max | job alone, median | "
        "daemon CPU s / client CPU s / wall s (first run) |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in st.values():
        mm = v["mb_per_s"]
        cpu = v.get("cpu") or [{}]
        usage = (
            f"{fmt(cpu[0].get('daemon_cpu_s'), 1)} / {fmt(cpu[0].get('client_cpu_s'), 1)} / "
            f"{fmt(cpu[0].get('seconds'), 1)}"
        )
        if mm.get("n"):
            lines.append(
                f"| `{esc(v['script'])}`, {v['encoding']} | {mm['n']} | {fmt(mm['median'], 1)} | "
                f"{fmt(mm['min'], 1)} | {fmt(mm['max'], 1)} | "
                f"{fmt(v['job_alone_mb_per_s'].get('median'), 1)} | {usage} |"
            )
        for e in v.get("errors", []):
            lines.append(f"| `{esc(v['script'])}` | error: {esc(e[:200])} | | | | | |")
    slow = s.get("slow_readers", {})
    if slow.get("error"):
        lines += ["", f"Slow readers: error: {esc(slow['error'][:300])}"]
    elif slow.get("rss_each_second_kib"):
        each = " → ".join(str(k) for k in slow["rss_each_second_kib"])
        lines += [
            "",
            f"Slow readers: {slow['readers']} connections `stream` one job (`{esc(slow['producer'])}`, "
            f"{fmt(slow['written_mb'], 0)} MB written in {fmt(slow['seconds'], 0)} s), each "
            f"reading {slow['read_bytes'] // 1024} KiB every {slow['read_every_s']} s. "
            "The daemon's RSS (KiB): before "
            f"{slow['rss_before_kib']}; each second {each}; once they have gone "
            f"{slow['rss_after_kib']}.",
        ]
    return lines


def jobs(r: Results) -> list[str]:
    """Keystroke round trips and signal requests, in ms."""
    j = r.get("jobs")
    if not j:
        return []
    stats = {
        "keystroke to echo, terminal job through corrald": j.get("keystroke_ms", {}),
        "keystroke to echo, pty on the host (floor)": j.get("host_pty_ms", {}),
        "`signal` request to reply": j.get("signal_ms", {}),
    }
    note = (
        f"{j['keystrokes']} one-byte `stdin` writes to a terminal job running `cat` (raw, "
        "echo off), each until `stream` on another connection brings the byte back; the "
        f"floor is the same through Python's `pty` on the host. {j['signals']} `signal` "
        "requests to a job trapping USR1. ms (lower is better)."
    )
    return stats_table("Jobs: keystroke to echo, signal delivery", stats, note)


def profile(r: Results) -> list[str]:
    """The profile files, and where the CPU and wall samples went."""
    prof = r.get("profile", {})
    if not prof:
        return []
    lines = ["", "## Profile of corrald during cold runs (py-spy)", ""]
    if prof.get("error"):
        return [*lines, prof["error"]]
    lines.append(
        f"{prof['iterations']} cold runs per pass; flame graph (CPU): `{prof.get('svg_file')}`, "
        f"collapsed stacks: `{prof.get('cpu_file')}` (CPU), `{prof.get('wall_file')}` (wall, incl. idle)."
    )
    for label in ("cpu", "wall"):
        if prof.get(label):
            lines += profile_pass(label, prof[label])
    return lines


def profile_pass(label: str, a: dict[str, Any]) -> list[str]:
    """One pass's kinds of samples and its busiest functions, side by side."""
    kinds = ", ".join(f"{k} {v}%" for k, v in a["kinds_percent"].items() if v)
    cols = ("top_self_percent", "top_corral_nearest_percent", "top_corral_inclusive_percent")
    lines = [
        "",
        f"### {label.upper()} profile: {a['samples']} samples ({kinds})",
        "",
        "Shares are of all samples; idle samples are left out of the columns.",
        "",
        "| busy leaf function (self) | % | nearest Corral function | % "
        "| Corral function, inclusive | % |",
        "|---|---|---|---|---|---|",
    ]
    for i in range(max(len(a[c]) for c in cols)):
        cells = []
        for c in cols:
            name, pct = a[c][i] if i < len(a[c]) else ("", "")
            cells += [f"`{name}`" if name else "", str(pct)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# -- the end of the file -----------------------------------------------------------------------


def setup(r: Results) -> list[str]:
    """Which peers ran, the cgroup quirk, crun before and after it, the daemon's notes."""
    available = r.get("peers_available", {})
    lines = [
        "",
        "## Peers and host set-up",
        "",
        f"- peers installed: {', '.join(k for k, v in available.items() if v) or 'none'}; "
        f"missing: {', '.join(k for k, v in available.items() if not v) or 'none'}",
    ]
    hug = r.get("cgroup_quirk", {})
    if hug:
        lines += [
            f"- cgroup2 root controllers before the run: {hug.get('v2_root_controllers_before')}; "
            f"v1 hierarchies mounted for the run: {hug.get('mounted')}; after: {hug.get('v2_root_controllers_after')}",
            f"- crun before the mount: {r.get('crun_without_quirk', '?')}; with it: {r.get('crun_with_quirk', '?')}",
        ]
    lines += [f"- corrald: {n}" for n in r.get("corral_notes", [])]
    return lines


def errors(r: Results) -> list[str]:
    """Every error of the run, by phase (or phase/tool)."""
    if not r["errors"]:
        return []
    return ["", "## Errors", "", *(f"- {k}: {str(v)[:400]}" for k, v in r["errors"].items())]


def cleanup(r: Results) -> list[str]:
    """What of the run was left on the host at the end (nothing, when all went well)."""
    if not r.get("cleanup"):
        return []
    return ["", "## Clean-up check", "", *(f"- {k}: {v}" for k, v in r["cleanup"].items())]


def images_rows(r: Results) -> list[str]:
    """Pull+unpack against skopeo+umoci, create from an image against a rootfs, layers' disk."""
    im = r.get("images")
    if not im:
        return []
    pull, create, disk = im.get("pull", {}), im.get("create", {}), im.get("disk", {})
    rows = []
    corral, peer = pull.get("corral", {}).get("median"), pull.get("skopeo+umoci", {}).get("median")
    if corral is not None:
        ok = None if peer is None else corral <= peer
        rows.append(
            ratio_row(
                "pull + unpack a 3-layer image (~100 MB)",
                corral,
                "skopeo copy + umoci unpack",
                peer,
                TARGETS["image_pull"],
                ok,
                "ms",
            )
        )
    image, rootfs = create.get("image", {}).get("median"), create.get("rootfs", {}).get("median")
    if image is not None:
        ok = None if rootfs is None else image <= 1.1 * rootfs
        rows.append(
            ratio_row(
                "create from an image (layers present)",
                image,
                "create from the rootfs",
                rootfs,
                TARGETS["image_create"],
                ok,
                "ms",
            )
        )
    n = disk.get("containers")
    if n and f"layers_bytes_{n}" in disk:
        one, many = disk["layers_bytes_1"] / 1e6, disk[f"layers_bytes_{n}"] / 1e6
        rows.append(
            ratio_row(
                f"layers' disk with {n} containers of the image",
                many,
                "with 1 container",
                one,
                TARGETS["image_disk"],
                many <= one,
                "MB",
            )
        )
    return rows


def images(r: Results) -> list[str]:
    """The images phase in full."""
    im = r.get("images")
    if not im:
        return []
    lines = stats_table(
        "Images: pull + unpack (ms)",
        im.get("pull", {}),
        f"A 3-layer image of {fmt(im['image_bytes_uncompressed'] / 1e6, 1)} MB "
        f"({fmt(im['image_bytes_compressed'] / 1e6, 1)} MB compressed) in Debian's "
        "docker-registry on loopback: Corral's `image-pull` into an emptied store against "
        "`skopeo copy` to an OCI layout plus `umoci unpack`, round-robin.",
    )
    lines += stats_table(
        "Images: create (ms)",
        im.get("create", {}),
        "`create` of a container of the image (layers present) against `create` from the "
        "rootfs directory, round-robin, each destroyed untimed.",
    )
    disk = im.get("disk", {})
    n = disk.get("containers")
    if n:
        lines += [
            "",
            "## Images: disk",
            "",
            "| containers | layers (MB) | containers' own directories (MB) |",
            "|---|---|---|",
            f"| 1 | {fmt(disk['layers_bytes_1'] / 1e6)} | {fmt(disk['containers_bytes_1'] / 1e6)} |",
            f"| {n} | {fmt(disk[f'layers_bytes_{n}'] / 1e6)} | "
            f"{fmt(disk[f'containers_bytes_{n}'] / 1e6)} |",
        ]
    return lines


#: The sections of RESULTS.md, in order.
def cli(r: Results) -> list[str]:
    """The CLI's start-up and its cold run, against a bare interpreter, crun and bwrap."""
    c = r.get("cli")
    if not c:
        return []
    ratios = c["ratios"]

    def verdict(value: float | None) -> str:
        return "–" if value is None else f"{value:.2f}x ({'met' if value <= 1.5 else 'missed'})"

    return [
        *stats_table(
            "CLI",
            c["stats"],
            "`corral` as installed (the C front, which runs `corral-py`, the Python CLI "
            "with `python -I`, compiled, for what it leaves to it), round-robin: start-up "
            "against a bare interpreter (`corral ping` goes through the front to Python), "
            "then `corral run --rm --rootfs ROOTFS -- /bin/true` (the front's own path; "
            "`corral-py run --rm`: the same through Python) against the cold phase's crun "
            "bundle and bwrap on the same rootfs (ms).",
        ),
        "",
        f"- {TARGETS['cli_ping']}: {verdict(ratios['ping_vs_python'])}",
        f"- {TARGETS['cli_run']}: {verdict(ratios['run_vs_crun'])}; "
        f"against bwrap {fmt(ratios['run_vs_bwrap'])}x; through Python "
        f"(`corral-py`) {fmt(ratios.get('python_run_vs_crun'))}x `crun run`",
    ]


SECTIONS: list[Callable[[Results], list[str]]] = [
    header,
    machine,
    versions,
    summary,
    cold,
    exec_,
    density,
    scrape,
    control,
    stream,
    jobs,
    events,
    ci,
    shaping,
    hardening,
    contain,
    images,
    cli,
    profile,
    setup,
    errors,
    cleanup,
]
