"""Pairing a port's values and weights with canonical names: rename rules, layouts, automatic alignment, map files."""
