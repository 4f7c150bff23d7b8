"""The IDX file format (MNIST, Fashion-MNIST): read and write, plain or gzip-compressed.

Header: two zero bytes, a type code, the number of dimensions, then one big-endian uint32 per
dimension; the data follow, big-endian. Every field is checked against the file's size, so a
truncated or padded file is refused with a message instead of read as garbage.
"""

import gzip
import os
import struct
from pathlib import Path

import numpy as np

from numdl.errors import DataError

_TYPES = {0x08: np.dtype(">u1"), 0x09: np.dtype(">i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
          0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
_CODES = {dtype.newbyteorder("="): code for code, dtype in _TYPES.items()}


def parse_idx(raw, source="<bytes>"):
    """Decode the bytes of one IDX file into a native-endian NumPy array."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{source}: not an IDX file (bad magic number)")
    code, ndim = raw[2], raw[3]
    if code not in _TYPES:
        raise DataError(f"{source}: unknown IDX data type 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{source}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _TYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{source}: IDX header promises {expected} bytes for shape {shape}, file has {len(raw)}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path, cache_dir=None):
    """Read an IDX file (``.gz`` decompressed on the fly).

    ``cache_dir``: keep the decoded array there as ``.npy`` (named by the source's name, size and
    modification time; older entries of that name are removed), so that later reads skip the
    decompression (0.5 s of every Fashion-MNIST start). Only files of at least CACHE_MIN_BYTES are
    cached (small ones decompress at once); a cache that cannot be written is skipped, and one that
    cannot be read is re-made.
    """
    path = Path(path)
    cached = _cache_path(path, cache_dir) if cache_dir is not None and path.suffix == ".gz" else None
    if cached is not None and cached.is_file():
        try:
            return np.load(cached, allow_pickle=False)
        except (OSError, ValueError):
            pass  # damaged: decode again and rewrite it
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"{path}: cannot read ({error})") from None
    array = parse_idx(raw, str(path))
    if cached is not None:
        _write_cache(cached, array)
    return array


CACHE_MIN_BYTES = 1 << 20


def _cache_path(path, cache_dir):
    try:
        stat = path.stat()
    except OSError:
        return None
    if stat.st_size < CACHE_MIN_BYTES:
        return None
    return Path(cache_dir) / f"{path.name}-{stat.st_size}-{stat.st_mtime_ns}.npy"


def _write_cache(cached, array):
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        for old in cached.parent.glob(f"{cached.name.rsplit('-', 2)[0]}-*.npy"):
            old.unlink(missing_ok=True)  # an earlier version of the same source
        tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, cached)  # atomic: a reader sees the old state or the whole file
    except OSError:
        pass


def write_idx(path, array):
    """Write ``array`` as an IDX file (gzip-compressed when the name ends in ``.gz``)."""
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _CODES:
        raise DataError(f"IDX cannot store dtype {array.dtype}")
    header = bytes([0, 0, _CODES[native], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(_TYPES[_CODES[native]]).tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path
