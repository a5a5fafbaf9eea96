"""Fuzz mutations of the manifest: wrong types, dropped, unknown or duplicated keys, broken JSON, and hostile
strings (terminal escapes, markup, bidi controls) where a reader prints them."""

from __future__ import annotations

import json

from whisperdiff.gate.fuzz_mutation import Maker, Mutation, read_manifest, set_path, write_manifest
from whisperdiff.store.digest import WRITTEN
from whisperdiff.store.trace import MANIFEST

HOSTILE = {
    "ansi": "\x1b[2J\x1b[H\x1b[32mPASS: every op within tolerances\x1b[0m",
    "markup": "[/] [bold red]x[/bold red] [link=http://x]y[/link] [",
    "emoji": "my:thumbs_up:trace :smiley:",
    "c1": "csi\x9b31mred\x07bell\x08\r",
    "bidi": "evil\u202etxt.exe\u2066",
    "long": "x" * 100_000,
}
BAD_STRINGS = {"nul": "a\x00b", "surrogate": "a\udc80b"}


def manifest_makers(ops: list[str]) -> dict[str, Maker]:
    """kind -> maker, for a trace with these ops."""

    def manifest_type(rng):
        op = rng.choice(ops)
        where = rng.choice(
            [
                "op.shape",
                "op.file",
                "op.dtype",
                "op.name",
                "op.nbytes",
                f"op.{WRITTEN}",  # the digest a new trace's ops carry
                "op.file_bytes",
                "impl",
                "model",
                "input",
                "runner",
                "run",
                "ops",
                "schema_version",
                "taps",
                "injected",
                "model.id",
                "model.source",
                "model.dims",
                "input.path",
                "input.window",
                "model.dims.n_mels",
                "transcript",
            ]
        )
        value = rng.choice(
            [
                None,
                7,
                -1,
                2**70,
                1.5,
                True,
                "x",
                [],
                [1, "a"],
                {},
                {"a": 1},
                "../../etc/passwd",
                "tensors/" + "a" * 5000 + ".npy",
            ]
        )

        def apply(t):
            m = read_manifest(t)
            if where.startswith("op."):
                entry = next(o for o in m["ops"] if o["name"] == op)
                entry[where[3:]] = value
            else:
                set_path(m, tuple(where.split(".")), value)
            write_manifest(t, m)

        return Mutation(
            "manifest-type", "error-or-same", op if where.startswith("op.") else None, f"{where} = {value!r:.40}", apply
        )

    def manifest_key(rng):
        op = rng.choice(ops)
        how = rng.choice(
            [
                "drop-op-key",
                "drop-required",
                "drop-optional",
                "unknown-key",
                "duplicate-op",
                "empty-ops",
                "schema",
                "schema-version",
                "nan-constant",
                "not-json",
                "deep",
                "bad-utf8",
                "big-int",
            ]
        )
        key = rng.choice(["name", "file", "shape", "dtype", "nbytes", WRITTEN])
        required = rng.choice(["ops", "impl", "schema", "schema_version"])
        optional = rng.choice(["runner", "versions", "run", "device"])
        version = rng.choice([0, 3, 99, "1", 1.0, True, None, -1])
        expect = "same" if how in ("drop-optional", "unknown-key") else "error"

        def apply(t):
            m = read_manifest(t)
            entry = next(o for o in m["ops"] if o["name"] == op)
            if how == "drop-op-key":
                del entry[key]
            elif how == "drop-required":
                del m[required]
            elif how == "drop-optional":
                m.pop(optional, None)
            elif how == "unknown-key":
                m["from_the_future"] = {"x": [1, 2]}
                entry["extra"] = "yes"
            elif how == "duplicate-op":
                m["ops"].append(dict(entry))
            elif how == "empty-ops":
                m["ops"] = []
            elif how == "schema":
                m["schema"] = "whisperdiff.other"
            elif how == "schema-version":
                m["schema_version"] = version
            if how == "nan-constant":
                text = json.dumps(m).replace('"nbytes": ', '"nbytes": NaN, "x": ', 1)
            elif how == "not-json":
                text = json.dumps(m)[:-3]
            elif how == "deep":
                text = json.dumps(m)[:-1] + ', "deep": ' + "[" * 100000 + "]" * 100000 + "}"
            elif how == "bad-utf8":
                (t / MANIFEST).write_bytes(json.dumps(m).encode()[:-1] + b'\xff\xfe"}')
                return
            elif how == "big-int":
                text = json.dumps(m).replace('"nbytes": ', '"nbytes": 1' + "0" * 5000 + ', "y": ', 1)
            else:
                text = json.dumps(m)
            (t / MANIFEST).write_text(text)

        detail = {
            "drop-op-key": key,
            "drop-required": required,
            "drop-optional": optional,
            "schema-version": repr(version),
        }.get(how, "")
        return Mutation("manifest-key", expect, op, f"{how} {detail}".strip(), apply)

    def hostile_string(rng):
        name = rng.choice(sorted(HOSTILE) + sorted(BAD_STRINGS))
        text = HOSTILE.get(name) or BAD_STRINGS[name]
        where = rng.choice(
            [
                ("impl",),
                ("model", "id"),
                ("model", "source"),
                ("input", "path"),
                ("runner", "encoder"),
                ("transcript", "text"),
                ("run", "started"),
                ("injected",),
            ]
        )
        expect = "same" if name in HOSTILE else "error"

        def apply(t):
            m = read_manifest(t)
            if where == ("injected",):
                m["injected"] = [{"name": text, "first_op": text, "description": text}]
            else:
                set_path(m, where, text)
            write_manifest(t, m)

        if where == ("injected",) and expect == "same":
            expect = "error-or-same"  # an unknown fault name may make the traces not comparable: an error
        return Mutation("hostile-string", expect, None, f"{'.'.join(where)} = {name}", apply)

    def provenance(rng):
        # Without the weights' or the input's digest nobody can tell whether two traces are comparable:
        # such a manifest is damaged (it used to pass compare and check as comparable).
        where = rng.choice(["input", "model", "input.sha256", "model.weights_sha256"])

        def apply(t):
            m = read_manifest(t)
            section, _, key = where.partition(".")
            del (m[section] if key else m)[key or section]
            write_manifest(t, m)

        return Mutation("provenance", "error", None, f"drop {where}", apply)

    return {
        "manifest-type": manifest_type,
        "manifest-key": manifest_key,
        "hostile-string": hostile_string,
        "provenance": provenance,
    }
