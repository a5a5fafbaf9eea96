"""Pure measures of two arrays (per-op metrics) and the limits they are held to (tolerances)."""
