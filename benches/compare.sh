#!/usr/bin/env bash
# Benchmark tokengate against the proxies people would otherwise use, in one run, on loopback:
#   nginx as a TLS reverse proxy without auth (the ceiling), nginx with auth_basic (bcrypt),
#   Caddy with basicauth (bcrypt, with its hash cache), and tokengate (session path, Basic path,
#   cold logins, and session traffic under a login flood).
# All proxies front the same upstream (nginx serving a small JSON answer on plain HTTP) and are
# driven by the same load tool (`tokengate loadtest run`) with the same settings.
#
#   bash benches/compare.sh                      # 20 s per run, 32 connections
#   DURATION=30s CONNECTIONS=64 bash benches/compare.sh
#
# Installs nginx, caddy and apache2-utils from Debian's packages when missing (as root). Every
# server listens on 127.0.0.1 only and is stopped at the end. Prints one table; also writes
# results (JSON per run, SVG charts) into $OUT (default target/compare).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-20s}
CONNECTIONS=${CONNECTIONS:-32}
OUT=${OUT:-target/compare}
BCRYPT_COST=${BCRYPT_COST:-10}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v caddy >/dev/null || need+=(caddy)
command -v htpasswd >/dev/null || need+=(apache2-utils)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} from Debian's packages" >&2
  # Keep the packages' services from starting on install: this script starts its own.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

cargo build --release --quiet
BIN=$PWD/target/release/tokengate

# One certificate for every TLS proxy.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=127.0.0.1" \
  -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" -addext "basicConstraints=critical,CA:FALSE" -addext "extendedKeyUsage=serverAuth" -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null

UPSTREAM=127.0.0.1:18080
NGINX_PLAIN=18443
NGINX_BASIC=18444
CADDY_BASIC=18445
TG=18446
TG_COLD=18447

htpasswd -nbB -C "$BCRYPT_COST" bench 'Passw0rdBench' | cut -d: -f2- | tr -d '\n' > "$WORK/bcrypt"
printf 'bench:%s\n' "$(cat "$WORK/bcrypt")" > "$WORK/htpasswd"

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
    listen $UPSTREAM;
    location / { default_type application/json; return 200 '{"totalSize":1,"done":true,"records":[{"Name":"Acme"}]}'; }
  }
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

tg_config() { # port data cache_size
  cat <<EOF
[server]
listen = "127.0.0.1:$1"
[tls]
cert = "$WORK/cert.pem"
key = "$WORK/key.pem"
[upstream]
url = "http://$UPSTREAM"
[store]
path = "$2"
[auth]
credential_cache_size = $3
[limits]
# The benchmark's flood and logins come from one address; per-address limits would measure
# the limiter, not the path.
login_per_ip = 100000000
login_per_user = 100000000
argon2_per_second = 100000
[lockout]
max_failures = 0
[log]
level = "warn"
EOF
}
tg_config $TG "$WORK/tg" 100000 > "$WORK/tg.toml"
tg_config $TG_COLD "$WORK/tg-cold" 0 > "$WORK/tg-cold.toml"
for c in tg tg-cold; do
  printf 'Passw0rdAdmin1\n' | "$BIN" --config "$WORK/$c.toml" user add admin@bench.invalid \
    --email admin@bench.invalid --admin --password-stdin --show-token | tail -n1 > "$WORK/$c.admin-token"
  "$BIN" --config "$WORK/$c.toml" serve 2>"$WORK/$c.log" &
  PIDS+=($!)
  eval "PID_${c//-/_}=\$!"
done

wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 did not open" >&2; exit 1; }
for p in 18080 $NGINX_PLAIN $NGINX_BASIC $CADDY_BASIC $TG $TG_COLD; do wait_port "$p"; done

LT=(--ca "$WORK/cert.pem" --connections "$CONNECTIONS" --duration "$DURATION" --quiet)
printf '{"target":"","users":[{"username":"bench","secret":"Passw0rdBench"}]}' > "$WORK/bench-user.json"
for c in tg tg-cold; do
  port=$TG; [ "$c" = tg-cold ] && port=$TG_COLD
  TOKENGATE_ADMIN_SECRET="Passw0rdAdmin1$(cat "$WORK/$c.admin-token")" "$BIN" loadtest setup \
    --target "https://127.0.0.1:$port" --ca "$WORK/cert.pem" --admin admin@bench.invalid \
    --users 64 --users-file "$WORK/$c.users.json" >/dev/null
done

rss_kib() { # total RSS of a process and its children
  local total=0 p
  for p in $1 $(pgrep -P "$1" || true); do total=$((total + $(ps -o rss= -p "$p" 2>/dev/null || echo 0))); done
  echo "$total"
}

declare -A RPS P99 RSS
run() { # name port scenario users-file pid
  local name=$1 port=$2 scenario=$3 users=$4 pid=$5
  "$BIN" loadtest run --target "https://127.0.0.1:$port" --scenario "$scenario" --users-file "$users" \
    "${LT[@]}" --json "$OUT/$name.json" --chart "$OUT/$name.svg" > "$OUT/$name.txt"
  RSS[$name]=$(rss_kib "$pid")
  RPS[$name]=$(python3 -c "import json,sys; d=json.load(open('$OUT/$name.json')); print(round(sum(v['rps'] for v in d.values())))")
  P99[$name]=$(python3 -c "import json; d=json.load(open('$OUT/$name.json')); print(max(v['latency_us']['p99'] for v in d.values())/1000)")
  echo "ran $name" >&2
}

run nginx-noauth $NGINX_PLAIN plain "$WORK/bench-user.json" "$NGINX_PID"
run nginx-basic-bcrypt $NGINX_BASIC basic "$WORK/bench-user.json" "$NGINX_PID"
run caddy-basicauth $CADDY_BASIC basic "$WORK/bench-user.json" "$CADDY_PID"
run tokengate-session $TG session "$WORK/tg.users.json" "$PID_tg"
run tokengate-basic $TG basic "$WORK/tg.users.json" "$PID_tg"
run tokengate-login-soap-cold $TG_COLD login-soap "$WORK/tg-cold.users.json" "$PID_tg_cold"
# One connection: the p50 of a lone cold login is one argon2 verification plus the pipeline.
"$BIN" loadtest run --target "https://127.0.0.1:$TG_COLD" --scenario login-soap --users-file "$WORK/tg-cold.users.json" \
  --ca "$WORK/cert.pem" --connections 1 --duration 5s --quiet --json "$OUT/tokengate-login-soap-1conn.json" > /dev/null
run tokengate-mixed $TG mixed "$WORK/tg.users.json" "$PID_tg"
# Direct upstream latency at a fixed rate, for the added-latency comparison.
HALF=$(( ${RPS[tokengate-session]} / 2 ))
"$BIN" loadtest run --target "https://127.0.0.1:$NGINX_PLAIN" --scenario plain --users-file "$WORK/bench-user.json" \
  "${LT[@]}" --rate "$HALF" --json "$OUT/nginx-noauth-half.json" > "$OUT/nginx-noauth-half.txt"
"$BIN" loadtest run --target "https://127.0.0.1:$TG" --scenario session --users-file "$WORK/tg.users.json" \
  "${LT[@]}" --rate "$HALF" --json "$OUT/tokengate-session-half.json" > "$OUT/tokengate-session-half.txt"

base=${RPS[nginx-noauth]}
{
  echo "Machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(uname -sr); load tool on the same machine."
  echo "Settings: HTTP/1.1 keep-alive over TLS, $CONNECTIONS connections, $DURATION per run, bcrypt cost $BCRYPT_COST."
  echo
  echo "| target | scenario | requests/s | p99 | RSS | vs nginx no-auth |"
  echo "|---|---|---:|---:|---:|---:|"
  for name in nginx-noauth nginx-basic-bcrypt caddy-basicauth tokengate-session tokengate-basic tokengate-login-soap-cold tokengate-mixed; do
    scen=$(python3 -c "import json; print(', '.join(json.load(open('$OUT/$name.json')).keys()))")
    ratio=$(python3 -c "print(f'{${RPS[$name]}/$base:.2f}x')")
    echo "| $name | $scen | ${RPS[$name]} | ${P99[$name]} ms | $(( ${RSS[$name]} / 1024 )) MiB | $ratio |"
  done
  echo
  python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
m = json.load(open(f"{out}/tokengate-mixed.json"))
s = json.load(open(f"{out}/tokengate-session.json"))["session"]
print(f"Mixed: session traffic kept {m['session']['rps']:.0f} req/s ({m['session']['rps'] / s['rps'] * 100:.0f}% of unloaded "
      f"{s['rps']:.0f}) while the flood ran at {m['flood']['rps']:.0f} req/s.")
one = json.load(open(f"{out}/tokengate-login-soap-1conn.json"))["login-soap"]["latency_us"]["p50"] / 1e6
cold = json.load(open(f"{out}/tokengate-login-soap-cold.json"))["login-soap"]["rps"]
import os
cores = os.cpu_count()
print(f"Cold logins: {cold:.0f}/s; one login alone takes {one*1000:.1f} ms (p50), so {cores} cores allow "
      f"{cores/one:.0f}/s: {cold/(cores/one)*100:.0f}% of that (target 90%).")
d = json.load(open(f"{out}/nginx-noauth-half.json"))["plain"]["latency_us"]["p99"]
t = json.load(open(f"{out}/tokengate-session-half.json"))["session"]["latency_us"]["p99"]
print(f"At half of tokengate's session throughput: p99 {t/1000:.2f} ms through tokengate vs {d/1000:.2f} ms through "
      f"nginx without auth (added {max(t - d, 0)/1000:.2f} ms).")
PY
} | tee "$OUT/table.md"
