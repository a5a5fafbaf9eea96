"""The trace format: one verified `.npy` per op plus a manifest with provenance (trace.py), and statistics."""
