"""Resources: the store (database URL + artifacts directory), configured from the environment."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import dagster as dg

from compound_learning.config import CycleSettings, Settings, load_settings
from compound_learning.steps import CycleContext
from compound_learning.storage.store import Store, get_store


class StoreResource(dg.ConfigurableResource):
    """Where results live: ``COMPOUND_LEARNING_DATABASE_URL`` and the model artifacts directory.

    Empty values fall back to :func:`compound_learning.config.load_settings` defaults.
    """

    database_url: str = ""
    artifacts_dir: str = ""

    def settings(self) -> Settings:
        base = load_settings()
        changes = {}
        if self.database_url:
            changes["database_url"] = self.database_url
        if self.artifacts_dir:
            changes["artifacts_dir"] = Path(self.artifacts_dir)
        return replace(base, **changes) if changes else base

    def store(self) -> Store:
        return get_store(self.settings().database_url)

    def cycle_context(self) -> CycleContext:
        """Store, settings and learning knobs for the cycle's steps."""
        settings = self.settings()
        return CycleContext(get_store(settings.database_url), settings, CycleSettings.from_settings(settings))
