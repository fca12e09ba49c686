"""Model artifacts: skops files (never pickle: loading a pickle can run arbitrary code),
verified by SHA-256 on load, and only with an allowlist of types."""

from __future__ import annotations

import hashlib
from pathlib import Path

# Types a CTR model pipeline of ours may contain beyond skops' defaults.
ALLOWED_TYPE_PREFIXES = ("sklearn.", "numpy.", "builtins.", "collections.", "scipy.", "_loss.")
ALLOWED_TYPES = {"functools.partial"}  # HistGradientBoosting keeps its loss's link as a partial


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
    unexpected = [t for t in untrusted if not (t.startswith(ALLOWED_TYPE_PREFIXES) or t in ALLOWED_TYPES)]
    if unexpected:
        raise ArtifactError(f"model artifact {path} contains types outside the allowlist: {unexpected}")
    return sio.load(path, trusted=untrusted)
