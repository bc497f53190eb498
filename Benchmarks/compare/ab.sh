#!/usr/bin/env bash
# Two stickyd binaries on the data path, in alternating runs of `make bench`'s
# rows (bulk both ways, keep-alive small requests, new connections from 10k
# client IPs), each run with its own direct baseline:
#
#   Benchmarks/compare/ab.sh OLD_STICKYD NEW_STICKYD [RUNS] [DURATION]
#
# A before/after check for a change that must not slow the data path: the
# order alternates every run (old-new, new-old, ...) so drift on a shared
# machine falls on both. It prints, per row and engine, the median over runs
# of each binary's ratio to direct, and new/old. The bench client is the
# STICKYCTL_BIN of this tree (release) for both. AB_ONLY picks the rows
# (run.sh --only; default bulk,rr,connrate). Ratios are also given to
# refproxy, the minimal C proxy each run measures beside them (issue 13).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
OLD="$(realpath "${1:?usage: ab.sh OLD_STICKYD NEW_STICKYD [RUNS] [DURATION]}")"
NEW="$(realpath "${2:?usage: ab.sh OLD_STICKYD NEW_STICKYD [RUNS] [DURATION]}")"
RUNS="${3:-3}"
DURATION="${4:-4}"
CTL="${STICKYCTL_BIN:-$ROOT/.build/release/stickyctl}"
OUT="$(mktemp -d /tmp/stickyd-ab.XXXXXX)"
trap 'rm -rf "$OUT"' EXIT
for ((i = 1; i <= RUNS; i++)); do
    if ((i % 2)); then order=(old new); else order=(new old); fi
    for which in "${order[@]}"; do
        bin=$OLD; [[ $which == new ]] && bin=$NEW
        echo "[ab] run $i/$RUNS: $which ($bin)" >&2
        bash "$HERE/run.sh" --only "${AB_ONLY:-bulk,rr,connrate}" --rounds 1 --duration "$DURATION" \
            --stickyd "$bin" --stickyctl "$CTL" --json "$OUT/$which-$i.json" >"$OUT/$which-$i.log" 2>&1 \
            || { echo "[ab] run.sh failed; its log:" >&2; tail -30 "$OUT/$which-$i.log" >&2; exit 1; }
    done
done
python3 - "$OUT" "$RUNS" <<'PY'
import json, statistics, sys
out, runs = sys.argv[1], int(sys.argv[2])
ratios = {}
for which in ("old", "new"):
    for i in range(1, runs + 1):
        doc = json.load(open(f"{out}/{which}-{i}.json"))
        for row, r in doc["results"].items():
            for col in ("stickyd-copy", "stickyd-splice"):
                c = r["columns"].get(col) or {}
                for key in ("ratio", "ratio_ref"):
                    if c.get(key) is not None:
                        ratios.setdefault((row, col, key), {}).setdefault(which, []).append(c[key])
base = {"ratio": "direct", "ratio_ref": "refproxy"}
print(f"{'row':<12} {'engine':<16} {'to':<9} {'old':>7} {'new':>7} {'new/old':>8}   (medians over {runs} runs each)")
for (row, col, key), d in sorted(ratios.items()):
    o = statistics.median(d.get("old", [float("nan")]))
    n = statistics.median(d.get("new", [float("nan")]))
    print(f"{row:<12} {col:<16} {base[key]:<9} {o:>7.3f} {n:>7.3f} {n / o:>8.3f}")
PY
