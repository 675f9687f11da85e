#!/usr/bin/env bash
# Benchmark of the pipeline on the `media` table: prints figures, never fails on a threshold.
#
#   1. initial sync of BENCH_ROWS rows (default 1,000,000): time from the start of the producer
#      until the target holds every row, against a direct COPY pipe between the two databases;
#   2. source-commit-to-target-visible latency at BENCH_RATE DML/s (default 10, alternating
#      inserts and updates) for BENCH_LATENCY_SECONDS (default 60), on a table of BENCH_ROWS rows
#      and on one of BENCH_SMALL_ROWS rows (default 10,000);
#   3. peak RSS (VmHWM) and CPU time of tunnel-producer and tunnel-consumer.
#
#   scripts/bench.sh
#
# Knobs (environment): BENCH_ROWS, BENCH_SMALL_ROWS (0 skips the small table), BENCH_RATE,
# BENCH_LATENCY_SECONDS, BENCH_POLL_MS (target polling of the latency probe, default 25),
# BENCH_PARTITIONS (default 6), BENCH_SNAPSHOT_CHUNK (default 10000), BENCH_BATCH (consumer
# batch_max_events, default 5000), BENCH_SYNC_TIMEOUT (seconds, default 3600), BENCH_KEEP=1
# (leave the bench databases and topics in place), BENCH_DIR (logs, default .stack/bench),
# BENCH_BUILD=0 (no cargo build: bench the binaries already in target/release).
#
# Each run creates databases bench_<id>_* on the source and the target and topics with the
# prefix bench_<id>_*, and removes them on exit. Logs and raw latencies stay in BENCH_DIR.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

ROWS=${BENCH_ROWS:-1000000}
SMALL_ROWS=${BENCH_SMALL_ROWS:-10000}
RATE=${BENCH_RATE:-10}
LAT_SECONDS=${BENCH_LATENCY_SECONDS:-60}
POLL_MS=${BENCH_POLL_MS:-25}
PARTITIONS=${BENCH_PARTITIONS:-6}
SNAPSHOT_CHUNK=${BENCH_SNAPSHOT_CHUNK:-10000}
BATCH=${BENCH_BATCH:-5000}
SYNC_TIMEOUT=${BENCH_SYNC_TIMEOUT:-3600}
BENCH_DIR=${BENCH_DIR:-$ROOT/.stack/bench}
VENV=$ROOT/.stack/bench-venv
T_SCRIPT=$(date +%s.%N)

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
note() { printf '  %s\n' "$*"; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
calc() { awk "BEGIN { $1 }"; }

# ---------------------------------------------------------------- setup

say "stack"
scripts/stack.sh up
# plain shell variables, never exported: exported, they would override the bench's config file
unset TUNNEL_SOURCE_URL TUNNEL_TARGET_URL TUNNEL_KAFKA_BROKERS TUNNEL_REGISTRY_URL \
  TUNNEL_SOURCE_ADMIN_URL TUNNEL_KAFKA_LIBS
eval "$(scripts/stack.sh env | sed 's/^export //')"

# the code measured: HEAD, and whether the Rust sources differed from it when it was built
CODE_VERSION=$(git rev-parse --short HEAD 2>/dev/null || echo '?')
if [[ -n $(git status --porcelain -- Cargo.toml Cargo.lock producer consumer shared 2>/dev/null) ]]; then
  CODE_VERSION="$CODE_VERSION + uncommitted changes"
fi
PRODUCER_BIN=$ROOT/target/release/tunnel-producer
CONSUMER_BIN=$ROOT/target/release/tunnel-consumer
if [[ ${BENCH_BUILD:-1} == 0 ]]; then
  say "release build skipped (BENCH_BUILD=0): using the binaries already built"
  ls -l "$PRODUCER_BIN" "$CONSUMER_BIN"
else
  say "release build"
  cargo build --release --bins
fi

say "python probe (psycopg in $VENV)"
if ! "$VENV/bin/python" -c 'import psycopg' 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q 'psycopg[binary]'
fi
"$VENV/bin/python" -c 'import psycopg; print("  psycopg", psycopg.__version__)'

RUN_ID=bench_$(date +%Y%m%d%H%M%S)_$(printf '%04x' $((RANDOM % 65536)))
LOG_DIR=$BENCH_DIR/$RUN_ID
mkdir -p "$LOG_DIR"
ln -sfn "$RUN_ID" "$BENCH_DIR/latest"
SUMMARY=$LOG_DIR/summary.txt
: >"$LOG_DIR/figures.psv"
note "run $RUN_ID, logs in ${LOG_DIR#"$ROOT"/}"
note "rows=$ROWS small_rows=$SMALL_ROWS rate=${RATE}/s latency=${LAT_SECONDS}s poll=${POLL_MS}ms partitions=$PARTITIONS snapshot_chunk_rows=$SNAPSHOT_CHUNK batch_max_events=$BATCH"

figure() { # section | metric | value | target
  printf '%s|%s|%s|%s\n' "$1" "$2" "$3" "${4:-}" >>"$LOG_DIR/figures.psv"
}

src_admin_url() { echo "${TUNNEL_SOURCE_ADMIN_URL%/*}/$1"; }
src_reader_url() { echo "${TUNNEL_SOURCE_URL%/*}/$1"; }
tgt_url() { echo "${TUNNEL_TARGET_URL%/*}/$1"; }
PSQL=(psql -X -q -v ON_ERROR_STOP=1)

SOURCE_DBS=()
TARGET_DBS=()
TOPIC_PREFIXES=()
PIDS=()

# ---------------------------------------------------------------- cleanup

stop_pid() { # pid name
  local pid=$1 name=$2 rc=0
  kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || rc=$?; note "$name (pid $pid) had already exited (status $rc)"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  if kill -0 "$pid" 2>/dev/null; then
    note "$name (pid $pid) still running 30 s after SIGTERM: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || rc=$?
  note "$name (pid $pid) stopped, exit status $rc"
}

cleanup() {
  local rc=$? pid db prefix
  trap - EXIT INT TERM
  set +e
  for pid in "${PIDS[@]}"; do
    kill -0 "$pid" 2>/dev/null && stop_pid "$pid" "pipeline process"
  done
  [[ -n ${LOAD_PID:-} ]] && kill -0 "$LOAD_PID" 2>/dev/null && kill -TERM "$LOAD_PID" && wait "$LOAD_PID"
  if [[ ${BENCH_KEEP:-0} == 1 ]]; then
    note "BENCH_KEEP=1: kept source dbs ${SOURCE_DBS[*]:-}, target dbs ${TARGET_DBS[*]:-}, topics ${TOPIC_PREFIXES[*]:-}"
    exit "$rc"
  fi
  say "cleanup"
  for db in "${SOURCE_DBS[@]}"; do
    "${PSQL[@]}" "$TUNNEL_SOURCE_ADMIN_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" && note "dropped source database $db"
  done
  for db in "${TARGET_DBS[@]}"; do
    "${PSQL[@]}" "$TUNNEL_TARGET_URL" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" && note "dropped target database $db"
  done
  for prefix in "${TOPIC_PREFIXES[@]}"; do
    # the topics and registry subjects of this run only (names start with its unique prefix)
    java -cp "$TUNNEL_KAFKA_LIBS/*" org.apache.kafka.tools.TopicCommand \
      --bootstrap-server "$TUNNEL_KAFKA_BROKERS" --delete --if-exists --topic "$prefix\\..*" \
      >>"$LOG_DIR/cleanup.log" 2>&1 && note "deleted topics $prefix.*"
    for subject in "$prefix.public.media-key" "$prefix.public.media-value"; do
      curl -fs -o /dev/null -X DELETE "$TUNNEL_REGISTRY_URL/subjects/$subject" >>"$LOG_DIR/cleanup.log" 2>&1
      curl -fs -o /dev/null -X DELETE "$TUNNEL_REGISTRY_URL/subjects/$subject?permanent=true" >>"$LOG_DIR/cleanup.log" 2>&1
    done
  done
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- helpers

MEDIA_DDL="CREATE TABLE media (
    id         serial PRIMARY KEY,
    s3_path    varchar(1024),
    format     varchar(5),
    type       smallint,
    updated_at timestamp DEFAULT now()
);"

create_source() { # db rows: fresh database with media holding <rows> rows, as the owner app
  local db=$1 rows=$2 t0
  "${PSQL[@]}" "$TUNNEL_SOURCE_ADMIN_URL" -c "CREATE DATABASE $db"
  SOURCE_DBS+=("$db")
  t0=$(now)
  "${PSQL[@]}" "$(src_admin_url "$db")" <<SQL
$MEDIA_DDL
-- realistic rows: mostly images, some videos; updated_at spread over the past, rising with id
INSERT INTO media (s3_path, format, type, updated_at)
SELECT '/bucket/path/' || i || '.' || f.format, f.format, f.type,
       now() - ($rows - i) * interval '7 seconds'
  FROM generate_series(1, $rows) AS i,
       LATERAL (SELECT (ARRAY['jpg','jpg','jpg','png','png','gif','mp4','mov'])[1 + i % 8] AS format) g,
       LATERAL (SELECT g.format, CASE WHEN g.format IN ('mp4','mov') THEN 2 ELSE 1 END::smallint AS type) f;
VACUUM (ANALYZE) media;
SQL
  note "source $db: $rows rows loaded and vacuumed in $(since "$t0") s ($("${PSQL[@]}" -At "$(src_admin_url "$db")" -c "SELECT pg_size_pretty(pg_total_relation_size('media'))"))"
}

create_target() { # db
  "${PSQL[@]}" "$TUNNEL_TARGET_URL" -c "CREATE DATABASE $1"
  TARGET_DBS+=("$1")
}

write_config() { # db config-path
  local db=$1
  cat >"$2" <<TOML
[source]
url = "$(src_reader_url "$db")"
application_name = "$db"
[target]
url = "$(tgt_url "$db")"
[kafka]
brokers = "$TUNNEL_KAFKA_BROKERS"
topic_prefix = "$db"
consumer_group = "$db-consumer"
partitions = $PARTITIONS
[registry]
url = "$TUNNEL_REGISTRY_URL"
[producer]
snapshot_chunk_rows = $SNAPSHOT_CHUNK
[consumer]
batch_max_events = $BATCH
[[tables]]
name = "media"
TOML
  TOPIC_PREFIXES+=("$db")
}

target_count() { # db -> rows in the target's media, 0 while it does not exist
  psql -X -At "$(tgt_url "$1")" -c "SELECT count(*) FROM media" 2>/dev/null || echo 0
}

start_pipeline() { # db tag; sets PRODUCER_PID CONSUMER_PID T_START
  local db=$1 tag=$2 cfg=$LOG_DIR/$2.toml
  write_config "$db" "$cfg"
  T_START=$(now)
  NO_COLOR=1 "$PRODUCER_BIN" run --config "$cfg" >"$LOG_DIR/$tag-producer.log" 2>&1 &
  PRODUCER_PID=$!
  PIDS+=("$PRODUCER_PID")
  NO_COLOR=1 "$CONSUMER_BIN" run --config "$cfg" >"$LOG_DIR/$tag-consumer.log" 2>&1 &
  CONSUMER_PID=$!
  PIDS+=("$CONSUMER_PID")
  note "producer pid $PRODUCER_PID, consumer pid $CONSUMER_PID (logs $tag-producer.log, $tag-consumer.log)"
}

# waits until the target holds <rows> rows; sets SYNC_SECONDS (empty when it never got there),
# FIRST_ROW_SECONDS (first poll that saw a row) and SNAPSHOT_SECONDS (producer logged
# "snapshot done")
wait_sync() { # db rows tag
  local db=$1 rows=$2 tag=$3 n=0 last_report=$SECONDS deadline=$((SECONDS + SYNC_TIMEOUT)) el
  SYNC_SECONDS="" SNAPSHOT_SECONDS="" FIRST_ROW_SECONDS=""
  while :; do
    n=$(target_count "$db")
    el=$(since "$T_START")
    if [[ -z $FIRST_ROW_SECONDS ]] && ((n > 0)); then
      FIRST_ROW_SECONDS=$el
      note "first rows in the target at ${el} s ($n rows)"
    fi
    if [[ -z $SNAPSHOT_SECONDS ]] && grep -q 'snapshot done' "$LOG_DIR/$tag-producer.log" 2>/dev/null; then
      SNAPSHOT_SECONDS=$el
      note "producer logged 'snapshot done' at ${el} s (target holds $n rows)"
    fi
    if ((n >= rows)); then SYNC_SECONDS=$el; break; fi
    if ! kill -0 "$PRODUCER_PID" 2>/dev/null || ! kill -0 "$CONSUMER_PID" 2>/dev/null; then
      note "a pipeline process exited during the initial sync (target holds $n rows); log tails:"
      tail -n 20 "$LOG_DIR/$tag-producer.log" "$LOG_DIR/$tag-consumer.log" | sed 's/^/    /'
      break
    fi
    if ((SECONDS >= deadline)); then
      note "initial sync not done after ${SYNC_TIMEOUT} s (target holds $n of $rows rows)"
      break
    fi
    if ((SECONDS - last_report >= 15)); then
      note "$(printf '%7.1f s: %d / %d rows in the target' "$el" "$n" "$rows")"
      last_report=$SECONDS
    fi
    sleep 0.5
  done
  SYNC_ROWS=$n
}

proc_figures() { # pid name tag section: VmHWM and CPU seconds, read just before stopping
  local pid=$1 name=$2 section=$4 hwm rss ticks cpu hz
  if [[ -r /proc/$pid/status ]] && kill -0 "$pid" 2>/dev/null; then
    hwm=$(awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$pid/status")
    rss=$(awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$pid/status")
    hz=$(getconf CLK_TCK)
    ticks=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
    cpu=$(calc "printf \"%.1f\", $ticks / $hz")
    note "$name: peak RSS (VmHWM) $hwm MiB, current RSS $rss MiB, CPU $cpu s"
    figure "$section" "$name peak RSS (VmHWM)" "$hwm MiB" "< 200 MiB"
    figure "$section" "$name CPU time (user+sys)" "$cpu s" ""
  else
    note "$name (pid $pid) is not running: no RSS figure"
    figure "$section" "$name peak RSS (VmHWM)" "n/a (process exited)" "< 200 MiB"
  fi
}

stop_pipeline() { # tag section
  proc_figures "$PRODUCER_PID" tunnel-producer "$1" "$2"
  proc_figures "$CONSUMER_PID" tunnel-consumer "$1" "$2"
  stop_pid "$PRODUCER_PID" tunnel-producer
  stop_pid "$CONSUMER_PID" tunnel-consumer
  PIDS=()
  local f w e
  for f in "$1-producer.log" "$1-consumer.log"; do
    w=$(sed 's/\x1b\[[0-9;]*m//g' "$LOG_DIR/$f" | grep -c ' WARN ' || true)
    e=$(sed 's/\x1b\[[0-9;]*m//g' "$LOG_DIR/$f" | grep -cE ' ERROR |^error' || true)
    note "$f: $w warning(s), $e error(s)"
    figure "$2" "$f warnings / errors" "$w / $e" ""
  done
}

# what the producer's statements cost the source so far (pg_stat_statements of the bench's own
# database, reader role only): "exec_seconds calls rows buffers"
source_cost() { # db
  psql -X -At -F ' ' "$(src_reader_url "$1")" -c "
    SELECT round(coalesce(sum(total_exec_time), 0)::numeric / 1000, 2), coalesce(sum(calls), 0),
           coalesce(sum(rows), 0), coalesce(sum(shared_blks_hit + shared_blks_read), 0)
      FROM pg_stat_statements
     WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND userid = 'tunnel_reader'::regrole" 2>/dev/null || echo "? ? ? ?"
}

cost_figure() { # section label before after seconds
  local b=($3) a=($4)
  if [[ ${a[0]} == "?" || ${b[0]} == "?" ]]; then
    figure "$1" "$2" "n/a (pg_stat_statements unreadable)" ""
    return 0
  fi
  figure "$1" "$2" "$(calc "printf \"%.2f s exec over %.0f s (%.0f%% of one core), %d statements, %d buffers\", ${a[0]} - ${b[0]}, $5, 100 * (${a[0]} - ${b[0]}) / $5, ${a[1]} - ${b[1]}, ${a[3]} - ${b[3]}")" ""
}

latency() { # db tag section
  local db=$1 tag=$2 section=$3 out=$LOG_DIR/$2-latency
  note "load: ${RATE} DML/s for ${LAT_SECONDS} s (alternating INSERT / UPDATE), probing the target every ${POLL_MS} ms"
  "$VENV/bin/python" "$ROOT/scripts/bench/latency.py" \
    --source "$(src_admin_url "$db")" --target "$(tgt_url "$db")" \
    --duration "$LAT_SECONDS" --rate "$RATE" --poll-ms "$POLL_MS" --label "$tag" --out "$out" &
  LOAD_PID=$!
  local before after t0
  before=$(source_cost "$db")
  t0=$(now)
  wait "$LOAD_PID" || note "the latency probe failed (status $?)"
  LOAD_PID=""
  after=$(source_cost "$db")
  cost_figure "$section" "producer's cost to the source while streaming" "$before" "$after" "$(since "$t0")"
  [[ -f $out.json ]] || { figure "$section" "latency" "n/a (probe failed)" "p99 < 1000 ms"; return 0; }
  "$VENV/bin/python" - "$out.json" "$section" >>"$LOG_DIR/figures.psv" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); section = sys.argv[2]
f = lambda v: "-" if v is None else f"{v:.0f}"
for kind in ("insert", "update"):
    s = r[kind]
    print(f"{section}|{kind} latency p50 / p95 / p99 / max"
          f"|{f(s['p50_ms'])} / {f(s['p95_ms'])} / {f(s['p99_ms'])} / {f(s['max_ms'])} ms"
          f" (n={s['count']}, missing={s['missing']})|p99 < 1000 ms")
PY
}

# ---------------------------------------------------------------- 1. initial sync, large table

BIG=${RUN_ID}_big
say "1. initial sync of $ROWS rows"
create_source "$BIG" "$ROWS"
create_target "$BIG"
create_target "${RUN_ID}_copy"
"${PSQL[@]}" "$(tgt_url "${RUN_ID}_copy")" -c "$MEDIA_DDL"

note "direct pipe: psql \\copy (SELECT * FROM media) TO STDOUT | psql \\copy media FROM STDIN"
t0=$(now)
psql -X -q -v ON_ERROR_STOP=1 "$(src_admin_url "$BIG")" -c "\\copy (SELECT * FROM media) TO STDOUT" \
  | psql -X -q -v ON_ERROR_STOP=1 "$(tgt_url "${RUN_ID}_copy")" -c "\\copy media FROM STDIN"
COPY_SECONDS=$(since "$t0")
COPY_ROWS=$(psql -X -At "$(tgt_url "${RUN_ID}_copy")" -c "SELECT count(*) FROM media")
COPY_RATE=$(calc "printf \"%.0f\", $COPY_ROWS / $COPY_SECONDS")
note "direct copy: $COPY_ROWS rows in $COPY_SECONDS s = $COPY_RATE rows/s"
# the copy's table is not needed any more; it would only weigh on the target
"${PSQL[@]}" "$TUNNEL_TARGET_URL" -c "DROP DATABASE ${RUN_ID}_copy WITH (FORCE)"
TARGET_DBS=("$BIG")
"${PSQL[@]}" "$TUNNEL_TARGET_URL" -c "CHECKPOINT" 2>/dev/null || true

note "pipeline: starting tunnel-producer and tunnel-consumer"
start_pipeline "$BIG" big
wait_sync "$BIG" "$ROWS" big
S1="1. initial sync ($ROWS rows)"
figure "$S1" "direct COPY pipe" "$COPY_SECONDS s, $COPY_RATE rows/s" ""
if [[ -n $SYNC_SECONDS ]]; then
  PIPE_RATE=$(calc "printf \"%.0f\", $ROWS / $SYNC_SECONDS")
  RATIO=$(calc "printf \"%.2f\", $PIPE_RATE / $COPY_RATE")
  note "pipeline: $ROWS rows in $SYNC_SECONDS s = $PIPE_RATE rows/s, ${RATIO}x the direct copy"
  [[ -n $FIRST_ROW_SECONDS ]] && figure "$S1" "first rows in the target after" "$FIRST_ROW_SECONDS s" ""
  [[ -n $SNAPSHOT_SECONDS ]] && figure "$S1" "producer logged 'snapshot done' after" "$SNAPSHOT_SECONDS s" ""
  if [[ -n $FIRST_ROW_SECONDS ]] && awk -v a="$SYNC_SECONDS" -v b="$FIRST_ROW_SECONDS" 'BEGIN { exit !(a > b) }'; then
    figure "$S1" "rate from the first row in the target" "$(calc "printf \"%.0f\", $ROWS / ($SYNC_SECONDS - $FIRST_ROW_SECONDS)") rows/s (excludes start-up)" ""
  fi
  figure "$S1" "pipeline (producer start -> target count = N)" "$SYNC_SECONDS s, $PIPE_RATE rows/s" ""
  figure "$S1" "pipeline / direct" "${RATIO}x" ">= 0.3x"
  cost_figure "$S1" "producer's cost to the source (start -> synced)" "0 0 0 0" "$(source_cost "$BIG")" "$SYNC_SECONDS"
else
  figure "$S1" "pipeline (producer start -> target count = N)" "not reached ($SYNC_ROWS rows after $(since "$T_START") s)" ""
  figure "$S1" "pipeline / direct" "n/a" ">= 0.3x"
fi

# ---------------------------------------------------------------- 2+3 on the large table

S2B="2. latency, $ROWS-row table"
say "2. latency on the $ROWS-row table"
if [[ -n $SYNC_SECONDS ]] && kill -0 "$PRODUCER_PID" 2>/dev/null && kill -0 "$CONSUMER_PID" 2>/dev/null; then
  latency "$BIG" big "$S2B"
else
  note "skipped: the initial sync did not complete"
  figure "$S2B" "latency" "skipped (no initial sync)" "p99 < 1000 ms"
fi
say "3. peak RSS, $ROWS-row pipeline"
stop_pipeline big "3. resources, $ROWS-row pipeline"

# ---------------------------------------------------------------- 2+3 on the small table

if ((SMALL_ROWS > 0)); then
  SMALL=${RUN_ID}_small
  S2S="2. latency, $SMALL_ROWS-row table"
  say "2. latency on the $SMALL_ROWS-row table"
  create_source "$SMALL" "$SMALL_ROWS"
  create_target "$SMALL"
  start_pipeline "$SMALL" small
  wait_sync "$SMALL" "$SMALL_ROWS" small
  if [[ -n $SYNC_SECONDS ]]; then
    note "initial sync of $SMALL_ROWS rows: $SYNC_SECONDS s"
    figure "$S2S" "initial sync of $SMALL_ROWS rows" "$SYNC_SECONDS s" ""
    latency "$SMALL" small "$S2S"
  else
    figure "$S2S" "latency" "skipped (no initial sync)" "p99 < 1000 ms"
  fi
  say "3. peak RSS, $SMALL_ROWS-row pipeline"
  stop_pipeline small "3. resources, $SMALL_ROWS-row pipeline"
fi

# ---------------------------------------------------------------- summary

TOTAL=$(since "$T_SCRIPT")
figure "run" "wall time of the bench" "$TOTAL s" ""
{
  printf '\nData Tunnel bench %s (code %s, %s cores)\n' "$RUN_ID" "$CODE_VERSION" "$(nproc)"
  awk -F'|' '
    { if ($1 != prev) { printf "\n  %s\n", $1; prev = $1 }
      if ($4 == "") printf "    %-48s %s\n", $2, $3
      else printf "    %-48s %-48s target %s\n", $2, $3, $4 }' \
    <(sort -s -t'|' -k1,1 "$LOG_DIR/figures.psv")
  printf '\n  logs: %s\n' "${LOG_DIR#"$ROOT"/}"
} | tee "$SUMMARY"
