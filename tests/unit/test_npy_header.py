"""The trace reader's own .npy header parser agrees with numpy's on every header numpy writes, refuses
what a trace never holds, and is safe to call from many threads at once (numpy's is not on 3.11)."""

import io
import threading

import numpy as np
import pytest

from whisperdiff.store.files import read_npy_header


def npy(array: np.ndarray, version=None) -> io.BytesIO:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, version=version)
    buf.seek(0)
    return buf


@pytest.mark.parametrize("dtype", ["<f4", ">f4", "<f2", "<f8", "|u1", "<i8", "|b1", "<c8"])
@pytest.mark.parametrize("shape", [(), (0,), (7,), (1, 80, 3000), (2, 3, 4, 5)])
@pytest.mark.parametrize("version", [None, (1, 0), (2, 0), (3, 0)])
def test_agrees_with_numpy(dtype, shape, version):
    a = np.zeros(shape, dtype=dtype)
    ours = npy(a, version)
    shape_read, fortran, dt = read_npy_header(ours)
    ref = npy(a, version)
    major, _ = np.lib.format.read_magic(ref)
    want = (np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0)(ref)
    assert (shape_read, fortran, dt) == want
    assert ours.tell() == ref.tell()  # left at the data, as numpy's reader leaves it


def test_fortran_order_is_reported():
    assert read_npy_header(npy(np.asfortranarray(np.zeros((3, 4), "<f4"))))[1] is True


@pytest.mark.parametrize(
    "header",
    [
        b"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': __import__('os')}",
        b"{'descr': '<f4', 'fortran_order': False}",
        b"{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'shape': (3,)}",
        b"{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,)}",
        b"{'descr': '<f4', 'fortran_order': 0, 'shape': (2,)}",
        b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, -1)}",
        b"{'descr': 'not a dtype', 'fortran_order': False, 'shape': (2,)}",
        b"descr",
    ],
)
def test_refuses_headers_a_trace_never_writes(header):
    raw = header + b" " * (63 - len(header) % 64) + b"\n"
    f = io.BytesIO(b"\x93NUMPY\x01\x00" + len(raw).to_bytes(2, "little") + raw)
    with pytest.raises((ValueError, TypeError)):
        read_npy_header(f)


def test_refuses_bad_magic_and_short_files():
    for data in (b"", b"\x93NUMPY", b"PK\x03\x04" + b"\0" * 20, b"\x93NUMPY\x09\x00\x10\x00"):
        with pytest.raises(ValueError):
            read_npy_header(io.BytesIO(data))


def test_many_threads_parse_at_once():
    data = npy(np.zeros((4, 1500, 384), "<f4")).getvalue()[:128]
    failures: list[BaseException] = []

    def work():
        try:
            for _ in range(2000):
                assert read_npy_header(io.BytesIO(data))[0] == (4, 1500, 384)
        except BaseException as e:  # collected, so the main thread fails the test
            failures.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
