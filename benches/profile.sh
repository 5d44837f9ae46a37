#!/usr/bin/env bash
# Where tokengate's CPU goes on one load-test scenario: a CPU profile with call stacks, drawn as
# a flamegraph, and a summary of the kernel/user split and the hottest functions.
#
#   bash benches/profile.sh                 # the session path
#   bash benches/profile.sh basic           # any scenario of `tokengate loadtest run`
#   DURATION=20 bash benches/profile.sh mixed      # seconds recorded (default 8)
#   BIN=/path/to/tokengate bash benches/profile.sh  # a given build instead of this tree's
#   PGO=0 bash benches/profile.sh           # this tree's plain release build instead of the
#                                           # profile-guided one (packaging/pgo.sh)
#
# Starts an upstream (nginx, as in compare.sh) and a release-built tokengate on loopback,
# drives the scenario with the load tool (32 connections), and records tokengate alone with
# `perf record --call-graph dwarf` (stacks unwound from the binary's unwind tables, so the
# release build needs no frame pointers; sampled by the software clock, which is all a VM
# without hardware counters has). Installs Debian's linux-perf and nginx when missing, and
# inferno (the flamegraph renderer) into target/tools with cargo. Writes
# target/profile/SCENARIO.svg (open it in a browser: click to zoom), SCENARIO.folded and
# SCENARIO.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
SCENARIO=${1:-session}
DURATION=${DURATION:-8}
DURATION=${DURATION%s}
OUT=${OUT:-target/profile}
. benches/lib.sh
OUT=$(bench_out "$OUT")
bench_workdir

need=()
command -v perf >/dev/null || need+=(linux-perf)
command -v nginx >/dev/null || need+=(nginx)
install_debian "${need[@]}"
TOOLS=$PWD/target/tools
if [ ! -x "$TOOLS/bin/inferno-flamegraph" ]; then
  cargo install inferno --locked --quiet --root "$TOOLS"
fi
BIN=$(tokengate_bin)

UPSTREAM=127.0.0.1:18090
PORT=18456
bench_cert "$WORK"
upstream_conf "$WORK" "$UPSTREAM" > "$WORK/upstream.conf"
nginx -c "$WORK/upstream.conf" -p "$WORK" -g 'daemon off;' &
PIDS+=($!)
tg_config $PORT "$WORK/tg" 100000 250ms "$UPSTREAM" "$WORK" > "$WORK/tg.toml"
tg_admin "$BIN" "$WORK/tg.toml" > "$WORK/admin-token"
"$BIN" --config "$WORK/tg.toml" serve 2>"$WORK/tg.log" &
PIDS+=($!)
TG_PID=$!
wait_port 18090
wait_port $PORT
tg_users "$BIN" $PORT "$WORK" "$(cat "$WORK/admin-token")" "$WORK/users.json"

# The load runs 4 s longer than the recording, which starts 2 s in: warm connections and
# caches, and no ramp-down in the profile.
"$BIN" loadtest run --target "https://127.0.0.1:$PORT" --ca "$WORK/cert.pem" --scenario "$SCENARIO" \
  --users-file "$WORK/users.json" --connections 32 --duration "$((DURATION + 4))s" --quiet \
  > "$OUT/$SCENARIO.load.txt" &
LOAD=$!
PIDS+=($LOAD)
sleep 2
perf record -q -F 499 --call-graph dwarf,16384 -p "$TG_PID" -o "$WORK/perf.data" -- sleep "$DURATION"
wait $LOAD

perf script -i "$WORK/perf.data" 2>/dev/null > "$WORK/perf.txt"
"$TOOLS/bin/inferno-collapse-perf" --all < "$WORK/perf.txt" > "$OUT/$SCENARIO.folded"
"$TOOLS/bin/inferno-flamegraph" --title "tokengate, $SCENARIO scenario" --colors rust \
  < "$OUT/$SCENARIO.folded" > "$OUT/$SCENARIO.svg"
{
  echo "tokengate, scenario $SCENARIO, $DURATION s, $(nproc) cores; the load: $(grep -m1 'requests/s' "$OUT/$SCENARIO.load.txt" || true)"
  echo
  echo "CPU by binary (self time):"
  # awk rather than grep | head: head would stop reading, and pipefail would fail the script.
  perf report -i "$WORK/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null | awk '/%/ && n++ < 6'
  echo
  echo "Hottest functions (self time):"
  perf report -i "$WORK/perf.data" --no-children --sort dso,sym --stdio -g none 2>/dev/null | awk '/%/ && n++ < 25'
} | tee "$OUT/$SCENARIO.txt"
echo "flamegraph: $OUT/$SCENARIO.svg"
