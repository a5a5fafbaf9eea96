"""A Comparison on the terminal: both runs, the ops worth seeing, the first divergence, the findings,
the transcripts, and the command worth running next."""

from __future__ import annotations

import shlex
from collections import Counter

from rich.markup import escape
from rich.table import Table

from whisperdiff.present.cli.app import fmt, out


def shown_rows(c, show_all: bool) -> list[int]:
    """Row positions compare prints: every row with --all; else the diverged rows, the ops that
    introduce the most error, and each one's neighbours (so the step into the error shows)."""
    from whisperdiff.present.report import top_introducers

    t = c.table
    if show_all:
        return list(range(len(t)))
    position = {op: i for i, op in enumerate(t.index)}
    limit = c.tolerance.max_rel_l2 or 0
    introduces = t["diverged"] & ~(t["introduced_rel_l2"] <= limit)  # NaN (no replay, missing op) counts
    keys = [position[op] for op in t.index[introduces.to_numpy()]]
    keys += [position[x["op"]] for x in top_introducers(c, 3)]
    if c.first_divergence in position:
        keys.append(position[c.first_divergence])
    status = t["status"].to_numpy()
    near = {
        j
        for i in keys
        for j in (i - 1, i, i + 1)
        if 0 <= j < len(t) and (j == i or status[j] not in ("not_traced", "not_aligned"))
    }
    return sorted(near)


def _op_table(c, records: list[dict], shown: list[int]) -> Table:
    table = Table(show_lines=False)
    for col in ("", "#", "op", "cosine", "rel L2", "introduced", "max abs", "mean A", "mean B", "std A", "std B"):
        table.add_column(col, justify="left" if col in ("", "op") else "right")
    tol = c.tolerance
    previous = -1
    for i in shown:
        if i > previous + 1:  # a gap: the ops between are folded
            table.add_row("", "", f"[dim]... {i - previous - 1} ops[/]", *[""] * 8)
        previous = i
        row = records[i]
        marker = "▶" if row["op"] == c.first_divergence else ""
        if row["status"] in ("missing_in_b", "missing_in_a", "shape_mismatch", "not_traced", "not_aligned"):
            colour = "dim" if row["status"] in ("not_traced", "not_aligned") else "red"
            table.add_row(
                marker, str(i), escape(row["op"]), f"[{colour}]{row['status'].replace('_', ' ')}[/]", *[""] * 7
            )
            continue
        intro = row["introduced_rel_l2"]
        intro_txt = (
            "-"
            if intro != intro
            else (f"[bold red]{intro:.2e}[/]" if intro > (tol.max_rel_l2 or 0) else f"{intro:.1e}")
        )
        table.add_row(
            marker,
            str(i),
            escape(row["op"]),
            f"{row['cosine']:.6f}",
            f"{row['rel_l2']:.2e}",
            intro_txt,
            fmt(row["max_abs"]),
            fmt(row["mean_a"]),
            fmt(row["mean_b"]),
            fmt(row["std_a"]),
            fmt(row["std_b"]),
            style="red" if row["diverged"] else None,
        )
    return table


def _print_hidden(hidden: list[dict]) -> None:
    """One line for the ops not shown: how many of each status, and the worst of them."""
    counts = Counter(
        "within tolerance"
        if r["status"] == "ok"
        else "diverged, error inherited"
        if r["status"] == "diverged"
        else r["status"].replace("_", " ")
        for r in hidden
    )
    matched = [r for r in hidden if r["rel_l2"] == r["rel_l2"]]
    worst = max(matched, key=lambda r: r["rel_l2"]) if matched else None
    out.print(
        f"[dim]{len(hidden)} ops not shown: "
        + ", ".join(f"{n} {what}" for what, n in counts.items())
        + (f" (largest rel L2 {worst['rel_l2']:.2g} at {escape(worst['op'])})" if worst else "")
        + "; -v/--all shows every op[/]",
        highlight=False,
    )


def print_comparison(c, show_all: bool = False) -> None:
    from whisperdiff.capture.transcript import cap_note

    ma, mb = c.manifest_a, c.manifest_b
    for side, path, m in (("A", c.a, ma), ("B", c.b, mb)):
        injected = "".join(f" [yellow]+{escape(f['name'])}[/]" for f in m.get("injected") or [])
        out.print(
            f"[bold]{side}[/] {escape(str(path))}  {escape(str(m.get('impl')))} on {m.get('device')}, "
            f"{m.get('dtype')}  [dim]{escape(str(m['model'].get('id')))}[/]{injected}",
            highlight=False,
        )
    reasons = c.comparability.warnings  # the not-comparable reasons stand out among the warnings
    for w in c.warnings:
        style = "bold red" if w in reasons else "yellow"
        out.print(f"[{style}]{escape(w)}[/]", highlight=False)
    shown = shown_rows(c, show_all)
    records = c.table.to_dict("records")
    if shown:
        out.print(_op_table(c, records, shown))
    hidden = [records[i] for i in range(len(records)) if i not in set(shown)]
    if hidden:
        _print_hidden(hidden)
    limits = escape(c.limits())
    if c.first_divergence is None:
        out.print(f"[green]no divergence[/]: every op within the limits: {limits}", highlight=False)
    else:
        out.print(
            f"[bold red]first divergence: {escape(c.first_divergence)}[/] [dim](limits: {limits})[/]", highlight=False
        )
    if getattr(c, "decoder", None):  # decoder traces: (op, position) and the logits measures
        print_decoder_summary(c.decoder)
    for f in c.findings:
        colour = {"error": "red", "warning": "yellow", "info": "dim"}[f.severity]
        also = (
            f" [dim](also at {len(f.also_at)} later ops: {escape(', '.join(f.also_at[:3]))}{', ...' if len(f.also_at) > 3 else ''})[/]"
            if f.also_at
            else ""
        )
        out.print(
            f"[{colour}]{f.kind}[/] at {escape(str(f.op or 'manifest'))} [dim](confidence {f.confidence:.2f})[/]: "
            f"{escape(f.message)}{also}",
            highlight=False,
        )
    if not c.findings:
        out.print("[green]no findings[/]")
    if c.transcripts:
        t = c.transcripts
        colour = "green" if t["same"] else "bold red"
        out.print(f"transcript A: {escape(t['a'])}\ntranscript B: {escape(t['b'])}", highlight=False)
        out.print(
            f"[{colour}]transcripts {'identical' if t['same'] else 'differ'}: WER {t['wer']:.1%}, CER {t['cer']:.1%}[/]"
            f" [dim]({cap_note(t.get('max_tokens'))})[/]",
            highlight=False,
        )


def print_decoder_summary(d: dict) -> None:
    if d.get("warning"):
        out.print(f"[bold red]{escape(d['warning'])}[/]", highlight=False)
    first = d.get("first_divergence")
    if first:
        out.print(
            f"[bold red]decoder: first divergence at {escape(first['op'])}, {first['axis']} {first['position']}[/]",
            highlight=False,
        )
    logits = d.get("logits")
    if logits:
        out.print(
            f"logits: top-1 agreement {logits['top1_agreement']:.1%}, KL(A||B) max {logits['max_kl']:.3g} "
            f"mean {logits['mean_kl']:.3g}",
            highlight=False,
        )
        ch = logits.get("first_argmax_change")
        if ch:
            out.print(
                f"[bold red]argmax first changes at position {ch['position']}[/]: A token {ch['a_token']} "
                f"{escape(repr(ch.get('a_text')))} (p={ch['a_prob']:.3f}; B gives it {ch['b_prob_of_a_token']:.3f}), "
                f"B token {ch['b_token']} {escape(repr(ch.get('b_text')))} "
                f"(p={ch['b_prob']:.3f}; A gives it {ch['a_prob_of_b_token']:.3f})",
                highlight=False,
            )
        else:
            out.print("[green]argmax agrees at every position[/]", highlight=False)


def print_next_step(c, html) -> None:
    """The command worth running next, as the last line."""
    a, b = shlex.quote(str(c.a)), shlex.quote(str(c.b))
    steps = []
    if c.first_divergence is not None:
        if html is None:
            steps.append(f"whisperdiff report {a} {b}   (the page with plots)")
        steps.append(f"whisperdiff patch {a} {b}   (which op causes it, and does the text change)")
    else:
        if not c.transcripts and "ln_post" in c.views:
            steps.append(f"whisperdiff compare {a} {b} --transcribe   (do the texts agree too?)")
        steps.append(f"whisperdiff check {a} {b} --tolerances float32   (gate it in CI)")
    out.print("next: " + "\n      ".join(steps), highlight=False, markup=False)
