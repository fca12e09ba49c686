"""The simulator: reproducible, honest truth, the requested structure."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd

from compound_learning_tests.conftest import small_world


def test_same_seed_same_files_and_cli(tmp_path):
    a, ta = small_world(seed=5)
    b, tb = small_world(seed=5)
    pd.testing.assert_frame_equal(a, b)
    assert ta == tb
    c, _ = small_world(seed=6)
    assert not a.equals(c)
    outs = []
    for i in range(2):
        out, truth = tmp_path / f"d{i}.csv", tmp_path / f"t{i}.json"
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "compound_learning.cli",
                "simulate",
                "--days",
                "5",
                "--accounts",
                "3",
                "--seed",
                "9",
                "--out",
                str(out),
                "--truth",
                str(truth),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert run.returncode == 0, run.stderr
        outs.append((out.read_bytes(), truth.read_bytes()))
    assert outs[0] == outs[1]


def test_world_structure_and_truth(world):
    data, truth = world
    assert {"date", "account_id", "creative_id", "impressions", "clicks", "conversions", "spend", "revenue"} <= set(
        data.columns
    )
    assert (data["clicks"] <= data["impressions"]).all() and (data["conversions"] <= data["clicks"]).all()
    assert not data.duplicated(["account_id", "creative_id", "date"]).any()
    effects = pd.DataFrame(truth["effects"])
    assert set(effects["metric"]) == {"ctr", "cvr", "roas"}
    # Lifts are centred within a dimension (geometric mean = 0 on the log scale) for the design.
    sums = effects.groupby(["dimension", "metric"])["structural_log_effect"].sum()
    assert np.allclose(sums, 0.0, atol=1e-9)
    assert "cta" in truth["null_dimensions"]
    # cta co-occurs with hook_type in the library (the trap for marginal analyses)
    creatives = data.drop_duplicates("creative_id")
    share = (creatives[creatives["hook_type"] == "offer"]["cta"] == "shop_now").mean()
    assert share > 0.5
    assert truth["interactions"]


def test_null_world_has_no_effects():
    _, truth = small_world(null=True)
    assert all(abs(e["structural_log_effect"]) == 0 for e in truth["effects"])
    assert all(abs(i["log_effect"]) == 0 for i in truth["interactions"]) or not truth["interactions"]
    assert not any(a["learning"] for a in truth["accounts"])
    json.dumps(truth)
