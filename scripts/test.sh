#!/usr/bin/env bash
# Runs every test against the real stack: brings the stack up (installing what is missing),
# checks formatting, lints, the compose file and the monitoring files (deploy/), then builds and
# runs the whole test suite, and the Airflow DAG with a real Airflow (scripts/test-airflow.sh).
#
#   scripts/test.sh                 stops the stack afterwards (unless it was already running)
#   scripts/test.sh --keep-stack    leaves it running
#   extra arguments after -- go to `cargo test` (e.g. scripts/test.sh -- three_hour)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

keep=0
cargo_args=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --keep-stack) keep=1 ;;
    --) shift; cargo_args=("$@"); break ;;
    *) echo "usage: $0 [--keep-stack] [-- cargo test args]" >&2; exit 2 ;;
  esac
  shift
done

step() { printf '\n== %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: cargo is missing: install Rust (https://rustup.rs) first" >&2
  exit 1
fi
if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi

already_up=0
scripts/stack.sh status >/dev/null 2>&1 && already_up=1
cleanup() {
  if [[ $keep -eq 0 && $already_up -eq 0 ]]; then
    step "stopping the stack"
    scripts/stack.sh down || true
  fi
}
trap cleanup EXIT

step "stack up"
scripts/stack.sh up
eval "$(scripts/stack.sh env)"

step "cargo fmt --check"
cargo fmt --all -- --check

step "compose file"
scripts/check-compose.sh

step "monitoring files (promtool check and test rules, the dashboard)"
scripts/check-monitoring.sh

step "build dependencies (OpenSSL's headers for librdkafka's TLS and SASL)"
scripts/build-deps.sh

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "cargo build (the end-to-end tests run the binaries)"
cargo build --workspace --bins

step "cargo test"
cargo test --workspace "${cargo_args[@]}"

step "the Airflow DAG with a real Airflow (TUNNEL_SKIP_AIRFLOW=1 skips it)"
scripts/test-airflow.sh

# each test works in databases of its own (t_ and 8 letters or digits); once every test has
# passed they are dropped, so that repeated runs on a kept stack do not fill its disk
# (those of a failed run stay, to be looked at)
step "dropping the tests' databases"
for url in "$TUNNEL_SOURCE_ADMIN_URL" "$TUNNEL_TARGET_URL"; do
  dbs=$(psql -X -At "$url" -c "SELECT datname FROM pg_database WHERE datname ~ '^t_[a-z0-9]{8}$'")
  for db in $dbs; do
    psql -X -q "$url" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  done
  echo "  dropped $(wc -w <<<"$dbs") database(s) on ${url##*@}"
done
