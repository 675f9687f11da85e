#!/usr/bin/env python3
"""Latency load generator for scripts/bench.sh.

Issues ~RATE DML/s against the source's `media` table for DURATION seconds, cycling through
MIX (default "iu": an INSERT, then an UPDATE that moves updated_at; "s" is an UPDATE that leaves
updated_at alone, a silent update; "d" a DELETE), each UPDATE and DELETE of a random id among the
rows that existed before the run (each id at most once), each one its own autocommitted
transaction. A DELETE is visible when a poll no longer finds its id. For every operation it records the client's
wall clock right after the COMMIT returned and a unique marker (the new s3_path). In the same
process, every POLL_MS it asks the target which of the ids still pending carry their marker yet
(primary-key lookups, so the poll costs the target next to nothing) and records when each first
shows up. Source and target are read with the same clock.

A marker's visibility time is the start of the first poll that saw it (the row was committed on
the target by then); the resolution is the poll interval. After DURATION, it keeps polling up to
DRAIN seconds for the stragglers, then counts what never arrived as missing.

Writes the per-operation latencies to <out>.csv and a summary to <out>.json, and prints a table.

--mode delete: instead, COUNT single-row DELETEs of random ids (ids present in the source and in
the target), one every 1/RATE seconds, each its own autocommitted transaction; a delete is
visible when a poll of the target (every POLL_MS, primary-key lookups of the ids pending) no
longer finds its id. The summary has a "delete" entry.
"""

import argparse
import csv
import json
import random
import sys
import time

import psycopg


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, int(-(-p * len(sorted_values) // 100)))  # ceil(p/100 * n)
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(values_ms, missing):
    v = sorted(values_ms)
    return {
        "count": len(v),
        "missing": missing,
        "p50_ms": percentile(v, 50),
        "p95_ms": percentile(v, 95),
        "p99_ms": percentile(v, 99),
        "max_ms": v[-1] if v else None,
        "mean_ms": (sum(v) / len(v)) if v else None,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", required=True, help="source URL of a role that may write media")
    ap.add_argument("--target", required=True, help="target URL")
    ap.add_argument("--duration", type=float, default=60.0)
    ap.add_argument("--rate", type=float, default=10.0, help="operations per second")
    ap.add_argument("--poll-ms", type=float, default=25.0)
    ap.add_argument("--drain", type=float, default=30.0)
    ap.add_argument("--label", default="media")
    ap.add_argument("--out", required=True, help="path prefix of the .csv and .json outputs")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--mode", choices=("dml", "delete"), default="dml",
                    help="dml: alternating INSERT / UPDATE; delete: single-row DELETEs")
    ap.add_argument("--count", type=int, default=20, help="deletes issued (--mode delete)")
    ap.add_argument("--mix", default="iu",
                    help="--mode dml: the cycle of operations: i insert, u update, "
                         "s silent update (updated_at unchanged), d delete")
    args = ap.parse_args()
    if args.mode == "delete":
        return deletes(args)

    rng = random.Random(args.seed)
    src = psycopg.connect(args.source, autocommit=True, application_name="bench-load")
    tgt = psycopg.connect(args.target, autocommit=True, application_name="bench-probe")

    min_id, max_id = src.execute("SELECT min(id), max(id) FROM media").fetchone()
    if max_id is None:
        sys.exit("the source's media table is empty")
    kinds = {"i": "insert", "u": "update", "s": "silent", "d": "delete"}
    if not args.mix or any(c not in kinds for c in args.mix):
        sys.exit(f"--mix {args.mix!r}: use the letters i, u, s and d")
    cycle = [kinds[c] for c in args.mix]
    n_updates = int(args.duration * args.rate) + 2
    span = max_id - min_id + 1
    update_ids = rng.sample(range(min_id, max_id + 1), min(n_updates, span))

    insert_sql = (
        "INSERT INTO media (s3_path, format, type) VALUES (%s, 'jpg', 1) RETURNING id"
    )
    update_sql = "UPDATE media SET s3_path = %s, updated_at = now() WHERE id = %s"
    silent_sql = "UPDATE media SET s3_path = %s WHERE id = %s"
    delete_sql = "DELETE FROM media WHERE id = %s"
    probe_sql = "SELECT id, s3_path FROM media WHERE id = ANY(%s)"

    run_tag = f"{int(time.time())}-{rng.randrange(1 << 30):x}"
    pending = {}  # id -> (kind, marker, commit_time, seq)
    records = []  # (seq, kind, id, marker, commit_time, seen_time or None)
    interval = 1.0 / args.rate
    poll = args.poll_ms / 1000.0
    polls = 0
    late_ops = 0  # operations issued more than one interval behind schedule

    def probe():
        nonlocal polls
        if not pending:
            return
        t_start = time.time()
        rows = tgt.execute(probe_sql, (list(pending.keys()),)).fetchall()
        polls += 1
        present = set()
        for row_id, s3_path in rows:
            present.add(row_id)
            p = pending.get(row_id)
            if p is not None and p[0] != "delete" and s3_path == p[1]:
                kind, marker, t_commit, seq = p
                records[seq] = (seq, kind, row_id, marker, t_commit, t_start)
                del pending[row_id]
        for row_id in [k for k, p in pending.items() if p[0] == "delete" and k not in present]:
            kind, marker, t_commit, seq = pending.pop(row_id)
            records[seq] = (seq, kind, row_id, marker, t_commit, t_start)

    start = time.time()
    end = start + args.duration
    next_op = start
    next_poll = start
    seq = 0
    while True:
        now = time.time()
        if now >= end:
            break
        if now >= next_op:
            if now - next_op > interval:
                late_ops += 1
            kind = cycle[seq % len(cycle)]
            marker = f"/bucket/bench/{run_tag}/{seq}.jpg"
            if kind != "insert" and not update_ids:
                kind = "insert"
            if kind == "insert":
                row_id = src.execute(insert_sql, (marker,)).fetchone()[0]
            else:
                row_id = update_ids.pop()
                if kind == "delete":
                    marker = None
                    src.execute(delete_sql, (row_id,))
                else:
                    src.execute(update_sql if kind == "update" else silent_sql, (marker, row_id))
            t_commit = time.time()  # autocommit: the statement returned after its COMMIT
            records.append((seq, kind, row_id, marker, t_commit, None))
            pending[row_id] = (kind, marker, t_commit, seq)
            seq += 1
            next_op += interval
        if time.time() >= next_poll:
            probe()
            next_poll = time.time() + poll
        sleep_for = min(next_op, next_poll, end) - time.time()
        if sleep_for > 0:
            time.sleep(sleep_for)

    drain_end = time.time() + args.drain
    while pending and time.time() < drain_end:
        probe()
        time.sleep(poll)

    with open(args.out + ".csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["seq", "kind", "id", "marker", "commit_epoch", "seen_epoch", "latency_ms"])
        for s, kind, row_id, marker, tc, ts in records:
            lat = None if ts is None else round((ts - tc) * 1000.0, 1)
            w.writerow([s, kind, row_id, marker, f"{tc:.6f}", "" if ts is None else f"{ts:.6f}", lat])

    result = {"label": args.label, "table_rows": span, "duration_s": args.duration,
              "ops": len(records), "achieved_rate": len(records) / args.duration,
              "polls": polls, "late_ops": late_ops}
    for kind in ("insert", "update", "silent", "delete"):
        lats = [(r[5] - r[4]) * 1000.0 for r in records if r[1] == kind and r[5] is not None]
        missing = sum(1 for r in records if r[1] == kind and r[5] is None)
        result[kind] = summarize(lats, missing)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=2)

    def fmt(v):
        return "-" if v is None else f"{v:.0f}"

    print(f"  latency on {args.label}: {len(records)} ops in {args.duration:.0f} s "
          f"({result['achieved_rate']:.1f} ops/s), target polled every {args.poll_ms:.0f} ms "
          f"({polls} polls)")
    print(f"    {'op':<7} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8} {'missing':>8}")
    for kind in ("insert", "update", "silent", "delete"):
        s = result[kind]
        if s["count"] == 0 and s["missing"] == 0:
            continue
        print(f"    {kind:<7} {s['count']:>5} {fmt(s['p50_ms']):>8} {fmt(s['p95_ms']):>8} "
              f"{fmt(s['p99_ms']):>8} {fmt(s['max_ms']):>8} {s['missing']:>8}")


def deletes(args):
    """--mode delete: COUNT single-row deletes at RATE/s, time until each is gone from the target."""
    rng = random.Random(args.seed)
    src = psycopg.connect(args.source, autocommit=True, application_name="bench-delete")
    tgt = psycopg.connect(args.target, autocommit=True, application_name="bench-probe")
    min_id, max_id = src.execute("SELECT min(id), max(id) FROM media").fetchone()
    if max_id is None:
        sys.exit("the source's media table is empty")

    pending = {}  # id -> seq
    records = []  # [seq, id, commit_time, seen_time or None]
    interval = 1.0 / args.rate
    poll = args.poll_ms / 1000.0
    polls = 0
    skipped = 0  # random ids that were not in the source or not in the target

    def probe():
        nonlocal polls
        if not pending:
            return
        t_start = time.time()
        still = {r[0] for r in tgt.execute("SELECT id FROM media WHERE id = ANY(%s)",
                                            (list(pending.keys()),)).fetchall()}
        polls += 1
        for row_id in [k for k in pending if k not in still]:
            records[pending.pop(row_id)][3] = t_start

    def delete_one():
        nonlocal skipped
        while True:
            row_id = rng.randint(min_id, max_id)
            if row_id in pending or any(r[1] == row_id for r in records):
                continue
            # only a row the target holds can be seen going away
            if tgt.execute("SELECT 1 FROM media WHERE id = %s", (row_id,)).fetchone() is None:
                skipped += 1
                continue
            if src.execute("DELETE FROM media WHERE id = %s RETURNING id", (row_id,)).fetchone():
                return row_id, time.time()  # autocommit: returned after its COMMIT
            skipped += 1

    start = time.time()
    next_op = start
    next_poll = start
    while len(records) < args.count:
        if time.time() >= next_op:
            row_id, t_commit = delete_one()
            pending[row_id] = len(records)
            records.append([len(records), row_id, t_commit, None])
            next_op += interval
        if time.time() >= next_poll:
            probe()
            next_poll = time.time() + poll
        sleep_for = min(next_op, next_poll) - time.time()
        if sleep_for > 0:
            time.sleep(sleep_for)
    issued_s = time.time() - start
    drain_end = time.time() + args.drain
    while pending and time.time() < drain_end:
        probe()
        time.sleep(poll)

    with open(args.out + ".csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["seq", "kind", "id", "commit_epoch", "seen_epoch", "latency_ms"])
        for s, row_id, tc, ts in records:
            lat = None if ts is None else round((ts - tc) * 1000.0, 1)
            w.writerow([s, "delete", row_id, f"{tc:.6f}", "" if ts is None else f"{ts:.6f}", lat])
    lats = [(r[3] - r[2]) * 1000.0 for r in records if r[3] is not None]
    result = {"label": args.label, "mode": "delete", "ops": len(records),
              "issued_in_s": issued_s, "polls": polls, "skipped_ids": skipped,
              "delete": summarize(lats, sum(1 for r in records if r[3] is None)),
              "latencies_ms": [None if r[3] is None else round((r[3] - r[2]) * 1000.0, 1)
                               for r in records]}
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=2)

    def fmt(v):
        return "-" if v is None else f"{v:.0f}"

    s = result["delete"]
    print(f"  delete latency on {args.label}: {len(records)} single-row deletes in {issued_s:.1f} s, "
          f"target polled every {args.poll_ms:.0f} ms ({polls} polls)")
    print(f"    {'op':<7} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8} {'missing':>8}")
    print(f"    {'delete':<7} {s['count']:>5} {fmt(s['p50_ms']):>8} {fmt(s['p95_ms']):>8} "
          f"{fmt(s['p99_ms']):>8} {fmt(s['max_ms']):>8} {s['missing']:>8}")
    print("    each (ms, in order): " + " ".join(fmt(v) for v in result["latencies_ms"]))


if __name__ == "__main__":
    main()
