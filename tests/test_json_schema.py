"""The JSON that `--json` prints is a contract (docs/json.md): every document names its schema and
version, and its fields change only with a version bump.

The fields are read from real documents of real traces (a torch trace, an edited copy that diverges
and lacks an op, two decoder traces) and compared with the list recorded per (schema, version) in
tests/data/json_fields.json.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

import whisperdiff as wd
from whisperdiff.analysis.compare import compare
from whisperdiff.capture.decoder import trace_decoder
from whisperdiff.experiments.bisect import bisect
from whisperdiff.gate.check import check
from whisperdiff.measure.tolerances import load_tolerances
from whisperdiff.store.documents import SCHEMAS, ls_document, show_document
from whisperdiff.store.trace import list_traces

FIELDS = Path(__file__).parent / "data" / "json_fields.json"
DOCS = Path(__file__).parent.parent / "docs" / "json.md"
OPAQUE = {
    "whisperdiff.show": {"manifest"},  # the trace's manifest: its own schema, whisperdiff.trace
    "whisperdiff.bisect": {"comparison"},  # the last step's compare document: whisperdiff.compare
}
TOKENS = [50257, 50362, 383, 2068, 318, 257]  # teacher-forced: <|startoftranscript|><|notimestamps|> and text


def json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def fields(value, path: str = "", opaque=frozenset()) -> dict[str, set[str]]:
    """key path ("ops[].cosine") -> the JSON types seen there, for every value in the document."""
    out: dict[str, set[str]] = {}
    if path:
        out.setdefault(path, set()).add(json_type(value))
    if path in opaque:
        return out
    children = (
        [(f"{path}.{k}" if path else k, v) for k, v in value.items()]
        if isinstance(value, dict)
        else [(f"{path}[]", v) for v in value]
        if isinstance(value, list)
        else []
    )
    for child_path, child in children:
        for p, types in fields(child, child_path, opaque).items():
            out.setdefault(p, set()).update(types)
    return out


def merged(docs: list[dict], opaque=frozenset()) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for doc in docs:
        for p, types in fields(doc, opaque=opaque).items():
            out.setdefault(p, set()).update(types)
    return out


def edited(ref: wd.Trace, out, edit=None, drop=()) -> wd.Trace:
    m = {k: v for k, v in ref.manifest.items() if k not in ("ops", "schema", "schema_version", "created")}
    with wd.TraceWriter(out, m) as writer:
        for name in ref.ops:
            if name not in drop:
                writer.record(name, edit(name, np.array(ref[name])) if edit else np.array(ref[name]))
    return wd.load_trace(out)


@pytest.fixture(scope="module")
def documents(tmp_path_factory, small_random) -> dict[str, list[dict]]:
    """Real documents of each schema, between them every field and every type a field can take."""
    d = tmp_path_factory.mktemp("json")
    ref = wd.trace("torch", model=small_random, out=d / "traces" / "ref")
    flips = {"conv1": lambda x: x.transpose(0, 2, 1), "blocks.0.mlp.fc2": lambda x: -x}  # a layout, a sign flip
    bad = edited(ref, d / "traces" / "bad", lambda n, x: flips[n](x) if n in flips else x, drop=["blocks.1.out"])
    short = wd.trace("torch", model=small_random, out=d / "traces" / "short", taps="output")  # ops not traced
    dec_a = trace_decoder("torch", model=small_random, tokens=TOKENS, out=d / "dec" / "a")
    dec_b = edited(dec_a, d / "dec" / "b", lambda n, x: x[..., ::-1].copy() if n == "decoder.logits" else x)
    (d / "traces" / "broken" / "tensors").mkdir(parents=True)  # an interrupted trace: listed, fields null
    return {
        "whisperdiff.compare": [
            compare(ref, ref).to_json(),
            compare(ref, bad, model=small_random, transcribe=True).to_json(),
            compare(ref, short).to_json(),
            compare(dec_a, dec_b).to_json(),
            compare(dec_a, ref, replay=False).to_json(),  # a decoder against an encoder trace: a warning
        ],
        "whisperdiff.check": [check(ref, ref).to_json(), check(ref, bad).to_json(), check(ref, short).to_json()],
        "whisperdiff.show": [show_document(ref)],
        "whisperdiff.ls": [ls_document(list_traces(d / "traces")), ls_document(list_traces(d / "traces" / "ref"))],
        "whisperdiff.bisect": [  # clean (torch: nothing compiles) and a bug found in two steps (MAX)
            bisect(ref, impl="torch", out=d / "bisect").to_json(),
            bisect(ref, impl="max", inject=["kv-swap"], out=d / "bisect-kv-swap").to_json(),
        ],
    }


def test_every_document_names_its_schema_and_version(documents):
    for schema, docs in documents.items():
        for doc in docs:
            assert list(doc)[:2] == ["schema", "schema_version"]
            assert (doc["schema"], doc["schema_version"]) == (schema, SCHEMAS[schema])
            json.loads(json.dumps(doc, allow_nan=False))  # strict JSON: no NaN or Infinity


def test_fields_change_only_with_a_version_bump(documents):
    recorded = json.loads(FIELDS.read_text())
    for schema, docs in documents.items():
        version = SCHEMAS[schema]
        want = recorded.get(schema, {}).get(str(version))
        seen = merged(docs, OPAQUE.get(schema, frozenset()))
        how = (
            f"bump SCHEMAS[{schema!r}] in src/whisperdiff/store/documents.py, record the fields under the new "
            f"version in {FIELDS.relative_to(FIELDS.parents[2])} and describe the change in docs/json.md"
        )
        assert want is not None, f"{schema} version {version} has no recorded fields: {how}"
        want = {p: set(types) for p, types in want.items()}
        if seen != want:
            changes = [f"+ {p}: {sorted(seen[p])}" for p in sorted(set(seen) - set(want))]
            changes += [f"- {p}: {sorted(want[p])}" for p in sorted(set(want) - set(seen))]
            changes += [
                f"~ {p}: {sorted(want[p])} -> {sorted(seen[p])}"
                for p in sorted(set(seen) & set(want))
                if seen[p] != want[p]
            ]
            pytest.fail(
                f"the fields of {schema} changed but its version is still {version}: {how}\n" + "\n".join(changes)
            )


def test_docs_describe_every_version_and_field():
    recorded, text = json.loads(FIELDS.read_text()), DOCS.read_text()
    for schema, versions in recorded.items():
        assert f"`{schema}`" in text, f"docs/json.md does not describe {schema}"
        for version in versions:
            assert f"{schema}` version {version}" in text, f"docs/json.md has no history entry for {schema} {version}"
        for path in versions[str(SCHEMAS[schema])]:
            leaf = path.rsplit(".", 1)[-1].removesuffix("[]")
            assert f"`{leaf}`" in text, f"docs/json.md does not describe {schema}'s field {path}"


def test_the_cli_prints_the_librarys_documents(tmp_path, small_random):
    ref = wd.trace("torch", model=small_random, out=tmp_path / "traces" / "ref", taps="output")
    shown = json.loads(run_cli("show", str(ref.path), "--json", check=True).stdout)
    assert shown == json.loads(json.dumps(show_document(ref)))
    listed = json.loads(run_cli("ls", str(tmp_path / "traces"), "--json", check=True).stdout)
    assert listed == ls_document(list_traces(tmp_path / "traces"))
    compared = json.loads(run_cli("compare", str(ref.path), str(ref.path), "--json", check=True).stdout)
    assert (compared["schema"], compared["schema_version"]) == ("whisperdiff.compare", 2)
    checked = run_cli("check", str(ref.path), str(ref.path), "--json", "--no-replay")
    assert (
        checked.returncode == 0
        and json.loads(checked.stdout) == check(ref, ref, load_tolerances("float32"), replay=False).to_json()
    )
