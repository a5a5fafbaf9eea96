"""Pass or fail: per-op tolerances, `check`, golden sets, the pytest helper."""
