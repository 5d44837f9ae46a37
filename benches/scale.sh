#!/usr/bin/env bash
# Scale check: a server holding USERS users and SESSIONS live sessions — how long it takes to
# start (sessions are loaded from the store), its resident memory one second after start, and
# again after 10 s of Basic traffic from 1,000 distinct users (credential and user caches
# filled) plus 10 s of session traffic.
#   bash benches/scale.sh            # 100000 users, 100000 sessions
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${USERS:-100000}
SESSIONS=${SESSIONS:-100000}
WORK=$(mktemp -d)
PID=
trap '[ -n "$PID" ] && kill $PID 2>/dev/null; rm -rf "$WORK"' EXIT
cargo build --release --quiet --example scale
cargo build --release --quiet
BIN=./target/release/tokengate
./target/release/examples/scale "$WORK/data" "$USERS" "$SESSIONS" "$WORK/users.json"
. benches/lib.sh
bench_cert "$WORK"
PORT=18460
cat > "$WORK/t.toml" <<EOT
[server]
listen = "127.0.0.1:$PORT"
[tls]
cert = "$WORK/cert.pem"
key = "$WORK/key.pem"
[upstream]
url = "http://127.0.0.1:9"
[store]
path = "$WORK/data"
[auth]
max_sessions = $((SESSIONS + 1000))
[limits]
login_per_ip = 100000000
argon2_per_second = 100000
[log]
level = "warn"
EOT
rss_mib() { echo $(( $(ps -o rss= -p "$PID") / 1024 )); }
start=$(date +%s.%N)
$BIN --config "$WORK/t.toml" serve 2>"$WORK/err" &
PID=$!
until grep -q "listening on" "$WORK/err"; do sleep 0.01; done
end=$(date +%s.%N)
sleep 1
idle=$(rss_mib)
# The upstream is closed (port 9): calls are answered 502 after authentication, which is the
# part measured here.
for scenario in basic session; do
  $BIN loadtest run --target "https://127.0.0.1:$PORT" --ca "$WORK/cert.pem" --scenario $scenario \
    --users-file "$WORK/users.json" --connections 32 --duration 10s --quiet >/dev/null
done
busy=$(rss_mib)
printf '%s users, %s sessions: start-up %.2f s, RSS %d MiB one second after start, %d MiB after traffic from 1,000 users\n' \
  "$USERS" "$SESSIONS" "$(echo "$end - $start" | bc)" "$idle" "$busy"
