#!/usr/bin/env bash
# The PostgreSQL backend's figures that are not per-request CPU (for that: benches/ab.sh with
# NEW_STORE=postgres): how fast a change that ends access reaches another replica, and how a
# replica starts on a database holding many users and sessions.
#
#   bash benches/replicas.sh            # ROUNDS=100 changes, USERS=1000000 users and sessions
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-100}
USERS=${USERS:-1000000}
. benches/lib.sh
bench_workdir
bench_postgres 15433
cargo build --release --quiet --bin tokengate --example replica_latency

echo "== change → other replica ($ROUNDS changes)"
target/release/examples/replica_latency "$PG_URL" "$ROUNDS"

echo "== start-up with $USERS users and $USERS sessions in the database"
BIN=target/release/tokengate
cfg=$WORK/replica.toml
printf '[server]\nlisten = "127.0.0.1:18458"\n[upstream]\nurl = "http://127.0.0.1:9"\n[store]\npath = "%s"\nbackend = "postgres"\nurl = "%s"\n' \
  "$WORK/replica" "$PG_URL" > "$cfg"
"$BIN" --config "$cfg" check-config
# Users and sessions written straight into the tables, in the stores' own record format.
psql "$PG_URL" -q -v ON_ERROR_STOP=1 <<SQL
INSERT INTO tg_users (id, username, version, next_rotation_at, data)
SELECT 'u' || n, 'user' || n || '@example.com', 1, NULL,
  convert_to(json_build_object('id', 'u' || n, 'username', 'user' || n || '@example.com',
    'email', 'user' || n || '@example.com', 'full_name', '', 'admin', false, 'disabled', false,
    'password_hash', '\$argon2id\$v=19\$m=19456,t=2,p=1\$c2FsdHNhbHQ\$aGFzaGhhc2hoYXNoaGFzaGhhc2g',
    'token_tag', array_fill(0, ARRAY[32]), 'token_length', 24, 'epoch', 1, 'session_epoch', 1,
    'created_at', 1700000000, 'password_changed_at', 1700000000, 'token_reset_at', 1700000000)::text, 'UTF8')
FROM generate_series(1, $USERS) AS n;
INSERT INTO tg_sessions (key, user_id, data)
SELECT sha256(int8send(n)), 'u' || n,
  convert_to(json_build_object('user_id', 'u' || n, 'username', 'user' || n || '@example.com',
    'epoch', 1, 'created_at', extract(epoch from now())::bigint,
    'last_seen', extract(epoch from now())::bigint)::text, 'UTF8')
FROM generate_series(1, $USERS) AS n;
SQL
start=$(date +%s.%N)
"$BIN" --config "$cfg" serve 2>"$WORK/serve.log" &
PIDS+=($!)
pid=$!
wait_port 18458
ready=$(date +%s.%N)
sleep 1
echo "listening after $(python3 -c "print(round($ready - $start, 2))") s; RSS $(( $(rss_kib "$pid") / 1024 )) MiB"
