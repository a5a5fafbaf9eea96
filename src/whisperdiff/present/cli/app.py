"""The typer `app` every command module registers on, and what all commands share: main() with its
one-line errors and signal handling, the consoles, and escaping of what a trace holds.

Every failure the user can fix ends as one line on stderr (`error: ...`) and exit code 2; an
interrupt ends with exit 130 and leaves no half-written trace; nothing prints a traceback unless
WHISPERDIFF_DEBUG=1.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Annotated


def _early_exit(signum, frame):  # a signal before main() takes over: nothing has been written yet
    os.write(2, b"interrupted: nothing was written\n")
    os._exit(130)


def _run_as_command() -> bool:
    """The `whisperdiff` script, `python -m whisperdiff` or `python -m whisperdiff.present.cli`; not a
    program that imports the CLI (its signals are its own)."""
    argv = getattr(sys, "orig_argv", [])
    module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else None
    return Path(sys.argv[0]).name == "whisperdiff" or module in ("whisperdiff", "whisperdiff.present.cli")


# Run as the command: a signal during start-up is exit 130, one line.
if _run_as_command():
    signal.signal(signal.SIGTERM, _early_exit)
    signal.signal(signal.SIGINT, _early_exit)

import typer  # noqa: E402
from rich.console import Console  # noqa: E402

from whisperdiff.errors import WhisperdiffError  # noqa: E402

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # conventional help: choices as {a|b}, flags without a type, brackets as typed
    context_settings={"help_option_names": ["-h", "--help"]},
    help="Find where a Whisper encoder port's numbers first go wrong. Start with `whisperdiff trace`.",
)


def printable(text: str) -> str:
    """`text` with terminal control characters (ESC, C1, bidi overrides...) and lone surrogates shown
    as escapes, so nothing a trace holds can move the cursor, clear the screen or fail to print."""
    if text.isprintable() and not any("\ud800" <= ch <= "\udfff" for ch in text):
        return text
    safe = []
    for ch in text:
        if ch in "\n\t" or (ch.isprintable() and not "\ud800" <= ch <= "\udfff"):
            safe.append(ch)
        else:
            safe.append(
                ch.encode("unicode_escape", "backslashreplace").decode("ascii")
                if ord(ch) < 0x10000
                else f"\\U{ord(ch):08x}"
            )
    return "".join(safe)


def escape_markup(text: str) -> str:
    """`text` shown as typed, never read as rich markup (a trace's text is data)."""
    from rich.markup import escape

    return escape(text)


class SafeConsole(Console):
    """Rich console that never passes control characters through (every string, table cells included,
    is rendered via render_str) and never turns :codes: into emoji."""

    def render_str(self, text: str, **kwargs):
        return super().render_str(printable(text), **kwargs)


# Not a terminal (a pipe, CI log): no 80-column wrapping of paths and tables.
out = SafeConsole(width=None if sys.stdout.isatty() else 200, emoji=False)
err = SafeConsole(stderr=True, width=None if sys.stderr.isatty() else 200, emoji=False)


def fmt(x: float) -> str:
    return f"{x:.4g}"


def size(n: int | None) -> str:
    """A byte count as people read it: 12 B, 3.4 MB."""
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def write_atomic(path: Path, text: str) -> None:
    from whisperdiff.store.trace import write_text_atomic

    write_text_atomic(path, text)


def print_json(value) -> None:
    import json

    print(json.dumps(value, indent=1))


def _print_version(value: bool) -> None:
    if value:
        from whisperdiff import __version__

        print(f"whisperdiff {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    pass


def _one_line(message) -> str:
    return " ".join(str(message).split())


def _terminate(signum, frame):
    from whisperdiff.store import trace as store

    if store.writing():
        raise KeyboardInterrupt  # unwinds through TraceWriter, which removes its partial directory
    # Nothing is being written: end now, without unwinding through half-imported native modules
    # (an exception raised inside torch's import can abort the process with a long stack).
    try:
        sys.stderr.write(_interrupted() + "\n")
        sys.stderr.flush()
    finally:
        os._exit(130)


def _interrupted() -> str:
    from whisperdiff.store.trace import COMMITTED

    if COMMITTED:
        return f"interrupted: wrote {printable(', '.join(map(str, COMMITTED)))} before the interrupt; nothing else was written"
    return "interrupted: nothing was written (an existing trace at --out is left as it was)"


def _say(line: str) -> None:
    err.print(line, highlight=False, markup=False, soft_wrap=True)


def main() -> None:
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    debug = os.environ.get("WHISPERDIFF_DEBUG") == "1"
    if len(sys.argv) == 1:
        sys.argv.append("--help")
    try:
        # Not standalone: errors come to us as exceptions; exits come back as a code (typer turns
        # KeyboardInterrupt, i.e. Ctrl-C or SIGTERM via _terminate, into code 130).
        code = app(standalone_mode=False)
        if code == 130:
            _say(_interrupted())
        sys.exit(code if isinstance(code, int) else 0)
    except WhisperdiffError as e:
        if debug:
            raise
        _say(f"error: {_one_line(e)}")
        sys.exit(2)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.TyperException as e:  # usage errors from the (vendored) click parser
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        _say(f"error: {_one_line(message)} (see `whisperdiff --help`)")
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort) as e:
        if isinstance(e.__cause__, EOFError):  # click turns EOFError (a file that ends early) into Abort
            _say(f"error: a file ended before its data did (truncated or empty): {_one_line(e.__cause__) or 'EOF'}")
            sys.exit(2)
        _say(_interrupted())
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except OSError as e:  # a file or directory the user named: permissions, a full disk, a FIFO, ...
        if debug:
            raise
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        _say(f"error: {e.strerror or _one_line(e)}{where}")
        sys.exit(2)
    except Exception as e:
        if debug:
            raise
        _say(
            f"error: internal error ({type(e).__name__}: {_one_line(e)}); rerun with WHISPERDIFF_DEBUG=1 for the "
            "traceback and please report it"
        )
        sys.exit(3)
