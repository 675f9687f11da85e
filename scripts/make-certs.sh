#!/usr/bin/env bash
# Generates, once, the throwaway TLS material and passwords of the local stack's secured
# listeners into DIR (scripts/stack.sh: .stack/tls; docker-compose.secure.yml: its `certs`
# service). A second run keeps what is there and only replaces what is missing or no longer
# verifies against ca.pem (a new CA re-issues both certificates).
#
#   scripts/make-certs.sh DIR
#
#   ca.pem, ca.key            the CA (EC P-256, 10 years)
#   server.pem, server.key    signed by it: CN=localhost, SANs DNS:localhost and IP:127.0.0.1,
#                             serverAuth (PostgreSQL and Kafka's SASL_SSL listener)
#   client.pem, client.key    signed by it: CN=tunnel_tls, clientAuth
#   other-ca.pem              an unrelated CA (its key is thrown away), for wrong-CA tests
#   pg-password               the PostgreSQL role tunnel_tls's password
#   kafka-password            the Kafka user tunnel's password (SCRAM-SHA-256/512 and PLAIN)
#
# Keys are unencrypted PKCS#8 PEM; the passwords are 32 hex characters, no trailing newline.
# Modes: the keys and passwords 0600; with TLS_KEY_GROUP=<group>, server.key and the two
# passwords are 0640 in that group instead (owner root when run as root), so that a server
# running as another user of the group can read them: PostgreSQL accepts a key owned by root
# with group read. The certificates are 0644, DIR 0755.
set -euo pipefail

dir=${1:?usage: make-certs.sh DIR}
group=${TLS_KEY_GROUP:-}
say() { printf 'make-certs: %s\n' "$*" >&2; }
command -v openssl >/dev/null 2>&1 || { say "error: openssl is missing"; exit 1; }

umask 077
mkdir -p "$dir"
cd "$dir"
tmp=$(mktemp -d "$PWD/.new.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# EC P-256, written as PKCS#8 (BEGIN PRIVATE KEY): rustls, Java and PostgreSQL all read it
new_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }

new_ca() { # key cert subject
  new_key "$1"
  openssl req -x509 -new -key "$1" -sha256 -days 3650 -subj "$3" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$2"
}

issue() { # name subject extensions...: name.key and name.pem signed by ca.pem
  local name=$1 subject=$2
  shift 2
  new_key "$tmp/$name.key"
  openssl req -new -key "$tmp/$name.key" -subj "$subject" -out "$tmp/$name.csr"
  printf '%s\n' "$@" >"$tmp/$name.ext"
  local out
  out=$(openssl x509 -req -in "$tmp/$name.csr" -CA ca.pem -CAkey ca.key \
    -set_serial "0x$(openssl rand -hex 16)" -days 825 -sha256 \
    -extfile "$tmp/$name.ext" -out "$tmp/$name.pem" 2>&1) || { say "error: $out"; exit 1; }
  mv -f "$tmp/$name.key" "$name.key"
  mv -f "$tmp/$name.pem" "$name.pem"
  say "issued $name.pem ($subject)"
}

# valid and signed by ca.pem (also false when expired)
verifies() { [[ -s $1.pem && -s $1.key ]] && openssl verify -CAfile ca.pem "$1.pem" >/dev/null 2>&1; }

if ! [[ -s ca.pem && -s ca.key ]] || ! openssl x509 -in ca.pem -noout -checkend 0 >/dev/null 2>&1; then
  new_ca "$tmp/ca.key" "$tmp/ca.pem" "/CN=Data Tunnel throwaway CA"
  mv -f "$tmp/ca.key" ca.key
  mv -f "$tmp/ca.pem" ca.pem
  rm -f server.pem client.pem
  say "created a CA in $PWD"
fi

verifies server || issue server "/CN=localhost" \
  "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
  "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid"
verifies client || issue client "/CN=tunnel_tls" \
  "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
  "extendedKeyUsage=clientAuth" "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid"

if [[ ! -s other-ca.pem ]]; then
  new_ca "$tmp/other-ca.key" "$tmp/other-ca.pem" "/CN=Data Tunnel unrelated CA"
  mv -f "$tmp/other-ca.pem" other-ca.pem
  say "created other-ca.pem (a CA nothing here trusts)"
fi

# The passwords go into SQL literals, JAAS strings, kafka-configs' [password=...] and URLs
# unquoted, so only [A-Za-z0-9._-]; a trailing newline (an editor's) is dropped.
for f in pg-password kafka-password; do
  if [[ ! -s $f ]]; then
    printf '%s' "$(openssl rand -hex 16)" >"$tmp/$f"
    mv -f "$tmp/$f" "$f"
    say "generated $f"
  fi
  pw=$(<"$f")
  [[ $pw =~ ^[A-Za-z0-9._-]+$ ]] \
    || { say "error: $PWD/$f may hold only [A-Za-z0-9._-] (delete it to get a new one)"; exit 1; }
  [[ $(wc -c <"$f") -eq ${#pw} ]] || printf '%s' "$pw" >"$f"
done

chmod 755 .
chmod 644 ca.pem server.pem client.pem other-ca.pem
chmod 600 ca.key client.key
for f in server.key pg-password kafka-password; do
  if [[ -n $group ]]; then
    if [[ $(id -u) -eq 0 ]]; then chown "0:$group" "$f"; else chgrp "$group" "$f"; fi
    chmod 640 "$f"
  else
    chmod 600 "$f"
  fi
done
