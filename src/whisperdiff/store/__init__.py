"""The trace format: one verified `.npy` per op plus a typed manifest with provenance, listings, statistics, and
the versioned JSON documents the CLI prints."""
