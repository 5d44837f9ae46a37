#!/usr/bin/env bash
# Builds tokengate with profile-guided optimisation (PGO): the compiler lays out and inlines
# the code by how often each branch ran in a training run, so the request path's code is
# compact and its rare branches (refusals, the console, the connect path) are out of the way.
# On the benchmark machine it takes a tenth to a fifth off the CPU of a proxied call
# (BENCHMARKS.md, "Forwarding alone, two allocations fewer, and profile-guided optimisation").
#
#   bash packaging/pgo.sh               # prints the optimised binary's path (target/pgo/release/tokengate)
#   PROFILE_ONLY=1 bash packaging/pgo.sh  # prints the merged profile's path; build with it yourself:
#                                         #   RUSTFLAGS="-Cprofile-use=PATH" cargo build --release
#
# Steps: an instrumented release build (target/pgo/instrumented), a training run on loopback
# (nginx as the upstream, as in benches/; the load tool's session, Basic, public-path, cold
# login and flood scenarios against the instrumented server, for about a minute), the profile
# merged with the toolchain's own llvm-profdata (rustup's `llvm-tools` component, added when
# missing: the profile format is the compiler's LLVM's), then the optimised build
# (target/pgo/release). Each build is a full release build: several minutes on two cores.
# The profile is made from the tree being built, so it is never stale; nothing is committed.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh

PGO=${CARGO_TARGET_DIR:-$PWD/target}/pgo
mkdir -p "$PGO"
sysroot=$(rustc --print sysroot)
profdata=$(find "$sysroot/lib/rustlib" -name llvm-profdata -type f 2>/dev/null | head -n1)
if [ -z "$profdata" ]; then
  rustup component add llvm-tools >&2
  profdata=$(find "$sysroot/lib/rustlib" -name llvm-profdata -type f | head -n1)
fi
command -v nginx >/dev/null || install_debian nginx >&2

rm -rf "$PGO/raw"
# RUSTFLAGS replaces the configured flags rather than adding to them: keep the caller's.
RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-generate=$PGO/raw" CARGO_TARGET_DIR="$PGO/instrumented" \
  cargo build --release --locked --quiet >&2
BIN=$PGO/instrumented/release/tokengate
# The build's own scripts and macros ran instrumented too: only the training run's counts count.
rm -rf "$PGO/raw"

# The training run: the same setup as the benchmarks, on ports of its own. The load tool is
# the instrumented binary too; its client code is not on the server's path and does no harm.
bench_workdir
bench_cert "$WORK"
UPSTREAM=127.0.0.1:18190
PORT=18556
upstream_conf "$WORK" "$UPSTREAM" > "$WORK/upstream.conf"
nginx -c "$WORK/upstream.conf" -p "$WORK" -g 'daemon off;' &
PIDS+=($!)
tg_config $PORT "$WORK/tg" 100000 250ms "$UPSTREAM" "$WORK" "$BIN" > "$WORK/tg.toml"
tg_public_path "$WORK/tg.toml"
tg_admin "$BIN" "$WORK/tg.toml" > "$WORK/admin-token"
"$BIN" --config "$WORK/tg.toml" serve 2>"$WORK/tg.log" &
TG_PID=$!
PIDS+=("$TG_PID")
wait_port 18190
wait_port $PORT
tg_users "$BIN" $PORT "$WORK" "$(cat "$WORK/admin-token")" "$WORK/users.json"
train() { # train SCENARIO SECONDS [load-tool args]
  "$BIN" loadtest run --target "https://127.0.0.1:$PORT" --ca "$WORK/cert.pem" --scenario "$1" \
    --users-file "$WORK/users.json" --connections 32 --duration "$2s" --quiet "${@:3}" >/dev/null
}
train session 15
train basic 15
train plain 5 --path /public/limits
train login-soap 5
train mixed 5
# The profile is written when the process exits: stop the server the way an operator does.
kill -TERM "$TG_PID"
wait "$TG_PID" || true
"$profdata" merge -o "$PGO/tokengate.profdata" "$PGO/raw"
# A training run that did not reach the server (a port taken, a failed login) would leave a
# profile that calls the request path cold: refuse it rather than build with it. The count is
# the busiest block of the server's request function (`server::routes::handle`).
served=$("$profdata" show --counts --function=6server6routes6handle "$PGO/tokengate.profdata" |
  awk -F'[][, ]+' '/Block counts:/ {for (i = 1; i <= NF; i++) if ($i + 0 > m) m = $i + 0} END {print m + 0}')
if [ "$served" -lt 100000 ]; then
  echo "pgo: the training run reached the request path $served times, too few; the server said:" >&2
  tail -n 20 "$WORK/tg.log" >&2
  exit 1
fi
if [ -n "${PROFILE_ONLY:-}" ]; then
  echo "$PGO/tokengate.profdata"
  exit 0
fi

RUSTFLAGS="${RUSTFLAGS:-} -Cprofile-use=$PGO/tokengate.profdata" CARGO_TARGET_DIR="$PGO" \
  cargo build --release --locked --quiet >&2
echo "$PGO/release/tokengate"
