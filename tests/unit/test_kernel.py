"""The one-pass kernel's machine code, compiled by numba once per machine and loaded from whisperdiff's cache
by llvmlite alone after that (measure/kernel.py). Each case runs in a fresh interpreter, as compare does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Loads the kernel, measures a fixed pair by it and prints where the kernel came from, whether numba was
# imported, and the figures (exactly, as hex).
CHILD = """
import json, sys
import numpy as np
from whisperdiff.measure import kernel, metrics
rng = np.random.default_rng(7)
a = rng.standard_normal((37, 300)).astype(np.float32)
b = a + np.float32(1e-3) * rng.standard_normal(a.shape).astype(np.float32)
b[20, 17] += 5
out = metrics._onepass(a, b, 1e-5, 1e-3)
print(json.dumps({
    "from_cache": kernel.from_cache(),
    "numba": "numba" in sys.modules,
    "file": str(kernel.cache_path()),
    "figures": [float(out["sa"]).hex(), float(out["sb"]).hex(), out["max_abs"], list(out["max_at"]), out["outside"],
                [float(v).hex() for v in np.asarray(out["steps"]).ravel()]],
}))
"""


def run_child(cache: Path) -> dict:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache)}
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """A fresh cache, and the figures of the kernel numba compiled into it."""
    cache = tmp_path_factory.mktemp("cache")
    first = run_child(cache)
    return cache, first


def test_a_kernel_compiled_once_is_loaded_without_numba_and_gives_the_same_figures(compiled):
    cache, first = compiled
    assert (first["from_cache"], first["numba"]) == (False, True)  # compiled here, by numba
    assert Path(first["file"]).is_file() and Path(first["file"]).parent.parent.parent == cache
    again = run_child(cache)
    assert (again["from_cache"], again["numba"]) == (True, False)
    assert again["figures"] == first["figures"]
    assert first["figures"][2:4] == [pytest.approx(5, rel=1e-3), [20, 17]]  # the worst element, and where
    assert first["figures"][4] > 0  # the 1e-3 noise passes 1e-5 + 1e-3 |a| somewhere


def test_a_damaged_or_foreign_cache_file_is_compiled_again_and_replaced(compiled, tmp_path):
    cache, first = compiled
    path = Path(first["file"])
    good = path.read_bytes()
    header, _, obj = good.partition(b"\n")
    damaged = tmp_path / "cache"
    target = damaged / path.relative_to(cache)
    target.parent.mkdir(parents=True)
    flipped = bytearray(obj)
    flipped[len(flipped) // 2] ^= 0xFF
    for content in (header + b"\n" + bytes(flipped), b"not a header\n" + obj, good[: len(good) // 2], b""):
        target.write_bytes(content)
        again = run_child(damaged)
        assert (again["from_cache"], again["figures"]) == (False, first["figures"]), content[:40]
        assert target.read_bytes() == good  # replaced by the same machine code
        assert json.loads(target.read_bytes().partition(b"\n")[0])["symbol"]
        assert not [p for p in target.parent.iterdir() if p.name.startswith(".onepass-")]  # no temporary left


def test_an_unwritable_cache_costs_the_compile_each_time_and_nothing_else(compiled, tmp_path):
    _, first = compiled
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache's folder would be")
    for _ in range(2):
        again = run_child(blocked)
        assert (again["from_cache"], again["figures"]) == (False, first["figures"])
    assert blocked.read_text() == "a file where the cache's folder would be"
