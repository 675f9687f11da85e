#!/usr/bin/env bash
# Checks docker-compose.yml without a Docker engine:
#   1. the compose tool parses, interpolates and validates it against the compose schema
#      (`config`, which never talks to an engine), with the `pipeline` profile enabled, alone
#      and merged with the override docker-compose.secure.yml (the secured listeners);
#   2. their images use the versions pinned in scripts/versions.env.
#
#   scripts/check-compose.sh [compose-file [override-file]]
#       (defaults: docker-compose.yml and docker-compose.secure.yml at the repo root; an
#       override that does not exist is skipped)
#
# The tool is Docker Compose v2 when present (`docker compose` or a v2 `docker-compose`), else
# Debian's docker-compose package (the Python Compose 1.29, which knows profiles and
# `depends_on: condition:`), installed with apt-get when missing; that needs root (CI) or
# passwordless sudo. Prints one line `compose: ok (...)`, or the reason it failed and exits 1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
FILE=${1:-$ROOT/docker-compose.yml}
SECURE_FILE=${2:-$ROOT/docker-compose.secure.yml}

fail() { printf 'compose: FAIL: %s\n' "$*" >&2; exit 1; }

[[ -f $FILE ]] || fail "no such file: $FILE"

# ---------------------------------------------------------------- the checker

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo -n "$@"
  else return 1
  fi
}

# sets COMPOSE to the command to run
find_compose() {
  if command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
  elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
  else
    return 1
  fi
}

if ! find_compose; then
  as_root true \
    || fail "the checker docker-compose is missing, and installing it needs root or passwordless sudo: run 'apt-get install docker-compose' as root, or install Docker Compose v2"
  printf 'compose: installing Debian'\''s docker-compose package (the checker)\n' >&2
  # --no-install-recommends: the recommended docker.io engine is not needed to check a file
  if ! out=$(as_root apt-get update -qq 2>&1 &&
             as_root env DEBIAN_FRONTEND=noninteractive \
               apt-get install -y -qq --no-install-recommends docker-compose 2>&1); then
    printf '%s\n' "$out" >&2
    fail "apt-get could not install docker-compose"
  fi
  find_compose || fail "docker-compose is still missing after apt-get install"
fi
TOOL=$("${COMPOSE[@]}" version 2>/dev/null | sed -n 1p)

# ---------------------------------------------------------------- 1. validate

# --project-directory: relative paths (build context, bind mounts) resolve against the repo,
# also when checking a copy of the file elsewhere
compose() {
  COMPOSE_PROFILES=pipeline "${COMPOSE[@]}" --project-directory "$ROOT" -f "$FILE" "$@"
}
if ! errors=$(compose config -q 2>&1); then
  printf '%s\n' "$errors" >&2
  fail "$FILE is not a valid compose file (checked with: $TOOL)"
fi
resolved=$(compose config 2>/dev/null)

secure_note=
CHECKED=$FILE
if [[ -f $SECURE_FILE ]]; then
  compose_secure() { compose -f "$SECURE_FILE" "$@"; }
  if ! errors=$(compose_secure config -q 2>&1); then
    printf '%s\n' "$errors" >&2
    fail "$FILE merged with $SECURE_FILE is not a valid compose file (checked with: $TOOL)"
  fi
  # the merged file has every image of the plain one, and the override's own
  resolved=$(compose_secure config 2>/dev/null)
  secure_services=$(compose_secure config --services 2>/dev/null | sort | tr '\n' ' ')
  secure_note="; with ${SECURE_FILE#"$ROOT"/}: ${secure_services% }"
  CHECKED="$FILE merged with $SECURE_FILE"
fi

# ---------------------------------------------------------------- 2. versions

# the file's values only (not the environment), parsed like scripts/stack.sh does
declare -A pinned=()
while IFS= read -r line; do
  [[ $line =~ ^([A-Z0-9_]+)=(.*)$ ]] && pinned[${BASH_REMATCH[1]}]=${BASH_REMATCH[2]}
done <"$ROOT/scripts/versions.env"

# every image of the repository ($1) in the resolved file must have tag $2 (a postgres tag may
# add to the major version: 15, 15.8, 15-bookworm); at least one image must be there
check_image() {
  local repo=$1 want=$2 key=$3 image tag found=0
  while read -r image; do
    [[ $image == "$repo":* ]] || continue
    found=1
    tag=${image#"$repo":}
    if [[ $repo == postgres ]]; then
      [[ $tag == "$want" || $tag == "$want".* || $tag == "$want"-* ]] && continue
    else
      [[ $tag == "$want" ]] && continue
    fi
    fail "$CHECKED uses image $image but scripts/versions.env has $key=$want (expected $repo:$want)"
  done < <(sed -n 's/^ *image: *["'\'']\{0,1\}\([^"'\'' ]*\).*/\1/p' <<<"$resolved")
  [[ $found -eq 1 ]] || fail "$CHECKED has no $repo image (expected $repo:$want from $key in scripts/versions.env)"
}

for key in KAFKA_VERSION APICURIO_VERSION POSTGRES_MAJOR PROMETHEUS_VERSION; do
  [[ -n ${pinned[$key]:-} ]] || fail "scripts/versions.env does not set $key"
done
check_image apache/kafka "${pinned[KAFKA_VERSION]}" KAFKA_VERSION
check_image apicurio/apicurio-registry "${pinned[APICURIO_VERSION]}" APICURIO_VERSION
check_image postgres "${pinned[POSTGRES_MAJOR]}" POSTGRES_MAJOR
# Prometheus images are tagged with a leading v
check_image prom/prometheus "v${pinned[PROMETHEUS_VERSION]}" PROMETHEUS_VERSION

services=$(compose config --services 2>/dev/null | sort | tr '\n' ' ')
printf 'compose: ok (%s; services: %s%s; kafka %s, apicurio %s, postgres %s, prometheus %s; %s)\n' \
  "${FILE#"$ROOT"/}" "${services% }" "$secure_note" "${pinned[KAFKA_VERSION]}" "${pinned[APICURIO_VERSION]}" \
  "${pinned[POSTGRES_MAJOR]}" "${pinned[PROMETHEUS_VERSION]}" "$TOOL"
