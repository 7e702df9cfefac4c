#!/usr/bin/env bash
# Where a server's CPU goes per ack in ../shared/peers' S1: by thread, and on the
# event loop's thread by layer.
#
#   bash bench/peers-layers.sh SYSTEM K [SECONDS]     # SYSTEM: chatd or pyfloor
#
# Runs the harness (set up by `make peers`: run that once first) for one system
# and one K. Once the logins and the warm-up are over it reads each thread's CPU
# time from /proc over SECONDS (default 6) and, at the same time, samples the
# server with py-spy (`--gil --nonblocking`, on the load generator's CPU: the
# server is never paused). It prints each thread's CPU per ack (the event loop is
# the main thread; the others are the writing thread(s) and idle pools) and the
# loop thread's samples by layer (`python -m bench.profile --layers --thread
# main`). /proc's figures are exact; py-spy's are shares of samples.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
system="${1:?system: chatd or pyfloor}"
k="${2:?K}"
secs="${3:-6}"
work="$here/.peers"
if [[ ! -f "$work/bench.js" || ! -d "$work/node_modules" ]]; then
  echo "peers-layers: run 'make peers' once first (it sets up $work)"; exit 1
fi
case "$system" in
  chatd) pattern="bin/chatd serve --db" ;;
  pyfloor) pattern="floor.py" ;;
  *) echo "peers-layers: chatd or pyfloor"; exit 1 ;;
esac
out="$(mktemp -d)"
export CHATD_CMD="$here/.venv/bin/chatd"
export CHATD_EXTRA_ARGS="--no-rate-limits --max-connections 0 --max-connections-per-address 0"
export PYFLOOR_PYTHON="$here/.venv/bin/python"
(cd "$work" && exec node bench.js --systems "$system" --scenarios S1 --s1-k "$k" \
  --s1-secs $((secs + 8)) --out "$out" >"$out/result.jsonl" 2>"$out/table.txt") &
bench=$!
pid=""
for _ in $(seq 200); do
  # the oldest match: the server, not a shell that names it
  pid="$(pgrep -o -f "$pattern" || true)"
  [[ -n "$pid" ]] && break
  sleep 0.1
done
[[ -n "$pid" ]] || { echo "peers-layers: no $system server came up"; wait "$bench"; exit 1; }
sleep 6  # the logins (a password hash each) and the warm-up
threads() {
  for t in /proc/"$pid"/task/*; do
    echo "$(basename "$t") $(awk '{print $14, $15}' "$t/stat")"
  done | sort
}
threads >"$out/threads0"
cpu1=$(( $(nproc --all) - 1 ))
taskset -c "$cpu1" "$here/.venv/bin/py-spy" record -p "$pid" -d "$secs" -r 250 --gil \
  --nonblocking -f raw -o "$out/profile.txt" >/dev/null 2>&1 &
spy=$!
sleep "$secs"
threads >"$out/threads1"
wait "$spy" || true
wait "$bench"
"$here/.venv/bin/python" - "$out" "$pid" "$secs" "$system" "$k" <<'EOF'
import json, os, sys
out, pid, secs, system, k = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
hz = os.sysconf("SC_CLK_TCK")
r = next(json.loads(x) for x in open(f"{out}/result.jsonl") if json.loads(x).get("ok"))
acks = r["metrics"]["acked_per_s"] * secs
def load(name):
    return {t: (int(u), int(s)) for t, u, s in (line.split() for line in open(f"{out}/{name}"))}
a, b = load("threads0"), load("threads1")
print(f"{system} S1 K={k}: {r['metrics']['acked_per_s']} acked/s, p50 {r['metrics']['ack_p50_ms']} ms;"
      f" CPU per ack by thread over {secs:.0f} s (/proc; µs, user + sys):")
rows = []
for t in b:
    if t in a:
        u, s = (b[t][0] - a[t][0]) / hz, (b[t][1] - a[t][1]) / hz
        if u + s > 0:
            rows.append((t == pid, u, s, t))
rows.sort(key=lambda x: (not x[0], -(x[1] + x[2])))
total = sum(u + s for _, u, s, _ in rows)
for main, u, s, t in rows:
    name = "event loop (main thread)" if main else f"thread {t}"
    print(f"  {name:<28} {1e6 * (u + s) / acks:7.1f}  ({1e6 * u / acks:.1f} + {1e6 * s / acks:.1f})")
print(f"  {'all':<28} {1e6 * total / acks:7.1f}")
EOF
"$here/.venv/bin/python" -m bench.profile --layers --thread main "$out/profile.txt"
echo "files: $out"
