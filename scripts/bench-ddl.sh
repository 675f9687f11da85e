#!/usr/bin/env bash
# What a column added on a large source table costs: BENCH_DDL_ROWS rows (default 1,000,000)
# replicated, then `ALTER TABLE media ADD COLUMN note text DEFAULT 'n/a'` (and, with
# BENCH_DDL=..., any other statement) while the pipeline runs. Prints how long until the target
# was identical again (every row with the new column and the source's value in it), the rows the
# producer read from the source for it (pg_stat_user_tables), and the events it shipped.
# Prints figures, never fails on a threshold.
#
#   scripts/bench-ddl.sh            (release build first; BENCH_BUILD=0 uses target/release)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ROWS=${BENCH_DDL_ROWS:-1000000}
DDL=${BENCH_DDL:-"ALTER TABLE media ADD COLUMN note text DEFAULT 'n/a'"}
TIMEOUT=${BENCH_DDL_TIMEOUT:-1800}

say() { printf '\n== %s\n' "$*"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

say "stack"
scripts/stack.sh up
unset TUNNEL_SOURCE_URL TUNNEL_TARGET_URL TUNNEL_KAFKA_BROKERS TUNNEL_REGISTRY_URL
eval "$(scripts/stack.sh env | sed 's/^export //')"
if [[ ${BENCH_BUILD:-1} != 0 ]]; then
  say "release build"
  scripts/build-deps.sh
  cargo build --release --bins
fi
PSQL=$TUNNEL_PG_BINDIR/psql
ID=bddl_$(date +%H%M%S)_$((RANDOM % 10000))
DIR=$ROOT/.stack/bench/$ID
mkdir -p "$DIR"
base() { printf '%s' "${1%/*}"; }
SRC_ADMIN=$(base "$TUNNEL_SOURCE_ADMIN_URL")/$ID
SRC_READER=$(base "$TUNNEL_SOURCE_URL")/$ID
TGT=$(base "$TUNNEL_TARGET_URL")/$ID
q() { "$PSQL" -X -q -t -A -v ON_ERROR_STOP=1 "$1" -c "$2"; }
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [[ ${BENCH_KEEP:-0} != 1 ]]; then
    q "$TUNNEL_SOURCE_ADMIN_URL" "DROP DATABASE IF EXISTS $ID" >/dev/null 2>&1 || true
    q "$TUNNEL_TARGET_URL" "DROP DATABASE IF EXISTS $ID" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

say "source: $ROWS rows"
q "$TUNNEL_SOURCE_ADMIN_URL" "CREATE DATABASE $ID"
q "$TUNNEL_TARGET_URL" "CREATE DATABASE $ID"
q "$SRC_ADMIN" "CREATE TABLE media (id serial PRIMARY KEY, s3_path varchar(1024), format varchar(5), type smallint, updated_at timestamp DEFAULT now());
  INSERT INTO media (s3_path, format, type) SELECT '/p/' || i, 'jpg', 1 FROM generate_series(1, $ROWS) i; ANALYZE media"
cat >"$DIR/config.toml" <<CONF
[source]
url = "$SRC_READER"
[target]
url = "$TGT"
[kafka]
brokers = "$TUNNEL_KAFKA_BROKERS"
topic_prefix = "$ID"
consumer_group = "$ID"
partitions = 6
[registry]
url = "$TUNNEL_REGISTRY_URL"
[[tables]]
name = "media"
CONF
target/release/tunnel-producer run --config "$DIR/config.toml" >"$DIR/producer.log" 2>&1 &
PIDS+=($!)
target/release/tunnel-consumer run --config "$DIR/config.toml" >"$DIR/consumer.log" 2>&1 &
PIDS+=($!)
wait_until() { # what, sql on the target that returns t when done
  local t0 deadline
  t0=$(now)
  deadline=$(( $(date +%s) + TIMEOUT ))
  until [[ $(q "$TGT" "$2" 2>/dev/null || echo f) == t ]]; do
    (( $(date +%s) < deadline )) || { echo "timed out waiting for $1; logs in $DIR" >&2; exit 1; }
    sleep 0.2
  done
}
T0=$(now)
wait_until "the initial sync" "SELECT count(*) = $ROWS FROM media"
echo "  initial sync: $(since "$T0") s"
# a quiet moment: what the source has read so far, then the DDL
sleep 3
read_before=$(q "$SRC_ADMIN" "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables WHERE relname = 'media'")
say "DDL: $DDL"
T1=$(now)
q "$SRC_ADMIN" "$DDL"
ddl_s=$(since "$T1")
# identical: the same rows in both, every column included
same="SELECT (SELECT count(*) FROM media) = $ROWS AND EXISTS (SELECT 1 FROM information_schema.columns WHERE table_name = 'media' AND column_name = 'note') AND (SELECT count(*) FROM media WHERE note IS NOT DISTINCT FROM 'n/a') = $ROWS"
if [[ -n ${BENCH_DDL:-} ]]; then
  same="SELECT true"
fi
wait_until "the target to follow" "$same"
follow_s=$(since "$T1")
# the producer snapshots the table again after an added column: its cost on the source
deadline=$(( $(date +%s) + TIMEOUT ))
until [[ $(grep -c "snapshot done" "$DIR/producer.log") -ge 2 ]]; do
  (( $(date +%s) < deadline )) || { echo "timed out waiting for the second snapshot; logs in $DIR" >&2; exit 1; }
  sleep 0.2
done
resnapshot_s=$(since "$T1")
sleep 2
read_after=$(q "$SRC_ADMIN" "SELECT coalesce(seq_tup_read, 0) + coalesce(idx_tup_fetch, 0) FROM pg_stat_user_tables WHERE relname = 'media'")
say "figures"
echo "  rows: $ROWS"
echo "  the DDL itself on the source: $ddl_s s"
echo "  DDL commit -> target identical (every row with the source's value): $follow_s s"
echo "  DDL commit -> the producer's snapshot after it done: $resnapshot_s s"
echo "  rows read from the source table for it: $((read_after - read_before))"
grep "the table's shape changed" "$DIR/producer.log" | tail -1 | sed 's/^/  producer: /' | cut -c1-300
grep "snapshot done" "$DIR/producer.log" | tail -1 | sed 's/^/  producer: /' | cut -c1-300
"$ROOT/target/release/tunnel-consumer" verify --config "$DIR/config.toml" | tail -3 | sed 's/^/  verify: /'
