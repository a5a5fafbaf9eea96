"""nox sessions: `nox -s tests`, `nox -s lint`, `nox -s trace` (the main job on the embedded default),
`nox -s reports` (the four example reports under reports/)."""

import nox

nox.options.sessions = ["lint", "tests"]


@nox.session
def tests(session):
    session.install("-c", "constraints.txt", "-e", ".[dev,ports,ray]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session):
    session.install("-c", "constraints.txt", "-e", ".[dev]")
    session.run("ruff", "check", "src", "tests", "noxfile.py", "benchmarks", "examples")
    session.run("ruff", "format", "--check", "src", "tests", "noxfile.py", "benchmarks", "examples")
    session.run("lint-imports")  # the layer contract in pyproject.toml


@nox.session
def trace(session):
    session.install("-e", ".")
    session.run("whisperdiff", "trace", "--impl", "torch", *session.posargs)


@nox.session
def reports(session):
    session.install("-e", ".")
    session.run("bash", "examples/reports.sh", external=True)
