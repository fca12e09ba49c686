"""Serving the CTR model: the champion is loaded and verified once per (version, SHA-256),
kept in memory, and predicts single-threaded.

Verification (SHA-256 and the skops type allowlist) happens in
:func:`compound_learning.model_registry.serving_model`; a cached pipeline is the very object
that passed it, so altering the file later cannot change what serves. A new champion (promotion,
rollback) has another key and is loaded on the next request. Prediction runs under a
one-thread limit: OpenMP's threads cost more than the work for a handful of rows, and fight the
web server's own threads (0.8-3 s for 7 rows with every thread, tens of ms with one).
"""

from __future__ import annotations

import threading
from functools import lru_cache

import numpy as np
import pandas as pd
from threadpoolctl import ThreadpoolController

from compound_learning import model_registry
from compound_learning.core import ctr_model as cm
from compound_learning.core import stats
from compound_learning.storage.store import Store


class ModelCache:
    """Verified serving models, keyed by the champion's (version, sha256)."""

    def __init__(self, max_entries: int = 4):
        self._entries: dict[tuple, tuple] = {}
        self._lock = threading.Lock()
        self.max_entries = max_entries
        self.loads = 0  # how many times a model was read and verified (for tests and benchmarks)

    def serving(self, store: Store) -> tuple[object, pd.Series, list[str]]:
        """The model that serves for ``store``'s registry (see ``model_registry.serving_model``)."""
        champ = model_registry.champion(store)
        key = (store.url, None if champ is None else (int(champ["version"]), champ["sha256"]))
        with self._lock:
            if key in self._entries:
                return self._entries[key]
        resolved = model_registry.serving_model(store)  # raises ArtifactError when nothing verifies
        with self._lock:
            self.loads += 1
            if len(self._entries) >= self.max_entries:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = resolved
        return resolved


MODELS = ModelCache()


@lru_cache(maxsize=1)
def _threadpools() -> ThreadpoolController:
    # Finding the loaded OpenMP/BLAS libraries takes milliseconds: do it once per process.
    return ThreadpoolController()


def predict_creative_ctr(store: Store, account_id: str, creative: dict, cache: ModelCache = MODELS) -> dict:
    """The serving model's CTR for a fresh creative of ``account_id`` (averaged over the days
    of the week, at age 0). Values and dimensions the model never saw fall back to its
    'missing' level; the warnings say when an earlier model serves instead of the champion."""
    model, row, warnings = cache.serving(store)
    features = model_registry.model_features(row)
    spec = cm.FeatureSpec(categorical=features)
    attributes = {f: creative.get(f, stats.MISSING) for f in features if f not in ("account_id", "dow")}
    rows = pd.DataFrame([{**attributes, "account_id": account_id, "dow": d, "age_days": 0} for d in range(7)])
    with _threadpools().limit(limits=1):
        p = cm.predict_ctr(model, rows, spec)
    return {
        "model_version": int(row["version"]),
        "family": row["family"],
        "predicted_ctr": float(np.mean(p)),
        "warnings": list(warnings),
    }
