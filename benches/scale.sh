#!/usr/bin/env bash
# Scale check: a server holding USERS users and SESSIONS live sessions — its resident memory
# after start, and how long it takes to start (sessions are loaded from the store).
#   bash benches/scale.sh            # 100000 users, 100000 sessions
set -euo pipefail
cd "$(dirname "$0")/.."
USERS=${USERS:-100000}
SESSIONS=${SESSIONS:-100000}
WORK=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; rm -rf "$WORK"' EXIT
cargo build --release --quiet --example scale
cargo build --release --quiet
./target/release/examples/scale "$WORK/data" "$USERS" "$SESSIONS"
cat > "$WORK/t.toml" <<EOT
[server]
listen = "127.0.0.1:0"
[upstream]
url = "http://127.0.0.1:9"
[store]
path = "$WORK/data"
[auth]
max_sessions = $((SESSIONS + 1000))
[log]
level = "warn"
EOT
start=$(date +%s.%N)
./target/release/tokengate --config "$WORK/t.toml" serve 2>"$WORK/err" &
PID=$!
until grep -q "listening on" "$WORK/err"; do sleep 0.01; done
end=$(date +%s.%N)
sleep 1
rss=$(ps -o rss= -p $PID)
printf '%s users, %s sessions: start-up %.2f s, RSS %d MiB\n' "$USERS" "$SESSIONS" "$(echo "$end - $start" | bc)" $((rss / 1024))
