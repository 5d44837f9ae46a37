#!/usr/bin/env bash
# Benchmark tokengate against the proxies people would otherwise use, in one run, on loopback:
#   nginx as a TLS reverse proxy without auth (the ceiling), nginx with auth_basic (bcrypt),
#   Caddy with basicauth (bcrypt, with its hash cache), and tokengate (session path, Basic path,
#   a public path (forwarding without authentication), cold logins, and session traffic under a
#   login flood).
# All proxies front the same upstream (nginx serving a small JSON answer on plain HTTP) and are
# driven by the same load tool (`tokengate loadtest run`) with the same settings.
#
#   bash benches/compare.sh                      # 3 rounds of 15 s runs, 32 connections
#   ROUNDS=5 DURATION=30s CONNECTIONS=64 bash benches/compare.sh
#   BIN=/path/to/tokengate bash benches/compare.sh   # a given build instead of this tree's
#   PGO=0 bash benches/compare.sh                    # this tree's plain release build instead of
#                                                    # the profile-guided one (packaging/pgo.sh)
#   TG_WORKERS=per-core bash benches/compare.sh      # tokengate with `[server] workers = "per-core"`
#
# On a small shared machine one run of the same server varies by ±15 %, so the rows that are
# compared with each other (nginx without auth, tokengate's session and Basic paths, and the
# paced latency runs) run ROUNDS times, interleaved, and the table gives their median with the
# range. Each row also gives the server's CPU time per request (user + system, /proc/PID/stat),
# which does not depend on how much CPU the load tool left the server. The upstream runs in its
# own nginx process, so a proxy's CPU is its own.
#
# Installs nginx, caddy and apache2-utils from Debian's packages when missing (as root). Every
# server listens on 127.0.0.1 only and is stopped at the end. Prints one table; also writes
# results (JSON per run, SVG charts) into $OUT (default target/compare).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-15s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-32}
OUT=${OUT:-target/compare}
BCRYPT_COST=${BCRYPT_COST:-10}
. benches/lib.sh
OUT=$(bench_out "$OUT")
bench_workdir
need=()
command -v nginx >/dev/null || need+=(nginx)
command -v caddy >/dev/null || need+=(caddy)
command -v htpasswd >/dev/null || need+=(apache2-utils)
install_debian "${need[@]}"

BIN=$(tokengate_bin)

# One certificate for every TLS proxy.
bench_cert "$WORK"

UPSTREAM_PORT=18080
UPSTREAM=127.0.0.1:$UPSTREAM_PORT
NGINX_PLAIN=18443
NGINX_BASIC=18444
CADDY_BASIC=18445
TG=18446
TG_COLD=18447

htpasswd -nbB -C "$BCRYPT_COST" bench 'Passw0rdBench' | cut -d: -f2- | tr -d '\n' > "$WORK/bcrypt"
printf 'bench:%s\n' "$(cat "$WORK/bcrypt")" > "$WORK/htpasswd"

upstream_conf "$WORK" "$UPSTREAM" > "$WORK/upstream.conf"
nginx -c "$WORK/upstream.conf" -p "$WORK" -g 'daemon off;' &
PIDS+=($!)
UPSTREAM_PID=$!

cat > "$WORK/nginx.conf" <<EOF
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream backend { server $UPSTREAM; keepalive 64; }
  server {
    listen 127.0.0.1:$NGINX_PLAIN ssl;
    ssl_certificate $WORK/cert.pem; ssl_certificate_key $WORK/key.pem;
    location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
  server {
    listen 127.0.0.1:$NGINX_BASIC ssl;
    ssl_certificate $WORK/cert.pem; ssl_certificate_key $WORK/key.pem;
    location / {
      auth_basic "bench"; auth_basic_user_file $WORK/htpasswd;
      proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";
    }
  }
}
EOF
nginx -c "$WORK/nginx.conf" -p "$WORK" -g 'daemon off;' &
PIDS+=($!)
NGINX_PID=$!

cat > "$WORK/Caddyfile" <<EOF
{
  admin off
  auto_https off
}
https://127.0.0.1:$CADDY_BASIC {
  tls $WORK/cert.pem $WORK/key.pem
  basicauth {
    bench $(base64 -w0 < "$WORK/bcrypt")
  }
  reverse_proxy $UPSTREAM
}
EOF
caddy run --config "$WORK/Caddyfile" --adapter caddyfile >"$WORK/caddy.log" 2>&1 &
PIDS+=($!)
CADDY_PID=$!

# The cold server also shows the flood without the failure delay (it delays no successful login).
tg_config $TG "$WORK/tg" 100000 250ms "$UPSTREAM" "$WORK" > "$WORK/tg.toml"
tg_config $TG_COLD "$WORK/tg-cold" 0 0 "$UPSTREAM" "$WORK" > "$WORK/tg-cold.toml"
# A public path on the same server: forwarding alone, with no credential to check, so the
# session row's difference from it is what authentication costs, and its difference from
# nginx's is what the forwarding machinery costs.
tg_public_path "$WORK/tg.toml"
for c in tg tg-cold; do
  tg_admin "$BIN" "$WORK/$c.toml" > "$WORK/$c.admin-token"
  "$BIN" --config "$WORK/$c.toml" serve 2>"$WORK/$c.log" &
  PIDS+=($!)
  eval "PID_${c//-/_}=\$!"
done

for p in 18080 $NGINX_PLAIN $NGINX_BASIC $CADDY_BASIC $TG $TG_COLD; do wait_port "$p"; done

LT=(--ca "$WORK/cert.pem" --duration "$DURATION" --quiet)
printf '{"target":"","users":[{"username":"bench","secret":"Passw0rdBench"}]}' > "$WORK/bench-user.json"
for c in tg tg-cold; do
  port=$TG; [ "$c" = tg-cold ] && port=$TG_COLD
  tg_users "$BIN" "$port" "$WORK" "$(cat "$WORK/$c.admin-token")" "$WORK/$c.users.json"
done

# run NAME PORT SCENARIO USERS PID [load-tool args]: one run into $OUT/NAME.json, with the
# server's RSS and CPU time added under "server".
run() {
  local name=$1 port=$2 scenario=$3 users=$4 pid=$5 scheme=https before after
  shift 5
  [ "$port" = "$UPSTREAM_PORT" ] && scheme=http
  before=$(cpu_ticks "$pid")
  "$BIN" loadtest run --target "$scheme://127.0.0.1:$port" --scenario "$scenario" --users-file "$users" \
    "${LT[@]}" --connections "${CONNS:-$CONNECTIONS}" --json "$OUT/$name.json" --chart "$OUT/$name.svg" "$@" > "$OUT/$name.txt"
  after=$(cpu_ticks "$pid")
  python3 benches/server_stats.py "$OUT/$name.json" "$(rss_kib "$pid")" "$((after - before))" "$(getconf CLK_TCK)"
  echo "ran $name" >&2
}

run nginx-basic-bcrypt $NGINX_BASIC basic "$WORK/bench-user.json" "$NGINX_PID"
run caddy-basicauth $CADDY_BASIC basic "$WORK/bench-user.json" "$CADDY_PID"
run tokengate-login-soap-cold $TG_COLD login-soap "$WORK/tg-cold.users.json" "$PID_tg_cold"
# One connection: the p50 of a lone cold login is one argon2 verification plus the pipeline.
CONNS=1 run tokengate-login-soap-1conn $TG_COLD login-soap "$WORK/tg-cold.users.json" "$PID_tg_cold"
run tokengate-mixed $TG mixed "$WORK/tg.users.json" "$PID_tg"
run tokengate-mixed-nodelay $TG_COLD mixed "$WORK/tg-cold.users.json" "$PID_tg_cold"
# The compared rows, interleaved round by round.
for r in $(seq "$ROUNDS"); do
  run "nginx-noauth.$r" $NGINX_PLAIN plain "$WORK/bench-user.json" "$NGINX_PID"
  run "tokengate-session.$r" $TG session "$WORK/tg.users.json" "$PID_tg"
  run "tokengate-basic.$r" $TG basic "$WORK/tg.users.json" "$PID_tg"
  run "tokengate-public.$r" $TG plain "$WORK/bench-user.json" "$PID_tg" --path /public/limits
done
# Latency at half of tokengate's median session throughput, paced and interleaved: the
# upstream directly (plain HTTP, what tokengate itself talks to), tokengate's session path, and
# nginx without auth.
HALF=$(python3 benches/compare_table.py "$OUT" "$ROUNDS" half-rate)
for r in $(seq "$ROUNDS"); do
  run "upstream-direct-half.$r" "$UPSTREAM_PORT" plain "$WORK/bench-user.json" "$UPSTREAM_PID" --rate "$HALF"
  run "tokengate-session-half.$r" $TG session "$WORK/tg.users.json" "$PID_tg" --rate "$HALF"
  run "nginx-noauth-half.$r" $NGINX_PLAIN plain "$WORK/bench-user.json" "$NGINX_PID" --rate "$HALF"
done

{
  echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr); load tool on the same machine."
  echo "Settings: HTTP/1.1 keep-alive over TLS, $CONNECTIONS connections, $DURATION per run, $ROUNDS interleaved rounds of the compared rows, bcrypt cost $BCRYPT_COST."
  echo
  python3 benches/compare_table.py "$OUT" "$ROUNDS" table
} | tee "$OUT/table.md"
