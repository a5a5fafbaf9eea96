"""The `whisperdiff` command: a thin typer layer over the Python API, one module per command family.

app.py holds the typer `app`, main() and what every command shares; each command module registers its
commands on `app` when imported, so this package imports them all. The entry point is `main`.
"""

# First, before typer and the commands: app.py installs the start-up signal handling.
from whisperdiff.present.cli.app import app, main

# isort: split
from whisperdiff.present.cli import comparing, experiments, gating, listing, sweeping, tracing  # noqa: F401  (they register)

__all__ = ["app", "main"]
