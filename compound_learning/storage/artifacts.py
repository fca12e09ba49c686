"""Model artifacts: skops files (never pickle: loading a pickle can run arbitrary code),
verified by SHA-256 on load, and loaded only when every type skops does not trust by itself is
one this project's own pipelines contain (an exact list, no prefixes: ``builtins.`` would admit
``exec``, and a registered file holding ``functools.partial(exec, ...)`` would run it)."""

from __future__ import annotations

import hashlib
from pathlib import Path

# Exactly the types beyond skops' defaults that our CTR pipelines hold (core.ctr_model.FAMILIES);
# a test trains every family and fails when a library upgrade adds one.
ALLOWED_TYPES = frozenset(
    {
        "functools.partial",  # HistGradientBoosting keeps check_array bound in a partial
        "sklearn.utils.validation.check_array",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
        "compound_learning.core.ctr_model.CategoryCodes",  # our own: text values as sorted ranks
    }
)


class ArtifactError(RuntimeError):
    """A model file is missing, altered or contains types we did not write."""


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_model(model, directory: Path, name: str) -> tuple[Path, str]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    import skops.io as sio  # loaded only by the processes that write or read a model

    path = directory / f"{name}.skops"
    tmp = path.with_suffix(".skops.tmp")
    sio.dump(model, tmp)
    tmp.replace(path)  # atomic: a crash never leaves a half-written model under the real name
    return path, sha256_of(path)


def load_model(path: str | Path, expected_sha256: str):
    import skops.io as sio

    path = Path(path)
    if not path.exists():
        raise ArtifactError(f"model artifact {path} is missing")
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise ArtifactError(
            f"model artifact {path} was altered: SHA-256 {actual[:12]}... "
            f"does not match the registry's {expected_sha256[:12]}..."
        )
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:
        raise ArtifactError(f"model artifact {path} is unreadable: {exc}") from exc
    unexpected = sorted(set(untrusted) - ALLOWED_TYPES)
    if unexpected:
        raise ArtifactError(f"model artifact {path} contains types outside the allowlist: {unexpected}")
    try:
        return sio.load(path, trusted=untrusted)
    except Exception as exc:  # a file that passed the checks but does not load is not a model we wrote
        raise ArtifactError(f"model artifact {path} could not be loaded: {type(exc).__name__}: {exc}") from exc


def remove_artifacts(paths) -> int:
    """Delete model files (missing ones are skipped); returns how many were removed."""
    removed = 0
    for path in paths:
        try:
            Path(path).unlink()
            removed += 1
        except FileNotFoundError:
            continue
    return removed
