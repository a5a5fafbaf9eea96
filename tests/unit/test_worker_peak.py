"""A sweep worker's peak memory is its own: benchmarks/sweep.py reports it per Ray worker, and Ray starts
workers from large processes (the driver, the raylet)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

CHILD = """
from whisperdiff.experiments.sweep import SweepWorker
print(SweepWorker.peak_rss_mb(None))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/self/status")
def test_a_workers_peak_is_not_its_parents():
    held = np.ones(600 * 2**20 // 8)  # this process: 600 MB resident when the child is started
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True)
    assert held.sum() > 0
    # ru_maxrss would say ~650 MB here: Linux carries the parent's peak across fork and exec
    assert float(done.stdout) < 300
