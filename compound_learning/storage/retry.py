"""Retrying work whose transaction failed for a reason that a second try can fix.

Transient: the connection was lost (a restarted server, ``pg_terminate_backend``, a network
blip), a serialization failure or a deadlock on PostgreSQL, or a locked SQLite file. Anything
else (a constraint, a bad statement, a contract error) is raised at once: retrying it would only
repeat it. Every unit retried here is idempotent by design: a partition write deletes and
inserts under its lock in one transaction, so a rolled-back attempt leaves nothing behind and
the next attempt starts from the same state.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import exc as sa_exc

log = logging.getLogger(__name__)
T = TypeVar("T")

# SQLSTATE classes and codes: 08 connection exception, 40001 serialization failure, 40P01
# deadlock, 57P01-57P03 admin/crash shutdown or cannot connect now, 53300 too many connections.
TRANSIENT_SQLSTATE_PREFIXES = ("08",)
TRANSIENT_SQLSTATES = {"40001", "40P01", "57P01", "57P02", "57P03", "53300"}
TRANSIENT_MESSAGES = (
    "server closed the connection unexpectedly",
    "terminating connection",
    "connection already closed",
    "could not connect to server",
    "connection refused",
    "database is locked",
    "ssl syscall error",
)

DEFAULT_ATTEMPTS = 5
DEFAULT_BASE_DELAY = 0.5


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` (or its cause) is a database error that a new attempt may not meet."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, sa_exc.DBAPIError) and error.connection_invalidated:
            return True
        code = getattr(getattr(error, "orig", None), "pgcode", None) or getattr(error, "pgcode", None)
        if code and (code in TRANSIENT_SQLSTATES or code.startswith(TRANSIENT_SQLSTATE_PREFIXES)):
            return True
        if isinstance(error, (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.DisconnectionError)):
            text = str(error).lower()
            if any(m in text for m in TRANSIENT_MESSAGES):
                return True
        error = error.__cause__ or error.__context__
    return False


def with_retries(
    work: Callable[[], T],
    what: str,
    *,
    attempts: int | None = None,
    base_delay: float | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """``work()``, tried again after a transient database error with exponential backoff and
    jitter (0.5, 1, 2, 4 s by default); the last error is raised when every attempt failed."""
    attempts = DEFAULT_ATTEMPTS if attempts is None else attempts
    base_delay = DEFAULT_BASE_DELAY if base_delay is None else base_delay
    for attempt in range(1, attempts + 1):
        try:
            return work()
        except Exception as error:
            if attempt == attempts or not is_transient(error):
                raise
            delay = base_delay * 2 ** (attempt - 1) * (1 + 0.25 * random.random())
            log.warning(
                "%s: transient database error (attempt %d of %d), retrying in %.1f s: %s",
                what,
                attempt,
                attempts,
                delay,
                str(error).splitlines()[0],
            )
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover
