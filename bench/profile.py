"""Summarise a py-spy profile: ``python -m bench.profile FILE.txt [--top N]``.

FILE is what ``python -m bench --profile DIR`` records (``py-spy record --format
raw --threads``: one collapsed stack and its sample count a line). Prints, per
thread, the functions with the most samples on top of the stack (self) and on
the stack at all (inclusive), as a share of that thread's samples and of all.
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict


def load(path: str) -> dict[str, Counter[tuple[str, ...]]]:
    """{thread: Counter(stack tuple -> samples)}; stacks are outermost first."""
    out: dict[str, Counter[tuple[str, ...]]] = defaultdict(Counter)
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack:
                continue
            frames = stack.split(";")
            thread = "all"
            if frames and frames[0].startswith("thread ("):
                thread, frames = frames[0], frames[1:]
            elif len(frames) > 1 and frames[1].startswith("thread ("):
                thread, frames = frames[1], frames[2:]
            out[thread][tuple(frames)] += int(count)
    return out


def short(frame: str) -> str:
    """``fn (path/to/file.py:123)`` -> ``fn (file.py:123)``."""
    name, _, where = frame.partition(" (")
    if not where:
        return frame
    path, _, line = where.rstrip(")").rpartition(":")
    return f"{name} ({path.rsplit('/', 1)[-1]}:{line})"


def summary(path: str, top: int = 15) -> str:
    threads = load(path)
    grand = sum(sum(c.values()) for c in threads.values()) or 1
    lines = [f"{path}: {grand} samples"]
    for thread, stacks in sorted(threads.items(), key=lambda kv: -sum(kv[1].values())):
        total = sum(stacks.values())
        selfc: Counter[str] = Counter()
        incl: Counter[str] = Counter()
        for frames, n in stacks.items():
            if frames:
                selfc[short(frames[-1])] += n
            for f in {short(f) for f in frames}:
                incl[f] += n
        lines.append(f"\n{thread}: {total} samples ({100 * total / grand:.0f}% of all)")
        lines.append("  self (% of thread):")
        lines += [f"    {100 * n / total:5.1f}%  {f}" for f, n in selfc.most_common(top)]
        lines.append("  inclusive (% of thread):")
        lines += [f"    {100 * n / total:5.1f}%  {f}" for f, n in incl.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    p.add_argument("file")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()
    print(summary(args.file, args.top))


if __name__ == "__main__":
    main()
