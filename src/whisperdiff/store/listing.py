"""What `ls` shows: every trace in a folder with its status, and whether its tensor bytes were verified.

The fast listing reads each manifest and checks each tensor's file kind, header and size, but not
its digest (that reads every byte): a flipped bit in a tensor body passes it, so such a listing says
"not verified". `verify=True` hashes every tensor too, and lists one whose bytes do not match its
digest as damaged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from whisperdiff.errors import WhisperdiffError
from whisperdiff.store.digest import digest_kind
from whisperdiff.store.files import MANIFEST, TENSOR_DIR, digest_mismatch, open_tensor, read_manifest, tensor_digest
from whisperdiff.store.manifest import Manifest

_LEFTOVER = re.compile(r"^\.(.+)\.(partial|old)-\d{1,10}$")


@dataclass(frozen=True)
class Listing:
    path: Path
    status: str  # "complete", "incomplete[: why]" or "damaged: <why>"
    manifest: Manifest | None
    verified: bool = False  # every tensor's bytes were hashed and matched (ls --verify)

    @property
    def shown_status(self) -> str:
        """The status as `ls` prints it: a complete trace whose bytes were not hashed says so."""
        return "complete (not verified)" if self.status == "complete" and not self.verified else self.status

    def row(self) -> dict:
        m = self.manifest
        return {
            "trace": str(self.path),
            "status": self.status,
            "verified": self.verified,
            "impl": m.impl if m else None,
            "model": m.model.id if m else None,
            "input": Path(m.input.path).name if m and m.input.path else None,
            "ops": len(m.ops) if m else None,
            "bytes": m.nbytes if m else None,
            "created": (m.run or {}).get("started") if m else None,
        }


def _check_files(path: Path, manifest: Manifest, verify: bool) -> str:
    """The checks of `ls`: every tensor a regular file inside the trace, its header what the manifest
    says, its size exact; with verify, its bytes' digest what the manifest says."""
    for op in manifest["ops"]:
        try:
            if not verify:
                with open_tensor(path, op):
                    pass
            elif tensor_digest(path, op)[1] != op[kind := digest_kind(op)]:
                raise digest_mismatch(path, op, kind)
        except WhisperdiffError as e:
            text = str(e)
            if "is missing" in text:
                return f"damaged: {op['file']} missing"
            if "truncated" in text or "bytes, the manifest says" in text or "longer than" in text:
                return f"damaged: {op['file']} truncated or altered"
            return "damaged: " + text.split(" is damaged: ", 1)[-1].removesuffix("; re-run `whisperdiff trace`")
    return "complete"


def _listing(path: Path, verify: bool) -> Listing | None:
    leftover = _LEFTOVER.match(path.name)
    if leftover:  # never listed as complete, whatever it holds
        if leftover.group(2) == "partial":
            return Listing(path, "incomplete", None)
        return Listing(
            path,
            f"incomplete: the previous {leftover.group(1)}, kept by an interrupted replace; "
            "the next trace to that name restores or removes it",
            None,
        )
    if not (path / MANIFEST).exists() and not (path / MANIFEST).is_symlink():
        return Listing(path, "incomplete", None) if (path / TENSOR_DIR).is_dir() else None
    try:
        manifest = read_manifest(path)
    except WhisperdiffError as e:
        return Listing(path, f"damaged: {e}", None)
    status = _check_files(path, manifest, verify)
    return Listing(path, status, manifest, verified=verify and status == "complete")


def list_traces(directory: str | Path = "traces", verify: bool = False) -> list[Listing]:
    """Every trace under `directory` (or `directory` itself if it is one), with its status. One bad
    entry is listed as damaged; it never stops the others from being listed. verify: hash every
    tensor as well (reads every byte), so a flipped bit in a tensor body shows as damaged."""
    directory = Path(directory)
    try:
        if not directory.is_dir():
            raise WhisperdiffError(f"{directory} is not a directory; pass the folder that holds your traces")
        here = (directory / MANIFEST).exists()
        entries = [directory] if here else sorted(directory.iterdir())
    except (OSError, ValueError) as e:
        raise WhisperdiffError(f"cannot list {directory}: {getattr(e, 'strerror', None) or e}") from None
    listings = []
    for path in entries:
        try:
            if not path.is_dir():
                continue
            item = _listing(path, verify)
        except (OSError, ValueError, WhisperdiffError) as e:
            item = Listing(path, f"damaged: {getattr(e, 'strerror', None) or e}", None)
        if item is not None:
            listings.append(item)
    return listings
