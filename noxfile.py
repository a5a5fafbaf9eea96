"""nox sessions: `nox -s tests`, `nox -s lint`, `nox -s trace` (the main job on the embedded default)."""

import nox

nox.options.sessions = ["lint", "tests"]


@nox.session
def tests(session):
    session.install("-e", ".[dev]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session):
    session.install("ruff")
    session.run("ruff", "check", "src", "tests", "noxfile.py", "benchmarks")


@nox.session
def trace(session):
    session.install("-e", ".")
    session.run("whisperdiff", "trace", "--impl", "torch", *session.posargs)
