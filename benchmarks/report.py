"""Size of the HTML report and how fast it is made and opened (tiny.en, the issue's goals: < 5 MB, opens < 2 s).

Traces torch and MAX on the embedded default (MAX also with `missing-ln-post`), then for each pair
times `compare` and `render` separately, writes the report, and opens it 5 times in headless Chromium
(a fresh tab each time), reporting the browser's own navigation-to-load-event time. Prints figures;
asserts nothing.

    python benchmarks/report.py [--dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to put the traces and reports (default: a temp dir)"
    )
    parser.add_argument("--opens", type=int, default=5)
    args = parser.parse_args()

    import whisperdiff as wd
    from whisperdiff.present.browser import Browser
    from whisperdiff.present.report import render

    root = args.dir or Path(tempfile.mkdtemp(prefix="whisperdiff-bench-"))
    model = wd.load_model()
    ref = wd.trace("torch", model=model, out=root / "torch")
    pairs = {
        "clean": wd.trace("max", model=model, out=root / "max"),
        "missing-ln-post": wd.trace("max", model=model, out=root / "max-bug", inject=["missing-ln-post"]),
    }
    print(
        f"{'report':18} {'compare s':>10} {'render s':>9} {'size MB':>8} {'open s (median of ' + str(args.opens) + ')':>24} {'max':>6}"
    )
    with Browser() as browser:
        for name, cand in pairs.items():
            t0 = time.perf_counter()
            comparison = wd.compare(ref, cand, model=model)
            t1 = time.perf_counter()
            page = render(comparison)
            t2 = time.perf_counter()
            path = root / f"{name}.html"
            path.write_text(page, encoding="utf-8")
            opens = [browser.open(path).load_seconds for _ in range(args.opens)]
            print(
                f"{name:18} {t1 - t0:10.2f} {t2 - t1:9.2f} {path.stat().st_size / 2**20:8.2f} "
                f"{statistics.median(opens):24.3f} {max(opens):6.3f}"
            )
    print(f"reports in {root}")


if __name__ == "__main__":
    main()
