#!/usr/bin/env bash
# The batch DAG (airflow/dags/data_tunnel.py) run by a real Apache Airflow against the local
# stack: installs Airflow from PyPI into .stack/airflow (pinned, with
# airflow/constraints-<version>-py3.11.txt), then `airflow dags test data_tunnel_batch` three
# times on a fresh pair of databases: the first run copies the table, the second follows a mix
# of changes (insert, update, update without updated_at, delete), the third ships nothing. After
# each run the target must equal the source. Called by scripts/test.sh.
#
#   scripts/test-airflow.sh          (TUNNEL_SKIP_AIRFLOW=1 skips it, saying so)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

if [[ ${TUNNEL_SKIP_AIRFLOW:-0} == 1 ]]; then
  echo "test-airflow: SKIPPED (TUNNEL_SKIP_AIRFLOW=1): the Airflow DAG was not tested"
  exit 0
fi

AIRFLOW_VERSION=2.11.2
CONSTRAINTS=$ROOT/airflow/constraints-$AIRFLOW_VERSION-py3.11.txt
AF_DIR=$ROOT/.stack/airflow
VENV=$AF_DIR/venv-$AIRFLOW_VERSION
step() { printf '\n== test-airflow: %s\n' "$*"; }
fail() { echo "test-airflow: FAILED: $*" >&2; exit 1; }

step "stack and binaries"
scripts/stack.sh up >/dev/null
# as plain variables: exported, they would override the pipeline's config file
eval "$(scripts/stack.sh env | sed 's/^export //')"
for var in TUNNEL_SOURCE_URL TUNNEL_TARGET_URL TUNNEL_KAFKA_BROKERS TUNNEL_REGISTRY_URL \
  TUNNEL_SOURCE_PASSWORD TUNNEL_TARGET_PASSWORD TUNNEL_REGISTRY_PASSWORD TUNNEL_REGISTRY_TOKEN \
  TUNNEL_KAFKA_PASSWORD TUNNEL_ALERTS_WEBHOOK_URL; do
  export -n "$var" 2>/dev/null || true
done
cargo build --quiet --bins

step "apache-airflow $AIRFLOW_VERSION in ${VENV#"$ROOT"/}"
if ! "$VENV/bin/airflow" version 2>/dev/null | grep -qx "$AIRFLOW_VERSION"; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  py=$("$VENV/bin/python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  if [[ $py == 3.11 ]]; then
    "$VENV/bin/pip" install -q "apache-airflow==$AIRFLOW_VERSION" --constraint "$CONSTRAINTS"
  else
    echo "  Python $py: the constraints file is for 3.11; installing without it"
    "$VENV/bin/pip" install -q "apache-airflow==$AIRFLOW_VERSION"
  fi
fi
"$VENV/bin/airflow" version 2>/dev/null | tail -n 1

RUN=af$(date +%s)$RANDOM
export AIRFLOW_HOME=$AF_DIR/home-$RUN
export AIRFLOW__CORE__DAGS_FOLDER=$ROOT/airflow/dags
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__UNIT_TEST_MODE=False
export PYTHONWARNINGS=ignore
SRC_ADMIN=${TUNNEL_SOURCE_ADMIN_URL%/*}/$RUN
SRC_READER=${TUNNEL_SOURCE_URL%/*}/$RUN
TGT=${TUNNEL_TARGET_URL%/*}/$RUN
PIDS=()
cleanup() {
  local rc=$?
  set +e
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
  psql -X -q "$TUNNEL_SOURCE_ADMIN_URL" -c "DROP DATABASE IF EXISTS $RUN WITH (FORCE)" 2>/dev/null
  psql -X -q "$TUNNEL_TARGET_URL" -c "DROP DATABASE IF EXISTS $RUN WITH (FORCE)" 2>/dev/null
  java -cp "$TUNNEL_KAFKA_LIBS/*" org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "$TUNNEL_KAFKA_BROKERS" --delete --if-exists --topic "$RUN\\..*" >/dev/null 2>&1
  ((rc == 0)) && rm -rf "$AIRFLOW_HOME"
  exit "$rc"
}
trap cleanup EXIT

step "airflow db migrate (SQLite in ${AIRFLOW_HOME#"$ROOT"/})"
mkdir -p "$AIRFLOW_HOME"
"$VENV/bin/airflow" db migrate >"$AIRFLOW_HOME/migrate.log" 2>&1 || { tail -n 20 "$AIRFLOW_HOME/migrate.log"; fail "airflow db migrate"; }

step "databases $RUN, the config, the DAG's Variables"
psql -X -q "$TUNNEL_SOURCE_ADMIN_URL" -c "CREATE DATABASE $RUN"
psql -X -q "$TUNNEL_TARGET_URL" -c "CREATE DATABASE $RUN"
psql -X -q -v ON_ERROR_STOP=1 "$SRC_ADMIN" <<'SQL'
CREATE TABLE media (id serial PRIMARY KEY, s3_path varchar(1024), format varchar(5), type smallint,
                    updated_at timestamp DEFAULT now());
INSERT INTO media (s3_path, format, type) SELECT '/p/' || i, 'jpg', 1 FROM generate_series(1, 1000) i;
SQL
CONFIG=$AIRFLOW_HOME/pipeline.toml
cat >"$CONFIG" <<TOML
[source]
url = "$SRC_READER"
[target]
url = "$TGT"
[kafka]
brokers = "$TUNNEL_KAFKA_BROKERS"
topic_prefix = "$RUN"
consumer_group = "$RUN-consumer"
partitions = 3
[registry]
url = "$TUNNEL_REGISTRY_URL"
[[tables]]
name = "media"
TOML
"$VENV/bin/airflow" variables set data_tunnel_config "$CONFIG" >/dev/null
"$VENV/bin/airflow" variables set data_tunnel_bin_dir "$ROOT/target/debug" >/dev/null
"$VENV/bin/airflow" dags list 2>/dev/null | grep -q data_tunnel_batch || fail "the DAG data_tunnel_batch does not load: $("$VENV/bin/airflow" dags list-import-errors 2>&1 | tail -n 5)"

QUERY="SELECT id, s3_path, format, type, updated_at FROM media ORDER BY id"
dag_run() { # logical date, expected events of media (or "" for any): runs the DAG, checks it
  local out=$AIRFLOW_HOME/run-$1.log shipped
  "$VENV/bin/airflow" dags test data_tunnel_batch "$1" >"$out" 2>&1 || true
  if ! grep -q "DagRun Finished.*state=success" "$out"; then
    grep -E "ERROR|Error|error:|FAILED|state=" "$out" | tail -n 30
    fail "the DAG run of $1 did not succeed (log ${out#"$ROOT"/})"
  fi
  shipped=$(grep -oE "public\.media: [0-9]+ events shipped" "$out" | head -n 1 | awk '{ print $2 }')
  applied=$(grep -oE "public\.media: [0-9]+ events applied" "$out" | head -n 1 | awk '{ print $2 }')
  [[ -n $shipped && -n $applied ]] || fail "no summary lines in the run of $1 (log ${out#"$ROOT"/})"
  if [[ -n $2 && $shipped != "$2" ]]; then
    fail "the run of $1 shipped $shipped events of public.media, not $2"
  fi
  [[ $(psql -X -At "$SRC_ADMIN" -c "$QUERY") == "$(psql -X -At "$TGT" -c "$QUERY")" ]] ||
    fail "after the run of $1 the target differs from the source"
  echo "  run $1: $shipped events shipped, $applied applied, target = source, verify clean"
}

step "run 1: the first copy"
dag_run 2026-01-01T00:00:00+00:00 1000
step "run 2: after an insert, an update, an update without updated_at and a delete"
psql -X -q -v ON_ERROR_STOP=1 "$SRC_ADMIN" <<'SQL'
INSERT INTO media (s3_path, format, type) VALUES ('/new.png', 'png', 1);
UPDATE media SET format = 'gif', updated_at = now() WHERE id = 10;
UPDATE media SET s3_path = '/silent' WHERE id = 11;
DELETE FROM media WHERE id = 12;
SQL
dag_run 2026-01-01T01:00:00+00:00 ""
step "run 3: nothing changed"
dag_run 2026-01-01T02:00:00+00:00 0

step "data_tunnel_watch against the same pipeline, streaming"
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PM=127.0.0.1:$(port) CM=127.0.0.1:$(port)
target/debug/tunnel-producer run --config "$CONFIG" --metrics-addr "$PM" >"$AIRFLOW_HOME/producer.log" 2>&1 &
PRODUCER=$!
target/debug/tunnel-consumer run --config "$CONFIG" --metrics-addr "$CM" >"$AIRFLOW_HOME/consumer.log" 2>&1 &
PIDS=($PRODUCER $!)
"$VENV/bin/airflow" variables set data_tunnel_producer_metrics "http://$PM" >/dev/null
"$VENV/bin/airflow" variables set data_tunnel_consumer_metrics "http://$CM" >/dev/null
for _ in $(seq 1 120); do
  curl -fs "http://$PM/readyz" >/dev/null 2>&1 && curl -fs "http://$CM/readyz" >/dev/null 2>&1 && break
  sleep 0.5
done
out=$AIRFLOW_HOME/watch.log
"$VENV/bin/airflow" dags test data_tunnel_watch 2026-01-01T03:00:00+00:00 >"$out" 2>&1 || true
grep -q "DagRun Finished.*state=success" "$out" || { tail -n 30 "$out"; fail "data_tunnel_watch did not succeed against a running pipeline"; }
echo "  $(grep -oE "consumer lag: [^,]*" "$out" | head -n 1); both processes ready"
echo
echo "test-airflow: passed (Airflow $AIRFLOW_VERSION: 3 runs of data_tunnel_batch, 1 of data_tunnel_watch)"
