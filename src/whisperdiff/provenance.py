"""Digests and versions: what every trace records so that two traces can be judged comparable."""

from __future__ import annotations

import hashlib
import platform
from importlib import metadata
from pathlib import Path

import numpy as np

# Distribution names whose versions every trace records (import names differ: whisper, max).
TRACKED_PACKAGES = ("whisperdiff", "torch", "max", "openai-whisper", "numpy")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(array: np.ndarray) -> str:
    """Digest of an array's raw bytes in C order (what a trace's per-op sha256 covers)."""
    return hashlib.sha256(memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))).hexdigest()


def sha256_array(array: np.ndarray) -> str:
    """Digest of an array's values, dtype and shape (so a reshaped or recast copy differs)."""
    array = np.ascontiguousarray(array)
    h = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    h.update(memoryview(array.reshape(-1).view(np.uint8)))
    return h.hexdigest()


def versions() -> dict[str, str | None]:
    """Installed versions, read from package metadata without importing the (heavy) packages."""
    return {"python": platform.python_version(), **{name: version(name) for name in TRACKED_PACKAGES}}


def version(package: str) -> str | None:
    """One installed package's version (metadata only; each lookup scans the installed distributions)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
