"""``python -m bench``: run the chatd benchmark scenarios and print the figures.

Every row is printed as one JSON line on stdout when its scenario ends, then a
human table. A figure below its target is a MISS, never an error: the exit
status is non-zero only if the bench crashed or saw a correctness failure
(events missing, duplicated or out of order; a daemon that died).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import math
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from tests.pg_cluster import ClusterError

from . import membership, nodes, typing_storm
from . import scenarios as sc
from .workers import loop_name, raise_nofile

SCENARIOS = ("CEILING", "S1", "S2", "S2-MAX", "S3", "S4", "TYPING", "MEMBERSHIP", "NODES")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--only", default="",
                   help="comma-separated scenarios to run, of " + ",".join(SCENARIOS)
                   + " (default: all; S1 runs the ceiling too, around each of its runs,"
                   " and ends with its floor; NODES, several daemons on a throwaway"
                   " PostgreSQL, is skipped with a line saying why when there is none)")
    p.add_argument("--quick", action="store_true",
                   help="small sizes and short durations: a smoke run under a minute")
    p.add_argument("--s1-k", default="", metavar="K,K,...",
                   help="S1 sender counts (default 1,16,64; the largest carries the target)")
    p.add_argument("--client", choices=("lean", "websockets"), default="lean",
                   help="load-generator client: the lean RFC 6455 client (default) or the "
                   "websockets asyncio client")
    p.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                   help="event loop of the load-generator workers (default: uvloop if "
                   "installed); the daemon runs as it would in production")
    p.add_argument("--tmp", type=Path, default=None,
                   help="directory for the databases (default: a new temporary directory; "
                   "the ceiling runs on the same file system)")
    p.add_argument("--profile", type=Path, default=None, metavar="DIR",
                   help="record each daemon with py-spy (collapsed stacks, DIR/<scenario>.txt)")
    args = p.parse_args(argv)
    only = {s.strip().upper() for s in args.only.split(",") if s.strip()}
    unknown = only - set(SCENARIOS)
    if unknown:
        p.error(f"--only: unknown scenario(s) {', '.join(sorted(unknown))}; "
                f"choose from {', '.join(SCENARIOS)}")
    args.only = only or set(SCENARIOS)
    try:
        args.s1_k = tuple(int(k) for k in args.s1_k.split(",") if k.strip())
    except ValueError:
        p.error("--s1-k: a comma-separated list of integers")
    if any(k < 1 for k in args.s1_k):
        p.error("--s1-k: counts must be positive")
    return args


def machine() -> dict[str, str]:
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cores": str(os.cpu_count()),
        "cpu": model,
        "python": platform.python_version(),
        "websockets": importlib.metadata.version("websockets"),
        "kernel": platform.release(),
    }


def fs_type(path: Path) -> str:
    best, kind = "", "?"
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            mount, fstype = parts[1], parts[2]
            if str(path.resolve()).startswith(mount) and len(mount) > len(best):
                best, kind = mount, fstype
    return kind


def table(rows: list[sc.Row]) -> str:
    def fig(r: sc.Row) -> str:
        return "n/a" if math.isnan(r.figure) else f"{r.figure:,.1f} {r.unit}"

    head = ("scenario", "figure", "target", "result", "of ceiling")
    body = [(r.scenario, fig(r), r.target, r.status,
             "" if r.ratio is None else f"{100 * r.ratio:.1f}%") for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths, strict=True)),
             "  ".join("-" * w for w in widths)]
    for r, cells in zip(rows, body, strict=True):
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
        if r.note:
            lines.append("    " + r.note)
    return "\n".join(lines)


def emit(rows: list[sc.Row], new: list[sc.Row]) -> None:
    for r in new:
        print(r.json(), flush=True)
    rows.extend(new)


def _terminate(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # unwinds through the cleanups: daemons and workers stop


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    nofile = raise_nofile()  # the daemon and the workers inherit it
    sizes = sc.QUICK if args.quick else sc.FULL
    if args.s1_k:
        sizes = dataclasses.replace(sizes, s1_ks=args.s1_k)
    own_tmp = args.tmp is None
    tmp = Path(tempfile.mkdtemp(prefix="chatd-bench-")) if own_tmp else args.tmp
    tmp.mkdir(parents=True, exist_ok=True)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    b = sc.Bench(tmp, sizes, client=args.client, loop=args.loop, profile_dir=args.profile)
    loop = loop_name(args.loop)
    info = machine()
    sc.log(f"{info['cores']} cores, {info['cpu']}, Python {info['python']}, websockets "
           f"{info['websockets']}; databases in {tmp} ({fs_type(tmp)}); fd limit {nofile}; "
           f"load generator: {args.client} client on {loop}{'; quick' if args.quick else ''}")
    started = time.time()
    rows: list[sc.Row] = []
    only = args.only
    skipped = ""
    try:
        if "S1" in only:
            s1 = sc.run_s1(b)
            emit(rows, [sc.ceiling_row(b), *s1])
        elif "CEILING" in only:
            for _ in range(3):
                sc.ceiling_slice(b)
            emit(rows, [sc.ceiling_row(b, with_s1=False)])
        if "S2" in only or "S2-MAX" in only:
            emit(rows, sc.run_s2(b, only))
        if "S3" in only:
            emit(rows, sc.run_s3(b))
        if "S4" in only:
            emit(rows, sc.run_s4(b))
        if "TYPING" in only:
            # 1,000 subscribers (the quick run: S2's largest N); 100 typers.
            emit(rows, typing_storm.run_typing(b, n=b.sizes.s2_settings[-1][0]))
        if "MEMBERSHIP" in only:
            emit(rows, membership.rows(quick=args.quick))
            n = b.sizes.s2_settings[-1][0]
            emit(rows, membership.run_s2mix(b, n=n, rate=200 if not args.quick else 50))
        if "NODES" in only:
            skipped = nodes.unavailable() or ""
            if not skipped:
                k = f"S1 K={b.sizes.nodes_k}"
                try:
                    emit(rows, nodes.run_nodes(b, next((r for r in rows if r.scenario == k),
                                                       None)))
                except ClusterError as exc:
                    skipped = f"PostgreSQL did not start: {str(exc).splitlines()[0]}"
            if skipped:
                skipped = f"NODES ({nodes.TITLE}) skipped: {skipped}"
    except KeyboardInterrupt:
        sc.log("interrupted")
        return 130
    finally:
        if own_tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    print(file=sys.stderr)
    print(f"chatd bench: {info['cores']} cores, {info['cpu']}, Python {info['python']}, "
          f"websockets {info['websockets']}, load generator {args.client} client on {loop}, "
          f"db on {fs_type(tmp)}"
          f"{', quick' if args.quick else ''}; {time.time() - started:.0f} s", flush=True)
    main_rows = [r for r in rows if not r.section]
    if main_rows:
        print(table(main_rows), flush=True)
    for section, title in ((membership.SECTION, membership.TITLE), (nodes.SECTION, nodes.TITLE)):
        group = [r for r in rows if r.section == section]
        if group:
            print(f"\n{section}: {title}", flush=True)
            print(table(group), flush=True)
    if skipped:
        print("\n" + skipped, flush=True)
    if b.warnings:
        print("\nTHE DAEMON LOGGED (warnings, errors, tracebacks; first lines):", flush=True)
        for w in b.warnings:
            print("  " + w, flush=True)
    if b.failures:
        print("\nCORRECTNESS FAILURES:", flush=True)
        for f in b.failures:
            print("  " + f, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
