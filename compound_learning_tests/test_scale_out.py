"""Scale-out (issue 12 item 4): the per-account work split into shards that Dagster's executors
spread, with exactly the tables of the one-process run.

- in one process, any split of the accounts gives the same rows (the shards are the units the
  Dagster steps run);
- the job with ``COMPOUND_LEARNING_SHARDS=2`` on the multiprocess executor (a range, so the
  shards carry several days) writes the tables of the in-process run;
- the same on the Celery executor, with two workers on the RabbitMQ of 127.0.0.1:5672 (skipped
  when no broker answers, except where ``COMPOUND_LEARNING_REQUIRE_RABBITMQ=1``: CI).

``COMPOUND_LEARNING_TEST_SHARDS=n`` reruns the two executor tests with n shards (default 2):
``COMPOUND_LEARNING_TEST_SHARDS=3 pytest compound_learning_tests/test_scale_out.py``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from compound_learning import steps
from compound_learning.ingestion import ingest_frame
from compound_learning_tests.conftest import (
    DERIVED_BY_DAY,
    START,
    day_rows,
    make_context,
    make_store,
    small_world,
    table_differences,
    table_digest,
)

DAYS = 6
END = START + timedelta(days=DAYS - 1)
REQUIRE_RABBITMQ = os.environ.get("COMPOUND_LEARNING_REQUIRE_RABBITMQ") == "1"
BROKER = os.environ.get("COMPOUND_LEARNING_TEST_CELERY_BROKER", "pyamqp://guest@127.0.0.1:5672//")
SHARDS = int(os.environ.get("COMPOUND_LEARNING_TEST_SHARDS", "2"))


def _world_store(url: str) -> None:
    frame, _ = small_world(days=DAYS, accounts=7, creatives=20, seed=4)
    ingest_frame(frame, store=make_store(url), today=START + timedelta(days=30))


def _tables(url: str) -> dict[str, pd.DataFrame]:
    store = make_store(url)
    return {
        f"{tb.name}@{START + timedelta(days=i)}": day_rows(store, tb, col, START + timedelta(days=i))
        for tb, col in DERIVED_BY_DAY
        for i in range(DAYS)
    }


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, pd.DataFrame]:
    """Every table of every day after the one-process run of the cycle (no Dagster executor)."""
    root = tmp_path_factory.mktemp("reference")
    url = f"sqlite:///{root / 'cl.db'}"
    _world_store(url)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COMPOUND_LEARNING_ARTIFACTS_DIR", str(root / "artifacts"))
        ctx = make_context(url)
        steps.run_days(ctx, START, END)
    return _tables(url)


def test_any_split_of_the_accounts_gives_the_same_rows(tmp_path, monkeypatch):
    """Each sharded step, run as 3 shards by hand (prepare, every shard's work, combine), writes
    what the whole step writes; and the shards really split the accounts."""
    url = f"sqlite:///{tmp_path / 'cl.db'}"
    _world_store(url)
    monkeypatch.setenv("COMPOUND_LEARNING_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    ctx = make_context(url)
    steps.run_days(ctx, START, END)
    store = make_store(url)
    tables = {
        "learning_patterns": ["learning_patterns", "account_baselines"],
        "creative_recommendations": ["creative_recommendations"],
        "improvement_snapshots": ["compound_improvement_snapshots"],
    }
    by_name = {tb.name: (tb, col) for tb, col in DERIVED_BY_DAY}
    for name, step in steps.SHARDED_STEPS.items():
        whole = {n: table_digest(day_rows(store, *by_name[n], END)) for n in tables[name]}
        info = step.prepare(ctx, END)
        shards = step.shards(3)
        parts = [step.work(ctx, [END], shard, {END: info})[END] for shard in shards]
        accounts = [set(p["rows"]["account_id"]) if "rows" in p else set(p["candidates"]["account_id"]) for p in parts]
        assert sum(len(a) > 1 for a in accounts) >= 2, f"{name}: the shards did not split the accounts: {accounts}"
        step.combine(ctx, END, info, parts)
        again = {n: table_digest(day_rows(store, *by_name[n], END)) for n in tables[name]}
        assert again == whole, name
    # the global fits are units of their own, one per metric; an account shard reads only its rows
    units = steps.LEARNING_PATTERNS.shards(3)
    assert [u.global_metrics for u in units[:3]] == [("ctr",), ("cvr",), ("roas",)]
    snapshot = store.read_snapshot(END)
    assert len(steps.snapshot_cells(store, END, units[0])) == len(snapshot)
    parts = [steps.snapshot_cells(store, END, u) for u in units[3:]]
    for unit, part in zip(units[3:], parts, strict=True):
        assert 0 < len(part) < len(snapshot) and part["account_id"].map(unit.has).all()
    assert sum(len(part) for part in parts) == len(snapshot)


# the venv's scripts first: `dagster-celery worker start` runs the `celery` beside it from PATH
PATH = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"


def _create_instance(home: Path) -> None:
    """A persistent Dagster instance in ``home`` (the defaults), its tables created."""
    import dagster as dg

    (home / "dagster.yaml").touch()
    dg.DagsterInstance.from_config(str(home)).dispose()


def _cycle_in_a_child(url: str, home: Path, executor: str, extra_env: dict[str, str] | None = None):
    """``compound-learning cycle`` over the range, run by another process with the given executor."""
    _create_instance(home)
    env = {
        "PATH": PATH,
        "COMPOUND_LEARNING_DATABASE_URL": url,
        "COMPOUND_LEARNING_ARTIFACTS_DIR": str(home / "artifacts"),
        "COMPOUND_LEARNING_SHARDS": str(SHARDS),
        "COMPOUND_LEARNING_EXECUTOR": executor,
        "DAGSTER_HOME": str(home),
        **(extra_env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "compound_learning.cli", "cycle", "--start", str(START), "--end", str(END), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )


def _step_pids(home: Path) -> dict[str, int]:
    """The process each shard step of the last run ran in, from the instance's event log."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        run = instance.get_runs(limit=1)[0]
        records = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)
        return {r.step_key: r.dagster_event.pid for r in records if "_shard" in (r.step_key or "")}


def test_two_shards_on_the_multiprocess_executor_write_the_in_process_tables(tmp_path, reference):
    url = f"sqlite:///{tmp_path / 'cl.db'}"
    _world_store(url)
    out = _cycle_in_a_child(url, tmp_path, "multiprocess")
    assert out.returncode == 0 and '"SUCCESS"' in out.stdout, out.stdout + out.stderr
    pids = _step_pids(tmp_path)
    # learning has three global units (one per metric) and the account shards; the other two
    # sharded steps the account shards each
    units = sum(len(step.shards(SHARDS)) for step in steps.SHARDED_STEPS.values())
    assert len(pids) == units == 3 + 3 * SHARDS, pids
    assert len(set(pids.values())) == units, f"the shard steps should each run in a process of their own: {pids}"
    assert not table_differences(_tables(url), reference), table_differences(_tables(url), reference)


def _broker_answers() -> str | None:
    host, port = "127.0.0.1", 5672
    try:
        with socket.create_connection((host, port), timeout=2):
            return None
    except OSError as exc:
        return f"no Celery broker (RabbitMQ) at {host}:{port}: {exc}"


def test_two_celery_workers_write_the_in_process_tables(tmp_path, reference):
    """Two Celery workers (one task at a time each) share the steps of one run."""
    problem = _broker_answers()
    if problem:
        if REQUIRE_RABBITMQ:
            pytest.fail(problem + " (COMPOUND_LEARNING_REQUIRE_RABBITMQ=1: the Celery test is mandatory)")
        pytest.skip(problem)
    url = f"sqlite:///{tmp_path / 'cl.db'}"
    _world_store(url)
    queue = f"cl_test_{os.getpid()}"  # a queue of our own: no other worker takes these steps
    config = tmp_path / "celery.yaml"
    config.write_text(f"execution:\n  config:\n    broker: '{BROKER}'\n")
    worker_env = {
        "PATH": PATH,
        "COMPOUND_LEARNING_DATABASE_URL": url,
        "COMPOUND_LEARNING_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
        "COMPOUND_LEARNING_SHARDS": str(SHARDS),
        "COMPOUND_LEARNING_EXECUTOR": "celery",
        "COMPOUND_LEARNING_CELERY_BROKER": BROKER,
        "COMPOUND_LEARNING_CELERY_QUEUE": queue,
        "DAGSTER_HOME": str(tmp_path),
    }
    _create_instance(tmp_path)  # before the workers: they would race to create its tables
    names = [f"w{i}_{os.getpid()}" for i in (1, 2)]  # a live worker elsewhere may hold "w1"
    logs = {name: tmp_path / f"{name}.log" for name in names}
    with _celery_workers(config, queue, worker_env, logs) as workers:
        _wait_ready(workers, list(logs.values()))
        out = _cycle_in_a_child(url, tmp_path, "celery", worker_env)
        told = "".join(log.read_text() for log in logs.values())
        assert out.returncode == 0 and '"SUCCESS"' in out.stdout, out.stdout + out.stderr + told[-4000:]
        hosts = _celery_hosts(tmp_path)
        assert hosts == set(names), f"both workers should have run steps: {hosts}"
        assert not table_differences(_tables(url), reference), table_differences(_tables(url), reference)


@contextlib.contextmanager
def _celery_workers(config: Path, queue: str, env: dict[str, str], logs: dict[str, Path]):
    """``dagster-celery worker start`` once per name, each one task at a time; on exit each
    worker's whole process group is stopped (the command runs ``celery`` as its child, which
    forks the pool: terminating the command alone would leave them running)."""
    celery = Path(sys.executable).with_name("dagster-celery")
    with contextlib.ExitStack() as stack:
        workers = []
        for name, path in logs.items():
            log = stack.enter_context(path.open("w"))
            args = ["worker", "start", "-A", "dagster_celery.app", "-y", str(config), "-q", queue, "-n", name]
            extra = ["--", "--concurrency", "1", "--without-mingle", "--without-gossip"]
            workers.append(
                subprocess.Popen(
                    [str(celery), *args, "-l", "INFO", *extra],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        try:
            yield workers
        finally:
            for w in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(w.pid, signal.SIGTERM)
            for w in workers:
                try:
                    w.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(w.pid, signal.SIGKILL)
                    w.wait()


def _wait_ready(workers: list[subprocess.Popen], logs: list[Path], timeout: float = 120) -> None:
    """Until every worker has said "ready" (a run sent to no worker would wait for ever)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        texts = [log.read_text() for log in logs]
        for worker, text in zip(workers, texts, strict=True):
            assert worker.poll() is None, f"a Celery worker exited ({worker.returncode}):\n{text[-3000:]}"
        if all(" ready." in text for text in texts):
            return
        time.sleep(0.5)
    raise AssertionError("the Celery workers did not get ready:\n" + "\n".join(log.read_text()[-2000:] for log in logs))


def _celery_hosts(home: Path) -> set[str]:
    """The workers that ran steps of the last run (the engine event each worker logs)."""
    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        run = instance.get_runs(limit=1)[0]
        records = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
        names = set()
        for r in records:
            data = r.dagster_event.engine_event_data if r.dagster_event else None
            for entry in getattr(data, "metadata", {}).items() if data else []:
                if entry[0] == "Celery worker":
                    names.add(str(entry[1].value).split("@")[0])
        return names
