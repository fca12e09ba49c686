"""The one home of configuration: every setting's default, the shared vocabulary, and the
learning knobs. Pure Python (no Dagster, no database, no numpy), so every layer imports it.

Environment variables (documented in the README's table, in the same order):

| variable | default | meaning |
| --- | --- | --- |
| ``COMPOUND_LEARNING_STATE_DIR`` | ``./.state`` | local state: SQLite file, artifacts |
| ``COMPOUND_LEARNING_DATABASE_URL`` | ``sqlite:///<state>/compound_learning.db`` | the store |
| ``COMPOUND_LEARNING_ARTIFACTS_DIR`` | ``<state>/artifacts`` | model files (skops) |
| ``COMPOUND_LEARNING_PARTITION_START`` | ``2024-01-01`` | first daily partition |
| ``COMPOUND_LEARNING_TIMEZONE`` | ``UTC`` | timezone of partitions and the 03:00 schedule |
| ``COMPOUND_LEARNING_HALF_LIFE_DAYS`` | ``0`` (no forgetting) | exponential forgetting of evidence |
| ``COMPOUND_LEARNING_MIN_NEW_CLICKS`` | ``5000`` | new clicks needed before the CTR model retrains |
| ``COMPOUND_LEARNING_EXPLORE_SHARE`` | ``0.2`` | share of recommended launches drawn by Thompson sampling |
| ``COMPOUND_LEARNING_SPEND_FLOOR_SHARE`` | ``0.05`` | share of the spend split spread evenly over the live creatives |
| ``COMPOUND_LEARNING_DAGSTER_URL`` | empty (in-process) | a running Dagster webserver to launch cycles through |
| ``COMPOUND_LEARNING_API_KEYS`` | empty (loopback only) | ``key=acct,acct;admin=*`` |
| ``COMPOUND_LEARNING_API_KEYS_FILE`` | empty | a JSON file ``{"key": ["acct"], "admin": "*"}`` |
| ``COMPOUND_LEARNING_NEW_DATA_SENSOR_SECONDS`` | ``60`` | how often the new-data sensor looks for ingested batches |
| ``COMPOUND_LEARNING_GAP_FILL_SENSOR_SECONDS`` | ``3600`` | how often the gap filler looks for incomplete days |
| ``COMPOUND_LEARNING_SHARDS`` | ``1`` | per-account work split into this many Dagster steps |
| ``COMPOUND_LEARNING_EXECUTOR`` | ``in_process`` | ``in_process``, ``multiprocess`` or ``celery`` |
| ``COMPOUND_LEARNING_CELERY_BROKER`` | ``pyamqp://guest@127.0.0.1:5672//`` | the Celery broker |
| ``COMPOUND_LEARNING_CELERY_QUEUE`` | ``dagster`` | the Celery queue of the steps |
| ``COMPOUND_LEARNING_ROLLUP_IN_DATABASE`` | ``1`` | on PostgreSQL the day's roll-up runs as SQL (``0``: pandas) |
| ``DAGSTER_HOME`` | empty (ephemeral instance) | the Dagster instance folder (``dagster.yaml``) |
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

# -- the shared vocabulary ---------------------------------------------------------------------
GLOBAL = "*"
"""The scope of a pattern, weight or baseline learned over every account (not one account)."""
METRICS = ("ctr", "cvr", "roas")
"""Clicks per impression, conversions per click, revenue per spend."""
STATES = ("insufficient_data", "learning", "significant", "contradicted")
"""A pattern's states, in the order a claim moves through them."""
MIN_ACCOUNTS_FOR_SHARED = 5
"""The k of k-anonymity: pooled figures are published, and shown to an account-scoped API key,
only when at least this many distinct accounts stand behind them."""
MAX_TOP2_SHARE = 0.8
"""A cross-account insight is withheld when two accounts carry this share of its evidence."""
API_PORT = 8003
DEFAULT_MIN_CONFIDENCE = 0.0
"""The CLI's and the API's default ``min_confidence`` for pattern lists (0: every pattern)."""

# -- environment-backed defaults (each appears only here) ----------------------------------------
DEFAULT_STATE_DIR = ".state"
DEFAULT_PARTITION_START = "2024-01-01"
DEFAULT_TIMEZONE = "UTC"
DEFAULT_HALF_LIFE_DAYS = 0.0
DEFAULT_COLLAPSE_AFTER_DAYS = 28
DEFAULT_MIN_NEW_CLICKS = 5000
DEFAULT_EXPLORE_SHARE = 0.2
# The spend split's even floor: the probability of being best (Thompson) already spends on the
# creatives whose worth is uncertain; the floor only keeps a trickle on those known to be poor.
# 0.2 before 2026-12-06: 0.05 gained 3.0 points of the oracle's gain over 10 seeds of the closed loop (BENCHMARKS.md).
DEFAULT_SPEND_FLOOR_SHARE = 0.05
DEFAULT_NEW_DATA_SENSOR_SECONDS = 60
DEFAULT_GAP_FILL_SENSOR_SECONDS = 3600
DEFAULT_SHARDS = 1
EXECUTORS = ("in_process", "multiprocess", "celery")
"""How the daily job runs its steps: one process (the default: the steps are sequential by
nature), one process per step on this machine, or Celery workers on any number of machines."""
DEFAULT_EXECUTOR = "in_process"
DEFAULT_CELERY_BROKER = "pyamqp://guest@127.0.0.1:5672//"
DEFAULT_CELERY_QUEUE = "dagster"  # dagster-celery's own default
MAX_SHARDS = 256


@dataclass
class PatternSettings:
    """How effects become claims (see ``core.patterns``)."""

    min_creatives: int = 5  # the original design's minimum support
    min_interaction_creatives: int = 10  # creatives carrying both values of a pair
    alpha: float = 0.01  # BH level for `significant`; strict because the same claims are re-tested daily
    persistence: int = 3
    per_account: bool = True
    interactions: bool = True
    global_inference: str = "creative"  # or "cluster": see effects.fit_effects
    # Least share of the cycle's Benjamini-Hochberg error budget held by the global main effects
    # (weighted BH): a few hundred primary tests are not swamped by thousands of interactions
    # and per-account patterns, and the false discovery rate of the whole family stays at alpha.
    primary_share: float = 0.25


@dataclass(frozen=True)
class DriftSettings:
    """The drift test of the learning step and the exploration burst that answers a drop
    (``core.drift``)."""

    window_days: int = 14  # the recent evidence tested against the older; 0 turns the test off
    z_threshold: float = 4.0  # one-sided; tested every day, so a false alarm has to be rare
    burst_days: int = 7  # how long the launches explore after a drop
    # A burst continues past ``burst_days`` while its drop stays flagged and nothing has been
    # learned afresh since it began (the drop is unexplained), up to this many days: a week of
    # half-even launches gives each value of a dimension about 8 new creatives over 20 accounts,
    # too few in one seed of 10 of the change world to find the changed hook at p < 0.0001, which
    # then stayed at 45% of the oracle's gain for 40 days after the change (BENCHMARKS.md).
    burst_max_days: int = 28
    burst_explore_share: float = 0.5  # the share of launch picks, and of spend spread evenly, during a burst
    # What the evidence before a burst's first day still counts afterwards (a power prior on the
    # old evidence). 1 keeps it all: relearning (below) takes a changed dimension from the new
    # evidence alone, and the dimensions that did not change keep what they learned. Before
    # relearning it was 0.3, so that the burst's evidence could outweigh the old within days; that
    # discounted the unchanged dimensions as much.
    burst_evidence_weight: float = 1.0
    # From ``relearn_after_days`` after a burst's first day until the next burst, every metric is
    # also fitted on the evidence since the burst alone; a dimension whose effects there differ
    # from the pooled evidence's (chi-square at ``relearn_p_value``) is learned from that evidence
    # alone, the others keep all of theirs. 0 turns it off. A found dimension is held until the
    # next burst, so a false finding costs days of worse launches: at 1e-3 the change world had
    # 4 such in 10 seeds (one moved a seed's spend to the worse format for 9 days), at 1e-4
    # none, with the changed hook found 0-3 days later.
    relearn_p_value: float = 1e-4
    relearn_after_days: int = 3


@dataclass
class CycleSettings:
    """Tunable knobs of the learning cycle. Build from the environment with
    :meth:`from_settings`; the defaults of the environment-backed fields are the same constants."""

    patterns: PatternSettings = field(default_factory=PatternSettings)
    drift: DriftSettings = field(default_factory=DriftSettings)
    half_life_days: float = DEFAULT_HALF_LIFE_DAYS
    min_accounts_for_insight: int = MIN_ACCOUNTS_FOR_SHARED
    max_top2_share: float = MAX_TOP2_SHARE
    model_train_days: int = 28
    model_holdout_days: int = 7
    min_new_clicks: int = DEFAULT_MIN_NEW_CLICKS
    # ... and at least this share of the clicks the champion was trained on: a large account
    # passes any fixed count every day (the demo trained 53 models in 60 days), while a quarter
    # more evidence is what can change a model
    min_new_click_share: float = 0.25
    max_model_age_days: int = 7
    # Distinct inputs (attribute combination x account x day of week x age) a model trains on at
    # most: a uniform sample above it (core.ctr_model.training_sample). An agency's 100k rows a
    # day give 2.6M in a 28-day window: 73 s of training for both families, about 5 s on the sample.
    model_max_train_inputs: int = 300_000
    calibration_tolerance: float = 0.05
    baseline_days: int = 7
    explore_share: float = DEFAULT_EXPLORE_SHARE
    recommendations_per_account: int = 10
    spend_floor_share: float = DEFAULT_SPEND_FLOOR_SHARE  # of tomorrow's spend split evenly over the live creatives
    recommendation_seed: int = 0  # with the day and the account, fixes the Thompson draws
    # Cumulative snapshots are caches: keep the last month daily, older ones weekly (Sundays),
    # so a backfill of an old day rolls forward at most a week, and storage stays bounded.
    snapshot_daily_retention_days: int = 35
    # A creative not seen for this many days is kept as one row with its exposures adjusted for
    # day of week and age (``core.stats.collapse_cells``) when a full snapshot is written: the
    # knowledge grows with the creatives ever run, not with their cells. 0: never.
    collapse_after_days: int = DEFAULT_COLLAPSE_AFTER_DAYS
    # On PostgreSQL the day's validation summary, daily statistics and the roll-forward of the
    # cumulative cells run inside the database (storage.rollup); off, the same in pandas.
    rollup_in_database: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> CycleSettings:
        return cls(
            half_life_days=settings.half_life_days,
            collapse_after_days=settings.collapse_after_days,
            min_new_clicks=settings.min_new_clicks,
            explore_share=settings.explore_share,
            spend_floor_share=settings.spend_floor_share,
            rollup_in_database=settings.rollup_in_database,
        )


@dataclass(frozen=True)
class Settings:
    """Resolved configuration. Build with :func:`load_settings` (reads the environment)."""

    state_dir: Path
    database_url: str
    artifacts_dir: Path
    partition_start: date
    timezone: str = DEFAULT_TIMEZONE
    half_life_days: float = DEFAULT_HALF_LIFE_DAYS
    collapse_after_days: int = DEFAULT_COLLAPSE_AFTER_DAYS
    min_new_clicks: int = DEFAULT_MIN_NEW_CLICKS
    explore_share: float = DEFAULT_EXPLORE_SHARE
    spend_floor_share: float = DEFAULT_SPEND_FLOOR_SHARE
    dagster_url: str = ""
    dagster_home: Path | None = None
    api_keys: str = ""
    api_keys_file: str = ""
    new_data_sensor_seconds: int = DEFAULT_NEW_DATA_SENSOR_SECONDS
    gap_fill_sensor_seconds: int = DEFAULT_GAP_FILL_SENSOR_SECONDS
    shards: int = DEFAULT_SHARDS
    executor: str = DEFAULT_EXECUTOR
    celery_broker: str = DEFAULT_CELERY_BROKER
    celery_queue: str = DEFAULT_CELERY_QUEUE
    rollup_in_database: bool = True


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def _number(name: str, default, kind):
    text = _env(name, str(default))
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{name} must be a{'n integer' if kind is int else ' number'}, got {text!r}") from None


def _share(name: str, default: float) -> float:
    """A share (0..1) from the environment."""
    value = _number(name, default, float)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be within 0..1, got {value}")
    return value


def load_settings() -> Settings:
    """Read the settings from the environment; raises ``ValueError`` naming a bad variable."""
    state_dir = Path(_env("COMPOUND_LEARNING_STATE_DIR", DEFAULT_STATE_DIR)).resolve()
    database_url = _env("COMPOUND_LEARNING_DATABASE_URL", f"sqlite:///{state_dir / 'compound_learning.db'}")
    artifacts_dir = Path(_env("COMPOUND_LEARNING_ARTIFACTS_DIR", str(state_dir / "artifacts")))
    start_text = _env("COMPOUND_LEARNING_PARTITION_START", DEFAULT_PARTITION_START)
    try:
        partition_start = date.fromisoformat(start_text)
    except ValueError as exc:
        raise ValueError(f"COMPOUND_LEARNING_PARTITION_START must be YYYY-MM-DD, got {start_text!r}") from exc
    half_life = _number("COMPOUND_LEARNING_HALF_LIFE_DAYS", DEFAULT_HALF_LIFE_DAYS, float)
    if half_life < 0:
        raise ValueError("COMPOUND_LEARNING_HALF_LIFE_DAYS must be >= 0 (0 = no forgetting)")
    collapse_after = _number("COMPOUND_LEARNING_COLLAPSE_AFTER_DAYS", DEFAULT_COLLAPSE_AFTER_DAYS, int)
    if collapse_after < 0:
        raise ValueError("COMPOUND_LEARNING_COLLAPSE_AFTER_DAYS must be >= 0 (0 = never collapse)")
    min_new_clicks = _number("COMPOUND_LEARNING_MIN_NEW_CLICKS", DEFAULT_MIN_NEW_CLICKS, int)
    if min_new_clicks < 0:
        raise ValueError("COMPOUND_LEARNING_MIN_NEW_CLICKS must be >= 0")
    explore = _share("COMPOUND_LEARNING_EXPLORE_SHARE", DEFAULT_EXPLORE_SHARE)
    floor = _share("COMPOUND_LEARNING_SPEND_FLOOR_SHARE", DEFAULT_SPEND_FLOOR_SHARE)
    intervals = {
        name: _number(f"COMPOUND_LEARNING_{name.upper()}", default, int)
        for name, default in (
            ("new_data_sensor_seconds", DEFAULT_NEW_DATA_SENSOR_SECONDS),
            ("gap_fill_sensor_seconds", DEFAULT_GAP_FILL_SENSOR_SECONDS),
        )
    }
    for name, value in intervals.items():
        if value < 1:
            raise ValueError(f"COMPOUND_LEARNING_{name.upper()} must be >= 1 second, got {value}")
    shards = _number("COMPOUND_LEARNING_SHARDS", DEFAULT_SHARDS, int)
    if not 1 <= shards <= MAX_SHARDS:
        raise ValueError(f"COMPOUND_LEARNING_SHARDS must be within 1..{MAX_SHARDS}, got {shards}")
    executor = _env("COMPOUND_LEARNING_EXECUTOR", DEFAULT_EXECUTOR)
    if executor not in EXECUTORS:
        raise ValueError(f"COMPOUND_LEARNING_EXECUTOR must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    rollup = _env("COMPOUND_LEARNING_ROLLUP_IN_DATABASE", "1")
    if rollup not in ("0", "1"):
        raise ValueError(f"COMPOUND_LEARNING_ROLLUP_IN_DATABASE must be 0 or 1, got {rollup!r}")
    home = os.environ.get("DAGSTER_HOME", "").strip()
    return Settings(
        state_dir=state_dir,
        database_url=database_url,
        artifacts_dir=artifacts_dir,
        partition_start=partition_start,
        timezone=_env("COMPOUND_LEARNING_TIMEZONE", DEFAULT_TIMEZONE),
        half_life_days=half_life,
        collapse_after_days=collapse_after,
        min_new_clicks=min_new_clicks,
        explore_share=explore,
        spend_floor_share=floor,
        dagster_url=_env("COMPOUND_LEARNING_DAGSTER_URL", ""),
        dagster_home=Path(home).resolve() if home else None,
        api_keys=_env("COMPOUND_LEARNING_API_KEYS", ""),
        api_keys_file=_env("COMPOUND_LEARNING_API_KEYS_FILE", ""),
        shards=shards,
        executor=executor,
        celery_broker=_env("COMPOUND_LEARNING_CELERY_BROKER", DEFAULT_CELERY_BROKER),
        celery_queue=_env("COMPOUND_LEARNING_CELERY_QUEUE", DEFAULT_CELERY_QUEUE),
        rollup_in_database=rollup == "1",
        **intervals,
    )
