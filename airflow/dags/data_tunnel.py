"""Data Tunnel as a scheduled batch: `produce` -> `consume` -> `verify` -> `notify`.

Each run ships what changed since the last one (`tunnel-producer run --once`: the snapshot the
first time, then every detector once), applies it (`tunnel-consumer run --until-caught-up`) and
compares the source with the replica (`tunnel-consumer verify`, which fails the run on a
difference). `max_active_runs=1`: runs never overlap (the producer's Kafka transactions fence a
second producer of the same table anyway).

Configured by Airflow Variables (or the environment variables of the same name in capitals):

- `data_tunnel_config`: the pipeline's TOML config file (required);
- `data_tunnel_bin_dir`: the folder of `tunnel-producer` and `tunnel-consumer` (default: found
  on PATH);
- `data_tunnel_notify_url`: an optional webhook; `notify` POSTs the run's outcome to it;
- `data_tunnel_verify_incremental`: `true` to verify only the rows written since the last clean
  verify (`verify --incremental`, for large tables); default: the whole table;
- `DATA_TUNNEL_SCHEDULE` (environment only, read when the DAG is parsed): the schedule
  (default `@hourly`).

Secrets stay out of Airflow: the config file names password files, or the binaries read
`TUNNEL_SOURCE_PASSWORD` etc. from the worker's environment.

Exit codes: 0 done; 1 failed (retried: a database or broker may be back by then); 2 the config
is wrong (failed at once, no retry).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.request
from datetime import datetime, timedelta

from airflow import DAG
from airflow.exceptions import AirflowException, AirflowFailException
from airflow.models import Variable
from airflow.operators.python import PythonOperator
from airflow.utils.trigger_rule import TriggerRule


def setting(name: str, default: str | None = None) -> str | None:
    """An Airflow Variable, else the environment variable of the same name in capitals."""
    value = Variable.get(name, default_var=None)
    if value is None:
        value = os.environ.get(name.upper(), default)
    return value


def binary(name: str) -> str:
    folder = setting("data_tunnel_bin_dir")
    path = os.path.join(folder, name) if folder else shutil.which(name)
    if not path or not os.path.exists(path):
        raise AirflowFailException(
            f"{name} not found (set the Variable data_tunnel_bin_dir, or put it on PATH)"
        )
    return path


def run_binary(name: str, *args: str) -> str:
    """Runs one of the pipeline's binaries with the config; its output goes to the task log."""
    config = setting("data_tunnel_config")
    if not config:
        raise AirflowFailException("set the Variable data_tunnel_config to the pipeline's TOML file")
    command = [binary(name), *args, "--config", config]
    print("running:", " ".join(command), flush=True)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    print(done.stdout, flush=True)
    print(done.stderr, flush=True)
    if args[0] == "verify" and done.returncode != 0:
        raise AirflowFailException(
            "verify: the replica differs from the source (see the report above)"
            if done.returncode == 1
            else f"verify could not compare (exit {done.returncode}, see above)"
        )
    if done.returncode == 2:
        raise AirflowFailException(f"{name} {args[0]}: the config is wrong (exit 2), not retried")
    if done.returncode != 0:
        raise AirflowException(f"{name} {args[0]} failed (exit {done.returncode})")
    return done.stdout


def verify() -> str:
    incremental = (setting("data_tunnel_verify_incremental", "false") or "").lower() == "true"
    return run_binary("tunnel-consumer", "verify", *(["--incremental"] if incremental else []))


def notify(**context) -> None:
    """POSTs the outcome of the run's tasks to `data_tunnel_notify_url`, when it is set."""
    url = setting("data_tunnel_notify_url")
    dag_run = context["dag_run"]
    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances() if ti.task_id != "notify"}
    outcome = "success" if all(s == "success" for s in states.values()) else "failed"
    print(f"run {dag_run.run_id}: {outcome} {states}", flush=True)
    if not url:
        return
    body = json.dumps({"dag": dag_run.dag_id, "run": dag_run.run_id, "outcome": outcome, "tasks": states})
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        print("notified:", response.status, flush=True)


with DAG(
    dag_id="data_tunnel_batch",
    description="Data Tunnel: ship what changed, apply it, verify the replica",
    schedule=os.environ.get("DATA_TUNNEL_SCHEDULE", "@hourly"),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={
        "retries": 2,
        "retry_delay": timedelta(minutes=2),
        "execution_timeout": timedelta(minutes=50),
    },
    tags=["data-tunnel"],
) as dag:
    produce = PythonOperator(
        task_id="produce", python_callable=run_binary, op_args=["tunnel-producer", "run", "--once"]
    )
    consume = PythonOperator(
        task_id="consume",
        python_callable=run_binary,
        op_args=["tunnel-consumer", "run", "--until-caught-up"],
    )
    check = PythonOperator(
        task_id="verify",
        python_callable=verify,
        # a difference is an answer, not a transient failure
        retries=0,
    )
    report = PythonOperator(
        task_id="notify", python_callable=notify, trigger_rule=TriggerRule.ALL_DONE, retries=0
    )
    produce >> consume >> check >> report
