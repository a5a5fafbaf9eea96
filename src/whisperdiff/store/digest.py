"""Each traced tensor's digest: what makes a damaged trace an error instead of a number.

A trace's manifest gives every op one digest of its bytes (C order), under the key that names its kind.
Traces written since schema 2 use XXH3-128; schema-1 traces carry SHA-256 and are still read. A compare
reads every byte of both traces and hashes it, so the hash sets its pace: XXH3 runs at ~16 GB/s a core,
SHA-256 at ~1.4 (large-v3's default taps are 4.5 GB a trace). Neither is a signature: whoever writes a
manifest writes its digests, so a digest catches damage (bit rot, a truncated copy, an edit), which
XXH3-128 misses with probability 2^-128, and cannot vouch for a hostile trace's values.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np
import xxhash

WRITTEN = "xxh3_128"  # the kind a new trace's ops carry
KINDS = {  # kind -> the form of its hex digest
    "xxh3_128": re.compile(r"^[0-9a-f]{32}$"),
    "sha256": re.compile(r"^[0-9a-f]{64}$"),
}


def hasher(kind: str):
    """A new hash object of this kind (update() with bytes, hexdigest())."""
    return xxhash.xxh3_128() if kind == "xxh3_128" else hashlib.sha256()


def array_digest(array: np.ndarray, kind: str = WRITTEN) -> str:
    """The digest of an array's raw bytes in C order (shape and dtype are the manifest's to say)."""
    h = hasher(kind)
    h.update(memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8)))
    return h.hexdigest()


def digest_kind(op: dict) -> str | None:
    """Which digest an op's manifest entry carries, or None when it carries none or several."""
    found = [kind for kind in KINDS if kind in op]
    return found[0] if len(found) == 1 else None


def digest_fields(array: np.ndarray, op: dict | None = None) -> dict:
    """{kind: digest} for an op's entry: of the kind the entry already carries (a rewritten value keeps its
    trace's kind), else of the kind written now."""
    kind = (digest_kind(op) if op is not None else None) or WRITTEN
    return {kind: array_digest(array, kind)}
