"""Waits for the initial sync of the bench's pipeline and prints what it saw, one event a line:

    first <seconds> <rows>      the first rows reached the target
    snapshot <seconds> <rows>   the producer logged 'snapshot done'
    progress <seconds> <rows>   every 15 s
    done <seconds> <rows>       the target holds all rows (count(*) confirms it)
    exited <seconds> <rows>     the producer or the consumer exited
    timeout <seconds> <rows>

Seconds count from <start> (a Unix time). Progress is read from the consumer's bookkeeping
(`tunnel.offsets`, committed in the transaction that writes the rows) on one connection every
50 ms: a new psql and a count(*) of the growing table twice a second took CPU from the pipeline
being measured.
"""

import argparse
import os
import sys
import time

import psycopg


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--target", required=True, help="target database URL")
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--start", type=float, required=True, help="Unix time the pipeline started")
    p.add_argument("--timeout", type=float, required=True)
    p.add_argument("--producer-log", required=True)
    p.add_argument("--pids", type=int, nargs="+", required=True)
    a = p.parse_args()

    def say(what: str, rows: int) -> None:
        print(f"{what} {time.time() - a.start:.2f} {rows}", flush=True)

    conn = None
    rows = 0
    first = snapshot = False
    last_report = time.time()
    while True:
        try:
            conn = conn or psycopg.connect(a.target, autocommit=True)
            rows = conn.execute(
                "SELECT coalesce(sum(applied_events), 0) FROM tunnel.offsets"
            ).fetchone()[0]
        except psycopg.Error:
            conn = None  # the bookkeeping is created with the first batch
        if not first and rows > 0:
            first = True
            say("first", rows)
        if not snapshot:
            try:
                with open(a.producer_log, encoding="utf-8", errors="replace") as f:
                    snapshot = "snapshot done" in f.read()
            except OSError:
                pass
            if snapshot:
                say("snapshot", rows)
        if rows >= a.rows and conn is not None:
            elapsed = time.time() - a.start
            count = conn.execute("SELECT count(*) FROM media").fetchone()[0]
            if count >= a.rows:
                print(f"done {elapsed:.2f} {count}", flush=True)
                return 0
        if not all(alive(pid) for pid in a.pids):
            say("exited", rows)
            return 1
        if time.time() - a.start > a.timeout:
            say("timeout", rows)
            return 1
        if time.time() - last_report >= 15:
            last_report = time.time()
            say("progress", rows)
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
