"""Damaged and hostile traces, made on purpose: the mutations the trust tests (tests/test_fuzz.py) and
the fuzz campaign (benchmarks/fuzz.py) feed to every reader, each with what a reader must do with it.

    for m in mutations(Path("traces/b"), random.Random(0), 300):
        copy = fresh_copy_of_b()
        m.apply(copy)           # then: check(a, copy) must be a clean error, or the expected verdict

The kinds live in fuzz_files.py (tensor files) and fuzz_manifest.py (the manifest).

expect:
    "error"    damage (bytes, headers, files, manifest): a one-line error naming the trace, never a verdict
    "finding"  B's values at `op` were changed and its digest re-written: check must fail at `op`
    "same"     harmless (an unknown key, a hostile but valid string): the unmutated verdict, or a clean error
"""

from __future__ import annotations

import random
from pathlib import Path

from whisperdiff.errors import WhisperdiffError
from whisperdiff.gate.check import check
from whisperdiff.gate.fuzz_files import file_makers
from whisperdiff.gate.fuzz_manifest import manifest_makers
from whisperdiff.gate.fuzz_mutation import SENTINEL_ENV, Mutation, read_manifest
from whisperdiff.store.trace import list_traces, load_trace

__all__ = ["OUTCOMES", "SENTINEL_ENV", "Mutation", "judge", "mutations"]


def mutations(trace: Path, rng: random.Random, n: int, outside: Path | None = None) -> list[Mutation]:
    """`n` mutations of trace `trace` (not applied), drawn with `rng` from every kind
    (fuzz_files.py and fuzz_manifest.py).
    outside: a directory outside the trace for symlink targets (default: the trace's parent)."""
    m = read_manifest(trace)
    ops = [o["name"] for o in m["ops"]]
    files = {o["name"]: trace / o["file"] for o in m["ops"]}
    outside = outside or trace.parent
    makers = file_makers(ops, files, outside) | manifest_makers(ops)
    kinds = sorted(makers)
    return [makers[kinds[i % len(kinds)]](rng) for i in range(n)]


OUTCOMES = ("clean error", "correct finding", "silent-wrong", "misreport", "internal error", "hang")
_WORST = {
    o: i
    for i, o in enumerate(("correct finding", "clean error", "misreport", "silent-wrong", "internal error", "hang"))
}
# kinds whose damage the cheap checks of `ls` must see (a flipped data bit or a re-written value needs a read)
_LS_SEES = ("truncate", "extend", "header-dtype", "header-order", "pickled", "symlink", "special-file")


def judge(m: Mutation, a: Path, b: Path, baseline: list[str]) -> tuple[str, str]:
    """Run the readers on the mutated pair (ls, show, check) and return (outcome, why).

    baseline: the ops check fails on the unmutated pair. Outcomes: OUTCOMES (all but "hang", which
    only a caller with a timeout can see)."""

    damaged = a if m.side == "a" else b
    verdicts = []
    try:  # ls: never raises for one bad entry; never "complete" for damage it can see; --verify sees all
        listing = {item.path.name: item for item in list_traces(damaged.parent)}
        item = listing.get(damaged.name)
        status = item.status if item is not None else "complete"
        if m.expect == "error" and m.kind in _LS_SEES and status == "complete":
            verdicts.append(("misreport", f"ls lists it as complete ({m})"))
        elif m.expect == "error" and item is not None and item.verified:
            verdicts.append(("misreport", f"ls says it verified a damaged trace ({m})"))
        verified = {item.path.name: item.status for item in list_traces(damaged.parent, verify=True)}
        if m.expect == "error" and verified.get(damaged.name, "complete") == "complete":
            verdicts.append(("misreport", f"ls --verify lists it as complete ({m})"))
    except WhisperdiffError as e:
        verdicts.append(("internal error", f"ls of the folder failed: {e}"))
    except Exception as e:
        verdicts.append(("internal error", f"ls: {type(e).__name__}: {e}"))
    for reader in ("show", "check"):
        try:
            if reader == "show":
                load_trace(damaged).summary()
                result = None
            else:
                result = check(a, b, replay=False)
        except WhisperdiffError as e:
            text = str(e)
            if "\n" in text:
                verdicts.append(("misreport", f"{reader}: the error is not one line"))
            else:
                verdicts.append(("clean error", f"{reader}: {text[:160]}"))
            continue
        except RecursionError as e:
            verdicts.append(("internal error", f"{reader}: RecursionError {e}"))
            continue
        except Exception as e:
            verdicts.append(("internal error", f"{reader}: {type(e).__name__}: {str(e)[:160]}"))
            continue
        if m.expect == "error":
            verdicts.append(("silent-wrong", f"{reader} accepted a damaged trace ({m})"))
        elif reader == "show":
            verdicts.append(("correct finding", "show read it"))
        elif m.expect == "finding":
            if m.op in result.failed_ops:
                verdicts.append(("correct finding", f"check fails at {m.op}"))
            elif result.passed:
                verdicts.append(("silent-wrong", f"check passed although {m.op} was changed ({m})"))
            else:
                verdicts.append(("misreport", f"check failed at {result.failed_ops[:3]}, not at {m.op} ({m})"))
        elif result.failed_ops == baseline:
            verdicts.append(("correct finding", "same verdict as the unmutated pair"))
        elif result.passed:
            verdicts.append(("silent-wrong", f"check passed; unmutated it fails at {baseline[:3]} ({m})"))
        else:
            verdicts.append(("misreport", f"check fails at {result.failed_ops[:3]}; unmutated at {baseline[:3]} ({m})"))
    return max(verdicts, key=lambda v: _WORST[v[0]])
