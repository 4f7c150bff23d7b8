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

# The recurrent CPU forward projects its inputs (W_ih x_t) a chunk of steps at a time, about this many
# rows (samples x steps) a product: few enough that the chunk stays in the cache, enough that the
# BLAS runs near its speed on the whole batch.
RECURRENT_PROJECTION_ROWS = 256

# matmul (kernels/matmul.py), once numba owns the threads: a product is split over them from this
# many multiply-adds (below, a thread start costs more than it saves), by rows of the output when it
# has at least this many rows (or more rows than columns), else by columns, in blocks of a multiple
# of MATMUL_BLOCK_ALIGN rows or columns (whole BLAS vector tiles). Measured on 2 cores, single-
# threaded BLAS per block: 64x784x128 by columns 143 us, by rows 164 us (the BLAS's own two threads:
# 188 us); 128x64x784 (a weight gradient) by rows 124 us, by columns 140 us (BLAS: 180 us).
# Products at least MATMUL_WIDE_COLUMNS times wider than tall split by columns whatever their rows
# (products over a batch of image columns, as im2col GEMMs; each thread then reads half the columns;
# 128x1152x2048 by rows
# 4.8-6.0 ms, by columns 4.5-4.9; 128x576x2048 2.7-2.9 against 2.1-2.3).
MATMUL_MIN_SPLIT_WORK = 1 << 18
# ... and by the inner dimension when it is at least this many times the output's larger side (a
# weight gradient over a batch of rows): each thread's product is then a full output over a share
# of the rows, added after. dW = g^T x on two numba threads: 64x128 over 2048 rows by rows 258 us,
# by the inner dimension 220; 64x49 over 2048 119 / 104; 192x64 over 2048 332-340 / 322-358; at
# 3-4x (256x128 over 768, 128x128 over 512) rows were as fast or 5% faster.
MATMUL_SPLIT_INNER_RATIO = 8
MATMUL_MIN_ROWS_TO_SPLIT_ROWS = 128
MATMUL_WIDE_COLUMNS = 8
MATMUL_BLOCK_ALIGN = 16
# ``product`` (kernels/matmul.py), float32: a block of 4 rows x 64 columns of c summed in registers
# (16-lane vectors, numdl.kernels.simd) when b, streamed once per 4 rows of a, fits in this many
# elements (cache-resident: 1 MiB); else, and for the rows and columns past whole blocks, the BLAS.
# One thread: 64x128x512 73 us against OpenBLAS's 99, 64x512x128 74 / 100, 64x784x128 111 / 152,
# 128x128x512 146 / 179 (115 against 84-94 GFLOP/s; no packing of b, which the BLAS does every call).
SIMD_PRODUCT_MAX_B = 1 << 18
# ``split_product``: below this many multiply-adds the BLAS alone (the leftover rows and columns of a
# register-blocked product cost a BLAS call of their own: 64x64x10 3.0 us against the BLAS's 2.2).
SPLIT_PRODUCT_MIN_WORK = 1 << 16
# a @ b^T (x @ W^T) by 4 x 4 blocks of dot products (16 lane sums a block) from an inner dimension of
# this many, and up to this many rows per inner element; otherwise b transposed once and the a @ b
# blocks. Two threads, dot products / OpenBLAS: 64x128 @ (128x128)^T 17.4 / 20.5 us, 64x784 @ (128x784)^T
# 65 / 84, 256x784 @ (128x784)^T 261 / 291, 256x128 @ (128x128)^T 56 / 51, 2048x128 @ (256x128)^T 880 /
# 704, 2048x512 @ (512x32)^T 1070 / 463 (a @ b on two threads beat OpenBLAS at every size tried:
# 2048x192 @ 192x64 238 / 279, 256x128 @ 128x784 255 / 290).
DOT_PRODUCT_MIN_INNER = 128
DOT_PRODUCT_MAX_ROWS_PER_INNER = 2

# Convolutions on the GEMM path (kernels/conv.py) run one BLAS product per sample, or per this many
# output pixels' worth of samples when images are smaller (a call per tiny image costs more than its
# work). Per sample, each thread's columns stay in its cache: 128x32x14x14 -> 64 forward 7.5 ms
# against 18.2 for one whole-batch im2col and GEMM (29 MB of columns), 32x32x16x16 -> 64 3.6 against 5.1.
# Backward takes more columns per product: its weight gradient is a product whose inner dimension
# is the columns (32x128x8x8 -> 128 backward 12.5 ms at 1024 columns, 15.2 at 256).
CONV_GEMM_MIN_COLUMNS = 256
CONV_GEMM_BACKWARD_MIN_COLUMNS = 1024
# ... except backward over images of at most this many output pixels: the whole batch's columns at
# once, each product split over the threads (32x128x8x8 -> 128: 9.9 ms against 19.3 per thread;
# 32x64x8x8 -> 128 4.9 against 5.0; from 14x14 per thread was as fast or faster).
CONV_GEMM_BATCH_BACKWARD_MAX_PIXELS = 100

# Direct 3x3 and 1x1 convolutions (kernels/conv.py, direct_conv) instead of im2col + GEMM for at most this
# many output channels (the GEMM's rows). Measured in one process, forward + backward, batch 32
# unless noted, direct / im2col time: 1->8 at 64x64 0.35, 16->8 at 64x64 0.27, 8->32 at 32x32 0.67,
# 48->16 at 32x32 0.41, 96->32 at 16x16 0.83, 1->32 at 28x28 (batch 128) 0.83; but 32->64 at 16x16
# 1.18, 32->64 at 14x14 (batch 128) 1.17, 64->128 at 8x8 2.66, 128->128 at 8x8 2.58.
DIRECT_CONV_MAX_OUT_CHANNELS = 32
# The direct convolutions stack the padded planes of as many samples as fit this many pixels into
# one (at least one sample), so that small images still give long loops.
DIRECT_CONV_STACK_PIXELS = 4096
# The direct loops go over a padded-width plane this many pixels at a time (for every input channel
# and eight output channels), so that those output pixels stay in the L1 cache.
DIRECT_CONV_CHUNK_PIXELS = 512
# ... and on those planes, one BLAS product per kernel tap instead of the loops (kernels/conv.py,
# shifted_gemm_conv): for a convolution (forward, or dx's) from this many input channels. One thread, 16 samples, GF/s products /
# loops: 8->16 at 64x64 66/48, 16->8 at 64x64 77/39, 48->16 at 32x32 53/37, 32->64 at 14x14 105/39,
# 96->32 at 16x16 73/42, 128->128 at 8x8 112/44; but 1->8 at 64x64 19/49 and 1->32 at 28x28 15/40.
SHIFTED_GEMM_MIN_IN_CHANNELS = 8
# For dweight (products C_out x C_in with the planes' positions as the inner dimension), from this many
# output channels or channel pairs: 16->48 at 32x32 66/46, 96->32 at 16x16 60/48, 64->32 at 14x14
# 64/47, 128->128 at 8x8 98/53; but 48->16 at 32x32 35/47, 32->32 at 14x14 43/53, 8->32 at 32x32 26/49.
SHIFTED_GEMM_DWEIGHT_MIN_OUT_CHANNELS = 48
SHIFTED_GEMM_DWEIGHT_MIN_PAIRS = 2048
# The shifted products run over this many positions at a time (all nine taps per chunk): 48->16 at
# 32x32 over 18,496 positions in one product per tap ran at 30 GF/s, in chunks of 1024 at 116.
SHIFTED_GEMM_CHUNK_PIXELS = 1024

# A dense chain's training step (kernels/dense_chain) splits a batch of at least this many samples
# between the threads, each running every layer on its own samples with its own weight-gradient sums
# (added up after), instead of sharing each product: no buffer then moves between the cores' caches
# mid-step. The reference MLP's step, in-process A/B: 0.94-0.96 of the time at batch 256 and 512, level
# at 128, 1.24 at 64 (a thread's 32 samples write a whole weight gradient for little work).
CHAIN_SPLIT_MIN_SAMPLES = 256
# ... while the per-thread sums of every thread but the first fit in this many bytes.
CHAIN_PARTIALS_MAX_BYTES = 64 << 20

# Passes over memory (ReLU, batch norm, pooling, concatenation) split over numba's threads from this
# many elements, once numba has the cores (common.worth_splitting); below, a thread start costs more
# than half the pass saves.
SPLIT_MIN_ELEMENTS = 1 << 15

# Element-wise passes whose arithmetic can round differently in a vectorised loop's body and in its
# remainder (the optimizer steps: contracted multiply-adds) split in whole chunks of this many
# elements (common.vector_share), so that one thread and several give the same bits: numdl train's
# 109,386 Adam parameters split at 54,693 moved one parameter's last bit at step 30.
SPLIT_ALIGN_ELEMENTS = 1 << 10
