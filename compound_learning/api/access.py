"""API keys mapped to accounts, configured outside the code.

``COMPOUND_LEARNING_API_KEYS`` holds ``key=acct_1,acct_2;other=*`` (``*``: every account), or
``COMPOUND_LEARNING_API_KEYS_FILE`` a JSON object ``{"key": ["acct_1"], "admin": "*"}``.
Without keys the API serves on loopback only (the CLI refuses another host) and every request
is treated as local and trusted.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from compound_learning.config import MIN_ACCOUNTS_FOR_SHARED, Settings, load_settings

ALL = "*"


@dataclass(frozen=True)
class Principal:
    """Who is asking: the accounts a key may see (``None`` = all, the local or admin case)."""

    accounts: frozenset[str] | None

    def may_see(self, account_id: str) -> bool:
        return self.accounts is None or account_id in self.accounts

    @property
    def restricted(self) -> bool:
        return self.accounts is not None


def load_keys(settings: Settings | None = None) -> dict[str, Principal] | None:
    """The configured keys, or None when access control is off (loopback only)."""
    settings = settings or load_settings()
    text, path = settings.api_keys, settings.api_keys_file
    raw: dict = {}
    if path:
        try:
            raw = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"COMPOUND_LEARNING_API_KEYS_FILE {path}: {exc}") from exc
        if not isinstance(raw, dict):
            raise ValueError("COMPOUND_LEARNING_API_KEYS_FILE must hold a JSON object key -> accounts")
    elif text:
        for part in filter(None, (p.strip() for p in text.split(";"))):
            if "=" not in part:
                raise ValueError(f"COMPOUND_LEARNING_API_KEYS: expected key=acct,acct; got {part!r}")
            key, accounts = part.split("=", 1)
            raw[key.strip()] = ALL if accounts.strip() == ALL else [a.strip() for a in accounts.split(",") if a.strip()]
    if not raw:
        return None
    keys = {}
    for key, accounts in raw.items():
        if len(key) < 8:
            raise ValueError("API keys must be at least 8 characters long")
        keys[key] = Principal(None if accounts == ALL else frozenset(accounts))
    return keys


# -- what a scoped key may see of pooled knowledge ------------------------------------------------
def is_shared(accounts: int | None) -> bool:
    """Pooled evidence is shown to a scoped key only when enough accounts stand behind it."""
    return (accounts or 0) >= MIN_ACCOUNTS_FOR_SHARED


def shared_patterns(items: list[dict]) -> list[dict]:
    """The patterns (in the output contract) that enough accounts back."""
    return [p for p in items if is_shared(p["support"].get("accounts"))]


def shared_graph(graph: dict) -> dict:
    """The knowledge graph without pattern nodes and evidence that too few accounts back."""
    nodes = [n for n in graph["nodes"] if n["node_type"] != "pattern" or is_shared(n["properties"].get("accounts"))]
    kept = {n["node_id"] for n in nodes}
    relationships = [
        r
        for r in graph["relationships"]
        if r["source"] in kept
        and r["target"] in kept
        and ("support" not in r["evidence"] or is_shared(r["evidence"]["support"].get("accounts")))
    ]
    return {**graph, "nodes": nodes, "relationships": relationships}


class RedactKeys(logging.Filter):
    """Removes API keys from log records (uvicorn's access log writes the query string)."""

    PATTERN = re.compile(r"(api_key=)[^&\s\"']*", re.IGNORECASE)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.args = tuple(self.PATTERN.sub(r"\1[redacted]", a) if isinstance(a, str) else a for a in record.args)
        if isinstance(record.msg, str):
            record.msg = self.PATTERN.sub(r"\1[redacted]", record.msg)
        return True
