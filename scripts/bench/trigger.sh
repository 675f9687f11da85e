# Section 7 of scripts/bench.sh (sourced by it: uses its helpers and settings): trigger capture
# on a BENCH_TRIGGER_ROWS-row media table (default 1,000,000).
#   a) poll capture, then trigger capture of the same table (installed, switched without a
#      snapshot), each under BENCH_RATE DML/s of BENCH_MIX for BENCH_LATENCY_SECONDS: latency
#      p50/p99 per kind and the producer's cost to the source (pg_stat_statements);
#   b) the cost on the application's write path: pgbench (BENCH_PGBENCH_CLIENTS clients,
#      default 2, BENCH_PGBENCH_SECONDS each, default 20) of a custom script (an insert, an
#      update and a delete of random ids, each its own transaction), with the pipeline in
#      trigger capture running, then without and with the triggers installed and no pipeline,
#      three runs each in the order on off off on on off; the TPS and the loss the triggers
#      cause.

TRIGGER_ROWS=${BENCH_TRIGGER_ROWS:-1000000}
PGBENCH_CLIENTS=${BENCH_PGBENCH_CLIENTS:-2}
PGBENCH_SECONDS=${BENCH_PGBENCH_SECONDS:-20}
PGBENCH=${TUNNEL_PG_BINDIR:-/usr/lib/postgresql/15/bin}/pgbench

pgbench_tps() { # db tag: TPS of the custom script (each of its 3 statements is a transaction)
  local script=$LOG_DIR/pgbench-iud.sql out=$LOG_DIR/pgbench-$2.out
  cat >"$script" <<'SQL'
\set id random(1, :rows)
INSERT INTO media (s3_path, format, type) VALUES ('/pgbench/' || :id, 'jpg', 1);
UPDATE media SET type = 3 - type WHERE id = :id;
DELETE FROM media WHERE id = :id + 7;
SQL
  "$PGBENCH" -n -f "$script" -c "$PGBENCH_CLIENTS" -j "$PGBENCH_CLIENTS" -T "$PGBENCH_SECONDS" \
    -D rows="$TRIGGER_ROWS" "$(src_admin_url "$1")" >"$out" 2>&1 || { note "pgbench failed: $(tail -n 3 "$out")"; echo 0; return 0; }
  awk '/^tps = / { printf "%.0f", $3; exit }' "$out"
}

capture_objects() { # db install|uninstall config
  "$PRODUCER_BIN" "$2" --config "$3" --url "$(src_admin_url "$1")" --table media \
    >>"$LOG_DIR/trg-install.log" 2>&1
}

S7="7. trigger capture, $TRIGGER_ROWS-row table"
TRG=${RUN_ID}_trg
say "$S7"
create_source "$TRG" "$TRIGGER_ROWS"
create_target "$TRG"
start_pipeline "$TRG" trg-poll "$SHARE_LINE"
wait_sync "$TRG" "$TRIGGER_ROWS" trg-poll
if [[ -z $SYNC_SECONDS ]]; then
  figure "$S7" "initial sync" "not reached ($SYNC_ROWS rows after $(since "$T_START") s)" ""
  stop_pipeline trg-poll "$S7"
else
  say "7a. latency in poll capture"
  latency "$TRG" trg-poll "$S7, poll capture"
  stop_pipeline trg-poll "$S7, poll capture"
  say "7a. latency in trigger capture (installed, switched without a snapshot)"
  capture_objects "$TRG" install "$LOG_DIR/trg-poll.toml"
  TABLE_EXTRA='capture = "trigger"'
  start_pipeline "$TRG" trg "$SHARE_LINE"
  TABLE_EXTRA=
  wait_logged "$LOG_DIR/trg-producer.log" "streaming changes" 300
  latency "$TRG" trg "$S7, trigger capture"
  say "7b. pgbench on the source: the cost of the triggers on the write path"
  with_pipeline=$(pgbench_tps "$TRG" pipeline)
  figure "$S7, write path" "pgbench TPS, triggers + pipeline running" "$with_pipeline" ""
  stop_pipeline trg "$S7, trigger capture"
  # the triggers are installed now; runs in the order on off off on on off, so that a drift of
  # the server over the runs (caches, the table's growth) weighs on both sides alike
  on=() off=()
  installed=1
  for want in 1 0 0 1 1 0; do
    if ((want != installed)); then
      capture_objects "$TRG" "$( ((want)) && echo install || echo uninstall)" "$LOG_DIR/trg-poll.toml"
      installed=$want
    fi
    if ((want)); then on+=("$(pgbench_tps "$TRG" "triggers-${#on[@]}")"); else off+=("$(pgbench_tps "$TRG" "plain-${#off[@]}")"); fi
  done
  note "pgbench TPS without triggers: ${off[*]}; with: ${on[*]}"
  off_mean=$(calc "printf \"%.0f\", (${off[0]} + ${off[1]} + ${off[2]}) / 3")
  on_mean=$(calc "printf \"%.0f\", (${on[0]} + ${on[1]} + ${on[2]}) / 3")
  figure "$S7, write path" "pgbench TPS without triggers (3 runs)" "${off[*]} (mean $off_mean)" ""
  figure "$S7, write path" "pgbench TPS with triggers, no pipeline (3 runs)" "${on[*]} (mean $on_mean)" ""
  if ((off_mean > 0)); then
    figure "$S7, write path" "TPS lost to the triggers" "$(calc "printf \"%.1f%%\", 100 * ($off_mean - $on_mean) / $off_mean")" "< 15%"
  fi
fi
