"""The held-out diagnosis set, scored: `whisperdiff compare` on bugs planted in a third-party port.

    python benchmarks/diagnosis_heldout.py                         # embedded tiny.en, shipped clip, both halves
    python benchmarks/diagnosis_heldout.py --part decoder --only kv-entry-missing --json out.json
    python benchmarks/diagnosis_heldout.py --jobs 2 --work /tmp/heldout --keep
    python benchmarks/diagnosis_heldout.py --set 2                 # the second set (diagnosis_heldout2.py)

The port is Hugging Face transformers' WhisperEncoder / WhisperDecoder with our own log-mel
frontend (benchmarks/heldout_ports.py); the bugs and what counts as naming them are in
benchmarks/heldout_bugs.py, written without reading whisperdiff's analysis code.

References: `whisperdiff trace --impl torch` (float32, and float64 for the float64 clean check) and
`whisperdiff trace-decoder --impl torch --taps all` (openai-whisper's greedy tokens; the port is
teacher-forced on the same tokens). Each bug is traced through whisperdiff.Tracer and compared with
`whisperdiff.compare(reference, port)`. Per bug:

    set   the bug changes its expected op first on this model (a check of the SET, against the clean
          port: every earlier op within float32 noise (rel L2 1e-6; a precision bug's own attention ops
          within the bar), the op beyond rel L2 1e-4 or cosine 0.99999 or non-finite; decoder: every
          earlier position of that op within noise, the expected position beyond the bar)
    op    encoder: compare's first divergent op is the expected op; decoder: (op, token position)
    spec  specific: the top finding (first not of severity "info") is at the expected op and of a kind
          the bug accepts (documented in docs/compare.md now; see heldout_bugs.py for kinds added later)
    prec  precise: specific, and its message contains one of the bug's wording fragments
    misl  misleading: no divergence on a broken port, or a top finding (confidence >= 0.5) of a named
          kind the bug does not accept, or a top message with a phrase naming another mechanism and
          none of the bug's fragments

False alarms: on the clean port (encoder float32 and float64, against the float32 reference and
the float64 one; decoder incremental and full-sequence in float32, incremental in float64), a first
divergence or any finding of severity "error".
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import importlib  # noqa: E402

# The held-out sets: (bug list, port, short name of the port, its name in the log). Set 1 is Hugging
# Face transformers' Whisper; set 2 a from-scratch functional torch port (diagnosis_heldout2.py runs it).
SETS = {
    "1": ("heldout_bugs", "heldout_ports", "hf", "HF"),
    "2": ("heldout2_bugs", "heldout2_ports", "fn", "functional"),
}
hb = hp = None  # the chosen set's bug and port modules (use_set)
_MODEL = None
_CTX: dict = {}


def use_set(which: str) -> None:
    global hb, hp
    hb, hp = (importlib.import_module(m) for m in SETS[which][:2])


def documented_kinds() -> set[str]:
    return set(re.findall(r"^\| `([a-z_]+)` \|", (ROOT / "docs" / "compare.md").read_text(), re.M))


def _whisperdiff(*args):
    exe = Path(sys.executable).with_name("whisperdiff")
    cmd = [str(exe) if exe.exists() else "whisperdiff", *args]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"error: {' '.join(cmd)} failed:\n{r.stderr[-2000:]}")


def _model(spec):
    global _MODEL
    if _MODEL is None:
        import whisperdiff as wd

        _MODEL = wd.load_model(spec)
    return _MODEL


def _top(c):
    for f in c.findings:
        if f.severity != "info":
            return f
    return None


def _first(c):
    """(op, position) of compare's first divergence; position None for an encoder comparison."""
    dec = getattr(c, "decoder", None) or {}
    fd = dec.get("first_divergence") if isinstance(dec, dict) else None
    if fd:
        return fd.get("op"), fd.get("position")
    return c.first_divergence, None


NOISE = 1e-6  # float32 noise between two runs of one port that compute the same thing in another shape


def _rel(a, b):
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    if not np.isfinite(b).all():
        return float("inf")
    na = np.linalg.norm(a)
    rel = np.linalg.norm(b - a) / max(na, 1e-30)
    cos = float((a * b).sum() / max(na * np.linalg.norm(b), 1e-30))
    return float("inf") if cos < 0.99999 and rel <= 1e-4 else float(rel)


def set_check(bug, bug_trace, clean_trace, weights=False):
    """Does the bug change its expected op first (earlier ops bit-identical, the op beyond the bar)?"""
    import numpy as np

    import whisperdiff as wd

    t, c = wd.load_trace(bug_trace), wd.load_trace(clean_trace)
    want = hb.expected_op(bug, weights=weights)
    for op in c.ops:
        if op == want:
            break
        if op not in t.ops:
            absent = getattr(bug, "absent", None) or ("blocks.2." if bug.name == "block-skipped" else None)
            if absent and op.startswith(absent):
                continue
            return f"{op} missing first"
        if not np.array_equal(np.asarray(t[op]), np.asarray(c[op])):
            # float32 noise is allowed (a bug may change a computation's shape, and so its rounding);
            # a precision bug may move an earlier op of its attention by less than the bar
            limit = 1e-4 if "precision" in bug.kinds else NOISE
            if _rel(np.asarray(c[op]), np.asarray(t[op])) > limit:
                return f"{op} changed first"
    if want not in t.ops:
        return f"{want} not traced"
    a, b = np.asarray(c[want]), np.asarray(t[want])
    if bug.part == "decoder" and bug.position is not None:
        axis = 2 if a.ndim == 4 else 1
        for p in range(bug.position):
            if not np.array_equal(np.take(a, p, axis), np.take(b, p, axis)):
                limit = 1e-4 if "precision" in bug.kinds else NOISE
                if _rel(np.take(a, p, axis), np.take(b, p, axis)) > limit:
                    return f"position {p} changed first"
        a, b = np.take(a, bug.position, axis), np.take(b, bug.position, axis)
    return "ok" if _rel(a, b) > 1e-4 else f"{want} under the bar (rel {_rel(a, b):.1e})"


def score(bug, c, documented):
    got_op, got_pos = _first(c)
    top = _top(c)
    errors = sum(1 for f in c.findings if f.severity == "error")
    return score_parts(
        bug,
        got_op,
        got_pos,
        top.kind if top else None,
        top.op if top else None,
        float(top.confidence) if top else None,
        top.message if top else "",
        errors,
        documented,
    )


def score_parts(bug, got_op, got_pos, kind, op, confidence, msg, errors, documented):
    want = hb.expected_op(bug, weights=False)
    if bug.part == "decoder":
        op_ok = got_op == want and (bug.position is None or got_pos == bug.position)
    else:
        op_ok = got_op == want
    low = (msg or "").lower()
    has_words = any(w.lower() in low for w in bug.words)
    has_wrong = any(w.lower() in low for w in bug.wrong_words)
    accepted = (
        kind is not None
        and kind in documented
        and (kind in bug.kinds or (kind not in hb.VOCABULARY_AT_WRITING and has_words))
    )
    specific = accepted and op == want
    precise = specific and has_words and not has_wrong
    why = ""
    if got_op is None:
        why = "no divergence"
    elif (
        kind is not None
        and kind not in hb.GENERIC
        and kind not in bug.kinds
        and not accepted
        and (confidence or 0) >= 0.5
    ):
        why = f"names {kind}"
    elif kind is not None and not specific and has_wrong and not has_words:
        why = "wrong mechanism in the message"
    return {
        "bug": bug.name,
        "part": bug.part,
        "class": bug.klass,
        "expected": [want, bug.position],
        "got": [got_op, got_pos],
        "op": op_ok,
        "top_kind": kind,
        "top_op": op,
        "confidence": round(confidence, 3) if confidence is not None else None,
        "specific": specific,
        "precise": precise,
        "misleading": bool(why),
        "misleading_why": why,
        "error_findings": errors,
        "message": msg or "",
    }


def rescore(paths, documented):
    """Score again, with the set as it is now, the rows of earlier runs (--json files or rows.jsonl);
    a later row of a bug replaces an earlier one. The set check is kept from the run."""
    rows, clean = {}, []
    for path in paths:
        text = Path(path).read_text()
        if path.endswith(".jsonl"):
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            data = json.loads(text)
            items, clean = data.get("bugs", []), clean + data.get("clean", [])
        for r in items:
            bug = hb.BY_NAME.get(r["bug"])
            if bug is None:
                continue
            new = score_parts(
                bug,
                r["got"][0],
                r["got"][1],
                r["top_kind"],
                r["top_op"],
                r["confidence"],
                r["message"],
                r.get("error_findings", 0),
                documented,
            )
            new["set"] = r.get("set", "?")
            rows[bug.name] = new
    order = {b.name: i for i, b in enumerate(hb.ALL)}
    return sorted(rows.values(), key=lambda r: order[r["bug"]]), clean


def _clean_alarm(c, label):
    top = _top(c)
    errors = [f for f in c.findings if f.severity == "error"]
    got, pos = _first(c)
    alarm = got is not None or bool(errors)
    return {
        "variant": label,
        "false_alarm": alarm,
        "first_divergence": [got, pos],
        "errors": len(errors),
        "top": f"{top.kind} at {top.op}: {top.message[:160]}" if top else None,
    }


def run_bug(name):
    """Trace one bug, compare, score (in a worker or in-process)."""
    import whisperdiff as wd

    ctx = _CTX
    bug = hb.BY_NAME[name]
    model = _model(ctx["model"])
    out = Path(ctx["work"]) / f"bug-{name}"
    t0 = time.perf_counter()
    if out.exists():
        shutil.rmtree(out)
    if bug.part == "encoder":
        hp.trace_encoder(out, model, bug.name)
        ref, clean = ctx["ref_enc"], ctx["port_enc"]
    else:
        hp.trace_decoder(out, model, bug.name, encoder_output=ctx["enc_out"], **_decoder_kw(ctx))
        ref = ctx["ref_dec"]
        clean = ctx["port_dec_full"] if bug.name in hp.FULL_SEQUENCE_BUGS else ctx["port_dec"]
    t1 = time.perf_counter()
    c = wd.compare(ref, out)
    row = score(bug, c, ctx["documented"])
    row["set"] = set_check(bug, out, clean)
    row["seconds"] = round(time.perf_counter() - t0, 1)
    row["compare_seconds"] = round(time.perf_counter() - t1, 1)
    if not ctx["keep"]:
        shutil.rmtree(out, ignore_errors=True)
    return row


def _decoder_kw(ctx) -> dict:
    """The teacher-forced tokens, and the clip's duration where the port takes it (set 1)."""
    import inspect

    kw = dict(tokens=ctx["tokens"], prompt_length=ctx["prompt_length"])
    if "duration_s" in inspect.signature(hp.trace_decoder).parameters:
        kw["duration_s"] = ctx["duration_s"]
    return kw


def _init_worker(ctx):
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    use_set(ctx["set"])
    _CTX.update(ctx)
    torch.set_num_threads(ctx.get("threads", 1))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--set", choices=sorted(SETS), default="1", help="which held-out set (2: diagnosis_heldout2.py)")
    ap.add_argument("--model", default="default")
    ap.add_argument("--part", choices=("encoder", "decoder", "both"), default="both")
    ap.add_argument("--only", action="append", default=[])
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--work", default=None, help="folder for the traces (default: a temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep every bug's trace")
    ap.add_argument("--no-float64", action="store_true", help="skip the float64 clean checks")
    ap.add_argument("--no-clean", action="store_true", help="skip the false-alarm checks on the clean port")
    ap.add_argument("--clean-only", action="store_true", help="only the false-alarm checks on the clean port")
    ap.add_argument(
        "--rescore",
        nargs="+",
        default=None,
        metavar="FILE",
        help="no runs: score again the rows of earlier --json files / rows.jsonl with the set as it is now",
    )
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    use_set(args.set)
    short, port = SETS[args.set][2:]

    if args.rescore:
        rows, clean = rescore(args.rescore, documented_kinds())
        report(rows, clean)
        if args.json:
            Path(args.json).write_text(json.dumps({"bugs": rows, "clean": clean}, indent=1, default=str))
        return 0

    import torch

    import whisperdiff as wd

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix=f"heldout{args.set}-"))
    work.mkdir(parents=True, exist_ok=True)
    documented = documented_kinds()
    bugs = [
        b for b in hb.ALL if (args.part == "both" or b.part == args.part) and (not args.only or b.name in args.only)
    ]
    parts = {b.part for b in bugs}
    model = _model(args.model)
    t_start = time.perf_counter()
    ctx = {
        "set": args.set,
        "model": args.model,
        "work": str(work),
        "documented": documented,
        "keep": args.keep,
        "threads": 1 if args.jobs > 1 else torch.get_num_threads(),
    }
    clean_rows = []

    def log(msg):
        print(f"[{time.perf_counter() - t_start:6.0f}s] {msg}", file=sys.stderr, flush=True)

    if "encoder" in parts:
        ctx["ref_enc"] = str(work / "ref-enc")
        if not (work / "ref-enc" / "manifest.json").exists():
            log("reference encoder (whisperdiff trace --impl torch)")
            _whisperdiff("trace", "--impl", "torch", "--model", args.model, "-o", ctx["ref_enc"])
        ctx["port_enc"] = str(work / f"{short}-enc")
        log(f"clean {port} encoder, float32")
        if not (Path(ctx["port_enc"]) / "manifest.json").exists():
            hp.trace_encoder(ctx["port_enc"], model, None)
        if not args.no_clean:
            clean_rows.append(_clean_alarm(wd.compare(ctx["ref_enc"], ctx["port_enc"]), "encoder float32"))
        if not args.no_float64 and not args.no_clean:
            ref64 = str(work / "ref-enc-f64")
            if not (Path(ref64) / "manifest.json").exists():
                log("reference encoder, float64")
                _whisperdiff("trace", "--impl", "torch", "--dtype", "float64", "--model", args.model, "-o", ref64)
            enc64 = work / f"{short}-enc-f64"
            log(f"clean {port} encoder, float64")
            if not (enc64 / "manifest.json").exists():
                hp.trace_encoder(enc64, model, None, dtype="float64")
            clean_rows.append(_clean_alarm(wd.compare(ctx["ref_enc"], enc64), "encoder float64 vs ref float32"))
            clean_rows.append(_clean_alarm(wd.compare(ref64, enc64), "encoder float64 vs ref float64"))
    if "decoder" in parts:
        ctx["ref_dec"] = str(work / "ref-dec")
        if not (work / "ref-dec" / "manifest.json").exists():
            log("reference decoder (whisperdiff trace-decoder --impl torch --taps all)")
            _whisperdiff(
                "trace-decoder", "--impl", "torch", "--taps", "all", "--model", args.model, "-o", ctx["ref_dec"]
            )
        ref = wd.load_trace(ctx["ref_dec"])
        ctx["tokens"] = list(ref.manifest["decoder"]["tokens"])
        ctx["prompt_length"] = int(ref.manifest["decoder"]["prompt_length"])
        ctx["duration_s"] = ref.manifest["input"].get("duration_s")
        log(f"clean {port} encoder output for the decoder")
        ctx["enc_out"] = hp.clean_encoder_output(model)
        kw = _decoder_kw(ctx)
        ctx["port_dec"], ctx["port_dec_full"] = str(work / f"{short}-dec"), str(work / f"{short}-dec-full")
        log(f"clean {port} decoder, incremental and full-sequence")
        if not (Path(ctx["port_dec"]) / "manifest.json").exists():
            hp.trace_decoder(ctx["port_dec"], model, None, encoder_output=ctx["enc_out"], full=False, **kw)
        if not (Path(ctx["port_dec_full"]) / "manifest.json").exists():
            hp.trace_decoder(ctx["port_dec_full"], model, None, encoder_output=ctx["enc_out"], full=True, **kw)
        if not args.no_clean:
            clean_rows.append(_clean_alarm(wd.compare(ctx["ref_dec"], ctx["port_dec"]), "decoder float32 (KV cache)"))
            clean_rows.append(
                _clean_alarm(wd.compare(ctx["ref_dec"], ctx["port_dec_full"]), "decoder float32 (full sequence)")
            )
        if not args.no_float64 and not args.no_clean:
            dec64 = work / f"{short}-dec-f64"
            log(f"clean {port} decoder, float64")
            if not (dec64 / "manifest.json").exists():
                enc64 = hp.clean_encoder_output(model, torch.float64)
                hp.trace_decoder(dec64, model, None, encoder_output=enc64, dtype="float64", **kw)
            clean_rows.append(_clean_alarm(wd.compare(ctx["ref_dec"], dec64), "decoder float64 vs ref float32"))

    _CTX.update(ctx)
    rows = []
    names = [] if args.clean_only else [b.name for b in bugs]
    if args.jobs > 1:
        import multiprocessing as mp

        # spawn, not fork: a child forked after torch ran its thread pool can hang
        with mp.get_context("spawn").Pool(args.jobs, initializer=_init_worker, initargs=(ctx,)) as pool:
            for row in pool.imap_unordered(run_bug, names):
                log(f"{row['bug']}: op {row['op']} specific {row['specific']} ({row['seconds']} s)")
                rows.append(row)
                with open(work / "rows.jsonl", "a") as fh:
                    fh.write(json.dumps(row, default=str) + "\n")
    else:
        for name in names:
            row = run_bug(name)
            log(f"{row['bug']}: op {row['op']} specific {row['specific']} ({row['seconds']} s)")
            rows.append(row)
            with open(work / "rows.jsonl", "a") as fh:
                fh.write(json.dumps(row, default=str) + "\n")

    order = {n: i for i, n in enumerate(names)}
    rows.sort(key=lambda r: order[r["bug"]])
    report(rows, clean_rows)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {"bugs": rows, "clean": clean_rows, "model": args.model, "documented_kinds": sorted(documented)},
                indent=1,
                default=str,
            )
        )
    if not args.work and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _mark(v):
    return "yes" if v else "-"


def report(rows, clean_rows):
    for part in ("encoder", "decoder"):
        pr = [r for r in rows if r["part"] == part]
        if not pr:
            continue
        print(f"\n{part} bugs ({len(pr)})")
        hdr = f"{'bug':36} {'class':10} {'expected':42} {'got':42} {'set':4} {'op':3} {'spec':4} {'prec':4} {'misl':4}  top finding"
        print(hdr)
        print("-" * len(hdr))
        for r in pr:
            exp = r["expected"][0] + (f" @{r['expected'][1]}" if part == "decoder" else "")
            got = str(r["got"][0]) + (f" @{r['got'][1]}" if part == "decoder" else "")
            top = f"{r['top_kind']} at {r['top_op']} ({r['confidence']})" if r["top_kind"] else "none"
            if r["misleading"]:
                top += f"  [misleading: {r['misleading_why']}]"
            print(
                f"{r['bug']:36} {r['class']:10} {exp:42} {got:42} {('ok' if r['set'] == 'ok' else 'BAD'):4} "
                f"{_mark(r['op']):3} {_mark(r['specific']):4} {_mark(r['precise']):4} {_mark(r['misleading']):4}  {top}"
            )
        n = len(pr)
        tot = {k: sum(1 for r in pr if r[k]) for k in ("op", "specific", "precise", "misleading")}
        bad = [r["bug"] + ": " + r["set"] for r in pr if r["set"] != "ok"]
        print(
            f"TOTAL {part}: op {tot['op']}/{n} ({100 * tot['op'] / n:.0f} %), specific {tot['specific']}/{n} "
            f"({100 * tot['specific'] / n:.0f} %), precise {tot['precise']}/{n}, misleading {tot['misleading']}, "
            f"set checks failing {len(bad)}" + (f" ({'; '.join(bad)})" if bad else "")
        )
    if clean_rows:
        print("\nclean port (false alarms)")
        for c in clean_rows:
            print(
                f"  {c['variant']:36} {'FALSE ALARM' if c['false_alarm'] else 'clean':12} first divergence "
                f"{c['first_divergence'][0]}, {c['errors']} error finding(s)"
                + (f"; top: {c['top']}" if c["top"] else "")
            )
        print(f"TOTAL false alarms: {sum(1 for c in clean_rows if c['false_alarm'])}/{len(clean_rows)}")


if __name__ == "__main__":
    sys.exit(main())
