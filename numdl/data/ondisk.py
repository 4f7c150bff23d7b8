"""Data larger than memory: memory-mapped arrays read a batch at a time, with bounded resident memory.

A NumPy memmap (``np.load(path, mmap_mode="r")``, or what ``write_table_memmap`` writes) is indexed
like an array, and the operating system reads the pages a batch touches. Those pages then count as
the process's resident memory until they are dropped: ``release`` tells the kernel that this process
no longer needs them (``madvise(MADV_DONTNEED)``; the file is untouched and read again on demand).
``Sequential.fit``, ``evaluate`` and ``predict`` release a memmap's pages every ``RELEASE_BYTES`` of
rows they read, so a file several times larger than memory trains within a fixed resident bound.
"""

import mmap

import numpy as np

#: Rows read between two releases of a memmap's pages (bytes of rows, not of the file).
RELEASE_BYTES = 16 << 20


def is_paged(array):
    return isinstance(array, np.memmap) and getattr(array, "_mmap", None) is not None


def release(array):
    """Drop the resident pages of a memmap (nothing for an ordinary array)."""
    if is_paged(array) and hasattr(mmap, "MADV_DONTNEED"):
        array._mmap.madvise(mmap.MADV_DONTNEED)


#: Bytes of rows read as one contiguous piece of a memmapped training set in a shuffled epoch: large
#: enough that the kernel's read-around of each piece (about a megabyte) adds little to it.
CHUNK_BYTES = 1 << 20


def window_shuffle(rng, n, row_bytes, window_bytes=None):
    """A permutation of range(n) for a shuffled epoch over a memmapped array: contiguous chunks of
    CHUNK_BYTES of rows in random order, and the rows of each window of chunks (``window_bytes`` of
    rows, default a quarter of RELEASE_BYTES) shuffled among themselves. A plain permutation gathers every
    batch from all over the file, and the kernel then maps the whole file into the process (fault-
    around and read-ahead), whatever is released between batches; this keeps each batch's reads in
    one or two windows, as a shuffle buffer does."""
    chunk_rows = max(1, CHUNK_BYTES // max(row_bytes, 1))
    window_rows = max(chunk_rows, (window_bytes or RELEASE_BYTES // 4) // max(row_bytes, 1))
    chunks = rng.permutation(-(-n // chunk_rows))
    per_window = max(1, window_rows // chunk_rows)
    pieces = []
    for begin in range(0, len(chunks), per_window):
        rows = np.concatenate([np.arange(c * chunk_rows, min((c + 1) * chunk_rows, n))
                               for c in chunks[begin:begin + per_window]])
        pieces.append(rng.permutation(rows))
    return np.concatenate(pieces) if pieces else np.arange(0)


class PageBudget:
    """Counts the bytes of rows read from ``array`` and releases its pages every RELEASE_BYTES
    (reads should be local: slices, or a window_shuffle order)."""

    def __init__(self, array):
        self.array = array if is_paged(array) else None
        self.row_bytes = array[0:1].nbytes if self.array is not None and len(array) else 0
        self.read = 0

    def took(self, rows):
        if self.array is None:
            return
        self.read += rows * self.row_bytes
        if self.read >= RELEASE_BYTES:
            release(self.array)
            self.read = 0


def count_non_finite_blocks(array, count_non_finite, block_rows=None):
    """Non-finite values of a (possibly memory-mapped) float array, a block of rows at a time, its
    pages released after each block; returns (count, index of the first bad row or None)."""
    rows = len(array)
    row_bytes = array[0:1].nbytes if rows else 1
    block_rows = block_rows or max(1, RELEASE_BYTES // max(row_bytes, 1))
    for begin in range(0, rows, block_rows):
        block = np.ascontiguousarray(array[begin:begin + block_rows]).reshape(-1)
        bad = count_non_finite(block)
        release(array)
        if bad:
            first = int(np.argwhere(~np.isfinite(block))[0][0]) // max(1, array[0:1].size)
            return bad, begin + first
    return 0, None
