#!/usr/bin/env bash
# The PostgreSQL backend's figures that are not per-request CPU (for that: benches/ab.sh with
# NEW_STORE=postgres): how fast a change that ends access reaches another replica (in the
# store, and from a token reset on replica A's admin API to replica B's 401, two `tokengate
# serve` processes), session traffic on one replica and on two driven together, and how a
# replica starts on a database holding many users and sessions.
#
#   bash benches/replicas.sh            # ROUNDS=100 changes and resets, USERS=1000000 users and
#                                       # sessions, DURATION=10s CONNECTIONS=32 of session traffic
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-100}
USERS=${USERS:-1000000}
. benches/lib.sh
bench_workdir
bench_postgres 15433
cargo build --release --quiet --bin tokengate --example replica_latency --example reset_refusal

echo "== change → other replica ($ROUNDS changes)"
target/release/examples/replica_latency "$PG_URL" "$ROUNDS"

echo "== session traffic: one replica, then two on one database (loopback, 2 cores shared)"
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
command -v nginx >/dev/null || install_debian nginx
bench_cert "$WORK"
UPSTREAM=127.0.0.1:18080
upstream_conf "$WORK" "$UPSTREAM" > "$WORK/upstream.conf"
nginx -c "$WORK/upstream.conf" -p "$WORK" -g 'daemon off;' &
PIDS+=($!)
psql "${PG_URL%%\?*}" -qc "CREATE DATABASE traffic" >/dev/null
export TG_STORE_EXTRA="backend = \"postgres\"
url = \"${PG_URL/tokengate?/traffic?}\""
for i in 1 2; do
  tg_config "1846$i" "$WORK/r$i" 100000 250ms "$UPSTREAM" "$WORK" target/release/tokengate > "$WORK/r$i.toml"
  # A reset mails the new token: to files here.
  printf '[mail]\ntransport = "file"\ndir = "%s"\n' "$WORK/mail$i" >> "$WORK/r$i.toml"
done
unset TG_STORE_EXTRA
token=$(tg_admin target/release/tokengate "$WORK/r1.toml")
for i in 1 2; do
  target/release/tokengate --config "$WORK/r$i.toml" serve 2>"$WORK/r$i.log" &
  PIDS+=($!)
done
wait_port 18080; wait_port 18461; wait_port 18462
tg_users target/release/tokengate 18461 "$WORK" "$token" "$WORK/users.json"
traffic() { # traffic TARGET...: session requests/s
  local args=() t
  for t in "$@"; do args+=(--target "$t"); done
  target/release/tokengate loadtest run "${args[@]}" --scenario session --users-file "$WORK/users.json" \
    --ca "$WORK/cert.pem" --duration "$DURATION" --connections "$CONNECTIONS" --quiet --json "$WORK/t.json" >/dev/null
  python3 -c "import json; d = json.load(open('$WORK/t.json')); print(f\"{sum(v['rps'] for v in d.values()):,.0f}\")"
}
echo "one replica: $(traffic https://127.0.0.1:18461) requests/s"
echo "two replicas: $(traffic https://127.0.0.1:18461 https://127.0.0.1:18462) requests/s"

echo "== token reset on replica A (admin API) → 401 from replica B ($ROUNDS resets, one user each)"
TOKENGATE_ADMIN_SECRET="Passw0rdAdmin1$token" target/release/tokengate loadtest setup \
  --target https://127.0.0.1:18461 --ca "$WORK/cert.pem" --admin admin@bench.invalid \
  --users "$ROUNDS" --users-file "$WORK/reset-users.json" >/dev/null
TOKENGATE_ADMIN_SECRET="Passw0rdAdmin1$token" target/release/examples/reset_refusal \
  https://127.0.0.1:18461 https://127.0.0.1:18462 "$WORK/cert.pem" "$WORK/reset-users.json" \
  admin@bench.invalid "$ROUNDS"

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
