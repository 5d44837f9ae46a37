#!/usr/bin/env bash
# A/B two tokengate builds on the authenticated-call path, on loopback: the same upstream, the
# same load tool, ROUNDS interleaved runs of each scenario against each build. Reports, per
# build and scenario, the median server CPU time per request, and the server's CPU divided by
# the load tool's own (steady to a few percent on a shared machine, where raw requests/s moves
# by ±20 % between identical runs), with the new/old ratios of both.
#
#   bash benches/ab.sh OLD_BINARY NEW_BINARY [SCENARIO...]      # default: session basic
#   ROUNDS=7 DURATION=10s CONNECTIONS=32 bash benches/ab.sh ...
#   PROFILE=1 bash benches/ab.sh ...   # also `perf record` each server: OUT/SIDE-SCENARIO.N.perf
#                                      # (PROFILE_ARGS: its options, default "-F 999 -g")
#   PIN=1 bash benches/ab.sh ...       # servers on the last CPU, nginx and the load tool on the
#                                      # others: steadier CPU per request, lower requests/s
#   CACHE=0 bash benches/ab.sh ...      # credential cache size (default 100000; 0: every login is cold)
#   OLD_WORKERS=per-core / NEW_WORKERS=per-core bash benches/ab.sh BIN BIN ...
#                                      # that side's `[server] workers` (one build on both
#                                      # sides compares the two runtime shapes)
#   OLD_STORE=postgres / NEW_STORE=postgres bash benches/ab.sh BIN BIN ...
#                                      # that side's records on a private PostgreSQL (one build
#                                      # on both sides compares the backends)
#
# Build the old one from a worktree, for instance:
#   git worktree add /tmp/old COMMIT && cargo build --release --manifest-path /tmp/old/Cargo.toml
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$(realpath "$1")
NEW=$(realpath "$2")
shift 2
SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(session basic)
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
OUT=${OUT:-target/ab}
. benches/lib.sh
OUT=$(bench_out "$OUT")
bench_workdir
command -v nginx >/dev/null || install_debian nginx
bench_cert "$WORK"

UPSTREAM=127.0.0.1:18080
upstream_conf "$WORK" "$UPSTREAM" > "$WORK/upstream.conf"
# With PIN, the servers get the last CPU to themselves and everything else shares the rest.
LAST_CPU=$(($(nproc) - 1))
SERVER_CPUS=() OTHER_CPUS=()
if [ -n "${PIN:-}" ] && [ "$LAST_CPU" -gt 0 ]; then
  SERVER_CPUS=(taskset -c "$LAST_CPU")
  OTHER_CPUS=(taskset -c "0-$((LAST_CPU - 1))")
fi
"${OTHER_CPUS[@]}" nginx -c "$WORK/upstream.conf" -p "$WORK" -g 'daemon off;' &
PIDS+=($!)
declare -A PORT=([old]=18456 [new]=18457) PID=() BIN_OF=([old]="$OLD" [new]="$NEW")
declare -A STORE_OF=([old]="${OLD_STORE:-sled}" [new]="${NEW_STORE:-sled}")
if [ "${STORE_OF[old]}" = postgres ] || [ "${STORE_OF[new]}" = postgres ]; then
  # With PIN, the database shares the load tool's CPUs, as if on a machine of its own.
  PG_CPUS="${OTHER_CPUS[*]}" bench_postgres 15432
fi
for side in old new; do
  bin=${BIN_OF[$side]}
  TG_STORE_EXTRA=
  if [ "${STORE_OF[$side]}" = postgres ]; then
    # Each side its own database, so the two never see each other's records.
    TG_STORE_EXTRA="backend = \"postgres\"
url = \"${PG_URL/tokengate?/tokengate_$side?}\""
    psql "${PG_URL%%\?*}" -qc "CREATE DATABASE tokengate_$side" >/dev/null
  fi
  export TG_STORE_EXTRA
  # OLD_WORKERS / NEW_WORKERS: that side's `[server] workers` (unset: the build's default).
  if [ "$side" = old ]; then TG_WORKERS=${OLD_WORKERS:-}; else TG_WORKERS=${NEW_WORKERS:-}; fi
  export TG_WORKERS
  tg_config "${PORT[$side]}" "$WORK/$side" "${CACHE:-100000}" 250ms "$UPSTREAM" "$WORK" "$bin" > "$WORK/$side.toml"
  tg_admin "$bin" "$WORK/$side.toml" > "$WORK/$side.admin-token"
  "${SERVER_CPUS[@]}" "$bin" --config "$WORK/$side.toml" serve 2>"$WORK/$side.log" &
  PIDS+=($!)
  PID[$side]=$!
done
for p in 18080 "${PORT[old]}" "${PORT[new]}"; do wait_port "$p"; done
for side in old new; do
  tg_users "${BIN_OF[$side]}" "${PORT[$side]}" "$WORK" "$(cat "$WORK/$side.admin-token")" "$WORK/$side.users.json"
done

# run SIDE SCENARIO ROUND: one run, always with the new build's load tool; the server's and the
# load tool's CPU time go beside the run's JSON.
run() {
  local side=$1 scenario=$2 round=$3 before after name=$1-$2.$3
  before=$(cpu_ticks "${PID[$side]}")
  local perf=
  if [ -n "${PROFILE:-}" ]; then
    # shellcheck disable=SC2086
    perf record -q ${PROFILE_ARGS:--F 999 -g} -p "${PID[$side]}" -o "$OUT/$name.perf" 2>/dev/null &
    perf=$!
  fi
  "${OTHER_CPUS[@]}" python3 - "$NEW" "$side" "$name" "$OUT" "${PORT[$side]}" "$scenario" "$WORK" "$DURATION" "$CONNECTIONS" <<'PY'
import resource, subprocess, sys
new, side, name, out, port, scenario, work, duration, conns = sys.argv[1:]
subprocess.run([new, "loadtest", "run", "--target", f"https://127.0.0.1:{port}", "--scenario", scenario,
                "--users-file", f"{work}/{side}.users.json", "--ca", f"{work}/cert.pem",
                "--duration", duration, "--connections", conns, "--quiet", "--json", f"{out}/{name}.json"],
               check=True, stdout=subprocess.DEVNULL)
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(f"{out}/{name}.tool", "w") as f:
    f.write(str(ru.ru_utime + ru.ru_stime))
PY
  after=$(cpu_ticks "${PID[$side]}")
  if [ -n "$perf" ]; then kill -INT "$perf"; wait "$perf" || true; fi
  echo "$((after - before))" > "$OUT/$name.server"
  echo "ran $name" >&2
}

for r in $(seq "$ROUNDS"); do
  for s in "${SCENARIOS[@]}"; do
    # Alternate which build goes first, so a drift within a round favours neither.
    if [ $((r % 2)) -eq 1 ]; then run old "$s" "$r"; run new "$s" "$r"; else run new "$s" "$r"; run old "$s" "$r"; fi
  done
done

python3 - "$OUT" "$ROUNDS" "$(getconf CLK_TCK)" "${SCENARIOS[@]}" <<'PY' | tee "$OUT/ab.md"
import json, statistics, sys
out, rounds, hz, scenarios = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
print("| scenario | build | req/s (median) | server CPU µs/req (median, range) | server/tool CPU (median, range) |")
print("|---|---|---|---|---|")
ratios = {}
for s in scenarios:
    meds = {}
    for side in ("old", "new"):
        rps, cpu, rel = [], [], []
        for r in range(1, rounds + 1):
            name = f"{side}-{s}.{r}"
            d = json.load(open(f"{out}/{name}.json"))
            reqs = sum(v["requests"] for v in d.values())
            server = int(open(f"{out}/{name}.server").read()) / hz
            tool = float(open(f"{out}/{name}.tool").read())
            rps.append(sum(v["rps"] for v in d.values()))
            cpu.append(server / max(reqs, 1) * 1e6)
            rel.append(server / max(tool, 1e-9))
        meds[side] = (statistics.median(cpu), statistics.median(rel))
        print(f"| {s} | {side} | {statistics.median(rps):,.0f} | {meds[side][0]:.1f} ({min(cpu):.1f}–{max(cpu):.1f}) | {meds[side][1]:.3f} ({min(rel):.3f}–{max(rel):.3f}) |")
    ratios[s] = (meds["new"][0] / meds["old"][0], meds["new"][1] / meds["old"][1])
print()
for s, (cpu, rel) in ratios.items():
    print(f"{s}: new/old server CPU per request {cpu:.3f}, server/tool CPU {rel:.3f}")
PY
