#!/usr/bin/env bash
# Installs what building the binaries needs beyond Rust and a C compiler, when it is missing:
# OpenSSL's headers and pkg-config, for librdkafka's TLS and SASL (rdkafka's `ssl` feature).
# Debian's packages: libssl-dev, pkg-config (root or passwordless sudo for apt-get).
set -euo pipefail

if command -v pkg-config >/dev/null 2>&1 && pkg-config --exists openssl; then
  exit 0
fi
sudo_if_needed() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo -n "$@"; fi; }
echo "build-deps: installing libssl-dev and pkg-config" >&2
sudo_if_needed apt-get update -qq
sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libssl-dev pkg-config >/dev/null
pkg-config --exists openssl || { echo "build-deps: OpenSSL's headers are still missing" >&2; exit 1; }
