"""Fuzz campaign (issue 13): hundreds of mutated traces read by `ls`, `show` and `check`, counted by outcome.

A pair of real torch traces of a small random model is made, then each mutation (whisperdiff.gate.fuzz:
truncation, bit flips in headers and bodies, header dtype/shape/order edits, pickled arrays, symlinks in
and out, FIFOs, directories, manifest type/key/schema edits, a dropped `input` or `model` record or
digest, hostile strings with ANSI/NUL/markup/surrogates, NaN/Inf and extreme values with re-written
digests) is applied to a fresh copy and read:

- through the Python API (ls, ls --verify, show, check) in a worker process, killed and counted as a hang past
  --timeout seconds;
- through the real CLI (`whisperdiff check A B --no-replay`, `whisperdiff show B`, and for hostile
  strings `whisperdiff report`) for every hostile string and every --cli-every'th other mutation, each a subprocess with the same timeout: exit 3 or a
  traceback is an internal error, raw terminal control characters in the output or an error of more
  than one line a misreport, exit 0 on damage silent-wrong.

Prints the count per outcome class (clean error, correct finding, silent-wrong, misreport, internal
error, hang), the counts per mutation kind, and every case that is not a clean error or a correct
finding. Asserts nothing; exit status 1 when any such case was found.

    python benchmarks/fuzz.py [-n 400] [--seed 2026] [--cli-every 10] [--timeout 60]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

SMALL = "random:tiny,n_audio_layer=1,n_audio_state=64,n_audio_head=2,n_text_layer=1,n_text_state=64,n_text_head=2"
TAPS = "conv1,blocks.0.attn.q,blocks.0.out,ln_post"
GOOD = ("clean error", "correct finding")
CONTROL = [chr(c) for c in range(32) if chr(c) not in "\n\t"] + [chr(c) for c in range(0x7F, 0xA0)] + ["\u202e"]


def worker(conn, root: str, n: int, seed: int) -> None:
    """Judges mutation i of the campaign for each i received (regenerated here: mutations hold closures)."""
    from whisperdiff.gate.fuzz import judge, mutations

    root = Path(root)
    muts = mutations(root / "src" / "b", random.Random(seed), n, outside=root / "outside")
    baseline = conn.recv()
    while True:
        i = conn.recv()
        if i is None:
            return
        work = root / f"api{i}"
        shutil.copytree(root / "src", work, symlinks=True)
        try:
            muts[i].apply(work / muts[i].side)
            conn.send(judge(muts[i], work / "a", work / "b", baseline))
        except Exception as e:  # a mutation that cannot be applied is the campaign's bug, not a reader's
            conn.send(("internal error", f"applying {muts[i]}: {type(e).__name__}: {e}"))
        finally:
            shutil.rmtree(work, ignore_errors=True)


class Judge:
    """A worker process that can be killed when a reader hangs, and restarted (spawned, not forked:
    torch's OpenMP threads do not survive a fork)."""

    def __init__(self, root: Path, n: int, seed: int, baseline: list[str]):
        self.args, self.baseline = (str(root), n, seed), baseline
        self.start()

    def start(self) -> None:
        self.conn, child = mp.Pipe()
        self.proc = mp.get_context("spawn").Process(target=worker, args=(child, *self.args), daemon=True)
        self.proc.start()
        self.conn.send(self.baseline)

    def __call__(self, i: int, timeout: float) -> tuple[str, str]:
        self.conn.send(i)
        if self.conn.poll(timeout):
            return self.conn.recv()
        self.proc.kill()
        self.proc.join()
        self.start()
        return "hang", f"the API readers did not finish in {timeout:.0f} s"

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(10)


def cli_outcome(m, a: Path, b: Path, timeout: float) -> tuple[str, str]:
    """The real CLI on a mutated pair: check and show."""
    verdicts = []
    commands = [["check", str(a), str(b), "--no-replay"], ["show", str(a if m.side == "a" else b)]]
    if m.kind == "hostile-string":  # the HTML page too: text from a trace in another renderer
        commands.append(["report", str(a), str(b), "--no-replay", "-o", str(b.parent / "r.html")])
    for args in commands:
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "whisperdiff.present.cli", *args],
                capture_output=True,
                timeout=timeout,
                errors="backslashreplace",
            )
        except subprocess.TimeoutExpired:
            verdicts.append(("hang", f"whisperdiff {args[0]} ran past {timeout:.0f} s ({m})"))
            continue
        text = proc.stdout + proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        if proc.returncode == 3 or "Traceback" in text or proc.returncode not in (0, 1, 2):
            verdicts.append(("internal error", f"whisperdiff {args[0]} exit {proc.returncode}: {proc.stderr[-300:]}"))
        elif any(ch in text for ch in CONTROL):
            verdicts.append(("misreport", f"whisperdiff {args[0]} printed raw control characters ({m})"))
        elif proc.returncode == 2:
            one = len(lines) == 1 and lines[0].startswith("error: ")
            verdicts.append(("clean error" if one else "misreport", f"whisperdiff {args[0]}: {proc.stderr[:200]}"))
        elif m.expect == "error":
            verdicts.append(("silent-wrong", f"whisperdiff {args[0]} exit {proc.returncode} on damage ({m})"))
        elif args[0] == "check" and m.expect == "finding" and (proc.returncode != 1 or m.op not in proc.stdout):
            verdicts.append(
                (
                    "silent-wrong" if proc.returncode == 0 else "misreport",
                    f"whisperdiff check exit {proc.returncode}, {m.op} not named ({m})",
                )
            )
        elif args[0] in ("check", "report") and m.expect in ("same", "error-or-same") and proc.returncode != 0:
            verdicts.append(("misreport", f"whisperdiff check exit {proc.returncode} on a harmless change ({m})"))
        else:
            verdicts.append(("correct finding", f"whisperdiff {args[0]} exit {proc.returncode}"))
    order = ("correct finding", "clean error", "misreport", "silent-wrong", "internal error", "hang")
    return max(verdicts, key=lambda v: order.index(v[0]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=400, help="mutations (default 400)")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--cli-every", type=int, default=10, help="also run the CLI on every k-th mutation")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before a reader counts as hung")
    args = parser.parse_args()

    import whisperdiff as wd
    from whisperdiff.gate.check import check
    from whisperdiff.gate.fuzz import OUTCOMES, SENTINEL_ENV, mutations

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="whisperdiff-fuzz-") as tmp:
        root = Path(tmp)
        (root / "outside").mkdir()
        sentinel = root / "outside" / "UNPICKLED"
        os.environ[SENTINEL_ENV] = str(sentinel)
        model = wd.load_model(SMALL)
        a = wd.trace("torch", model=model, out=root / "src" / "a", taps=TAPS).path
        b = wd.trace("torch", model=model, out=root / "src" / "b", taps=TAPS).path
        baseline = check(a, b, replay=False).failed_ops
        muts = mutations(b, random.Random(args.seed), args.n, outside=root / "outside")
        judge = Judge(root, args.n, args.seed, baseline)
        counts, by_kind, cli_counts, bad = Counter(), defaultdict(Counter), Counter(), []
        for i, m in enumerate(muts):
            outcome, why = judge(i, args.timeout)
            if m.kind == "hostile-string" or i % args.cli_every == 0:
                work = root / f"cli{i}"
                shutil.copytree(root / "src", work, symlinks=True)
                m.apply(work / m.side)
                cli, cli_why = cli_outcome(m, work / "a", work / "b", args.timeout)
                shutil.rmtree(work, ignore_errors=True)
                cli_counts[cli] += 1
                if cli not in GOOD:
                    bad.append(f"[CLI] {cli}: {cli_why}")
            counts[outcome] += 1
            by_kind[m.kind][outcome] += 1
            if outcome not in GOOD:
                bad.append(f"[API] {outcome}: {why}")
        judge.close()
        unpickled = sentinel.exists()

    print(
        f"fuzz campaign: {args.n} mutations of a small torch trace pair ({TAPS}) "
        f"(seed {args.seed}), {sum(cli_counts.values())} of them also through the CLI, "
        f"{time.perf_counter() - t0:.0f} s"
    )
    print("outcome (API: ls, show, check)   count")
    for o in OUTCOMES:
        print(f"  {o:30} {counts[o]:5}")
    print("outcome (CLI: check, show; report for hostile strings)   count")
    for o in OUTCOMES:
        print(f"  {o:30} {cli_counts[o]:5}")
    print(
        "per mutation kind: "
        + "; ".join(
            f"{k} {sum(c.values())}" + "".join(f" {o}={n}" for o, n in c.items() if o not in GOOD)
            for k, c in sorted(by_kind.items())
        )
    )
    print(f"pickled payload executed: {'YES' if unpickled else 'no'}")
    for line in bad:
        print("  " + line[:400])
    return 1 if bad or unpickled else 0


if __name__ == "__main__":
    sys.exit(main())
