"""Experiments that re-run an implementation to ask whether a divergence matters: activation patching,
encoder x decoder cross-feed, tolerance calibration from a float64 re-run, and sweeps over a corpus."""
