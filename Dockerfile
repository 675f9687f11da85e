# syntax=docker/dockerfile:1
# One image with both binaries, tunnel-producer and tunnel-consumer (see docker-compose.yml).
#   docker build -t data-tunnel:local .
# Needs BuildKit (the default builder of Docker Engine 23+ and of `docker compose`) for the
# cache mounts, which keep cargo's downloads and build output between builds.

# Rust >= the newest rust-version among the locked crates (1.89 at the time of writing).
ARG RUST_VERSION=1.94

# ---------------------------------------------------------------- build
FROM rust:${RUST_VERSION}-bookworm AS build
# rdkafka builds the bundled librdkafka from source: make and a C/C++ compiler (cmake for
# its cmake-build feature), OpenSSL's headers and pkg-config for TLS and SASL; zlib's headers
# are already in this image
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake make g++ libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p tunnel-producer -p tunnel-consumer \
 && install -D -t /out target/release/tunnel-producer target/release/tunnel-consumer

# ---------------------------------------------------------------- runtime
FROM debian:bookworm-slim
# curl: the compose file's healthchecks ask /readyz (run --metrics-addr); libssl3: librdkafka's
# TLS and SASL (the PostgreSQL and registry clients use rustls)
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libssl3 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-create-home --shell /usr/sbin/nologin tunnel
COPY --from=build /out/ /usr/local/bin/
USER tunnel
# docker-compose.yml gives each service its command: tunnel-producer|tunnel-consumer run ...
CMD ["tunnel-producer", "--help"]
