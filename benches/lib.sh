# Shared by the benchmark scripts (sourced, not run): Debian packages, the certificate, the
# upstream, tokengate's configuration, and the process figures the scripts report.

# bench_workdir: a fresh temporary directory in WORK; at exit every process in PIDS is stopped
# and the directory removed.
bench_workdir() {
  WORK=$(mktemp -d)
  PIDS=()
  trap bench_cleanup EXIT
}
bench_cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "${PG_STOP:-}" ]; then $PG_STOP >/dev/null 2>&1 || true; fi
  rm -rf "$WORK"
}

# bench_postgres PORT: a private PostgreSQL in $WORK/pg on 127.0.0.1:PORT with a database
# `tokengate` (default settings: fsync on); sets PG_URL, and bench_cleanup stops it. Debian's
# `postgresql` is installed when missing; initdb refuses root, so as root it runs as `postgres`.
bench_postgres() {
  local port=$1 dir=$WORK/pg bin as=
  if ! command -v initdb >/dev/null && ! compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    install_debian postgresql
  fi
  bin=$(dirname "$(readlink -f "$(command -v initdb || ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -1)")")
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    chmod o+x "$WORK"
    chown postgres "$dir"
    as="runuser -u postgres --"
  fi
  $as "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale >/dev/null
  # PG_CPUS (a taskset command, optional) keeps the database off the CPU under test.
  ${PG_CPUS:-} $as "$bin/pg_ctl" -D "$dir/data" -l "$dir/log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=200" start >/dev/null
  PG_STOP="$as $bin/pg_ctl -D $dir/data -m fast -w stop"
  $as "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -qc "CREATE DATABASE tokengate" >/dev/null
  PG_URL="postgres://postgres@127.0.0.1:$port/tokengate?sslmode=disable"
}

# bench_out DIR: creates DIR and prints its absolute path.
bench_out() {
  mkdir -p "$1" && (cd "$1" && pwd)
}

# install_debian PKG...: installs the packages that are missing, without starting their services
# (the scripts start their own). Needs root.
install_debian() {
  [ $# -gt 0 ] || return 0
  echo "installing $* from Debian's packages" >&2
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  rm -f /usr/sbin/policy-rc.d
}

# bench_cert DIR: DIR/cert.pem and DIR/key.pem, a P-256 certificate for 127.0.0.1 and localhost.
bench_cert() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=127.0.0.1" \
    -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" -addext "basicConstraints=critical,CA:FALSE" \
    -addext "extendedKeyUsage=serverAuth" -keyout "$1/key.pem" -out "$1/cert.pem" 2>/dev/null
}

# upstream_conf DIR ADDR: an nginx configuration answering every path with a small JSON body on
# plain HTTP — the upstream every proxy in the benchmarks fronts.
upstream_conf() {
  cat <<EOF
worker_processes auto;
pid $1/upstream.pid;
error_log $1/upstream-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen $2;
    location / { default_type application/json; return 200 '{"totalSize":1,"done":true,"records":[{"Name":"Acme"}]}'; }
  }
}
EOF
}

# tg_config PORT DATA CACHE_SIZE FAILURE_DELAY UPSTREAM CERT_DIR [BIN]: a tokengate
# configuration for a benchmark on loopback (BIN, default $BIN: the build that will read it).
# TG_WORKERS, when set, is its `[server] workers` ("shared" or "per-core").
tg_config() {
  cat <<EOF
[server]
listen = "127.0.0.1:$1"
${TG_WORKERS:+workers = \"$TG_WORKERS\"}
[tls]
cert = "$6/cert.pem"
key = "$6/key.pem"
[upstream]
url = "http://$5"
[store]
path = "$2"
${TG_STORE_EXTRA:-}
[auth]
credential_cache_size = $3
[limits]
# The benchmarks' floods and logins come from one address; per-address limits would measure
# the limiter, not the path.
login_per_ip = 100000000
login_per_user = 100000000
argon2_per_second = 100000
failure_delay = "$4"
[lockout]
max_failures = 0
[log]
level = "warn"
$(tg_synthetic_section "${7:-}")
EOF
}

# tg_public_path CONFIG: /public/* becomes a public path of that tokengate configuration
# (forwarded without authentication: the plain scenario with `--path /public/limits`).
tg_public_path() {
  sed -i '/^url = "http:/a public_paths = ["/public/*"]' "$1"
}

# tokengate_bin: prints the tokengate binary to measure: BIN when set, else this tree's build
# that ships (profile-guided, packaging/pgo.sh), or with PGO=0 its plain release build.
tokengate_bin() {
  if [ -n "${BIN:-}" ]; then
    echo "$BIN"
  elif [ "${PGO:-1}" = 0 ]; then
    cargo build --release --quiet >&2
    echo "$PWD/target/release/tokengate"
  else
    bash packaging/pgo.sh
  fi
}

# tg_synthetic_section [BIN]: the section that lets `loadtest setup` create its synthetic
# users, for builds that know it (older builds reject unknown sections, and allowed them anyway).
tg_synthetic_section() {
  local bin=${1:-${BIN:-}} probe
  probe=$(mktemp)
  printf '[loadtest]\nallow_synthetic_users = true\n[store]\npath = "%s.d"\n' "$probe" > "$probe"
  if [ -z "$bin" ] || "$bin" --config "$probe" check-config >/dev/null 2>&1; then
    printf '[loadtest]\nallow_synthetic_users = true\n'
  fi
  rm -rf "$probe" "$probe.d"
}

# tg_admin BIN CONFIG: creates the admin user of a fresh data directory; prints its token.
tg_admin() {
  printf 'Passw0rdAdmin1\n' | "$1" --config "$2" user add admin@bench.invalid \
    --email admin@bench.invalid --admin --password-stdin --show-token | tail -n1
}

# tg_users BIN PORT CERT_DIR ADMIN_TOKEN USERS_FILE: 64 load-test users, through the admin API.
tg_users() {
  TOKENGATE_ADMIN_SECRET="Passw0rdAdmin1$4" "$1" loadtest setup --target "https://127.0.0.1:$2" \
    --ca "$3/cert.pem" --admin admin@bench.invalid --users 64 --users-file "$5" >/dev/null
}

wait_port() {
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "port $1 did not open" >&2
  return 1
}

rss_kib() { # total RSS of a process and its children
  local total=0 p
  for p in $1 $(pgrep -P "$1" || true); do total=$((total + $(ps -o rss= -p "$p" 2>/dev/null || echo 0))); done
  echo "$total"
}

cpu_ticks() { # user + system CPU ticks of a process and its children
  local total=0 p f
  for p in $1 $(pgrep -P "$1" || true); do
    f=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
    total=$((total + f))
  done
  echo "$total"
}
