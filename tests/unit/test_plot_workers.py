"""The report's figures are drawn by forked workers (present/plots.draw_all). A worker inherits its parent's
signal handlers; the CLI's write a line before they exit, and a parent that swallows SIGTERM would leave the
pool's terminate waiting forever: a CI run hung there once. The workers end on SIGTERM whatever the parent set."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHILD = """
import signal
from matplotlib.figure import Figure
from whisperdiff.present import plots

signal.signal(signal.SIGTERM, lambda signum, frame: None)  # a parent that swallows SIGTERM


def make():
    figure = Figure()
    figure.add_subplot().plot([0, 1])
    return figure


print(len(plots.draw_all([(make, "png")] * 3)))
"""


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="one core: the figures are drawn without workers")
def test_figure_workers_end_on_terminate_whatever_the_parent_handles():
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "3", done.stderr[-2000:]
