"""Experiments that re-run an implementation to ask whether a divergence matters: patching, cross-feeding."""
