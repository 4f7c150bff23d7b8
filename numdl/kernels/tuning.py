"""Tunables of every kernel, in one place so that nobody hunts for magic numbers.

Change a value here and every kernel family picks it up at its next compile.
"""

# LLVM fast-math flags for CPU kernels. Deliberately without ``nnan`` and ``ninf``: the NaN guard,
# -inf masks and overflow checks must keep working. ``reassoc`` is what lets reductions vectorise.
CPU_FASTMATH = {"contract", "arcp", "nsz", "reassoc", "afn"}

# Options shared by every ``@njit`` kernel: cached on disk so a second process loads instead of
# recompiling; numpy's error model makes division ~10x faster (no ZeroDivisionError branch).
CPU_JIT_OPTIONS = dict(cache=True, fastmath=CPU_FASTMATH, error_model="numpy", nogil=True)

# numba-cuda's fastmath is all-or-nothing (it includes nnan/ninf and flush-to-zero), so it stays off.
CUDA_JIT_OPTIONS = dict(fastmath=False)

# Grid-stride launches: this many threads per block, and at most this many blocks; every kernel
# loops over its work items, so any grid size is correct and these only trade occupancy for launches.
CUDA_THREADS_PER_BLOCK = 256
CUDA_MAX_BLOCKS = 4096

# Threads per block of the recurrent kernels (one block per sample, threads over hidden units).
CUDA_RECURRENT_THREADS = 128

# Compute capability that the PTX checks target when no GPU is present (H100/H200: Hopper, sm_90).
PTX_CHECK_COMPUTE_CAPABILITY = (9, 0)

# Kernels that split a batch over numba's threads (the recurrent CPU kernels) give each thread at
# least this many samples. Compiled into the cached kernels: clear numba's cache after a change.
MIN_SAMPLES_PER_THREAD = 16

# matmul (kernels/matmul.py), once numba owns the threads: a product is split over them from this
# many multiply-adds (below, a thread start costs more than it saves), by rows of the output when it
# has at least this many rows (or more rows than columns), else by columns, in blocks of a multiple
# of MATMUL_BLOCK_ALIGN rows or columns (whole BLAS vector tiles). Measured on 2 cores, single-
# threaded BLAS per block: 64x784x128 by columns 143 us, by rows 164 us (the BLAS's own two threads:
# 188 us); 128x64x784 (a weight gradient) by rows 124 us, by columns 140 us (BLAS: 180 us).
MATMUL_MIN_SPLIT_WORK = 1 << 18
MATMUL_MIN_ROWS_TO_SPLIT_ROWS = 128
MATMUL_BLOCK_ALIGN = 16

# Convolutions (kernels/conv.py) build their im2col columns for at most this many elements at a time
# (whole samples, at least one), so that large images in large batches do not need gigabytes of
# columns. Not smaller: chunks that fit the cache (2^18 to 2^24 elements) made single convolutions'
# forward passes faster, but whole training steps slower (backward then rebuilds the columns): the
# reference CNN at batch 128 went from 2,049 to 1,554-1,755 samples/s, examples/unet.toml's U-Net
# from 131 to 100-113.
CONV_COLUMN_CHUNK_ELEMENTS = 1 << 26

# The flipped-kernel dx path of "same" convolutions (kernels/conv.py) runs on images of at least this
# many pixels (and fewer output than input channels); below, its per-sample products were slower.
SAME_CONV_MIN_PIXELS = 256

# Direct 3x3 convolutions (kernels/conv.py, direct_3x3) instead of im2col + GEMM for at most this
# many output channels (the GEMM's rows). Measured in one process, forward + backward, batch 32
# unless noted, direct / im2col time: 1->8 at 64x64 0.35, 16->8 at 64x64 0.27, 8->32 at 32x32 0.67,
# 48->16 at 32x32 0.41, 96->32 at 16x16 0.83, 1->32 at 28x28 (batch 128) 0.83; but 32->64 at 16x16
# 1.18, 32->64 at 14x14 (batch 128) 1.17, 64->128 at 8x8 2.66, 128->128 at 8x8 2.58.
DIRECT_CONV_MAX_OUT_CHANNELS = 32
# The direct loops go over a padded-width plane this many pixels at a time (for every input channel
# and four output channels), so that those output pixels stay in the L1 cache.
DIRECT_CONV_CHUNK_PIXELS = 512

# Passes over memory (ReLU, batch norm, pooling, concatenation) split over numba's threads from this
# many elements, once numba has the cores (common.worth_splitting); below, a thread start costs more
# than half the pass saves.
SPLIT_MIN_ELEMENTS = 1 << 15
