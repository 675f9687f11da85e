#!/usr/bin/env bash
# Benchmark of the pipeline on the `media` table: prints figures, never fails on a threshold.
#
#   1. initial sync of BENCH_ROWS rows (default 1,000,000): time from the start of the producer
#      until the target holds every row, against a direct COPY pipe between the two databases;
#   2. source-commit-to-target-visible latency at BENCH_RATE DML/s (default 10, cycling through
#      BENCH_MIX, default "iusd": an insert, an update that moves updated_at, a silent update that
#      does not, a delete) for BENCH_LATENCY_SECONDS (default 60), on a table of BENCH_ROWS rows
#      and on one of BENCH_SMALL_ROWS rows (default 10,000), with the default settings, and the
#      source's CPU share taken by the pipeline meanwhile (pg_stat_statements); then, on the
#      large table, inserts alone for BENCH_B2B_SECONDS (default 30; 0 skips it) while the
#      watermark scan runs back to back ([source] max_cpu_share = 0, so that every insert is
#      made during a full watermark pass): the key scan's latency beside a long pass;
#   3. peak RSS (VmHWM) and CPU time of tunnel-producer and tunnel-consumer;
#   4. deletes and reconciliation, on tables of BENCH_DELETE_SIZES rows (default
#      "1000000 10000000"), each synced through the pipeline first (producer options
#      delete_interval_ms = 1000, repair_interval_ms = 3600000, reconcile_interval_ms = 3600000
#      for a) and b), BENCH_RECONCILE_MS (default 2000) for c); producer logging at debug, so
#      that passes that ship nothing are logged too):
#      a) the producer restarted: its first delete pass, over unchanged keys (elapsed, index
#         entries read), the time it took to load its key set (from its saved copy and the
#         messages after it, or rebuilt from the whole topic), and from its start to streaming;
#      b) 0.1% of the rows deleted, scattered (id % 1000 = 0): the delete passes that ship them,
#         commit -> gone from the target, and the target's count dropping by exactly that much;
#      c) reconciliation: the first passes after the restarts (no change), then, restarted with
#         reconcile_interval_ms = BENCH_RECONCILE_MS, the pass that finds 0.1% of the rows changed
#         without updated_at moving (id % 1000 = 1); against the best of 3 `SELECT count(*)` on
#         the source, and on the source then the target;
#      d) on the BENCH_DELETE_LATENCY_ROWS table (default 1000000), producer restarted with the
#         default settings: BENCH_DELETE_PROBES (default 20) single-row deletes of random ids,
#         one a second, commit -> gone from the target (polled every BENCH_POLL_MS);
#      e) `tunnel-consumer verify` of the table: the whole table, then `--incremental` with no
#         change, then both after 0.1% of the rows were updated (id % 1000 = 2) and applied;
#   5. consumer apply throughput: the producer alone fills a topic with BENCH_APPLY_ROWS
#      (default 2,000,000) snapshot events; then fresh targets and groups apply it with 1, 2 and 3
#      consumers, with one rule every row passes, and with 1% of the rows breaking a rule (those
#      go to the DLQ); events/s from the first event applied to the last, and the consumers'
#      CPU time. The one-consumer runs, without and with 1% invalid, and with `--metrics-addr`
#      (scraped every second), alternate five times each.
#
#   scripts/bench.sh
#
#   6. (BENCH_SECTIONS=6, not by default) a large table: BENCH_HUGE_ROWS rows of media (default
#      100,000,000) generated, the direct COPY pipe, the initial sync and its ratio to the pipe;
#      BENCH_STEADY_SECONDS (default 600) of BENCH_RATE DML/s cycling through BENCH_MIX with
#      their latencies, the source's CPU share and rows read per second (pg_stat_statements);
#      peak RSS of both processes; producer restart to streaming; `verify` of the whole table;
#      the disk used by the table's topic. Needs about 40 GB free at 100M rows.
#   7. (BENCH_SECTIONS=7, not by default) trigger capture: latency in poll capture, then in
#      trigger capture, of the same BENCH_TRIGGER_ROWS-row table (default 1,000,000), and
#      pgbench TPS on the source with and without the triggers (see scripts/bench/trigger.sh).
#   8. (BENCH_SECTIONS=8, not by default) a BENCH_TINY_ROWS-row table (default 1,000): what a
#      scheduled batch run costs the source, against the idle streaming deployment (see
#      scripts/bench/small.sh).
#
# Knobs (environment): BENCH_ROWS, BENCH_SMALL_ROWS (0 skips the small table), BENCH_RATE,
# BENCH_LATENCY_SECONDS, BENCH_POLL_MS (target polling of the latency probes, default 25),
# BENCH_PARTITIONS (default 6), BENCH_SNAPSHOT_CHUNK (default 10000), BENCH_KEY_SNAPSHOT_S
# (producer key_snapshot_interval_s, default 300; 0: a restart rebuilds the key set from the
# whole topic, as before key sets were saved), BENCH_BATCH (consumer
# batch_max_events, default 10000), BENCH_SYNC_TIMEOUT (seconds, default 3600), BENCH_KEEP=1
# (leave the bench databases and topics in place), BENCH_DIR (logs, default .stack/bench),
# BENCH_BUILD=0 (no cargo build: bench the binaries already in target/release),
# BENCH_SECTIONS (default "1 4 5": 1 runs sections 1-3, 4 section 4, 5 section 5), BENCH_DELETE_SIZES,
# BENCH_RECONCILE_MS, BENCH_DELETE_LATENCY_ROWS, BENCH_DELETE_PROBES, BENCH_PASS_TIMEOUT (longest
# wait for one pass or change of section 4, seconds, default 600), BENCH_CPU_SHARE (the
# producer's [source] max_cpu_share in sections 1-3 and 6; unset: its default, 0.05).
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
MIX=${BENCH_MIX:-iusd}
B2B_SECONDS=${BENCH_B2B_SECONDS:-30}
POLL_MS=${BENCH_POLL_MS:-25}
PARTITIONS=${BENCH_PARTITIONS:-6}
SNAPSHOT_CHUNK=${BENCH_SNAPSHOT_CHUNK:-10000}
KEY_SNAPSHOT_S=${BENCH_KEY_SNAPSHOT_S:-300}
BATCH=${BENCH_BATCH:-10000}
SYNC_TIMEOUT=${BENCH_SYNC_TIMEOUT:-3600}
SECTIONS=" ${BENCH_SECTIONS:-1 4 5} "
DELETE_SIZES=${BENCH_DELETE_SIZES:-1000000 10000000}
RECONCILE_MS=${BENCH_RECONCILE_MS:-2000}
DELETE_LATENCY_ROWS=${BENCH_DELETE_LATENCY_ROWS:-1000000}
DELETE_PROBES=${BENCH_DELETE_PROBES:-20}
PASS_TIMEOUT=${BENCH_PASS_TIMEOUT:-600}
CPU_SHARE=${BENCH_CPU_SHARE:-}
# the producer's [source] max_cpu_share in sections 1-3 and 6 (the default when unset)
SHARE_LINE=${CPU_SHARE:+max_cpu_share = $CPU_SHARE}
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
  scripts/build-deps.sh
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
note "rows=$ROWS small_rows=$SMALL_ROWS rate=${RATE}/s latency=${LAT_SECONDS}s poll=${POLL_MS}ms partitions=$PARTITIONS snapshot_chunk_rows=$SNAPSHOT_CHUNK batch_max_events=$BATCH max_cpu_share=${CPU_SHARE:-default}"
note "sections:${SECTIONS% } delete_sizes=\"$DELETE_SIZES\" reconcile_interval_ms=$RECONCILE_MS delete_latency_rows=$DELETE_LATENCY_ROWS delete_probes=$DELETE_PROBES"

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

write_config() { # db config-path [extra [producer] lines] [extra [source] lines]
  local db=$1 extra=${3:-} source_extra=${4:-}
  cat >"$2" <<TOML
[source]
url = "$(src_reader_url "$db")"
application_name = "$db"
$source_extra
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
key_snapshot_interval_s = $KEY_SNAPSHOT_S
$extra
[consumer]
batch_max_events = $BATCH
[[tables]]
name = "media"
${TABLE_EXTRA:-}
TOML
  [[ " ${TOPIC_PREFIXES[*]:-} " == *" $db "* ]] || TOPIC_PREFIXES+=("$db")
}

target_count() { # db -> rows in the target's media, 0 while it does not exist
  psql -X -At "$(tgt_url "$1")" -c "SELECT count(*) FROM media" 2>/dev/null || echo 0
}

start_pipeline() { # db tag [extra [source] lines] [RUST_LOG]; sets PRODUCER_PID CONSUMER_PID T_START
  local db=$1 tag=$2 cfg=$LOG_DIR/$2.toml
  write_config "$db" "$cfg" "" "${3:-}"
  T_START=$(now)
  RUST_LOG=${4:-${RUST_LOG:-info}} NO_COLOR=1 "$PRODUCER_BIN" run --config "$cfg" >"$LOG_DIR/$tag-producer.log" 2>&1 &
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
  local db=$1 rows=$2 tag=$3 what el n
  SYNC_SECONDS="" SNAPSHOT_SECONDS="" FIRST_ROW_SECONDS="" SYNC_ROWS=0
  # one connection polling the consumer's bookkeeping (see scripts/bench/sync.py): psql and a
  # count(*) twice a second took CPU from the pipeline being measured
  while read -r what el n; do
    SYNC_ROWS=$n
    case $what in
      first) FIRST_ROW_SECONDS=$el; note "first rows in the target at ${el} s ($n rows)" ;;
      snapshot) SNAPSHOT_SECONDS=$el; note "producer logged 'snapshot done' at ${el} s (target holds $n rows)" ;;
      progress) note "$(printf '%7.1f s: %d / %d rows in the target' "$el" "$n" "$rows")" ;;
      done) SYNC_SECONDS=$el ;;
      exited)
        note "a pipeline process exited during the initial sync (target holds $n rows); log tails:"
        tail -n 20 "$LOG_DIR/$tag-producer.log" "$LOG_DIR/$tag-consumer.log" | sed 's/^/    /' ;;
      timeout) note "initial sync not done after ${SYNC_TIMEOUT} s (target holds $n of $rows rows)" ;;
    esac
  done < <("$VENV/bin/python" "$ROOT/scripts/bench/sync.py" --target "$(tgt_url "$db")" \
    --rows "$rows" --start "$T_START" --timeout "$SYNC_TIMEOUT" \
    --producer-log "$LOG_DIR/$tag-producer.log" --pids "$PRODUCER_PID" "$CONSUMER_PID" || true)
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

log_lines() { # log: its number of lines
  if [[ -f $1 ]]; then wc -l <"$1"; else echo 0; fi
}

pass_lines() { # log from detector: the pass lines of <detector> after line <from>
  tail -n +"$(($2 + 1))" "$1" 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' \
    | grep -E "(shipped changes|pass found no change) .*detector=\"?$3\"?( |$)" || true
}

kv() { # line key: the value of key=value in a log line, "" when absent
  grep -oE "(^| )$2=[^ ]+" <<<"$1" | head -n 1 | sed -E "s/^ *$2=//; s/\"//g" || true
}

elapsed_list() { # the elapsed_ms of the log lines on stdin, space-separated
  local l out=""
  while IFS= read -r l; do
    [[ -n $l ]] && out+="${out:+ }$(kv "$l" elapsed_ms)"
  done
  echo "${out:--}"
}

wait_logged() { # log text seconds: waits until <log> holds <text> (at most <seconds>)
  local deadline=$(($(date +%s) + $3))
  until grep -q "$2" "$1" 2>/dev/null; do
    (($(date +%s) > deadline)) && { note "'$2' not logged in ${1##*/} within $3 s"; return 0; }
    sleep 0.5
  done
}

latency() { # db tag section [mix] [seconds]
  local db=$1 tag=$2 section=$3 out=$LOG_DIR/$2-latency mix=${4:-$MIX} seconds=${5:-$LAT_SECONDS}
  note "load: ${RATE} DML/s for ${seconds} s (cycling through \"$mix\": i insert, u update, s silent update, d delete), probing the target every ${POLL_MS} ms"
  "$VENV/bin/python" "$ROOT/scripts/bench/latency.py" \
    --source "$(src_admin_url "$db")" --target "$(tgt_url "$db")" --mix "$mix" \
    --duration "$seconds" --rate "$RATE" --poll-ms "$POLL_MS" --label "$tag" --out "$out" &
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
targets = {"insert": "p99 < 1000 ms", "update": "", "silent": "p99 < 5000 ms", "delete": "p99 < 2000 ms"}
for kind in ("insert", "update", "silent", "delete"):
    s = r[kind]
    if s["count"] == 0 and s["missing"] == 0:
        continue
    print(f"{section}|{kind} latency p50 / p95 / p99 / max"
          f"|{f(s['p50_ms'])} / {f(s['p95_ms'])} / {f(s['p99_ms'])} / {f(s['max_ms'])} ms"
          f" (n={s['count']}, missing={s['missing']})|{targets[kind]}")
PY
}

if [[ $SECTIONS == *" 1 "* ]]; then

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
  start_pipeline "$BIG" big "$SHARE_LINE"
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
    figure "$S1" "pipeline / direct" "${RATIO}x" ">= 0.5x"
    cost_figure "$S1" "producer's cost to the source (start -> synced)" "0 0 0 0" "$(source_cost "$BIG")" "$SYNC_SECONDS"
  else
    figure "$S1" "pipeline (producer start -> target count = N)" "not reached ($SYNC_ROWS rows after $(since "$T_START") s)" ""
    figure "$S1" "pipeline / direct" "n/a" ">= 0.5x"
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

  if [[ -n $SYNC_SECONDS ]] && ((B2B_SECONDS > 0)); then
    S2W="2. insert latency beside back-to-back watermark passes, $ROWS-row table"
    say "$S2W"
    start_pipeline "$BIG" big-b2b "max_cpu_share = 0" "info,tunnel_producer=debug,rdkafka=warn,tokio_postgres=warn"
    wait_logged "$LOG_DIR/big-b2b-producer.log" "streaming changes" 300
    from=$(log_lines "$LOG_DIR/big-b2b-producer.log")
    latency "$BIG" big-b2b "$S2W" i "$B2B_SECONDS"
    line=$(pass_lines "$LOG_DIR/big-b2b-producer.log" "$from" watermark)
    figure "$S2W" "watermark passes meanwhile" "$(grep -c . <<<"$line" || true) pass(es), elapsed_ms: $(elapsed_list <<<"$line" | cut -c1-200)" ""
    stop_pipeline big-b2b "$S2W"
  fi

  # ---------------------------------------------------------------- 2+3 on the small table

  if ((SMALL_ROWS > 0)); then
    SMALL=${RUN_ID}_small
    S2S="2. latency, $SMALL_ROWS-row table"
    say "2. latency on the $SMALL_ROWS-row table"
    create_source "$SMALL" "$SMALL_ROWS"
    create_target "$SMALL"
    start_pipeline "$SMALL" small "$SHARE_LINE"
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

fi # sections 1-3

# ---------------------------------------------------------------- 4. deletes and reconciliation

PRODUCER_DEBUG_LOG="info,tunnel_producer=debug,rdkafka=warn,tokio_postgres=warn"

start_producer() { # config log: tunnel-producer at debug; sets PRODUCER_PID
  RUST_LOG=$PRODUCER_DEBUG_LOG NO_COLOR=1 "$PRODUCER_BIN" run --config "$1" >"$2" 2>&1 &
  PRODUCER_PID=$!
  PIDS+=("$PRODUCER_PID")
  note "producer pid $PRODUCER_PID (log ${2##*/})"
}

log_ts() { # line: the time (epoch seconds) a log line was written
  date -d "$(awk '{ print $1 }' <<<"$1")" +%s.%N
}

rec_lines() { # log from: the "reconciliation pass" lines after line <from>
  tail -n +"$(($2 + 1))" "$1" 2>/dev/null | sed 's/\x1b\[[0-9;]*m//g' | grep 'reconciliation pass' || true
}

rec_desc() { # reconciliation pass line: "<elapsed> ms, mode ..., ..."
  local l=$1
  printf '%s ms, mode=%s, listed=%s, rows_compared=%s, missing=%s, differing=%s, extra=%s' \
    "$(kv "$l" elapsed_ms)" "$(kv "$l" mode)" "$(kv "$l" listed)" "$(kv "$l" rows_compared)" \
    "$(kv "$l" missing)" "$(kv "$l" differing)" "$(kv "$l" extra)"
}

wait_rec() { # log from timeout: sets PASS_LINE to the first reconciliation pass line after <from>
  local deadline=$((SECONDS + $3))
  PASS_LINE=""
  while :; do
    PASS_LINE=$(rec_lines "$1" "$2" | head -n 1)
    [[ -n $PASS_LINE ]] && return 0
    if ! alive; then note "a pipeline process exited while waiting for a reconciliation pass"; return 0; fi
    if ((SECONDS >= deadline)); then note "no reconciliation pass within $3 s"; return 0; fi
    sleep 0.2
  done
}

pass_desc() { # pass line: "elapsed_ms ms, scanned ..., ..."
  local l=$1 scanned events deletes
  scanned=$(kv "$l" scanned)
  events=$(kv "$l" events) deletes=$(kv "$l" deletes)
  printf '%s ms, scanned=%s, read_rows=%s, events=%s, deletes=%s' "$(kv "$l" elapsed_ms)" \
    "${scanned:-n/a (not in the log line)}" "$(kv "$l" read_rows)" "${events:-0}" "${deletes:-0}"
}

alive() { kill -0 "$PRODUCER_PID" 2>/dev/null && kill -0 "$CONSUMER_PID" 2>/dev/null; }

# waits for the first pass line of <detector> after line <from> of <log>; sets PASS_LINE ("" on
# timeout or when a pipeline process exited)
wait_pass() { # log from detector timeout
  local deadline=$((SECONDS + $4))
  PASS_LINE=""
  while :; do
    PASS_LINE=$(pass_lines "$1" "$2" "$3" | head -n 1 || true)
    [[ -n $PASS_LINE ]] && return 0
    if ! alive; then note "a pipeline process exited while waiting for a $3 pass"; return 0; fi
    if ((SECONDS >= deadline)); then note "no $3 pass within $4 s"; return 0; fi
    sleep 0.2
  done
}

# until <log> has not grown for <seconds>, "pass found no change" lines aside (the repair scan
# logs one every repair_interval_ms, under detector="reconcile")
wait_quiet() { # log seconds timeout
  local n last=-1 since_change=$SECONDS deadline=$((SECONDS + $3))
  while ((SECONDS < deadline)); do
    n=$(grep -vc 'pass found no change' "$1" 2>/dev/null || true)
    if [[ $n != "$last" ]]; then last=$n since_change=$SECONDS; fi
    ((SECONDS - since_change >= $2)) && return 0
    sleep 0.5
  done
  note "${1##*/} still growing after $3 s"
}

# what the delete scan's statements cost the source so far (pg_stat_statements, reader role):
# "calls exec_ms rows buffers" of its key aggregates and of its key listings together
delete_scan_cost() { # db
  psql -X -At -F ' ' "$(src_reader_url "$1")" -c "
    SELECT coalesce(sum(calls), 0), round(coalesce(sum(total_exec_time), 0)::numeric, 1),
           coalesce(sum(rows), 0), coalesce(sum(shared_blks_hit + shared_blks_read), 0)
      FROM pg_stat_statements
     WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND userid = 'tunnel_reader'::regrole
       AND (query LIKE '%::int8)::text, bit_xor(%' OR query ~ '^SELECT \\S+::int8 FROM \\S+ WHERE .* ORDER BY \\S+\$')" 2>/dev/null \
    || echo "? ? ? ?"
}

delete_scan_cost_delta() { # before after: "N statements, X ms exec, R rows returned, B buffers"
  local b=($1) a=($2)
  [[ ${a[0]} == "?" || ${b[0]} == "?" ]] && { echo "n/a (pg_stat_statements unreadable)"; return 0; }
  awk -v a0="${a[0]}" -v a1="${a[1]}" -v a2="${a[2]}" -v a3="${a[3]}" -v b0="${b[0]}" -v b1="${b[1]}" -v b2="${b[2]}" -v b3="${b[3]}" \
    'BEGIN { printf "%d statements, %.0f ms exec, %d rows returned, %d buffers", a0 - b0, a1 - b1, a2 - b2, a3 - b3 }'
}

# waits until `SELECT <query>` on the target returns <want>; sets REACHED_S (seconds since <t0>,
# "" when not reached) and GOT
wait_target() { # db query want t0 timeout poll-seconds
  local deadline=$((SECONDS + $5))
  REACHED_S=""
  while :; do
    GOT=$(psql -X -At "$(tgt_url "$1")" -c "SELECT $2" 2>/dev/null || echo '?')
    if [[ $GOT == "$3" ]]; then REACHED_S=$(since "$4"); return 0; fi
    ((SECONDS >= deadline)) && return 0
    alive || return 0
    sleep "$6"
  done
}

# until the target's media shows no write for <seconds> (pg_stat_user_tables): the consumer is idle
wait_target_idle() { # db seconds timeout
  local v last="" since_change=$SECONDS deadline=$((SECONDS + $3))
  while ((SECONDS < deadline)); do
    v=$(psql -X -At "$(tgt_url "$1")" -c "SELECT n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_user_tables WHERE relname = 'media'" 2>/dev/null || echo '?')
    if [[ $v != "$last" ]]; then last=$v since_change=$SECONDS; fi
    ((SECONDS - since_change >= $2)) && return 0
    sleep 0.5
  done
  note "the target was still being written after $3 s"
}

verify_line() { # output of verify: its report line of public.media (not the column notes)
  grep -m 1 -E '^public\.media: ((rows )?identical|[0-9]+ difference)' "$1" || tail -n 1 "$1"
}

count_ms() { # url: duration of `SELECT count(*) FROM media` in ms (psql \timing)
  psql -X -q -At "$1" -c '\timing on' -c 'SELECT count(*) FROM media' | awk '/^Time:/ { print $2 }'
}

pass_summary() { # lines: "<n> pass(es): <desc>; <desc>" of the lines given on stdin
  local n=0 l out=""
  while IFS= read -r l; do
    [[ -z $l ]] && continue
    n=$((n + 1))
    out+="${out:+; }$(pass_desc "$l")"
  done
  printf '%s pass(es)%s' "$n" "${out:+: $out}"
}

sum_field() { # key: the sum of key=N over the log lines on stdin
  local l total=0 v
  while IFS= read -r l; do
    v=$(kv "$l" "$1")
    [[ -n $v ]] && total=$((total + v))
  done
  echo "$total"
}

ratio() { # a b -> a / b with 2 decimals, "n/a" when either is missing
  [[ -n $1 && -n $2 ]] && awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }' || echo "n/a"
}

later() { # like figure, held back in figures-later.psv
  printf '%s|%s|%s|%s\n' "$1" "$2" "$3" "${4:-}" >>"$LOG_DIR/figures-later.psv"
}

deletes_and_reconcile() { # rows
  local n=$1 db=${RUN_ID}_del$1 tag=del$1 S="4. deletes and reconciliation, $1 rows"
  local cfg=$LOG_DIR/del$1.toml log=$LOG_DIR/del$1-producer.log rlog=$LOG_DIR/del$1-producer-restart.log
  local ccfg=$LOG_DIR/del$1-reconcile.toml clog=$LOG_DIR/del$1-producer-reconcile.log
  local from t0 line l0 l1 best_src best_tgt best_both s t both i c0 c1 d vout vrc
  say "4. deletes and reconciliation, $n rows"
  : >"$LOG_DIR/figures-later.psv"
  create_source "$db" "$n"
  create_target "$db"
  # a) and b): reconciliation once after each start only, so that the deletes of b) are found by
  # the delete scan (with a short reconcile_interval_ms, whichever pass comes first ships them);
  # c): reconcile_interval_ms = RECONCILE_MS, after a second restart.
  # repair_interval_ms: the repair scan polls its topic for 500 ms every repair_interval_ms and
  # logs as detector="reconcile"; an hour keeps it out of the reconciliation figures
  write_config "$db" "$cfg" "delete_interval_ms = 1000
reconcile_interval_ms = 3600000
repair_interval_ms = 3600000"
  write_config "$db" "$ccfg" "delete_interval_ms = 1000
reconcile_interval_ms = $RECONCILE_MS
repair_interval_ms = 3600000"
  note "pipeline for a) and b): delete_interval_ms = 1000, reconcile_interval_ms = 3600000, repair_interval_ms = 3600000"
  T_START=$(now)
  start_producer "$cfg" "$log"
  NO_COLOR=1 "$CONSUMER_BIN" run --config "$cfg" >"$LOG_DIR/$tag-consumer.log" 2>&1 &
  CONSUMER_PID=$!
  PIDS+=("$CONSUMER_PID")
  note "consumer pid $CONSUMER_PID (log $tag-consumer.log)"
  wait_sync "$db" "$n" "$tag"
  if [[ -z $SYNC_SECONDS ]]; then
    figure "$S" "initial sync through the pipeline" "not reached ($SYNC_ROWS rows after $(since "$T_START") s): section skipped" ""
    stop_pipeline "$tag" "$S"
    return 0
  fi
  figure "$S" "initial sync through the pipeline" "$SYNC_SECONDS s, $(calc "printf \"%.0f\", $n / $SYNC_SECONDS") rows/s" ""
  note "initial sync: $n rows in $SYNC_SECONDS s"
  # the first streaming passes run once whatever the statistics say: let them finish
  from=$(grep -n -m 1 'streaming changes' "$log" | cut -d: -f1 || true)
  wait_pass "$log" "${from:-0}" delete_scan "$PASS_TIMEOUT"
  if [[ -n $PASS_LINE ]]; then
    note "first delete_scan pass after the snapshot: $(pass_desc "$PASS_LINE")"
    figure "$S" "first delete_scan pass after the snapshot" "$(pass_desc "$PASS_LINE")" ""
  fi
  wait_quiet "$log" 5 "$PASS_TIMEOUT"
  wait_target_idle "$db" 3 "$PASS_TIMEOUT"
  l0=$(target_count "$db")
  [[ $l0 == "$n" ]] || note "after the first passes the target holds $l0 rows, not $n"

  # ---- a) restart: the first delete pass runs over unchanged keys, the first reconciliation
  # pass over an unchanged table
  say "4a. $n rows: producer restarted"
  stop_pid "$PRODUCER_PID" tunnel-producer
  c0=$(delete_scan_cost "$db")
  t0=$(now)
  start_producer "$cfg" "$rlog"
  wait_pass "$rlog" 0 delete_scan "$PASS_TIMEOUT"
  c1=$(delete_scan_cost "$db")
  line=$(grep -m 1 'rebuilt the shipped key set' "$rlog" | sed 's/\x1b\[[0-9;]*m//g' || true)
  if [[ -n $line ]]; then
    note "key set rebuilt: keys=$(kv "$line" keys) messages=$(kv "$line" messages) bytes=$(kv "$line" bytes) in $(kv "$line" elapsed_ms) ms"
    figure "$S" "a) restart: key set rebuilt from the topic" "$(kv "$line" elapsed_ms) ms ($(kv "$line" keys) keys, $(kv "$line" messages) messages, $(kv "$line" bytes) bytes)" ""
  fi
  line=$(grep -m 1 'loaded the shipped key set' "$rlog" | sed 's/\x1b\[[0-9;]*m//g' || true)
  if [[ -n $line ]]; then
    note "key set loaded from its saved copy: keys=$(kv "$line" keys) tail_messages=$(kv "$line" tail_messages) saved_bytes=$(kv "$line" saved_bytes) in $(kv "$line" elapsed_ms) ms"
    figure "$S" "a) restart: key set loaded from its saved copy" "$(kv "$line" elapsed_ms) ms ($(kv "$line" keys) keys, $(kv "$line" chunks) chunks, $(kv "$line" saved_bytes) bytes, $(kv "$line" tail_messages) messages after it)" ""
  fi
  line=$(grep -m 1 'streaming changes' "$rlog" | sed 's/\x1b\[[0-9;]*m//g' || true)
  [[ -n $line ]] && figure "$S" "a) restart -> streaming changes" "$(calc "printf \"%.2f\", $(log_ts "$line") - $t0") s" "< 10 s"
  if [[ -n $PASS_LINE ]]; then
    note "first delete pass (unchanged keys): $(pass_desc "$PASS_LINE")"
    figure "$S" "a) delete pass over unchanged keys" "$(pass_desc "$PASS_LINE")" "< 10 s (10M rows)"
    figure "$S" "a) restart -> first delete pass done" "$(since "$t0") s" ""
    figure "$S" "a) its statements (pg_stat_statements)" "$(delete_scan_cost_delta "$c0" "$c1")" ""
  else
    figure "$S" "a) delete pass over unchanged keys" "n/a (no delete_scan pass logged)" "< 10 s (10M rows)"
  fi
  # the producer's first reconciliation waits one reconcile_interval_ms after start (an hour in
  # this phase): the no-change reconciliation pass is measured after restart 2, in c)
  wait_quiet "$rlog" 5 "$PASS_TIMEOUT"
  wait_target_idle "$db" 3 "$PASS_TIMEOUT"
  if ! alive; then
    note "a pipeline process exited: section cut short"
    cat "$LOG_DIR/figures-later.psv" >>"$LOG_DIR/figures.psv"
    figure "$S" "section cut short" "a pipeline process exited after the restart" ""
    stop_pipeline "$tag" "$S"
    return 0
  fi

  # ---- c) the yardstick: SELECT count(*), best of 3, source alone, target alone, both in a row
  best_src="" best_tgt="" best_both=""
  for i in 1 2 3; do
    s=$(count_ms "$(src_reader_url "$db")")
    t=$(count_ms "$(tgt_url "$db")")
    both=$(awk -v a="$s" -v b="$t" 'BEGIN { printf "%.1f", a + b }')
    best_src=$(awk -v a="$s" -v b="${best_src:-1e18}" 'BEGIN { print (a < b) ? a : b }')
    best_tgt=$(awk -v a="$t" -v b="${best_tgt:-1e18}" 'BEGIN { print (a < b) ? a : b }')
    best_both=$(awk -v a="$both" -v b="${best_both:-1e18}" 'BEGIN { print (a < b) ? a : b }')
  done
  note "SELECT count(*), best of 3: source $best_src ms, target $best_tgt ms, source then target $best_both ms"
  later "$S" "c) SELECT count(*) best of 3: source / target" "$best_src ms / $best_tgt ms" ""
  later "$S" "c) SELECT count(*) on source then target, best" "$best_both ms" ""
  # the same diff from another process: its line names the rows compared, which the producer's
  # "pass found no change" line does not
  vout=$LOG_DIR/del$n-verify-nochange.out vrc=0
  "$CONSUMER_BIN" verify --config "$cfg" >"$vout" 2>&1 || vrc=$?
  line=$(verify_line "$vout")
  note "verify, no change: $line (exit $vrc)"
  later "$S" "c) tunnel-consumer verify, no change" "$line (exit $vrc)" ""
  d=$(grep -oE ', [0-9]+ ms\)' <<<"$line" | grep -oE '[0-9]+' || true)
  [[ -n $d ]] && later "$S" "c) verify (whole table, no change) / count(*) both" "$(ratio "$d" "$best_both")x" ""

  # ---- b) 0.1% of the rows deleted, scattered
  say "4b. $n rows: DELETE FROM media WHERE id % 1000 = 0"
  local before del max_id
  before=$(target_count "$db")
  max_id=$(psql -X -At "$(src_admin_url "$db")" -c "SELECT max(id) FROM media")
  from=$(log_lines "$rlog")
  c0=$(delete_scan_cost "$db")
  del=$(psql -X -q -At "$(src_admin_url "$db")" -c "WITH d AS (DELETE FROM media WHERE id % 1000 = 0 RETURNING 1) SELECT count(*) FROM d")
  t0=$(now)
  note "$del rows deleted in the source (target held $before)"
  # the deleted keys still in the target: index lookups, cheap enough to poll
  wait_target "$db" "count(*) FROM media WHERE id IN (SELECT generate_series(1000, $max_id, 1000))" 0 "$t0" "$PASS_TIMEOUT" 0.1
  if [[ -n $REACHED_S ]]; then
    note "all $del deletes applied in the target $REACHED_S s after the commit"
    figure "$S" "b) $del deletes (0.1%): commit -> all gone from the target" "$REACHED_S s" ""
  else
    figure "$S" "b) $del deletes (0.1%): commit -> all gone from the target" "not reached ($GOT still there after $PASS_TIMEOUT s)" ""
  fi
  wait_quiet "$rlog" 5 "$PASS_TIMEOUT"
  c1=$(delete_scan_cost "$db")
  line=$(pass_lines "$rlog" "$from" delete_scan | grep 'shipped changes' || true)
  note "delete_scan passes after the DELETE: $(pass_summary <<<"$line")"
  figure "$S" "b) delete_scan passes that shipped them" "$(pass_summary <<<"$line")" ""
  figure "$S" "b) their statements (pg_stat_statements)" "$(delete_scan_cost_delta "$c0" "$c1")" ""
  figure "$S" "b) deletes shipped by delete_scan / reconcile" "$(sum_field deletes <<<"$line") / $(pass_lines "$rlog" "$from" reconcile | sum_field deletes) (of $del)" ""
  line=$(pass_lines "$rlog" "$from" delete_scan | grep 'pass found no change' || true)
  [[ -n $line ]] && figure "$S" "b) delete_scan passes that found nothing" "$(pass_summary <<<"$line")" ""
  line=$(pass_lines "$rlog" "$from" reconcile)
  [[ -n $line ]] && figure "$S" "b) reconcile passes after the DELETE" "$(pass_summary <<<"$line")" ""
  l1=$(target_count "$db")
  if [[ $((before - l1)) == "$del" ]]; then
    figure "$S" "b) target count drop" "exactly $del ($before -> $l1)" "= rows deleted"
  else
    figure "$S" "b) target count drop" "$((before - l1)), NOT $del ($before -> $l1)" "= rows deleted"
  fi
  # the figures of c) measured before b), printed after it
  cat "$LOG_DIR/figures-later.psv" >>"$LOG_DIR/figures.psv"
  : >"$LOG_DIR/figures-later.psv"

  # ---- c) 0.1% of the rows changed without updated_at moving: only reconciliation sees them
  say "4c. $n rows: producer restarted with reconcile_interval_ms = $RECONCILE_MS"
  stop_pid "$PRODUCER_PID" tunnel-producer
  t0=$(now)
  start_producer "$ccfg" "$clog"
  wait_pass "$clog" 0 delete_scan "$PASS_TIMEOUT"
  [[ -n $PASS_LINE ]] && figure "$S" "c) restart 2: delete pass over unchanged keys" "$(pass_desc "$PASS_LINE")" "< 10 s (10M rows)"
  # the first pass runs one reconcile_interval_ms after the start, whatever the statistics say
  wait_rec "$clog" 0 "$PASS_TIMEOUT"
  if [[ -n $PASS_LINE ]]; then
    note "first reconciliation pass after the 2nd restart (no change): $(rec_desc "$PASS_LINE")"
    figure "$S" "c) restart 2: reconciliation pass, no change" "$(rec_desc "$PASS_LINE")" ""
    figure "$S" "c) restart 2: its ratio to count(*) source / both" "$(ratio "$(kv "$PASS_LINE" elapsed_ms)" "$best_src")x / $(ratio "$(kv "$PASS_LINE" elapsed_ms)" "$best_both")x" "<= 3x"
  fi
  wait_quiet "$clog" 5 "$PASS_TIMEOUT"
  wait_target_idle "$db" 3 "$PASS_TIMEOUT"
  rlog=$clog cfg=$ccfg
  say "4c. $n rows: UPDATE media SET format = 'gif' WHERE id % 1000 = 1 (updated_at untouched)"
  local upd
  from=$(log_lines "$rlog")
  upd=$(psql -X -q -At "$(src_admin_url "$db")" -c "WITH u AS (UPDATE media SET format = 'gif' WHERE id % 1000 = 1 RETURNING 1) SELECT count(*) FROM u")
  t0=$(now)
  note "$upd rows changed silently in the source"
  wait_target "$db" "count(*) FROM media WHERE id IN (SELECT generate_series(1, $max_id, 1000)) AND format = 'gif'" "$upd" "$t0" "$PASS_TIMEOUT" 0.25
  if [[ -n $REACHED_S ]]; then
    note "all $upd silent changes in the target $REACHED_S s after the commit"
    figure "$S" "c) $upd silent changes: commit -> all in the target" "$REACHED_S s (reconcile_interval_ms = $RECONCILE_MS)" ""
  else
    figure "$S" "c) $upd silent changes: commit -> all in the target" "not reached ($GOT of $upd after $PASS_TIMEOUT s)" ""
  fi
  wait_quiet "$rlog" 5 "$PASS_TIMEOUT"
  line=$(rec_lines "$rlog" "$from" | grep -vE ' differing=0( |$)' | head -n 1)
  if [[ -n $line ]]; then
    note "reconciliation pass that found them: $(rec_desc "$line")"
    figure "$S" "c) reconciliation pass, 0.1% changed silently" "$(rec_desc "$line")" ""
    figure "$S" "c) its ratio to count(*) source / both" "$(ratio "$(kv "$line" elapsed_ms)" "$best_src")x / $(ratio "$(kv "$line" elapsed_ms)" "$best_both")x" "<= 3x"
  else
    figure "$S" "c) reconciliation pass, 0.1% changed silently" "n/a (no pass found a difference)" ""
  fi
  line=$(pass_lines "$rlog" "$from" reconcile | grep 'shipped changes' || true)
  note "passes that shipped them: $(pass_summary <<<"$line")"

  # ---- d) delete latency at the default producer settings
  if [[ $n == "$DELETE_LATENCY_ROWS" ]]; then
    say "4d. $n rows: delete latency, producer at its default settings"
    local dcfg=$LOG_DIR/del$n-default.toml dlog=$LOG_DIR/del$n-producer-default.log out=$LOG_DIR/del$n-delete-latency
    write_config "$db" "$dcfg"
    stop_pid "$PRODUCER_PID" tunnel-producer
    start_producer "$dcfg" "$dlog"
    wait_pass "$dlog" 0 delete_scan "$PASS_TIMEOUT"
    wait_pass "$dlog" 0 reconcile "$PASS_TIMEOUT"
    wait_quiet "$dlog" 3 "$PASS_TIMEOUT"
    from=$(log_lines "$dlog")
    c0=$(delete_scan_cost "$db")
    note "$DELETE_PROBES single-row deletes of random ids, 1/s, target polled every ${POLL_MS} ms"
    "$VENV/bin/python" "$ROOT/scripts/bench/latency.py" --mode delete \
      --source "$(src_admin_url "$db")" --target "$(tgt_url "$db")" --count "$DELETE_PROBES" \
      --rate 1 --poll-ms "$POLL_MS" --drain 60 --label "del$n" --out "$out" &
    LOAD_PID=$!
    wait "$LOAD_PID" || note "the delete probe failed (status $?)"
    LOAD_PID=""
    if [[ -f $out.json ]]; then
      "$VENV/bin/python" - "$out.json" "$S" >>"$LOG_DIR/figures.psv" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); section = sys.argv[2]; s = r["delete"]
f = lambda v: "-" if v is None else f"{v:.0f}"
print(f"{section}|d) delete latency p50 / p95 / max (default settings)"
      f"|{f(s['p50_ms'])} / {f(s['p95_ms'])} / {f(s['max_ms'])} ms (n={s['count']}, missing={s['missing']})"
      f"|< 1000 ms")
PY
    else
      figure "$S" "d) delete latency p50 / p95 / max (default settings)" "n/a (probe failed)" "< 1000 ms"
    fi
    wait_quiet "$dlog" 3 60
    c1=$(delete_scan_cost "$db")
    figure "$S" "d) delete_scan statements meanwhile (pg_stat_statements)" "$(delete_scan_cost_delta "$c0" "$c1")" ""
    line=$(pass_lines "$dlog" "$from" delete_scan | grep 'shipped changes' || true)
    figure "$S" "d) delete_scan passes that shipped the deletes" "$(grep -c . <<<"$line" || true) pass(es), $(sum_field deletes <<<"$line") deletes, elapsed_ms: $(elapsed_list <<<"$line")" ""
    line=$(pass_lines "$dlog" "$from" reconcile | grep 'shipped changes' || true)
    [[ -n $line ]] && figure "$S" "d) deletes shipped by reconcile meanwhile" "$(sum_field deletes <<<"$line")" ""
  fi

  # ---- e) verify
  say "4e. $n rows: tunnel-consumer verify"
  vout=$LOG_DIR/del$n-verify.out vrc=0
  t0=$(now)
  "$CONSUMER_BIN" verify --config "$cfg" >"$vout" 2>&1 || vrc=$?
  sed 's/^/  /' "$vout"
  line=$(verify_line "$vout")
  figure "$S" "e) tunnel-consumer verify" "$line (exit $vrc, $(since "$t0") s wall)" "identical, exit 0"
  # the verify above, when identical, recorded both servers' horizons: the incremental one
  # compares the rows written since and the keys of both sides
  vout=$LOG_DIR/del$n-verify-incr.out vrc=0
  t0=$(now)
  "$CONSUMER_BIN" verify --incremental --config "$cfg" >"$vout" 2>&1 || vrc=$?
  sed 's/^/  /' "$vout"
  line=$(verify_line "$vout")
  figure "$S" "e) verify --incremental, no change" "$line (exit $vrc, $(since "$t0") s wall)" "identical, exit 0"
  upd=$(psql -X -q -At "$(src_admin_url "$db")" -c "WITH u AS (UPDATE media SET format = 'png' WHERE id % 1000 = 2 RETURNING 1) SELECT count(*) FROM u")
  note "$upd rows updated in the source (id % 1000 = 2)"
  wait_target "$db" "count(*) FROM media WHERE id IN (SELECT generate_series(2, $max_id, 1000)) AND format = 'png'" "$upd" "$(now)" "$PASS_TIMEOUT" 0.25
  wait_target_idle "$db" 3 "$PASS_TIMEOUT"
  for mode in --incremental ""; do
    vout=$LOG_DIR/del$n-verify-after${mode}.out vrc=0
    t0=$(now)
    "$CONSUMER_BIN" verify $mode --config "$cfg" >"$vout" 2>&1 || vrc=$?
    sed 's/^/  /' "$vout"
    line=$(verify_line "$vout")
    figure "$S" "e) verify ${mode:-(whole table)}, $upd rows updated since" "$line (exit $vrc, $(since "$t0") s wall)" "identical, exit 0"
  done

  stop_pipeline "$tag" "$S"
  for f in "$tag-producer-restart.log" "$tag-producer-reconcile.log" "$tag-producer-default.log"; do
    [[ -f $LOG_DIR/$f ]] || continue
    figure "$S" "$f warnings / errors" "$(grep -c ' WARN ' "$LOG_DIR/$f" || true) / $(grep -cE ' ERROR |^error' "$LOG_DIR/$f" || true)" ""
  done
  return 0
}

if [[ $SECTIONS == *" 4 "* ]]; then
  for size in $DELETE_SIZES; do
    deletes_and_reconcile "$size"
  done
fi

# ---------------------------------------------------------------- 5. consumer apply throughput

# A topic filled once by the producer alone; then, for each run, a fresh target database and a
# new consumer group apply all of it. Throughput = events / (first event applied -> all applied).
apply_config() { # config-path target-db group [extra lines after [[tables]]]
  cat >"$1" <<TOML
[source]
url = "$(src_reader_url "$APPLY_DB")"
application_name = "$APPLY_DB"
[target]
url = "$(tgt_url "$2")"
[kafka]
brokers = "$TUNNEL_KAFKA_BROKERS"
topic_prefix = "$APPLY_DB"
consumer_group = "$3"
partitions = $PARTITIONS
[registry]
url = "$TUNNEL_REGISTRY_URL"
[producer]
snapshot_chunk_rows = $SNAPSHOT_CHUNK
delete_interval_ms = 3600000
reconcile_interval_ms = 0
[consumer]
batch_max_events = $BATCH
[[tables]]
name = "media"
${4:-}
TOML
}

applied_events() { # target-db -> events the target's bookkeeping has processed (applied + DLQ)
  psql -X -At "$(tgt_url "$1")" -c "SELECT coalesce(sum(applied_events), 0) FROM tunnel.offsets" 2>/dev/null || echo 0
}

# runs <n> consumers on a fresh target; sets APPLY_RATE (events/s, empty if not done)
apply_run() { # tag consumers [rule lines] [metrics]
  local tag=$1 n=$2 rules=${3:-} metrics=${4:-} tdb=${RUN_ID}_apply_$1 cfg=$LOG_DIR/apply-$1.toml pids=() i
  local scraper=""
  local first="" done_at="" got=0
  create_target "$tdb"
  apply_config "$cfg" "$tdb" "${tdb}_group" "$rules"
  # one connection polled every 50 ms: psql started five times a second cost a tenth of a core
  "$VENV/bin/python" - "$(tgt_url "$tdb")" "$APPLY_EVENTS" "$SYNC_TIMEOUT" >"$LOG_DIR/apply-$tag-progress.txt" <<'PY' &
import sys, time, psycopg
url, want, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
t0 = time.monotonic(); first = None; got = 0
conn = None
while time.monotonic() - t0 < timeout:
    try:
        conn = conn or psycopg.connect(url, autocommit=True)
        got = conn.execute("SELECT coalesce(sum(applied_events), 0) FROM tunnel.offsets").fetchone()[0]
    except psycopg.Error:
        conn = None
    el = time.monotonic() - t0
    if first is None and got > 0:
        first = el
    if got >= want:
        print(f"{first:.2f} {el:.2f} {got}"); sys.exit(0)
    time.sleep(0.05)
print(f"{first or 0:.2f} - {got}")
PY
  local poller=$!
  for i in $(seq 1 "$n"); do
    local extra=()
    # with metrics: served, and scraped every second as Prometheus would
    [[ -n $metrics ]] && extra=(--metrics-addr "127.0.0.1:$((BENCH_METRICS_PORT + i))")
    NO_COLOR=1 "$CONSUMER_BIN" run --config "$cfg" "${extra[@]}" >"$LOG_DIR/apply-$tag-consumer$i.log" 2>&1 &
    pids+=($!)
    PIDS+=($!)
  done
  if [[ -n $metrics ]]; then
    (while sleep 1; do curl -s -o /dev/null "http://127.0.0.1:$((BENCH_METRICS_PORT + 1))/metrics" || true; done) &
    scraper=$!
  fi
  wait "$poller" || true
  [[ -n $scraper ]] && { kill "$scraper" 2>/dev/null || true; wait "$scraper" 2>/dev/null || true; }
  read -r first done_at got <"$LOG_DIR/apply-$tag-progress.txt" || true
  [[ $done_at == - ]] && done_at=""
  # the consumers' CPU time (user+sys): steadier than the rate on a machine the whole stack shares
  local ticks=0 pid
  for pid in "${pids[@]}"; do
    [[ -r /proc/$pid/stat ]] && ticks=$((ticks + $(awk '{ print $14 + $15 }' "/proc/$pid/stat")))
  done
  APPLY_CPU=$(calc "printf \"%.2f\", $ticks / $(getconf CLK_TCK)")
  for i in "${!pids[@]}"; do stop_pid "${pids[$i]}" "consumer $((i + 1))"; done
  APPLY_RATE=""
  local dead
  dead=$(psql -X -At "$(tgt_url "$tdb")" -c "SELECT coalesce(sum(dead_lettered), 0) FROM tunnel.offsets" 2>/dev/null || echo '?')
  if [[ -n $done_at ]]; then
    APPLY_RATE=$(calc "printf \"%.0f\", $APPLY_EVENTS / ($done_at - $first)")
    note "$tag: $n consumer(s), $APPLY_EVENTS events ($dead to the DLQ): first applied at $first s, all at $done_at s: $APPLY_RATE events/s, consumer CPU $APPLY_CPU s"
  else
    note "$tag: not done after $SYNC_TIMEOUT s ($got of $APPLY_EVENTS events)"
  fi
  "${PSQL[@]}" "$TUNNEL_TARGET_URL" -c "DROP DATABASE IF EXISTS $tdb WITH (FORCE)"
}

if [[ $SECTIONS == *" 5 "* ]]; then
  APPLY_ROWS=${BENCH_APPLY_ROWS:-2000000}
  APPLY_DB=${RUN_ID}_apply
  S5="5. consumer apply throughput ($APPLY_ROWS events, $PARTITIONS partitions)"
  say "$S5"
  create_source "$APPLY_DB" "$APPLY_ROWS"
  TOPIC_PREFIXES+=("$APPLY_DB")
  create_target "${APPLY_DB}_unused"
  apply_config "$LOG_DIR/apply-producer.toml" "${APPLY_DB}_unused" "${APPLY_DB}_unused"
  start_producer "$LOG_DIR/apply-producer.toml" "$LOG_DIR/apply-producer.log"
  for _ in $(seq 1 "$SYNC_TIMEOUT"); do
    grep -q 'snapshot done' "$LOG_DIR/apply-producer.log" && break
    kill -0 "$PRODUCER_PID" 2>/dev/null || break
    sleep 1
  done
  stop_pid "$PRODUCER_PID" "producer"
  APPLY_EVENTS=$APPLY_ROWS
  # 1% of the rows (ids ending in 00) break this rule; the other rule passes every row
  INVALID_RULE=$'[[tables.rules]]\nname = "no_round_ids"\ncheck = "s3_path !~ \'00[.][a-z0-9]+$\'"'
  PASSING_RULE=$'[[tables.rules]]\nname = "never_broken"\ncheck = "s3_path !~ \'^nothing-like-this\'"'
  declare -A RATES=() CPUS=()
  # the one-consumer cases alternate, five times each: a run lasts seconds on a machine that
  # the whole stack shares, and its neighbours' noise is of the order of the effect measured
  BENCH_METRICS_PORT=${BENCH_METRICS_PORT:-19640}
  for run in "c1_1 1" "c1_invalid_1 1 invalid" "c1_metrics_1 1 metrics" "c2 2" "c1_2 1" \
    "c1_invalid_2 1 invalid" "c1_metrics_2 1 metrics" "c3 3" "c1_3 1" "c1_invalid_3 1 invalid" \
    "c1_metrics_3 1 metrics" "c1_rule 1 passing" "c1_4 1" "c1_invalid_4 1 invalid" \
    "c1_metrics_4 1 metrics" "c1_5 1" "c1_invalid_5 1 invalid" "c1_metrics_5 1 metrics"; do
    read -r tag n kind <<<"$run"
    rules=""
    [[ ${kind:-} == passing ]] && rules=$PASSING_RULE
    [[ ${kind:-} == invalid ]] && rules=$INVALID_RULE
    apply_run "$tag" "$n" "$rules" "$([[ ${kind:-} == metrics ]] && echo on)"
    RATES[$tag]=${APPLY_RATE:-}
    CPUS[$tag]=${APPLY_CPU:-}
  done
  median() { # tags -> the median of their rates (the runs alternate, against noise)
    local t
    for t in "$@"; do echo "${RATES[$t]:-0}"; done | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'
  }
  all_of() { local t; for t in "$@"; do printf '%s ' "${RATES[$t]:-n/a}"; done; }
  V=(c1_1 c1_2 c1_3 c1_4 c1_5)
  I=(c1_invalid_1 c1_invalid_2 c1_invalid_3 c1_invalid_4 c1_invalid_5)
  M=(c1_metrics_1 c1_metrics_2 c1_metrics_3 c1_metrics_4 c1_metrics_5)
  R1=$(median "${V[@]}")
  RI=$(median "${I[@]}")
  RM=$(median "${M[@]}")
  figure "$S5" "1 consumer (median of 5)" "${R1:-n/a} events/s (runs: $(all_of "${V[@]}"))" ""
  figure "$S5" "2 consumers" "${RATES[c2]:-n/a} events/s" ""
  figure "$S5" "3 consumers" "${RATES[c3]:-n/a} events/s" ""
  figure "$S5" "1 consumer, a rule every row passes" "${RATES[c1_rule]:-n/a} events/s" ""
  figure "$S5" "1 consumer, 1% of events break a rule (median of 5)" "${RI:-n/a} events/s (runs: $(all_of "${I[@]}"))" ""
  cpus_of() { local t; for t in "$@"; do printf '%s ' "${CPUS[$t]:-n/a}"; done; }
  figure "$S5" "consumer CPU s, 1 consumer, no rule" "$(cpus_of "${V[@]}")" ""
  figure "$S5" "consumer CPU s, 1 consumer, a rule all pass" "$(cpus_of c1_rule)" ""
  figure "$S5" "consumer CPU s, 1 consumer, 1% invalid" "$(cpus_of "${I[@]}")" ""
  figure "$S5" "1 consumer, --metrics-addr scraped every 1 s (median of 5)" "${RM:-n/a} events/s (runs: $(all_of "${M[@]}"))" ""
  figure "$S5" "consumer CPU s, 1 consumer, with metrics" "$(cpus_of "${M[@]}")" ""
  if [[ -n $R1 && -n $RM && $R1 != 0 && $RM != 0 ]]; then
    MCOST=$(calc "printf \"%.1f\", (1 - $RM / $R1) * 100")
    figure "$S5" "throughput lost to metrics (medians)" "${MCOST}%" "< 2%"
  fi
  if [[ -n $R1 && -n $RI && $R1 != 0 && $RI != 0 ]]; then
    COST=$(calc "printf \"%.1f\", (1 - $RI / $R1) * 100")
    figure "$S5" "throughput lost to 1% invalid events (medians)" "${COST}% (2x their share = 2%)" "<= 2%"
  fi
fi

# ---------------------------------------------------------------- 6. a large table

if [[ $SECTIONS == *" 6 "* ]]; then
  HUGE_ROWS=${BENCH_HUGE_ROWS:-100000000}
  STEADY=${BENCH_STEADY_SECONDS:-600}
  HUGE=${RUN_ID}_huge
  S6="6. $HUGE_ROWS-row table"
  say "$S6"
  KAFKA_DATA=${TUNNEL_STACK_DIR:-$ROOT/.stack}/kafka/data
  figure "$S6" "disk free before" "$(df -h --output=avail "$ROOT" | tail -n 1 | tr -d ' ')" ""
  t0=$(now)
  create_source "$HUGE" "$HUGE_ROWS"
  figure "$S6" "rows generated and vacuumed in" "$(since "$t0") s" ""
  create_target "$HUGE"
  create_target "${RUN_ID}_hcopy"
  "${PSQL[@]}" "$(tgt_url "${RUN_ID}_hcopy")" -c "$MEDIA_DDL"
  t0=$(now)
  psql -X -q -v ON_ERROR_STOP=1 "$(src_admin_url "$HUGE")" -c "\\copy (SELECT * FROM media) TO STDOUT" \
    | psql -X -q -v ON_ERROR_STOP=1 "$(tgt_url "${RUN_ID}_hcopy")" -c "\\copy media FROM STDIN"
  HCOPY_SECONDS=$(since "$t0")
  figure "$S6" "direct COPY pipe" "$HCOPY_SECONDS s" ""
  "${PSQL[@]}" "$TUNNEL_TARGET_URL" -c "DROP DATABASE ${RUN_ID}_hcopy WITH (FORCE)"
  keep=()
  for d in "${TARGET_DBS[@]}"; do [[ $d == "${RUN_ID}_hcopy" ]] || keep+=("$d"); done
  TARGET_DBS=("${keep[@]}")
  "${PSQL[@]}" "$TUNNEL_TARGET_URL" -c "CHECKPOINT" 2>/dev/null || true

  start_pipeline "$HUGE" huge "$SHARE_LINE"
  wait_sync "$HUGE" "$HUGE_ROWS" huge
  if [[ -n $SYNC_SECONDS ]]; then
    figure "$S6" "initial sync (producer start -> target count = N)" "$SYNC_SECONDS s" ""
    figure "$S6" "initial sync / direct COPY pipe" "$(calc "printf \"%.2f\", $HCOPY_SECONDS / $SYNC_SECONDS")x" ">= 0.5x"
    # steady writes: latencies, the source's CPU share and rows read per second
    c0=$(source_cost "$HUGE")
    t0=$(now)
    latency "$HUGE" huge "$S6" "$MIX" "$STEADY"
    c1=$(source_cost "$HUGE")
    el=$(since "$t0")
    read -r -a b <<<"$c0"
    read -r -a a <<<"$c1"
    if [[ ${a[0]} != "?" && ${b[0]} != "?" ]]; then
      figure "$S6" "rows read by the pipeline per second (steady)" "$(calc "printf \"%.0f\", (${a[2]} - ${b[2]}) / $el") rows/s (pg_stat_statements)" ""
    fi
    say "6. peak RSS after the steady phase"
    stop_pipeline huge "$S6"
    # restart to streaming: the key set comes back, the first passes follow
    say "6. restart to streaming"
    start_pipeline "$HUGE" huge-restart "$SHARE_LINE"
    wait_logged "$LOG_DIR/huge-restart-producer.log" "streaming changes" 3600
    figure "$S6" "producer restart -> 'streaming changes'" "$(since "$T_START") s" "< 10 s"
    say "6. tunnel-consumer verify"
    # the changes still on their way first (updates and deletes of a large table wait for
    # their detector's next pass): the producer's log quiet for a minute
    wait_quiet "$LOG_DIR/huge-restart-producer.log" 60 1800
    vout=$LOG_DIR/huge-verify.out vrc=0
    t0=$(now)
    "$CONSUMER_BIN" verify --config "$LOG_DIR/huge-restart.toml" >"$vout" 2>&1 || vrc=$?
    line=$(verify_line "$vout")
    figure "$S6" "tunnel-consumer verify (whole table)" "$line (exit $vrc, $(since "$t0") s wall)" "minutes"
    stop_pipeline huge-restart "$S6 (after the restart)"
  else
    figure "$S6" "initial sync" "not reached ($SYNC_ROWS rows after $(since "$T_START") s)" ""
    stop_pipeline huge "$S6"
  fi
  used=$(du -sb "$KAFKA_DATA"/"$HUGE".* 2>/dev/null | awk '{ s += $1 } END { printf "%.0f", s / 1048576 }')
  figure "$S6" "disk used by the table's topic (all partitions)" "${used:-?} MiB" ""
fi

# ---------------------------------------------------------------- 7. trigger capture

if [[ $SECTIONS == *" 7 "* ]]; then
  # shellcheck source=scripts/bench/trigger.sh
  source "$ROOT/scripts/bench/trigger.sh"
fi

# ---------------------------------------------------------------- 8. a tiny table, batch runs

if [[ $SECTIONS == *" 8 "* ]]; then
  # shellcheck source=scripts/bench/small.sh
  source "$ROOT/scripts/bench/small.sh"
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
