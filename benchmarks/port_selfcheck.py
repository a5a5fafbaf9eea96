"""What the held-apart decoder port sets share for their --selfcheck (handsoff_decoder_ports.py,
max_decoder_ports.py): each variant through `whisperdiff trace-decoder --impl FILE:make`, its logits against
openai-whisper's, and the command line. Not alignment code: it reads the logits the port itself returns."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np


def run(cmd: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-800:]}")
    return proc


def logits_rel_l2(ref_dir, out_dir) -> tuple[float, list[float]]:
    """(rel L2 of the port's logits against the reference's, the same per token position)."""
    import whisperdiff as wd

    a = np.asarray(wd.load_trace(ref_dir)["decoder.logits"], dtype=np.float64)
    b = np.asarray(wd.load_trace(out_dir)["decoder.logits"], dtype=np.float64)
    per = np.linalg.norm((b - a)[0], axis=-1) / np.linalg.norm(a[0], axis=-1)
    return float(np.linalg.norm(b - a) / np.linalg.norm(a)), per.tolist()


def reference(work) -> tuple[Path, Path, str]:
    """(the work folder, openai-whisper's decoder trace in it, traced when missing, the whisperdiff command)."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    ref = work / "ref"
    exe = shutil.which("whisperdiff") or str(Path(sys.executable).with_name("whisperdiff"))
    if not (ref / "manifest.json").is_file():
        run([exe, "trace-decoder", "--impl", "torch", "-o", str(ref)])
    return work, ref, exe


def main(doc: str, bugs: dict, selfcheck, work: str) -> None:
    """The port file's command line: --selfcheck [--bugs A,B] [--work DIR]."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument(
        "--selfcheck", action="store_true", help="trace every variant, compare logits with openai-whisper"
    )
    parser.add_argument("--bugs", default=None, help="variants, comma-separated (default: all)")
    parser.add_argument("--work", default=work, help="where the self-check's traces go")
    args = parser.parse_args()
    if not args.selfcheck:
        parser.print_help()
        sys.exit(0)
    chosen = args.bugs.split(",") if args.bugs else None
    for b in chosen or ():
        if b not in bugs:
            parser.error(f"unknown variant {b!r}; one of {', '.join(bugs)}")
    sys.exit(selfcheck(args.work, chosen))
