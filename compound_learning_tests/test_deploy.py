"""The production deployment, driven end to end (issue 11): ``dagster-webserver`` and one
``dagster-daemon`` on PostgreSQL with ``deploy/dagster.yaml``.

1. the schedule and the new-data sensor are on; a file is ingested and the sensor requests
   exactly the days it touched, and every run succeeds;
2. a backfill launched through the webserver's GraphQL API completes, every run successful;
3. the daemon is stopped while five days of data arrive (the new-data sensor off, so that only
   the gap filler can notice them); after the restart the gap filler materializes all five.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from compound_learning import steps
from compound_learning.config import load_settings
from compound_learning.ingestion import ingest_frame
from compound_learning.storage import schema as t
from compound_learning_tests.conftest import PG_ADMIN_URL, _forget, make_store, small_world

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
WAIT = 420  # seconds any one phase may take on a busy two-core machine
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}

LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(what: str, check, timeout: float = WAIT, every: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class Deployment:
    """The webserver, the daemon and the CLI, on one DAGSTER_HOME."""

    def __init__(self, home: Path, env: dict[str, str], logs: Path):
        self.home, self.env, self.logs = home, env, logs
        self.port = _free_port()
        self.procs: dict[str, tuple[subprocess.Popen, object]] = {}

    def start(self, name: str, *args: str) -> None:
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed in stop()
        proc = subprocess.Popen(
            [str(BIN / args[0]), *args[1:]], cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )
        self.procs[name] = (proc, log)

    def stop(self, name: str) -> None:
        proc, log = self.procs.pop(name)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()

    def start_webserver(self) -> None:
        self.start("webserver", "dagster-webserver", "-h", "127.0.0.1", "-p", str(self.port), "-w", "workspace.yaml")
        _wait("the webserver", lambda: self._get("/server_info"), timeout=180, every=1)

    def start_daemon(self) -> None:
        self.start("daemon", "dagster-daemon", "run", "-w", "workspace.yaml")

    def cli(self, *args: str) -> str:
        run = subprocess.run(
            [str(BIN / "dagster"), *args, "-w", "workspace.yaml"],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert run.returncode == 0, run.stdout + run.stderr
        return run.stdout

    def _get(self, path: str):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            return None

    def graphql(self, query: str, variables: dict) -> dict:
        body = json.dumps({"query": query, "variables": variables}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/graphql", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)


def _runs(instance: dg.DagsterInstance, **tags) -> list[dg.DagsterRun]:
    # by tags only: a backfill's runs belong to Dagster's asset job, not daily_learning_cycle
    return list(instance.get_runs(filters=dg.RunsFilter(tags=tags)))


def _all_finished(instance, expected: int, **tags):
    runs = _runs(instance, **tags)
    if len(runs) >= expected and all(r.status in FINISHED for r in runs):
        return runs
    return None


@pytest.fixture
def deployment(pg_url, tmp_path, monkeypatch):
    dagster_db = f"cl_dagster_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{dagster_db}"'))
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(ROOT / "deploy" / "dagster.yaml", home / "dagster.yaml")
    admin_url = sa.engine.make_url(PG_ADMIN_URL)
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": admin_url.host or "127.0.0.1",
        "DAGSTER_PG_PORT": str(admin_url.port or 5432),
        "DAGSTER_PG_USER": admin_url.username or "postgres",
        "DAGSTER_PG_PASSWORD": admin_url.password or "",
        "DAGSTER_PG_DB": dagster_db,
        "DAGSTER_COMPUTE_LOG_DIR": str(home / "logs"),
        "COMPOUND_LEARNING_DATABASE_URL": pg_url,
        "COMPOUND_LEARNING_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
        "COMPOUND_LEARNING_PARTITION_START": (date.today() - timedelta(days=20)).isoformat(),
        "COMPOUND_LEARNING_NEW_DATA_SENSOR_SECONDS": "5",
        "COMPOUND_LEARNING_GAP_FILL_SENSOR_SECONDS": "5",
    }
    for key, value in env.items():
        if key not in ("PATH", "HOME"):
            monkeypatch.setenv(key, value)
    dep = Deployment(home, env, tmp_path)
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        yield dep, instance
    finally:
        dep.close()
        instance.dispose()
        _forget(pg_url)
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{dagster_db}" WITH (FORCE)'))
        admin.dispose()


def test_webserver_and_daemon_on_postgresql(deployment, pg_url, tmp_path):
    dep, instance = deployment
    today = date.today()
    data, _ = small_world(days=10, accounts=3, creatives=10, seed=8)
    shift = today - timedelta(days=10) - date.fromisoformat(data["date"].min())
    data["date"] = [(date.fromisoformat(d) + shift).isoformat() for d in data["date"]]
    days = sorted(data["date"].unique())
    store, settings = make_store(pg_url), load_settings()

    # 1. schedule and new-data sensor on (the gap filler off until step 3); a file comes in.
    dep.cli("schedule", "start", "daily_learning_schedule")
    dep.cli("sensor", "start", "new_data_sensor")
    dep.cli("sensor", "stop", "missing_days_sensor")
    dep.start_webserver()
    dep.start_daemon()
    _wait(
        "the new-data sensor's first tick (its cursor)",
        lambda: any(
            s.name == "new_data_sensor" and s.instigator_data and s.instigator_data.cursor is not None
            for s in instance.all_instigator_state()
        ),
    )
    first = data[data["date"].isin(days[:3])]
    summary = ingest_frame(first, store=store, settings=settings, today=today)
    assert summary["days_touched"] == days[:3]
    runs = _wait("the new-data runs", lambda: _all_finished(instance, 3, **{"compound_learning/trigger": "new_data"}))
    assert sorted(r.tags["dagster/partition"] for r in runs) == days[:3]  # exactly the touched days
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), [r.status for r in runs]

    # 2. a backfill through GraphQL (the UI's "Materialize" over a range): one run for the range.
    assets = [{"path": [name]} for name in steps.CYCLE_STEPS]
    out = dep.graphql(LAUNCH_BACKFILL, {"params": {"partitionNames": days[:3], "assetSelection": assets}})
    result = out["data"]["launchPartitionBackfill"]
    assert result["__typename"] == "LaunchBackfillSuccess", out
    backfill_id = result["backfillId"]
    _wait("the backfill", lambda: instance.get_backfill(backfill_id).status.value != "REQUESTED")
    backfill_runs = _runs(instance, **{"dagster/backfill": backfill_id})
    assert backfill_runs and all(r.status == dg.DagsterRunStatus.SUCCESS for r in backfill_runs)
    assert instance.get_backfill(backfill_id).status.value == "COMPLETED_SUCCESS"

    # 3. the daemon is down while five days arrive; after the restart the gap filler fills them.
    dep.stop("daemon")
    dep.cli("sensor", "stop", "new_data_sensor")
    dep.cli("sensor", "start", "missing_days_sensor")
    late = days[5:]
    ingest_frame(data[data["date"].isin(late)], store=store, settings=settings, today=today)
    dep.start_daemon()
    gap_runs = {"compound_learning/trigger": "gap_fill"}
    runs = _wait("the gap filler's runs", lambda: _all_finished(instance, 5, **gap_runs))
    assert sorted(r.tags["dagster/partition"] for r in runs) == late
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs), [r.status for r in runs]
    for day in late:
        assert store.count_rows(t.improvement_snapshots, date=date.fromisoformat(day)) == 3
    assert len(_runs(instance, **{"compound_learning/trigger": "new_data"})) == 3  # the late days were the gap filler's
