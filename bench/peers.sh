#!/usr/bin/env bash
# `make peers` (and the last step of `make bench`): the side-by-side harness of
# ../shared/peers run against this working tree: chatd (from .venv), the python
# floor (floor.py: websockets + sqlite with group commit, no rules) and the
# Socket.IO + SQLite server with group commit, each pinned to one core with the
# load generator on the other. Arguments go to its bench.js; by default S1 (one
# sender, then 16 and 64, each waiting for its acks).
#
#   make peers                                   # S1: chatd, python floor, Node
#   make peers ARGS="--scenarios S1,S2,S3,S4"    # every scenario
#   PEERS_DIR=/path/to/peers make peers          # the harness elsewhere
#   CHATD_ARGS="--search-index-batch 0" make peers ARGS="--systems chatd"  # chatd's flags
#
# The harness is copied to .peers/ once (its npm packages are built there;
# better-sqlite3 compiles for about 2 minutes). Without it, or without node,
# this says so and exits 0: a benchmark, not a test.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
src="${PEERS_DIR:-$here/../shared/peers}"
work="$here/.peers"
if [[ ! -f "$src/bench.js" ]]; then
  echo "peers: no harness at $src (set PEERS_DIR); skipped"
  exit 0
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "peers: node and npm are needed (apt-get install nodejs npm); skipped"
  exit 0
fi
if [[ ! -d "$work/node_modules" || "$src/package-lock.json" -nt "$work/node_modules" ]]; then
  rm -rf "$work" && mkdir -p "$work"
  cp -r "$src/." "$work/"
  (cd "$work" && npm ci --nodedir=/usr --no-audit --no-fund >"$work/npm.log" 2>&1) || {
    echo "peers: npm ci failed, see $work/npm.log"; exit 1; }
else
  # the harness's own files may have changed; the packages stay
  cp "$src"/*.js "$src"/*.py "$work/" 2>/dev/null || true
fi
export CHATD_CMD="$here/.venv/bin/chatd"
# CHATD_ARGS: more `chatd serve` flags, e.g. CHATD_ARGS="--search-index-batch 0"
export CHATD_EXTRA_ARGS="--no-rate-limits --max-connections 0 --max-connections-per-address 0 ${CHATD_ARGS:-}"
export PYFLOOR_PYTHON="$here/.venv/bin/python"
cd "$work"
args=("$@")
if [[ ${#args[@]} -eq 0 ]]; then
  args=(--scenarios S1)
fi
mkdir -p "$work/results"
# The table goes to stderr; stdout is one JSON line per result, kept here.
node bench.js --systems chatd,pyfloor,sio-batch --out "$work/results" "${args[@]}" \
  > "$work/results/last.jsonl"
echo "peers: JSON lines in $work/results/last.jsonl"
