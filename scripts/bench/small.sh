# Section 8 of scripts/bench.sh (sourced by it: uses its helpers and settings): the small-table
# answer of the README's Q1. A BENCH_TINY_ROWS-row media table (default 1,000):
#   - three batch runs (`tunnel-producer run --once`, then `tunnel-consumer run --until-caught-up`):
#     the first copy, after one new row, with nothing new; for each, the events shipped, the
#     wall time of each process, and what it cost the source (pg_stat_statements of the reader
#     role: statements, execution time, rows returned);
#   - the streaming deployment on the same table, idle for BENCH_IDLE_SECONDS (default 60): what
#     it costs the source meanwhile.

TINY_ROWS=${BENCH_TINY_ROWS:-1000}
IDLE_SECONDS=${BENCH_IDLE_SECONDS:-60}

# as source_cost, with the execution time in milliseconds: "exec_ms calls rows"
source_cost_ms() { # db
  psql -X -At -F ' ' "$(src_reader_url "$1")" -c "
    SELECT round(coalesce(sum(total_exec_time), 0)::numeric, 2), coalesce(sum(calls), 0), coalesce(sum(rows), 0)
      FROM pg_stat_statements
     WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND userid = 'tunnel_reader'::regrole" 2>/dev/null || echo "? ? ?"
}

cost_delta() { # before after (of source_cost_ms): "N statements, X ms exec, R rows returned"
  local b=($1) a=($2)
  [[ ${a[0]} == "?" || ${b[0]} == "?" ]] && { echo "n/a (pg_stat_statements unreadable)"; return 0; }
  calc "printf \"%d statements, %.2f ms exec, %d rows returned\", ${a[1]} - ${b[1]}, ${a[0]} - ${b[0]}, ${a[2]} - ${b[2]}"
}

batch_run() { # db config label
  local db=$1 cfg=$2 label=$3 before after t0 tp tc shipped log=$LOG_DIR/tiny-$(tr ' ' '-' <<<"$3")
  before=$(source_cost_ms "$db")
  t0=$(now)
  NO_COLOR=1 "$PRODUCER_BIN" run --once --config "$cfg" >"$log-producer.log" 2>&1 || note "producer --once failed: $(tail -n 2 "$log-producer.log")"
  tp=$(since "$t0")
  after=$(source_cost_ms "$db")
  t0=$(now)
  NO_COLOR=1 "$CONSUMER_BIN" run --until-caught-up --config "$cfg" >"$log-consumer.log" 2>&1 || note "consumer --until-caught-up failed: $(tail -n 2 "$log-consumer.log")"
  tc=$(since "$t0")
  shipped=$(grep -oE "public\.media: [0-9]+ events shipped" "$log-producer.log" | awk '{ print $2 }')
  figure "$S8" "batch run, $label" "${shipped:-?} events; producer $tp s, consumer $tc s (wall, start-up included)" ""
  figure "$S8" "  its cost to the source" "$(cost_delta "$before" "$after")" ""
}

S8="8. a $TINY_ROWS-row table: scheduled batch runs against streaming"
TINY=${RUN_ID}_tiny
say "$S8"
create_source "$TINY" "$TINY_ROWS"
create_target "$TINY"
write_config "$TINY" "$LOG_DIR/tiny.toml"
batch_run "$TINY" "$LOG_DIR/tiny.toml" "first (the copy)"
"${PSQL[@]}" "$(src_admin_url "$TINY")" -c "INSERT INTO media (s3_path, format, type) VALUES ('/today.jpg', 'jpg', 1)"
batch_run "$TINY" "$LOG_DIR/tiny.toml" "after one new row"
batch_run "$TINY" "$LOG_DIR/tiny.toml" "nothing new"
say "8. the streaming deployment, idle"
start_pipeline "$TINY" tiny-stream
wait_logged "$LOG_DIR/tiny-stream-producer.log" "streaming changes" 120
# the first passes after the start (reconciliation, the delete scan) settle first
sleep 15
before=$(source_cost_ms "$TINY")
t0=$(now)
sleep "$IDLE_SECONDS"
after=$(source_cost_ms "$TINY")
figure "$S8" "streaming, idle for ${IDLE_SECONDS} s" "$(cost_delta "$before" "$after")" ""
figure "$S8" "  that is, per hour" "$(awk -v b="$before" -v a="$after" -v s="$(since "$t0")" 'BEGIN { split(b, x, " "); split(a, y, " "); printf "%d statements, %.0f ms exec, %d rows returned", (y[2] - x[2]) * 3600 / s, (y[1] - x[1]) * 3600 / s, (y[3] - x[3]) * 3600 / s }')" ""
stop_pipeline tiny-stream "$S8"
