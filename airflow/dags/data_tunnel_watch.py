"""Watches a streaming Data Tunnel deployment (the long-running `tunnel-producer run` and
`tunnel-consumer run`) from Airflow: every few minutes, each process's `/readyz`, and the
consumer's lag from its `/metrics` (`tunnel_consumer_lag_seconds`, worst partition). A check
that fails fails the run, so Airflow's own alerting (e-mail, callbacks) tells the operator.
Airflow schedules; it is not a place to run a stream: the processes run under systemd,
Kubernetes or Docker, with `--metrics-addr`.

Airflow Variables (or the environment variables of the same name in capitals):

- `data_tunnel_producer_metrics`: e.g. `http://tunnel-producer:9641` (required);
- `data_tunnel_consumer_metrics`: e.g. `http://tunnel-consumer:9642` (required);
- `data_tunnel_max_lag_s`: the largest lag accepted (default 300);
- `DATA_TUNNEL_WATCH_SCHEDULE` (environment only): the schedule (default every 5 minutes).
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from datetime import datetime, timedelta

from airflow import DAG
from airflow.exceptions import AirflowException, AirflowFailException
from airflow.models import Variable
from airflow.operators.python import PythonOperator


def setting(name: str, default: str | None = None) -> str | None:
    value = Variable.get(name, default_var=None)
    if value is None:
        value = os.environ.get(name.upper(), default)
    return value


def fetch(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")
    except OSError as e:
        raise AirflowException(f"{url} cannot be reached: {e}") from e


def ready(variable: str) -> None:
    base = setting(variable)
    if not base:
        raise AirflowFailException(f"set the Variable {variable}")
    status, body = fetch(base.rstrip("/") + "/readyz")
    print(f"{base}/readyz: {status} {body.strip()}", flush=True)
    if status != 200:
        raise AirflowException(f"{base} is not ready: {body.strip()}")


def lag() -> None:
    base = setting("data_tunnel_consumer_metrics")
    if not base:
        raise AirflowFailException("set the Variable data_tunnel_consumer_metrics")
    limit = float(setting("data_tunnel_max_lag_s", "300"))
    status, body = fetch(base.rstrip("/") + "/metrics")
    if status != 200:
        raise AirflowException(f"{base}/metrics answered {status}")
    lags = [
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("tunnel_consumer_lag_seconds{")
    ]
    worst = max(lags, default=0.0)
    print(f"consumer lag: {worst:.1f} s (worst of {len(lags)} partitions), limit {limit:.0f} s", flush=True)
    if worst > limit:
        raise AirflowException(f"the consumer lags {worst:.0f} s behind (limit {limit:.0f} s)")


with DAG(
    dag_id="data_tunnel_watch",
    description="Data Tunnel: readiness and lag of the streaming deployment",
    schedule=os.environ.get("DATA_TUNNEL_WATCH_SCHEDULE", timedelta(minutes=5)),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(seconds=30), "execution_timeout": timedelta(minutes=2)},
    tags=["data-tunnel"],
) as dag:
    producer_ready = PythonOperator(
        task_id="producer_ready", python_callable=ready, op_args=["data_tunnel_producer_metrics"]
    )
    consumer_ready = PythonOperator(
        task_id="consumer_ready", python_callable=ready, op_args=["data_tunnel_consumer_metrics"]
    )
    consumer_lag = PythonOperator(task_id="consumer_lag", python_callable=lag)
    [producer_ready, consumer_ready] >> consumer_lag
