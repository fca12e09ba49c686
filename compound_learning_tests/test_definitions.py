"""The code location loads, validates and has the contract's names."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from compound_learning.definitions import defs

ROOT = Path(__file__).resolve().parents[1]
CONTRACT_ASSETS = {
    "compound_performance_data",
    "performance_data",
    "daily_stats",
    "learning_patterns",
    "knowledge_graph",
    "creative_dna",
    "cross_account_insights",
    "ctr_model",
    "improvement_snapshots",
}


def test_definitions_have_the_contract_assets_job_schedule_and_sensors():
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert keys >= CONTRACT_ASSETS
    job = defs.resolve_job_def("daily_learning_cycle")
    assert job.partitions_def is not None
    schedule = defs.resolve_schedule_def("daily_learning_schedule")
    assert schedule.cron_schedule == "0 3 * * *"
    sensors = {s.name for s in defs.sensors}
    assert {"new_data_sensor", "missing_days_sensor", "cycle_success_logger", "cycle_failure_logger"} <= sensors


def test_every_asset_has_description_group_owner_and_kinds():
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description, f"{key} has no description"
        assert node.group_name != "default", f"{key} has no group"
        assert node.owners, f"{key} has no owner"
        assert node.kinds, f"{key} has no kinds"


def test_dagster_definitions_validate_cli(tmp_path):
    run = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", str(ROOT / "workspace.yaml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"DAGSTER_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Validation successful" in run.stdout + run.stderr


def test_dagster_yaml_enables_run_retries():
    import yaml

    config = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    assert config["run_retries"]["enabled"] is True
    pg = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
    assert pg["storage"]["postgres"]["postgres_db"]["scheme"] == "postgresql+psycopg2"
    assert pg["run_retries"]["enabled"] is True
