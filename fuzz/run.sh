#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 60) with cargo-fuzz and libFuzzer, one after the
# other, adding what they find to fuzz/corpus/<target>/ (minimised at the end). A crash leaves
# its input in fuzz/artifacts/<target>/ and stops the script; `cargo test --test it fuzz_corpora`
# replays both directories on stable.
#   fuzz/run.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(soap_envelope request_target client_address sanitise_headers credentials oauth_form json_bodies)
fi

# cargo-fuzz needs nightly for its sanitizer flags; RUSTC_BOOTSTRAP lets stable stand in.
toolchain=+nightly
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  toolchain=
  export RUSTC_BOOTSTRAP=1
fi
tools=$PWD/target/tools
if [ ! -x "$tools/bin/cargo-fuzz" ]; then
  cargo install --locked cargo-fuzz --root "$tools"
fi
export PATH=$tools/bin:$PATH

for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  echo "== $t for ${seconds}s"
  # -timeout: an input that takes more than 2 s is a finding (super-linear parsing).
  cargo $toolchain fuzz run "$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -timeout=2 -rss_limit_mb=2048 -max_len=65536 \
    -print_final_stats=1 2>&1 | tee "target/fuzz-$t.log" | grep -E '^(#[0-9]+ +DONE|stat::|==|SUMMARY|.*ERROR)' || true
  if grep -q -E 'ERROR: libFuzzer|SUMMARY: ' "target/fuzz-$t.log"; then
    echo "$t: a crash; its input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  cargo $toolchain fuzz cmin "$t" "fuzz/corpus/$t" >/dev/null 2>&1 || true
done
