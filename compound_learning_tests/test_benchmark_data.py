"""The scale benchmarks' own data (``benchmarks.scale_data``): what they measure depends on it."""

from __future__ import annotations

from datetime import date, timedelta

from compound_learning.benchmarks.scale_data import ATTRIBUTES, CREATIVES_PER_ACCOUNT, day_frame

DAY = date(2026, 1, 1)


def test_without_a_lifetime_the_same_creatives_run_every_day():
    a, b = day_frame(2_000, DAY), day_frame(2_000, DAY + timedelta(days=40))
    assert len(a) == len(b) == 2_000 and set(a["creative_id"]) == set(b["creative_id"])
    assert a[list(ATTRIBUTES)].equals(b[list(ATTRIBUTES)])
    assert a.groupby("account_id").size().eq(CREATIVES_PER_ACCOUNT).all()


def test_with_a_lifetime_creatives_turn_over_at_a_steady_volume():
    """Each slot runs a creative for ``lifetime_days`` and then a new one: the daily volume stays
    the same, a twentieth of the creatives end each day, the creatives ever seen keep growing, and
    a creative keeps its attributes on every day it runs."""
    days = [day_frame(2_000, DAY + timedelta(days=i), lifetime_days=20) for i in range(60)]
    assert all(len(d) == 2_000 and d["creative_id"].is_unique for d in days)
    ended = len(set(days[0]["creative_id"]) - set(days[1]["creative_id"]))
    assert ended == 2_000 // 20
    seen = set().union(*(set(d["creative_id"]) for d in days))
    assert len(seen) == 2_000 + 59 * ended
    first = {}
    for d in days:
        for row in d[["creative_id", *ATTRIBUTES]].itertuples(index=False):
            assert first.setdefault(row[0], tuple(row[1:])) == tuple(row[1:])
    # new creatives draw their attributes afresh: every value of every dimension appears
    assert all(set(days[-1][dim]) == set(values) for dim, values in ATTRIBUTES.items())


def test_the_fit_reuse_benchmark_reuses_the_idle_accounts_fits(capsys, env, tmp_path):
    """``benchmarks.fit_reuse`` on a tiny size: its idle accounts are the ones whose fits are
    reused, and it reports both arms' seconds (no timing is asserted)."""
    import json

    from compound_learning.benchmarks import fit_reuse

    env(f"sqlite:///{tmp_path / 'unused.db'}")  # the benchmark makes its own database
    assert fit_reuse.main(["--rows", "2000", "--days", "2", "--repeats", "1", "--idle-share", "0.4"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["accounts"] == 10 and out["idle_accounts"] == 4 and out["account_fits_reused"] == 4
    assert len(out["seconds"]["bare"]) == len(out["seconds"]["reuse"]) == 1
