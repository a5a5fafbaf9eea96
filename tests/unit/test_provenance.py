"""provenance.py: what the digests cover, and versions read without importing the packages."""

import hashlib
import platform

import numpy as np

from whisperdiff.provenance import sha256_array, sha256_bytes, sha256_file, versions


def test_sha256_bytes_covers_the_raw_bytes_in_c_order():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert sha256_bytes(a) == hashlib.sha256(a.tobytes()).hexdigest()
    assert sha256_bytes(a.T) == hashlib.sha256(np.ascontiguousarray(a.T).tobytes()).hexdigest()
    assert sha256_bytes(a.reshape(4, 3)) == sha256_bytes(a)  # only the bytes: the shape is not covered


def test_sha256_array_also_covers_dtype_and_shape():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert sha256_array(a) == sha256_array(a.copy())
    assert sha256_array(a) != sha256_array(a.reshape(4, 3))
    assert sha256_array(a) != sha256_array(a.astype(np.float64))
    assert sha256_array(a[:, ::2]) == sha256_array(np.ascontiguousarray(a[:, ::2]))
    b = a.copy()
    b[2, 3] = np.nextafter(b[2, 3], np.float32(100))
    assert sha256_array(a) != sha256_array(b)


def test_sha256_file_in_chunks(tmp_path):
    data = bytes(range(256)) * 100
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f", chunk=1000) == hashlib.sha256(data).hexdigest()


def test_versions_come_from_metadata():
    found = versions()
    assert found["python"] == platform.python_version()
    assert found["numpy"] == np.__version__
    assert set(found) == {"python", "whisperdiff", "torch", "max", "openai-whisper", "numpy"}
