#!/usr/bin/env bash
# The 3-hour window (../shared/three-hour-window.md, seed 000) end to end: brings the stack up,
# builds the pipeline, seeds the source with hour 1, starts the producer and the consumer, then
# plays hours 2 and 3 as the source's application would, and after each hour prints source and
# target side by side with the rows that differ. Beside it, the seeds' `employees` table in
# trigger capture (a change table filled by triggers, the seeds' emp_cdc made safe). It ends
# with `tunnel-consumer verify`.
#
#   scripts/demo.sh     (DEMO_KEEP=1 leaves the producer and consumer running; the stack stays up
#                        either way: scripts/stack.sh down stops it)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# each step a headline, and the time the step before it took
STEP_AT=$SECONDS
say() {
  if [[ -n ${STEP:-} ]]; then printf '  (%d s)\n' $((SECONDS - STEP_AT)); fi
  STEP=$1 STEP_AT=$SECONDS
  if [[ -t 1 ]]; then printf '\n\033[1m%s\033[0m\n' "$*"; else printf '\n%s\n' "$*"; fi
}
# psql without its notices ("does not exist, skipping") and query results
export PGOPTIONS='-c client_min_messages=warning'


say "1. the stack (PostgreSQL source :5433 and target :5434, Kafka :9092, registry :8081)"
scripts/stack.sh up
# as plain shell variables: exported, they would override the demo's config file
eval "$(scripts/stack.sh env | sed 's/^export //')"

say "2. building the pipeline"
scripts/build-deps.sh
cargo build --quiet --bins

DEMO_DIR=$ROOT/.stack/demo
mkdir -p "$DEMO_DIR"
RUN=demo$(date +%s)
DB=demo
SRC_ADMIN=${TUNNEL_SOURCE_ADMIN_URL%/*}/$DB
SRC_READER=${TUNNEL_SOURCE_URL%/*}/$DB
TGT=${TUNNEL_TARGET_URL%/*}/$DB

say "3. fresh databases '$DB' on the source and on the target"
psql -X -q -o /dev/null "$TUNNEL_SOURCE_ADMIN_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
psql -X -q -o /dev/null "$TUNNEL_TARGET_URL" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
src() { psql -X -q -v ON_ERROR_STOP=1 -o /dev/null "$SRC_ADMIN" "$@"; }

cat >"$DEMO_DIR/config.toml" <<TOML
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
[producer]
insert_interval_ms = 100
update_interval_ms = 250
# the demo's table is tiny: reconcile every 2 s instead of every minute
reconcile_interval_ms = 2000
# a heartbeat every second: the consumer's lag below shows within a second or two
heartbeat_interval_ms = 1000
[[tables]]
name = "media"
# the seeds' employees table: trigger capture (tunnel-producer install, step 4)
[[tables]]
name = "employees"
capture = "trigger"
TOML

say "4. hour 1: the application creates and fills media (type: image = 1, video = 2)"
src <<'SQL'
CREATE TABLE media (
    id         serial PRIMARY KEY,
    s3_path    varchar(1024),
    format     varchar(5),
    type       smallint,
    updated_at timestamp DEFAULT now()
);
-- the seed's rows carry their own timestamps, so the demo writes them explicitly
INSERT INTO media (id, s3_path, format, type, updated_at) VALUES
    (1, '/a.jpg', 'jpg', 1, '2021-01-01 00:10'),
    (2, '/b.jpg', 'jpg', 1, '2021-01-01 00:20'),
    (3, '/c.jpg', 'jpg', 1, '2021-01-01 00:30');
SELECT setval('media_id_seq', 3);
SQL
echo "  and the seeds' employees table, for trigger capture:"
src <<'SQL'
CREATE TABLE employees (
    emp_id serial PRIMARY KEY, first_name varchar(100), last_name varchar(100), dob date,
    city varchar(100), salary int);
INSERT INTO employees (first_name, last_name, dob, city, salary) VALUES
    ('Ada', 'Lovelace', '2008-12-10', 'London', 12000),
    ('Alan', 'Turing', '2009-06-23', 'Wilmslow', 11000),
    ('Grace', 'Hopper', '2010-12-09', 'Arlington', 15000);
SQL
echo "  tunnel-producer install (as the table's owner): change table data_tunnel.public_employees_cdc and its triggers"
target/debug/tunnel-producer install --config "$DEMO_DIR/config.toml" --url "$SRC_ADMIN" | sed 's/^/  /'

say "5. tunnel-producer check and tunnel-consumer check: what the run needs, before it starts"
target/debug/tunnel-producer check --config "$DEMO_DIR/config.toml" | sed 's/^/  /'
target/debug/tunnel-consumer check --config "$DEMO_DIR/config.toml" | sed 's/^/  /'

say "6. starting tunnel-producer and tunnel-consumer (logs in .stack/demo/)"
# the addresses the stack's Prometheus scrapes (deploy/prometheus/prometheus.yml)
PRODUCER_METRICS=127.0.0.1:9641
CONSUMER_METRICS=127.0.0.1:9642
target/debug/tunnel-producer run --config "$DEMO_DIR/config.toml" --metrics-addr "$PRODUCER_METRICS" >"$DEMO_DIR/producer.log" 2>&1 &
PRODUCER=$!
target/debug/tunnel-consumer run --config "$DEMO_DIR/config.toml" --metrics-addr "$CONSUMER_METRICS" >"$DEMO_DIR/consumer.log" 2>&1 &
CONSUMER=$!
echo "  metrics: http://$PRODUCER_METRICS/metrics (producer), http://$CONSUMER_METRICS/metrics (consumer);"
echo "  /healthz and /readyz on both; Prometheus: ${TUNNEL_PROMETHEUS_URL:-http://127.0.0.1:9090} (alerts: /alerts)"
stop() {
  if [[ ${DEMO_KEEP:-0} != 1 ]]; then
    kill -TERM "$PRODUCER" "$CONSUMER" 2>/dev/null || true
    wait "$PRODUCER" "$CONSUMER" 2>/dev/null || true
  fi
}
trap stop EXIT

QUERY="SELECT id, s3_path, format, type, to_char(updated_at, 'HH24:MI') FROM media ORDER BY id"
rows() { psql -X -At -F '|' "$1" -c "$QUERY" 2>/dev/null || true; }

# prints source and target side by side; exit 0 when they are identical
compare() {
  python3 - "$1" <<'PY' 3<<<"$(rows "$SRC_ADMIN")" 4<<<"$(rows "$TGT")"
import sys
title = sys.argv[1]
def load(fd):
    with open(fd) as f:
        return {l.split('|')[0]: l.split('|') for l in f.read().splitlines() if l.strip()}
src, tgt = load(3), load(4)
fmt = "{:>3} {:<9} {:<4} {:<2} {:<6}"
def show(r):
    return fmt.format(*r) if r else fmt.format("", "", "", "", "")
print(f"\n  {title}")
print(f"  {'source':<28}   {'target':<28}")
diff = 0
for k in sorted(set(src) | set(tgt), key=int):
    a, b = src.get(k), tgt.get(k)
    mark = "" if a == b else "   <-- differs" if a and b else "   <-- only in source" if a else "   <-- only in target (deleted at the source)"
    diff += a != b
    print(f"  {show(a)}  |  {show(b)}{mark}")
print(f"  {'identical' if diff == 0 else str(diff) + ' row(s) differ'}")
sys.exit(1 if diff else 0)
PY
}

# the consumer's lag (seconds, worst partition) from its /metrics; empty when not served yet
lag() {
  curl -s "http://$CONSUMER_METRICS/metrics" 2>/dev/null \
    | awk '/^tunnel_consumer_lag_seconds\{/ { if ($NF > m) m = $NF; n++ } END { if (n) printf "%.1f", m }'
}

wait_identical() { # title seconds
  local deadline=$((SECONDS + $2)) l peak=""
  until compare "$1" >/dev/null; do
    if ((SECONDS >= deadline)); then break; fi
    l=$(lag)
    [[ -n $l ]] && peak=$(awk -v a="${peak:-0}" -v b="$l" 'BEGIN { print (b > a) ? b : a }')
    sleep 0.5
  done
  compare "$1" || true
  # the lag, as Prometheus would scrape it: up while the hour's changes travel, then back to
  # about zero (the producer's heartbeats keep it honest while nothing changes)
  local lag_deadline=$((SECONDS + 15))
  while ((SECONDS < lag_deadline)); do
    l=$(lag)
    if [[ -n $l ]] && awk -v l="$l" 'BEGIN { exit !(l < 1.5) }'; then break; fi
    sleep 0.5
  done
  if [[ -n $peak ]]; then
    echo "  consumer lag (tunnel_consumer_lag_seconds, worst partition): up to $peak s while the changes travelled, ${l:-n/a} s now"
  else
    echo "  consumer lag (tunnel_consumer_lag_seconds, worst partition): ${l:-n/a} s"
  fi
}

wait_identical "after hour 1" 60

say "7. hour 2: row 1 updated, rows 4 and 5 inserted"
src <<'SQL'
UPDATE media SET s3_path = '/xx.jpg', updated_at = '2021-01-01 01:21' WHERE id = 1;
INSERT INTO media (id, s3_path, format, type, updated_at) VALUES
    (4, '/d.mp4', 'mp4', 2, '2021-01-01 01:30'),
    (5, '/e.jpg', 'jpg', 1, '2021-01-01 01:40');
SELECT setval('media_id_seq', 5);
SQL
sleep 3
wait_identical "after hour 2" 15

say "8. hour 3: row 2 updated, row 3 hard-deleted, row 6 inserted with an updated_at no newer than hour 2's, row 1 changed WITHOUT moving updated_at"
src <<'SQL'
UPDATE media SET s3_path = '/zz.gif', format = 'gif', updated_at = '2021-01-01 02:30' WHERE id = 2;
DELETE FROM media WHERE id = 3;
INSERT INTO media (id, s3_path, format, type, updated_at) VALUES (6, '/f.jpg', 'jpg', 1, '2021-01-01 01:40');
SELECT setval('media_id_seq', 6);
UPDATE media SET s3_path = '/x.jpg' WHERE id = 1;   -- updated_at stays 01:21
SQL
sleep 3
wait_identical "after hour 3" 30

cat <<'NOTE'

  Trap 1, row 6 (an updated_at no newer than hour 2's): found by key (id > highest id shipped).
  Trap 2, row 3 (hard-deleted): found by the delete scan (the ids shipped against the source's
          ids, by range), shipped as a delete and a tombstone.
  Trap 3, row 1 (/xx.jpg -> /x.jpg without updated_at moving): found by reconciliation (count
          and hash of rows by key range, source against target), shipped as an update.
NOTE

say "9. trigger capture of employees: an insert, an update, a delete and a key change"
EMP_QUERY="SELECT emp_id, first_name, city, salary FROM employees ORDER BY emp_id"
t0=$(date +%s%N)
src <<'SQL'
INSERT INTO employees (first_name, last_name, dob, city, salary) VALUES ('Edsger', 'Dijkstra', '2011-05-11', 'Nuenen', 13000);
UPDATE employees SET salary = salary + 500 WHERE emp_id = 1;
DELETE FROM employees WHERE emp_id = 2;
UPDATE employees SET emp_id = 30 WHERE emp_id = 3;
SQL
echo "  the change table right after the writes (key, action, writing transaction):"
psql -X -At -F ' | ' "$SRC_ADMIN" -c "SELECT seq, action, key, old_key, xid FROM data_tunnel.public_employees_cdc ORDER BY seq" | sed 's/^/    /'
until [[ $(psql -X -At "$SRC_ADMIN" -c "$EMP_QUERY") == "$(psql -X -At "$TGT" -c "$EMP_QUERY" 2>/dev/null)" ]]; do
  if (( ($(date +%s%N) - t0) / 1000000000 > 30 )); then echo "  not identical after 30 s"; break; fi
  sleep 0.05
done
echo "  source and target identical $(( ($(date +%s%N) - t0) / 1000000 )) ms after the writes:"
psql -X -At -F ' | ' "$TGT" -c "$EMP_QUERY" | sed 's/^/    /'
sleep 1
echo "  rows left in the change table (trimmed once shipped): $(psql -X -At "$SRC_ADMIN" -c "SELECT count(*) FROM data_tunnel.public_employees_cdc")"

say "10. tunnel-consumer verify: the source against the target, by the same range bisection"
if target/debug/tunnel-consumer verify --config "$DEMO_DIR/config.toml" 2>&1 | sed 's/^/  /'; [[ ${PIPESTATUS[0]} == 0 ]]; then
  echo "  verify: clean"
else
  echo "  verify: differences (exit $?)"
fi

say "done in $SECONDS s"
cat <<DONE
  replicated: public.media (poll capture: the three traps above) and public.employees (trigger
  capture), source database '$DB' -> target database '$DB', through topics $RUN.public.*
  logs: .stack/demo/producer.log, .stack/demo/consumer.log
  metrics: http://$PRODUCER_METRICS/metrics, http://$CONSUMER_METRICS/metrics; Prometheus ${TUNNEL_PROMETHEUS_URL:-http://127.0.0.1:9090}
DONE
