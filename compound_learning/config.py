"""Configuration read from environment variables, each with a documented default.

| variable | default | meaning |
| --- | --- | --- |
| ``COMPOUND_LEARNING_STATE_DIR`` | ``./.state`` | local state: SQLite file, artifacts |
| ``COMPOUND_LEARNING_DATABASE_URL`` | ``sqlite:///<state>/compound_learning.db`` | the store |
| ``COMPOUND_LEARNING_ARTIFACTS_DIR`` | ``<state>/artifacts`` | model files (skops) |
| ``COMPOUND_LEARNING_PARTITION_START`` | ``2024-01-01`` | first daily partition |
| ``COMPOUND_LEARNING_TIMEZONE`` | ``UTC`` | timezone of partitions and the 03:00 schedule |
| ``COMPOUND_LEARNING_HALF_LIFE_DAYS`` | ``0`` (no forgetting) | exponential forgetting of evidence |
| ``COMPOUND_LEARNING_MIN_NEW_CLICKS`` | ``5000`` | new clicks needed before the CTR model retrains |
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import date
from pathlib import Path


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


@dataclass(frozen=True)
class Settings:
    """Resolved configuration. Build with :func:`load_settings` (reads the environment)."""

    state_dir: Path
    database_url: str
    artifacts_dir: Path
    partition_start: date
    timezone: str
    half_life_days: float = 0.0
    min_new_clicks: int = 5000


def load_settings() -> Settings:
    """Read the settings from the environment; raises ``ValueError`` naming a bad variable."""
    state_dir = Path(_env("COMPOUND_LEARNING_STATE_DIR", ".state")).resolve()
    database_url = _env(
        "COMPOUND_LEARNING_DATABASE_URL", f"sqlite:///{state_dir / 'compound_learning.db'}"
    )
    artifacts_dir = Path(_env("COMPOUND_LEARNING_ARTIFACTS_DIR", str(state_dir / "artifacts")))
    start_text = _env("COMPOUND_LEARNING_PARTITION_START", "2024-01-01")
    try:
        partition_start = date.fromisoformat(start_text)
    except ValueError as exc:
        raise ValueError(
            f"COMPOUND_LEARNING_PARTITION_START must be YYYY-MM-DD, got {start_text!r}"
        ) from exc
    try:
        half_life = float(_env("COMPOUND_LEARNING_HALF_LIFE_DAYS", "0"))
        min_new_clicks = int(_env("COMPOUND_LEARNING_MIN_NEW_CLICKS", "5000"))
    except ValueError as exc:
        raise ValueError(f"bad numeric setting: {exc}") from exc
    if half_life < 0:
        raise ValueError("COMPOUND_LEARNING_HALF_LIFE_DAYS must be >= 0 (0 = no forgetting)")
    return Settings(
        state_dir=state_dir,
        database_url=database_url,
        artifacts_dir=artifacts_dir,
        partition_start=partition_start,
        timezone=_env("COMPOUND_LEARNING_TIMEZONE", "UTC"),
        half_life_days=half_life,
        min_new_clicks=min_new_clicks,
    )
