"""Shared fixtures: real models (the embedded tiny.en, small random dims) and a real CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import whisperdiff as wd

# Small enough to run in a second, big enough to have heads and two blocks.
SMALL_RANDOM = (
    "random:tiny,n_audio_layer=2,n_audio_state=64,n_audio_head=2,n_text_layer=1,n_text_state=64,n_text_head=2"
)


# The `slow` marker (declared in pyproject.toml): a test that runs the real tiny.en model end to end, compiles
# a MAX graph or runs a whole benchmark. `pytest -m "not slow"` is the quick loop; plain `pytest` (what CI
# runs) runs everything. A test that needs the tiny.en fixtures is slow by what it needs; the others are
# marked where they are.
TINY_EN_FIXTURES = {"tiny_en", "default_trace"}


def pytest_collection_modifyitems(items):
    for item in items:
        if TINY_EN_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_en() -> wd.LoadedModel:
    return wd.load_model()


@pytest.fixture(scope="session")
def small_random() -> wd.LoadedModel:
    return wd.load_model(SMALL_RANDOM)


@pytest.fixture(scope="session")
def default_trace(tmp_path_factory, tiny_en) -> wd.Trace:
    """The README's main job through the API: embedded tiny.en on the shipped clip, all ops."""
    return wd.trace("torch", model=tiny_en, out=tmp_path_factory.mktemp("traces") / "default", taps="all")


@pytest.fixture(scope="session")
def decoder_reference(tmp_path_factory, tiny_en) -> wd.Trace:
    """openai-whisper's decoder teacher-forced on the shipped clip, from the CLI: what decoder ports are held to."""
    out = tmp_path_factory.mktemp("decoder") / "torch"
    run_cli("trace-decoder", "--impl", "torch", "-o", str(out), check=True)
    return wd.load_trace(out)


def run_cli(
    *args: str, cwd: Path | None = None, env: dict | None = None, check: bool = False
) -> subprocess.CompletedProcess:
    """Run the installed `whisperdiff` entry point for real, as a user would."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "whisperdiff.present.cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"whisperdiff {' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
    return proc


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    """The contract for bad input: non-zero exit, one `error:` line on stderr, no traceback."""
    assert proc.returncode not in (0, 3), (proc.returncode, proc.stderr)  # 3 would be an internal error
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), (fragment, lines[0])
