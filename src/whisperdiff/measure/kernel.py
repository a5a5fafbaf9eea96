"""onepass.py's kernel as machine code: compiled by numba once per machine, then loaded by llvmlite alone.

numba's own on-disk cache gives the compiled kernel back in ~0.3 s of Python on one core (numba's import,
then its typing and target registries), and every worker of a large compare waited for it: a third of a
clean large-v3 compare, which must take at most twice the time to read both traces. Here the machine code
is kept in whisperdiff's cache (~/.cache/whisperdiff/kernels), keyed by the kernel's source and this
module's, numba's, llvmlite's and Python's versions and this CPU, and loaded by llvmlite in ~0.04 s,
without importing numba. On a miss (a new machine, a new kernel) numba compiles the kernel (~1 s) and
LLVM its IR, the same way every time, so a kept kernel and a fresh one are the same machine code.

The kernel is a C function called through ctypes, which releases the GIL as numba's nogil did. Its IR
declares Python's and numba's helpers for raising an error and numba's for freeing an array: the cfunc
wrapper's error path, which this kernel never takes (it allocates nothing and raises nothing). Any of them
the process lacks (numba's, when numba is not loaded) resolves to abort(), so that a path thought
unreachable stops the process rather than jumping to address 0.

A cache file is a JSON header line (symbol, externals, sha256 of the object) and the object; one that does
not match its digest, or that LLVM refuses, is compiled again and replaced. An unwritable cache costs the
compile each time, nothing else. Where the kernel cannot be had at all (numba or LLVM refuses it), chunk_sums
gives None and `unavailable` says why: compare then measures by numpy and warns.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import importlib.metadata
import json
import os
import re
import sys
import tempfile
import threading
from pathlib import Path

SOURCE = Path(__file__).with_name("onepass.py")
_P, _I, _D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
PROTOTYPE = ctypes.CFUNCTYPE(None, _P, _P, _I, _I, _D, _D, _P, _P, _P)  # onepass.SIGNATURE

_LOCK = threading.Lock()
_LOADED: dict[str, object] = {}  # "kernel", and the llvmlite engine that holds its code


def chunk_sums():
    """onepass.chunk_sums as a ctypes function (loaded once per process; compiled once per machine), or None
    where it cannot be had (`unavailable` says why; the caller measures by numpy instead)."""
    if "kernel" in _LOADED:  # every chunk asks: no lock once loaded
        return _LOADED["kernel"]
    with _LOCK:
        if "kernel" not in _LOADED:
            try:
                _LOADED["engine"], _LOADED["from_cache"], _LOADED["kernel"] = _load()
            except Exception as e:  # numba or LLVM refused (NUMBA_DISABLE_JIT, an unsupported platform)
                first_line = (str(e).strip().splitlines() or [""])[0]
                _LOADED["why"] = f"{type(e).__name__}: {first_line}"
                _LOADED["kernel"] = None
        return _LOADED["kernel"]


def unavailable() -> str | None:
    """Why the kernel cannot be had in this process, or None where it is loaded."""
    chunk_sums()
    return _LOADED.get("why")


def cache_dir() -> Path:
    return Path(os.getenv("XDG_CACHE_HOME") or Path.home() / ".cache") / "whisperdiff" / "kernels"


def cache_path() -> Path:
    """This machine's and this kernel's cache file."""
    import llvmlite
    import llvmlite.binding as llvm

    _init_llvm()
    key = hashlib.sha256()
    for part in (
        SOURCE.read_bytes(),
        Path(__file__).read_bytes(),  # how it is compiled and called
        importlib.metadata.version("numba").encode(),
        llvmlite.__version__.encode(),
        sys.version.encode(),
        llvm.get_process_triple().encode(),
        llvm.get_host_cpu_name().encode(),
        llvm.get_host_cpu_features().flatten().encode(),
    ):
        key.update(hashlib.sha256(part).digest())
    return cache_dir() / f"onepass-{key.hexdigest()[:32]}.bin"


def from_cache() -> bool:
    """Whether this process's kernel came from the cache (else numba compiled it here)."""
    chunk_sums()
    return bool(_LOADED.get("from_cache"))


def _load():
    path = cache_path()
    kept = _read(path)
    if kept is not None:
        try:
            engine, address = _engine(kept)
            return engine, True, PROTOTYPE(address)
        except RuntimeError:  # LLVM refused the object: compile it again
            pass
    ir, symbol = _compile_ir()
    externals, objects = _externals(ir), []
    engine, address = _engine({"ir": ir, "symbol": symbol, "externals": externals}, objects)
    _write(path, symbol, externals, objects[0])
    return engine, False, PROTOTYPE(address)


def _compile_ir() -> tuple[str, str]:
    """The kernel's LLVM IR and its C symbol, from numba (imported here only)."""
    from whisperdiff.measure import onepass

    return onepass.chunk_sums.inspect_llvm(), onepass.chunk_sums.native_name


def _engine(kept: dict, objects: list | None = None):
    """An llvmlite engine holding the kernel (from kept["object"], or compiled from kept["ir"], its object
    appended to `objects`) and the kernel's address."""
    import llvmlite.binding as llvm

    tm = llvm.Target.from_default_triple().create_target_machine(
        cpu=llvm.get_host_cpu_name(), features=llvm.get_host_cpu_features().flatten(), opt=3
    )
    ir = kept.get("ir")
    abort = ctypes.cast(ctypes.CDLL(None).abort, ctypes.c_void_p).value
    for name in kept["externals"]:  # numba's helpers, when numba is not loaded (see the module's docstring)
        if llvm.address_of_symbol(name) is None:
            llvm.add_symbol(name, abort)
    if ir is None:
        engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), tm)
        engine.add_object_file(llvm.ObjectFileRef.from_data(kept["object"]))
    else:
        module = llvm.parse_assembly(ir)
        module.verify()
        engine = llvm.create_mcjit_compiler(module, tm)
        engine.set_object_cache(notify_func=lambda _module, data: objects.append(bytes(data)))
    engine.finalize_object()
    if objects is not None and not objects:
        raise RuntimeError("LLVM compiled the kernel but gave no object to keep")
    address = engine.get_function_address(kept["symbol"])
    if not address:
        raise RuntimeError(f"the kernel's symbol {kept['symbol']} is not in its object")
    return engine, address


def _externals(ir: str) -> list[str]:
    """The functions and globals the IR declares and does not define, but LLVM's own intrinsics."""
    names = re.findall(r'^declare [^@]*@"?([^"(\s]+)"?\(', ir, re.MULTILINE)
    names += re.findall(r'^@"?([^"=\s]+)"? = external ', ir, re.MULTILINE)
    return sorted(name for name in set(names) if not name.startswith("llvm."))


@functools.cache
def _init_llvm() -> None:
    import llvmlite.binding as llvm

    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()


def _read(path: Path) -> dict | None:
    """A cache file's header and object, or None where there is none or it does not match its digest."""
    try:
        data = path.read_bytes()
        line, _, obj = data.partition(b"\n")
        kept = json.loads(line)
        if not isinstance(kept, dict) or kept.get("sha256") != hashlib.sha256(obj).hexdigest():
            return None
        if not isinstance(kept.get("symbol"), str) or not isinstance(kept.get("externals"), list):
            return None
        return {**kept, "object": obj}
    except (OSError, ValueError):
        return None


def _write(path: Path, symbol: str, externals: list[str], obj: bytes) -> None:
    """Keep the object (written whole under a temporary name, then renamed: a reader never sees half)."""
    header = json.dumps({"symbol": symbol, "externals": externals, "sha256": hashlib.sha256(obj).hexdigest()})
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".onepass-")
        with os.fdopen(fd, "wb") as f:
            f.write(header.encode() + b"\n" + obj)
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
