"""Pass or fail: `check` (against per-op tolerances from measure/), golden sets, the pytest helper, and the fuzz
harness that holds every reader to refusing damaged and hostile traces."""
