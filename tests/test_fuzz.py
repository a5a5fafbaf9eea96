"""Issue 13's fuzz test: a few hundred seeded mutations of a small real trace pair (torch, a small
random model), each read in-process by `ls`, `show` and `check` through the Python API. Every outcome
must be a clean error or a correct finding: never a pass of damaged data, a wrong verdict, an
internal error or a hang. The larger campaign, with the real CLI as well, is benchmarks/fuzz.py."""

import random
import shutil
import signal
from collections import Counter

import whisperdiff as wd
from whisperdiff.gate.check import check
from whisperdiff.gate.fuzz import SENTINEL_ENV, judge, mutations

SMALL = "random:tiny,n_audio_layer=1,n_audio_state=64,n_audio_head=2,n_text_layer=1,n_text_state=64,n_text_head=2"
N, SEED = 200, 13


class Hang(Exception):
    pass


def test_every_mutation_is_a_clean_error_or_a_correct_finding(tmp_path, monkeypatch):
    model = wd.load_model(SMALL)
    src = tmp_path / "src"
    a = wd.trace("torch", model=model, out=src / "a", taps="conv1,blocks.0.out,ln_post").path
    b = wd.trace("torch", model=model, out=src / "b", taps="conv1,blocks.0.out,ln_post").path
    baseline = check(a, b, replay=False).failed_ops
    assert baseline == []
    sentinel = tmp_path / "UNPICKLED"
    monkeypatch.setenv(SENTINEL_ENV, str(sentinel))
    (tmp_path / "outside").mkdir()
    muts = mutations(b, random.Random(SEED), N, outside=tmp_path / "outside")
    assert len({m.kind for m in muts}) >= 14  # every kind of the list

    def alarm(signum, frame):
        raise Hang()

    previous = signal.signal(signal.SIGALRM, alarm)
    counts, bad = Counter(), []
    try:
        for i, m in enumerate(muts):
            work = tmp_path / f"w{i}"
            shutil.copytree(src, work, symlinks=True)
            signal.alarm(20)  # a reader blocked on a FIFO would stop here
            try:
                m.apply(work / m.side)
                outcome, why = judge(m, work / "a", work / "b", baseline)
            except Hang:
                outcome, why = "hang", str(m)
            finally:
                signal.alarm(0)
            counts[outcome] += 1
            if outcome not in ("clean error", "correct finding"):
                bad.append(f"{outcome}: {why}")
            shutil.rmtree(work, ignore_errors=True)
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert not bad, "\n".join(bad[:20])
    assert counts["clean error"] > N / 2 and counts["correct finding"] > N / 10, counts
    assert not sentinel.exists()  # nothing unpickled the pickled array


def test_mutations_are_seeded(tmp_path):
    """The same seed gives the same campaign (a failure can be replayed); another seed another one."""
    model = wd.load_model(SMALL)
    b = wd.trace("torch", model=model, out=tmp_path / "b", taps="ln_post").path
    first = [str(m) for m in mutations(b, random.Random(0), 50)]
    assert first == [str(m) for m in mutations(b, random.Random(0), 50)]
    assert first != [str(m) for m in mutations(b, random.Random(1), 50)]
