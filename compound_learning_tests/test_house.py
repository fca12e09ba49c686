"""The house rules: one cycle path that matches the lineage graph, one launch path that leaves
the environment alone, one home for defaults, no SQL outside storage, and a serving cache that
verifies a model once per (version, sha256)."""

from __future__ import annotations

import ast
import os
import re
import time
from datetime import date, timedelta
from pathlib import Path

import dagster as dg
import pytest

from compound_learning import config, steps
from compound_learning.definitions import defs
from compound_learning.ingestion import ingest_frame
from compound_learning.orchestration import launch
from compound_learning.serving import ModelCache, predict_creative_ctr
from compound_learning_tests.conftest import START, learned_context, small_world

PACKAGE = Path(__file__).resolve().parents[1] / "compound_learning"


def test_cycle_steps_are_the_job_assets_in_lineage_order():
    job = defs.resolve_job_def("daily_learning_cycle")
    graph = defs.resolve_asset_graph()
    assets = {k.to_user_string() for k in job.asset_layer.selected_asset_keys}
    assert assets == set(steps.CYCLE_STEPS)
    order = list(steps.CYCLE_STEPS)
    for name in order:
        for parent in graph.get(dg.AssetKey(name)).parent_keys:
            if parent.to_user_string() in assets:
                assert order.index(parent.to_user_string()) < order.index(name), f"{parent} must run before {name}"


def test_unknown_step_is_named():
    ctx = steps.CycleContext.__new__(steps.CycleContext)
    with pytest.raises(KeyError, match="no cycle step 'nope'"):
        steps.run_step(ctx, "nope", START)
    with pytest.raises(KeyError, match="nope"):
        steps.run_day(ctx, START, only=["nope"])


def test_one_default_per_setting(monkeypatch):
    for name in [n for n in os.environ if n.startswith("COMPOUND_LEARNING_")]:
        monkeypatch.delenv(name)
    settings = config.load_settings()
    cycle = config.CycleSettings()
    from_env = config.CycleSettings.from_settings(settings)
    # the environment-backed knobs have the same default whichever way they are built
    for f in ("half_life_days", "collapse_after_days", "min_new_clicks", "explore_share", "spend_floor_share"):
        assert getattr(cycle, f) == getattr(from_env, f) == getattr(settings, f)
    assert cycle.min_new_clicks == config.DEFAULT_MIN_NEW_CLICKS == 5000
    assert cycle.min_accounts_for_insight == config.MIN_ACCOUNTS_FOR_SHARED
    # every environment variable the code reads is in the README's table
    readme = (PACKAGE.parent / "README.md").read_text()
    read = {
        n.value
        for n in ast.walk(ast.parse((PACKAGE / "config.py").read_text()))
        if isinstance(n, ast.Constant)
        and isinstance(n.value, str)
        and re.fullmatch(r"COMPOUND_LEARNING_[A-Z_]+", n.value)
    }
    assert read, "config.py reads no variable?"
    for var in read:
        assert f"`{var}`" in readme, f"{var} is not documented in the README"


def test_bad_setting_is_named(monkeypatch):
    monkeypatch.setenv("COMPOUND_LEARNING_MIN_NEW_CLICKS", "many")
    with pytest.raises(ValueError, match="COMPOUND_LEARNING_MIN_NEW_CLICKS must be an integer"):
        config.load_settings()
    monkeypatch.setenv("COMPOUND_LEARNING_MIN_NEW_CLICKS", "10")
    monkeypatch.setenv("COMPOUND_LEARNING_EXPLORE_SHARE", "1.5")
    with pytest.raises(ValueError, match=r"EXPLORE_SHARE must be within 0\.\.1"):
        config.load_settings()
    monkeypatch.setenv("COMPOUND_LEARNING_EXPLORE_SHARE", "0.2")
    monkeypatch.setenv("COMPOUND_LEARNING_SPEND_FLOOR_SHARE", "-0.1")
    with pytest.raises(ValueError, match=r"SPEND_FLOOR_SHARE must be within 0\.\.1, got -0\.1"):
        config.load_settings()
    # a valid value reaches the cycle's spend split
    monkeypatch.setenv("COMPOUND_LEARNING_SPEND_FLOOR_SHARE", "0.1")
    assert config.CycleSettings.from_settings(config.load_settings()).spend_floor_share == 0.1
    monkeypatch.setenv("COMPOUND_LEARNING_COLLAPSE_AFTER_DAYS", "-3")
    with pytest.raises(ValueError, match=r"COLLAPSE_AFTER_DAYS must be >= 0 \(0 = never collapse\)"):
        config.load_settings()
    monkeypatch.setenv("COMPOUND_LEARNING_COLLAPSE_AFTER_DAYS", "0")
    assert config.CycleSettings.from_settings(config.load_settings()).collapse_after_days == 0


def test_no_sql_outside_storage():
    """Only ``storage/`` builds statements: no module elsewhere imports SQLAlchemy."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "storage" in path.relative_to(PACKAGE).parts:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            if any(n.split(".")[0] == "sqlalchemy" for n in names):
                offenders.append(str(path.relative_to(PACKAGE)))
    assert not offenders, f"SQLAlchemy imported outside storage/: {offenders}"


def test_core_imports_neither_dagster_nor_the_database():
    for path in (PACKAGE / "core").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for n in names:
                    assert not n.startswith(
                        ("dagster", "sqlalchemy", "compound_learning.storage", "compound_learning.orchestration")
                    ), f"{path.name} imports {n}"


def test_launch_validates_and_leaves_the_environment_alone(monkeypatch, tmp_path):
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "dagster.yaml").write_text("")  # a dagster.yaml in the folder is not a reason to set anything
    before = dict(os.environ)
    instance = launch.dagster_instance(config.load_settings())
    assert instance.is_ephemeral
    assert dict(os.environ) == before
    with pytest.raises(launch.LaunchError, match="before the start"):
        launch.validate_range(date(2024, 1, 5), date(2024, 1, 1))
    with pytest.raises(launch.LaunchError, match="not a complete daily partition"):
        launch.validate_range(date(2019, 1, 1), date(2019, 1, 1))
    assert launch.run_tags(START, START) == {"dagster/partition": "2024-01-01"}
    assert set(launch.run_tags(START, START + timedelta(days=2))) == {
        "dagster/asset_partition_range_start",
        "dagster/asset_partition_range_end",
    }


def test_launch_uses_dagster_home_when_set(monkeypatch, tmp_path):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    instance = launch.dagster_instance(config.load_settings())
    assert not instance.is_ephemeral and Path(instance.root_directory).resolve() == tmp_path.resolve()


def test_launch_goes_through_the_runner_in_the_background(monkeypatch, sqlite_url, env):
    env(sqlite_url)
    calls = []
    out = launch.launch(START, START + timedelta(days=1), runner=lambda s, e, **kw: calls.append((s, e, kw)))
    assert out["mode"] == "in_process" and len(out["run_ids"]) == 1
    for _ in range(200):
        if calls:
            break
        time.sleep(0.01)
    assert calls and calls[0][2]["run_id"] == out["run_ids"][0]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    with learned_context(tmp_path_factory, "served", calibration_tolerance=0.3, min_new_clicks=0) as ctx:
        data, _ = small_world(days=16, accounts=4, creatives=20, seed=5)
        ingest_frame(data, store=ctx.store, settings=ctx.settings, today=date(2025, 1, 1))
        steps.run_days(ctx, START, START + timedelta(days=15), only=["daily_stats", "ctr_model"])
        yield ctx


def test_serving_cache_verifies_once_per_version(served):
    from compound_learning import model_registry as mr

    store = served.store
    champ = mr.champion(store)
    assert champ is not None
    cache = ModelCache()
    creative = {"hook_type": "question"}
    first = predict_creative_ctr(store, "acct_001", creative, cache)
    second = predict_creative_ctr(store, "acct_001", creative, cache)
    assert cache.loads == 1 and first == second and first["model_version"] == int(champ["version"])
    # The in-memory model is the verified one: altering the file later changes nothing served.
    path = Path(champ["artifact_path"])
    original = path.read_bytes()
    path.write_bytes(original + b"x")
    try:
        assert predict_creative_ctr(store, "acct_001", creative, cache) == first and cache.loads == 1
        # A fresh process (an empty cache) refuses the altered file and says so.
        fresh = predict_creative_ctr(store, "acct_001", creative, ModelCache())
        assert fresh["model_version"] != first["model_version"]
        assert any("altered" in w for w in fresh["warnings"])
    finally:
        path.write_bytes(original)
    # A new champion is another key: loaded (and verified) on the next request.
    newer = mr.train_ctr_model(served, START + timedelta(days=15), force=True)["version"]
    mr.promote(store, newer, "test")
    assert predict_creative_ctr(store, "acct_001", creative, cache)["model_version"] == newer
    assert cache.loads == 2


def test_query_commands_refuse_a_store_that_does_not_exist(tmp_path):
    """Run from another folder, a query says where it looked instead of creating an empty store."""
    from compound_learning_tests.conftest import run_cli

    missing = tmp_path / "elsewhere" / "compound_learning.db"
    run = run_cli(f"sqlite:///{missing}", "patterns")
    assert run.returncode == 2 and f"no store at {missing}" in run.stderr
    assert not missing.exists()
