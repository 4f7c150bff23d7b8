"""Recurrent layers, one direction of one layer per call: LSTM and GRU with PyTorch's equations and
gate order (LSTM: i, f, g, o; GRU: r, z, n), a given or zero initial state, per-sample lengths for
padded batches (steps past a sample's length output zeros and leave its state alone; the reverse
direction starts at each sample's last valid step, as PyTorch's packed sequences do).

Shapes: x (N, T, I); lengths (N,) int64; w_ih (G H, I); w_hh (G H, H); b_ih, b_hh (G H,) with G = 4
(LSTM) or 3 (GRU); out (N, T, H); h0, c0 (N, H) the initial hidden and cell states, or empty (zeros;
the GRU has no c0), with gradients dh0, dc0 (empty: not wanted). Saved for backward: ``gates``
(N, T, G H) activated gate values and ``cells`` (N, T, H): LSTM cell states, or for the GRU the
hidden projection W_hn h + b_hn.

CPU: samples are independent, so each numba thread takes a block of them and runs it from the first
step to the last with no barrier (these kernels move the process to numba's pool, the BLAS on one
thread: see numdl.kernels.matmul). Per block: the input projections are one GEMM per chunk of steps
into the block's first rows of ``proj`` (tuning.RECURRENT_PROJECTION_ROWS); each step adds h W_hh^T
with one more GEMM and runs the point-wise update; backward mirrors it, summing the block's share of
dW_hh (and for the LSTM dW_ih, the biases and its rows of dx) step by step while the step's gate
gradients are in the cache; the blocks' shares are added up after. CUDA: one block per sample, one
thread per hidden unit, stepping through time with ``syncthreads``; weight gradients accumulate with
atomics into arrays the launcher zeroed. Backward: ``dproj`` (2, N T, G H) holds the pre-activation
gradients of the input projections [0] and of the hidden projections [1] (equal for the LSTM, whose
CPU kernel does not use it; they differ in the GRU's n gate, whose CPU kernel ends with GEMMs over
them for dW_ih and dx).

Projected LSTM (PyTorch's ``proj_size`` P): the hidden state is h_t = W_hr m_t with m_t = o * tanh(c_t)
and w_hr (P, H), so out, h0 and w_hh's columns have P features while the cells keep H. ``mids``
(N, T, H) saves m_t for backward; ``m_step`` (N, H) gathers one step's m rows for the W_hr product.
In backward ``dh_all`` (N T, P) keeps each step's full dh (for dW_hr) and ``dm_step`` (N, H) one
step's W_hr^T dh. The plain kernels run the same code with an empty w_hr.

The LSTM backward kernels read ``dc_next`` (N, H) on entry as the gradient of the final cell state
c_n (zeros: none; PyTorch's (h_n, c_n) output), which enters at each sample's last valid step (the
reverse direction's step 0). The gradient of h_n needs nothing here: h_n is the output at that step,
so the caller adds it to ``dout`` there.
"""


import numpy as np
from numba import prange
from numba.extending import register_jitable

from numdl.kernels import tuning
from numdl.kernels.activation import sigmoid, tanh
from numdl.kernels.common import (
    cpu_float32_variant,
    cpu_kernel,
    cpu_parallel_kernel,
    cuda,
    cuda_device_function,
    cuda_kernel,
    runs_numba_threads,
    same_type,
    sample_block,
    scalar_math,
)
from numdl.kernels.matmul import product
from numdl.kernels.simd import LANES, vadd, vfma, vload_first, vmul, vsigmoid, vsplat, vstore_first, vsub, vtanh, vzero

# --------------------------------------------------------------------------- scalar math (both targets)


@scalar_math
def step_position(step, length, reverse):
    # The position that time step ``step`` processes in a sample of ``length``, or -1 past its end.
    if step >= length:
        return -1
    return length - 1 - step if reverse else step


@scalar_math
def previous_position(t, reverse):
    return t + 1 if reverse else t - 1


@scalar_math
def lstm_cell(gates, cells, out, pre_i, pre_f, pre_g, pre_o, c_prev, n, t, j, hidden):
    i = sigmoid(pre_i)
    f = sigmoid(pre_f)
    g = tanh(pre_g)
    o = sigmoid(pre_o)
    c = f * c_prev + i * g
    gates[n, t, j] = i
    gates[n, t, hidden + j] = f
    gates[n, t, 2 * hidden + j] = g
    gates[n, t, 3 * hidden + j] = o
    cells[n, t, j] = c
    out[n, t, j] = o * tanh(c)


@scalar_math
def lstm_cell_backward(dproj, row, gates, cells, dh, dc_next, c_prev, n, t, j, hidden):
    # Writes the pre-activation gradients of gate rows j, H+j, 2H+j, 3H+j to dproj[0/1, row];
    # returns dc for the previous step.
    one = same_type(dh, 1.0)
    i = gates[n, t, j]
    f = gates[n, t, hidden + j]
    g = gates[n, t, 2 * hidden + j]
    o = gates[n, t, 3 * hidden + j]
    tc = tanh(cells[n, t, j])
    dc = dc_next + dh * o * (one - tc * tc)
    di = dc * g * i * (one - i)
    df = dc * c_prev * f * (one - f)
    dg = dc * i * (one - g * g)
    do = dh * tc * o * (one - o)
    for side in range(2):
        dproj[side, row, j] = di
        dproj[side, row, hidden + j] = df
        dproj[side, row, 2 * hidden + j] = dg
        dproj[side, row, 3 * hidden + j] = do
    return dc * f


@scalar_math
def gru_cell(gates, hproj, out, pre_r, pre_z, x_n, h_n, h_prev, n, t, j, hidden):
    # pre_r, pre_z: full pre-activations; x_n = W_in x + b_in and h_n = W_hn h + b_hn kept apart.
    one = same_type(h_prev, 1.0)
    r = sigmoid(pre_r)
    z = sigmoid(pre_z)
    cand = tanh(x_n + r * h_n)
    gates[n, t, j] = r
    gates[n, t, hidden + j] = z
    gates[n, t, 2 * hidden + j] = cand
    hproj[n, t, j] = h_n
    out[n, t, j] = (one - z) * cand + z * h_prev


@scalar_math
def gru_cell_backward(dproj, row, gates, hproj, dh, h_prev, n, t, j, hidden):
    # Writes input- and hidden-projection pre-activation gradients; returns the direct dh_prev (z dh).
    one = same_type(dh, 1.0)
    r = gates[n, t, j]
    z = gates[n, t, hidden + j]
    cand = gates[n, t, 2 * hidden + j]
    dcand = dh * (one - z) * (one - cand * cand)
    dz = dh * (h_prev - cand) * z * (one - z)
    dr = dcand * hproj[n, t, j] * r * (one - r)
    dproj[0, row, j] = dr
    dproj[0, row, hidden + j] = dz
    dproj[0, row, 2 * hidden + j] = dcand
    dproj[1, row, j] = dr
    dproj[1, row, hidden + j] = dz
    dproj[1, row, 2 * hidden + j] = dcand * r
    return dh * z


# ---------------------------------------------------------------------------------------- CPU kernels
# Scratch: proj (N T, G H), hh (N, G H), h_prev (N, H); in backward dstep (N, G H),
# h_step (N T, H), of which the CPU uses rows [0, N): one step's previous hidden states, one row per
# sample; dh_next, dc_next (N, H).


@register_jitable
def _gate_lanes(pre, proj_row, bias, offset, lanes):
    # one gate's pre-activation for 16 units: W_hh h + W_ih x + (b_ih + b_hh)
    return vadd(vadd(vload_first(pre, offset, lanes), vload_first(proj_row, offset, lanes)),
                vload_first(bias, offset, lanes))


def _lstm_cells_forward_float32(gate_row, cell_row, out_row, h_row, pre, proj_row, bias, c_prev_row, has_prev):
    # _lstm_cells_forward on 16 units at a time (numdl.kernels.simd), every gate and state in one
    # pass: the scalar version's loops each paid LLVM's alias checks and loop set-up, and its
    # backward's one loop over eleven rows did not vectorise at all (the bench LSTM's cells, one
    # thread, 64 samples, 28 steps: forward 0.69 -> 0.38 ms, backward 0.32 -> 0.13 ms). The same
    # arithmetic as the scalar float32 helpers, so the two agree to an ulp; pre is left as it came.
    hidden = cell_row.size
    for j in range(0, hidden, LANES):
        lanes = hidden - j
        in_gate = vsigmoid(_gate_lanes(pre, proj_row, bias, j, lanes))
        forget_gate = vsigmoid(_gate_lanes(pre, proj_row, bias, hidden + j, lanes))
        cell_gate = vtanh(_gate_lanes(pre, proj_row, bias, 2 * hidden + j, lanes))
        out_gate = vsigmoid(_gate_lanes(pre, proj_row, bias, 3 * hidden + j, lanes))
        vstore_first(gate_row, j, lanes, in_gate)
        vstore_first(gate_row, hidden + j, lanes, forget_gate)
        vstore_first(gate_row, 2 * hidden + j, lanes, cell_gate)
        vstore_first(gate_row, 3 * hidden + j, lanes, out_gate)
        cell = vmul(in_gate, cell_gate)
        if has_prev:  # else c_prev_row is any row, never read (it may hold NaN)
            cell = vfma(forget_gate, vload_first(c_prev_row, j, lanes), cell)
        vstore_first(cell_row, j, lanes, cell)
        hidden_state = vmul(out_gate, vtanh(cell))
        vstore_first(out_row, j, lanes, hidden_state)
        vstore_first(h_row, j, lanes, hidden_state)


@cpu_float32_variant(_lstm_cells_forward_float32)
def _lstm_cells_forward(gate_row, cell_row, out_row, h_row, pre, proj_row, bias, c_prev_row, has_prev):
    # One sample's LSTM cell update at one step, over 1-D rows: pre (4H) holds W_hh h on entry;
    # each pass is a plain loop over contiguous memory, which LLVM vectorises (the per-unit scalar
    # version with four gate reads a unit ran ~4x slower). Same equations as lstm_cell.
    hidden = cell_row.size
    for k in range(pre.size):
        pre[k] += proj_row[k] + bias[k]
    # Each gate's rows as a slice, its loop from 0: loops over range(2 H, 3 H) and range(3 H, 4 H) did
    # not vectorise (numba's negative-index check on a loop index that does not start at 0); a 64-sample
    # block's cells took 1.9 ms over 28 steps that way, 1.2 ms by slices.
    in_gate, forget_gate = gate_row[:hidden], gate_row[hidden:2 * hidden]
    cell_gate, out_gate = gate_row[2 * hidden:3 * hidden], gate_row[3 * hidden:]
    for k in range(2 * hidden):
        gate_row[k] = sigmoid(pre[k])
    pre_cell, pre_out = pre[2 * hidden:3 * hidden], pre[3 * hidden:]
    for j in range(hidden):
        cell_gate[j] = tanh(pre_cell[j])
    for j in range(hidden):
        out_gate[j] = sigmoid(pre_out[j])
    # Three loops, not one: each touches few arrays, so LLVM's alias checks stay cheap and it vectorises.
    # The first step has no previous cell: c_prev_row is then any row (it may hold garbage, even NaN),
    # selected away, never multiplied by zero.
    zero = same_type(pre[0], 0.0)
    for j in range(hidden):
        c_prev = c_prev_row[j] if has_prev else zero
        cell_row[j] = forget_gate[j] * c_prev + in_gate[j] * cell_gate[j]
    for j in range(hidden):
        out_row[j] = out_gate[j] * tanh(cell_row[j])
    for j in range(hidden):
        h_row[j] = out_row[j]


@register_jitable
def _gate_gradient_lanes(dpre_row, db, offset, lanes, gradient):
    # one gate's pre-activation gradient for 16 units, stored and added to the bias gradient
    vstore_first(dpre_row, offset, lanes, gradient)
    vstore_first(db, offset, lanes, vadd(vload_first(db, offset, lanes), gradient))


def _lstm_cells_backward_float32(dpre_row, dc_row, gate_row, cell_row, c_prev_row, has_prev, dh_row, db):
    # _lstm_cells_backward on 16 units at a time (see _lstm_cells_forward_float32), in its order
    hidden = cell_row.size
    one = vsplat(same_type(dpre_row[0], 1.0))
    for j in range(0, hidden, LANES):
        lanes = hidden - j
        in_gate = vload_first(gate_row, j, lanes)
        forget_gate = vload_first(gate_row, hidden + j, lanes)
        cell_gate = vload_first(gate_row, 2 * hidden + j, lanes)
        out_gate = vload_first(gate_row, 3 * hidden + j, lanes)
        tanh_cell = vtanh(vload_first(cell_row, j, lanes))
        dh = vload_first(dh_row, j, lanes)
        dc = vadd(vload_first(dc_row, j, lanes), vmul(vmul(dh, out_gate), vsub(one, vmul(tanh_cell, tanh_cell))))
        c_prev = vload_first(c_prev_row, j, lanes) if has_prev else vzero()
        d_in = vmul(vmul(vmul(dc, cell_gate), in_gate), vsub(one, in_gate))
        d_forget = vmul(vmul(vmul(dc, c_prev), forget_gate), vsub(one, forget_gate))
        d_cell = vmul(vmul(dc, in_gate), vsub(one, vmul(cell_gate, cell_gate)))
        d_out = vmul(vmul(vmul(dh, tanh_cell), out_gate), vsub(one, out_gate))
        _gate_gradient_lanes(dpre_row, db, j, lanes, d_in)
        _gate_gradient_lanes(dpre_row, db, hidden + j, lanes, d_forget)
        _gate_gradient_lanes(dpre_row, db, 2 * hidden + j, lanes, d_cell)
        _gate_gradient_lanes(dpre_row, db, 3 * hidden + j, lanes, d_out)
        vstore_first(dc_row, j, lanes, vmul(dc, forget_gate))


@cpu_float32_variant(_lstm_cells_backward_float32)
def _lstm_cells_backward(dpre_row, dc_row, gate_row, cell_row, c_prev_row, has_prev, dh_row, db):
    # The backward of _lstm_cells_forward for one sample and step, given the step's full dh (H) of
    # o * tanh(c): gate pre-activation gradients into dpre_row (4H), and added to db (4H, the bias
    # gradient summed over samples and steps); dc_row carries dc from the next step in and to the
    # previous step out.
    hidden = cell_row.size
    one = same_type(dpre_row[0], 1.0)
    zero = same_type(dpre_row[0], 0.0)
    for j in range(hidden):
        i = gate_row[j]
        f = gate_row[hidden + j]
        g = gate_row[2 * hidden + j]
        o = gate_row[3 * hidden + j]
        tc = tanh(cell_row[j])
        dh = dh_row[j]
        dc = dc_row[j] + dh * o * (one - tc * tc)
        dpre_row[j] = dc * g * i * (one - i)
        dpre_row[hidden + j] = dc * (c_prev_row[j] if has_prev else zero) * f * (one - f)
        dpre_row[2 * hidden + j] = dc * i * (one - g * g)
        dpre_row[3 * hidden + j] = dh * tc * o * (one - o)
        dc_row[j] = dc * f
    for k in range(dpre_row.size):
        db[k] += dpre_row[k]


@cpu_kernel
def _forward_samples(out, gates, cells, mids, proj, hh, h_prev, m_step, x, lengths, w_ih, w_hh, w_hr, b_ih, b_hh, h0,
                     c0, reverse, is_lstm, lo, hi):
    # Samples lo..hi-1 from first step to last. Only their rows of every buffer are touched, so
    # blocks of samples run on different threads at once (each product on one BLAS thread).
    steps, hidden = cells.shape[1], cells.shape[2]
    projected = w_hr.shape[0] > 0
    block = hi - lo
    # The input projections W_ih x_t by chunks of steps into a buffer that stays in the cache: the
    # block's inputs step-major first (the rows a step needs, contiguous), then one product a chunk
    # (all steps at once into proj, 3.7 MB a thread at batch 128, went out to memory and back: the
    # bench LSTM's forward took 3.81-4.01 ms that way, 3.65-3.86 by chunks of 256 rows).
    inputs_by_step = np.zeros((steps, block, x.shape[2]), x.dtype)
    for n in range(lo, hi):
        for step in range(steps):
            t = step_position(step, lengths[n], reverse)
            if t >= 0:
                inputs_by_step[step, n - lo] = x[n, t]
    chunk = min(steps, max(1, tuning.RECURRENT_PROJECTION_ROWS // block))  # steps a product
    projections = proj[lo * steps:lo * steps + chunk * block]  # this block's rows of the scratch
    out[lo:hi] = 0
    if projected:
        mids[lo:hi] = 0  # padding rows stay zero: dW_hr reads every row
    has_h0, has_c0 = h0.shape[0] > 0, c0.shape[0] > 0
    if has_h0:
        h_prev[lo:hi] = h0[lo:hi]
    else:
        h_prev[lo:hi] = 0
    bias = b_ih + b_hh  # one small array per call, not per step
    # W_hh^T stored contiguous once per call: OpenBLAS multiplies by it faster than by the transposed
    # view of W_hh (64 x 128 x 512 products, 28 steps, one thread: 3.2-3.6 -> 2.6-2.8 ms alone; the
    # bench LSTM's forward 5.5-5.8 -> 5.3-5.6 ms).
    w_hh_t = np.ascontiguousarray(w_hh.T)
    # W_ih^T too: x W_ih^T has a short inner dimension (the features), where a @ b register blocks
    # beat the BLAS's a @ b^T (the bench LSTM, one thread, 64 samples x 28 steps: 0.60 -> 0.39 ms)
    w_ih_t = np.ascontiguousarray(w_ih.T)
    for step in range(steps):
        if step % chunk == 0:
            taken = min(chunk, steps - step)
            product(projections[:taken * block], inputs_by_step[step:step + taken].reshape(taken * block, x.shape[2]),
                    w_ih_t, False, False, False)
        if step == 0 and not has_h0:
            hh[lo:hi] = 0  # a zero initial state: no product needed
        else:
            # float32: register blocks (kernels/matmul.py)
            product(hh[lo:hi], h_prev[lo:hi], w_hh_t, False, False, False)
        for n in range(lo, hi):
            t = step_position(step, lengths[n], reverse)
            if t < 0:
                if projected:
                    m_step[n] = 0  # a finished sample: its row of the product below is ignored
                continue
            prev = previous_position(t, reverse)
            projection = projections[(step % chunk) * block + n - lo]
            if is_lstm:
                if step > 0:
                    c_prev_row = cells[n, prev]
                elif has_c0:
                    c_prev_row = c0[n]
                else:
                    c_prev_row = cells[n, t]  # any row: selected away (see _lstm_cells_forward)
                if projected:  # m_t into mids and m_step; h_t = W_hr m_t follows for the whole block
                    _lstm_cells_forward(gates[n, t], cells[n, t], mids[n, t], m_step[n], hh[n], projection, bias,
                                        c_prev_row, step > 0 or has_c0)
                else:
                    _lstm_cells_forward(gates[n, t], cells[n, t], out[n, t], h_prev[n], hh[n], projection, bias,
                                        c_prev_row, step > 0 or has_c0)
                continue
            for j in range(hidden):  # the GRU, unit by unit
                pre_r = projection[j] + b_ih[j] + hh[n, j] + b_hh[j]
                pre_z = projection[hidden + j] + b_ih[hidden + j] + hh[n, hidden + j] + b_hh[hidden + j]
                x_n = projection[2 * hidden + j] + b_ih[2 * hidden + j]
                h_n = hh[n, 2 * hidden + j] + b_hh[2 * hidden + j]
                gru_cell(gates, cells, out, pre_r, pre_z, x_n, h_n, h_prev[n, j], n, t, j, hidden)
            for j in range(hidden):
                h_prev[n, j] = out[n, t, j]
        if projected:
            # Finished samples get a row too: their h_prev is never read again.
            np.dot(m_step[lo:hi], w_hr.T, h_prev[lo:hi])
            for n in range(lo, hi):
                t = step_position(step, lengths[n], reverse)
                if t >= 0:
                    out[n, t] = h_prev[n]


@cpu_parallel_kernel
def _recurrent_forward_steps(out, gates, cells, mids, proj, hh, h_prev, m_step, x, lengths, w_ih, w_hh, w_hr, b_ih,
                             b_hh, h0, c0, reverse, is_lstm):
    # Overwrites out, gates, cells (LSTM cell states, or the GRU's W_hn h + b_hn per step) and, when
    # projected, mids. Samples are independent: one block of them per thread, each run start to end
    # without a barrier.
    n_batch = out.shape[0]
    block = sample_block(n_batch)
    for part in prange((n_batch + block - 1) // block):
        lo = part * block
        _forward_samples(out, gates, cells, mids, proj, hh, h_prev, m_step, x, lengths, w_ih, w_hh, w_hr, b_ih, b_hh,
                         h0, c0, reverse, is_lstm, lo, min(n_batch, lo + block))


@cpu_kernel
def _no_projection(like):
    # (w_hr, mids, m_step) of a layer without projection: empty arrays of the right rank and dtype.
    return np.empty((0, 0), like.dtype), np.empty((0, 0, 0), like.dtype), np.empty((0, 0), like.dtype)


@runs_numba_threads
@cpu_kernel
def lstm_forward_cpu(out, gates, cells, proj, hh, h_prev, x, lengths, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse):
    w_hr, mids, m_step = _no_projection(x)
    _recurrent_forward_steps(out, gates, cells, mids, proj, hh, h_prev, m_step, x, lengths, w_ih, w_hh, w_hr, b_ih,
                             b_hh, h0, c0, reverse, True)


@runs_numba_threads
@cpu_kernel
def lstm_projected_forward_cpu(out, gates, cells, mids, proj, hh, h_prev, m_step, x, lengths, w_ih, w_hh, w_hr, b_ih,
                               b_hh, h0, c0, reverse):
    # out (N, T, P), h_prev (N, P); mids (N, T, H) and m_step (N, H): see the module notes.
    _recurrent_forward_steps(out, gates, cells, mids, proj, hh, h_prev, m_step, x, lengths, w_ih, w_hh, w_hr, b_ih,
                             b_hh, h0, c0, reverse, True)


@runs_numba_threads
@cpu_kernel
def gru_forward_cpu(out, gates, cells, proj, hh, h_prev, x, lengths, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse):
    w_hr, mids, m_step = _no_projection(x)
    _recurrent_forward_steps(out, gates, cells, mids, proj, hh, h_prev, m_step, x, lengths, w_ih, w_hh, w_hr, b_ih,
                             b_hh, h0, c0, reverse, False)


@cpu_kernel
def _backward_samples(dx, dw_ih, dw_hh, dw_hr, db_ih, db_hh, dh0, dc0, dproj, dstep, h_step, dh_next, dc_next, dh_all,
                      dm_step, dout, out, gates, cells, mids, x, lengths, w_ih, w_hh, w_hr, h0, c0, reverse, is_lstm,
                      lo, hi):
    # Samples lo..hi-1, last step to first: their rows of the scratch buffers and of dx, and the
    # weight and bias gradients of their rows alone, overwritten into dw_ih ... db_hh (the caller
    # adds the blocks up).
    n_batch, steps, hidden = cells.shape
    projected = w_hr.shape[0] > 0
    inputs = x.shape[2]
    # The LSTM's input- and hidden-side gate gradients are equal: its cells write them straight into
    # dstep, and dW_ih, the biases and dx are summed step by step from there, while dstep is in the
    # cache (through dproj's rows and one product at the end: 7 MB more written and read again a
    # thread at batch 128, and a row copy per sample and step). The GRU's two sides differ: dproj.
    if is_lstm:
        x_step = np.zeros((hi - lo, inputs), x.dtype)  # this step's inputs, one row per sample
        dx_step = np.empty((hi - lo, inputs if dx.size > 0 else 0), x.dtype)
        dw_ih_t = np.zeros((inputs, dw_ih.shape[0]), dw_ih.dtype)  # dW_ih^T: x^T dgates has the long rows
        db_hh[:] = 0
        if dx.size > 0:
            for n in range(lo, hi):
                dx[n, lengths[n]:] = 0  # padding: no step visits it
    else:
        # Rows of valid steps are written in full below; only the padding past each length is zeroed.
        for n in range(lo, hi):
            for t in range(lengths[n], steps):
                dproj[0, n * steps + t] = 0
                dproj[1, n * steps + t] = 0
    if projected:
        for n in range(lo, hi):
            for t in range(lengths[n], steps):
                dh_all[n * steps + t] = 0
    dh_next[lo:hi] = 0
    if not is_lstm:
        dc_next[lo:hi] = 0  # the LSTM's holds the final cell state's gradient on entry (module notes)
    first_row, end_row = lo * steps, hi * steps
    # dW_hh is summed step by step, dgates^T h_prev while both are in the cache (one product over all
    # the steps' rows at the end, by the BLAS, took 2.7-3.1 ms a thread at batch 128; by steps ~2.1)
    h_block = h_step[lo:hi]  # this step's previous hidden states; zero for a finished sample
    dw_hh[:] = 0
    has_h0, has_c0 = h0.shape[0] > 0, c0.shape[0] > 0
    zero = same_type(dw_hh[0, 0], 0.0)
    for step in range(steps - 1, -1, -1):
        # dh_next becomes this step's full dh: the later step's W_hh^T part plus the output's gradient
        # (a finished sample's row is zero: its dstep was).
        for n in range(lo, hi):
            t = step_position(step, lengths[n], reverse)
            if t >= 0:
                dh_next[n] += dout[n, t]
                if projected:
                    dh_all[n * steps + t] = dh_next[n]
        if projected:  # the gradient of m_t = o * tanh(c_t), for the whole block: W_hr^T dh
            np.dot(dh_next[lo:hi], w_hr, dm_step[lo:hi])
        for n in range(lo, hi):
            t = step_position(step, lengths[n], reverse)
            first = step == 0
            if t < 0 or (first and not has_h0):
                h_block[n - lo] = zero
            if t < 0:  # a finished sample: a zero row in this step's products
                dstep[n] = zero
                if is_lstm:
                    x_step[n - lo] = zero
                continue
            prev = previous_position(t, reverse)
            row = n * steps + t
            if not first:
                h_block[n - lo] = out[n, prev]
            elif has_h0:
                h_block[n - lo] = h0[n]
            if is_lstm:
                if not first:
                    c_prev_row = cells[n, prev]
                elif has_c0:
                    c_prev_row = c0[n]
                else:
                    c_prev_row = cells[n, t]  # any row: selected away
                _lstm_cells_backward(dstep[n], dc_next[n], gates[n, t], cells[n, t], c_prev_row,
                                     not first or has_c0, dm_step[n] if projected else dh_next[n], db_hh)
                x_step[n - lo] = x[n, t]
            else:
                for j in range(hidden):
                    dc_next[n, j] = gru_cell_backward(dproj, row, gates, cells, dh_next[n, j], h_block[n - lo, j], n, t,
                                                      j, hidden)
                dstep[n] = dproj[1, row]
        if is_lstm:  # dW_ih^T += x_t^T dgates_t, dx_t = dgates_t W_ih (the cells added db)
            product(dw_ih_t, x_step, dstep[lo:hi], True, False, True)
            if dx.size > 0:
                product(dx_step, dstep[lo:hi], w_ih, False, False, False)
                for n in range(lo, hi):
                    t = step_position(step, lengths[n], reverse)
                    if t >= 0:
                        dx[n, t] = dx_step[n - lo]
        if step > 0 or has_h0:  # dW_hh += dgates^T h_prev (a zero initial state adds nothing)
            product(dw_hh, dstep[lo:hi], h_block, True, False, True)
        if step == 0:
            # the initial state's gradients, when asked for: what the first step passes back
            if dh0.shape[0] > 0:
                np.dot(dstep[lo:hi], w_hh, dh0[lo:hi])
                if not is_lstm:
                    dh0[lo:hi] += dc_next[lo:hi]  # the GRU's direct z path
            if dc0.shape[0] > 0:
                dc0[lo:hi] = dc_next[lo:hi]
            break
        product(dh_next[lo:hi], dstep[lo:hi], w_hh, False, False, False)
        if not is_lstm:
            dh_next[lo:hi] += dc_next[lo:hi]  # the GRU's direct z path; dc_next carries it
            dc_next[lo:hi] = 0
    if projected:
        mid_rows = mids.reshape(n_batch * steps, hidden)[first_row:end_row]
        np.dot(dh_all[first_row:end_row].T, mid_rows, dw_hr)
    if is_lstm:
        dw_ih[:] = dw_ih_t.T
        db_ih[:] = db_hh
        return
    input_rows, hidden_rows = dproj[0, first_row:end_row], dproj[1, first_row:end_row]
    x_rows = x.reshape(n_batch * steps, inputs)[first_row:end_row]
    # dW_ih^T = x^T dgates by a^T @ b register blocks, then transposed: dW_ih = dgates^T x itself has
    # 28 columns, too few for a block (the BLAS: 0.96 ms a thread at batch 128, this way 0.58)
    dw_ih_t = np.empty((inputs, dw_ih.shape[0]), dw_ih.dtype)
    product(dw_ih_t, x_rows, input_rows, True, False, False)
    dw_ih[:] = dw_ih_t.T
    for k in range(db_ih.size):
        db_ih[k] = 0
        db_hh[k] = 0
    for r in range(end_row - first_row):
        input_row, hidden_row = input_rows[r], hidden_rows[r]  # 1-D rows: the sums vectorise
        for k in range(db_ih.size):
            db_ih[k] += input_row[k]
            db_hh[k] += hidden_row[k]
    if dx.size > 0:
        np.dot(input_rows, w_ih, dx.reshape(n_batch * steps, inputs)[first_row:end_row])


@cpu_parallel_kernel
def _recurrent_backward_steps(dx, dw_ih, dw_hh, dw_hr, db_ih, db_hh, dh0, dc0, dproj, dstep, h_step, dh_next, dc_next,
                              dh_all, dm_step, dout, out, gates, cells, mids, x, lengths, w_ih, w_hh, w_hr, h0, c0,
                              reverse, is_lstm):
    # One block of samples per thread, as forward. The first block writes the weight and bias
    # gradients in place, the others into partial sums (a few small arrays a call) added after.
    n_batch = out.shape[0]
    block = sample_block(n_batch)
    parts = (n_batch + block - 1) // block
    others = max(parts - 1, 0)
    partial_ih = np.empty((others,) + dw_ih.shape, dw_ih.dtype)
    partial_hh = np.empty((others,) + dw_hh.shape, dw_hh.dtype)
    partial_hr = np.empty((others,) + dw_hr.shape, dw_hr.dtype)
    partial_bias = np.empty((others, 2, db_ih.size), db_ih.dtype)
    for part in prange(parts):
        lo = part * block
        hi = min(n_batch, lo + block)
        if part == 0:
            _backward_samples(dx, dw_ih, dw_hh, dw_hr, db_ih, db_hh, dh0, dc0, dproj, dstep, h_step, dh_next, dc_next,
                              dh_all, dm_step, dout, out, gates, cells, mids, x, lengths, w_ih, w_hh, w_hr, h0, c0,
                              reverse, is_lstm, lo, hi)
        else:
            _backward_samples(dx, partial_ih[part - 1], partial_hh[part - 1], partial_hr[part - 1],
                              partial_bias[part - 1, 0], partial_bias[part - 1, 1], dh0, dc0, dproj, dstep, h_step,
                              dh_next, dc_next, dh_all, dm_step, dout, out, gates, cells, mids, x, lengths, w_ih, w_hh,
                              w_hr, h0, c0, reverse, is_lstm, lo, hi)
    for other in range(others):
        dw_ih += partial_ih[other]
        dw_hh += partial_hh[other]
        dw_hr += partial_hr[other]
        db_ih += partial_bias[other, 0]
        db_hh += partial_bias[other, 1]


@runs_numba_threads
@cpu_kernel
def lstm_backward_cpu(dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0, dproj, dstep, h_step, dh_next, dc_next, dout, out,
                      gates, cells, x, lengths, w_ih, w_hh, h0, c0, reverse):
    # Overwrites dx, dh0, dc0 (each skipped when empty), dw_ih, dw_hh, db_ih, db_hh.
    w_hr, mids, dm_step = _no_projection(x)
    _recurrent_backward_steps(dx, dw_ih, dw_hh, w_hr, db_ih, db_hh, dh0, dc0, dproj, dstep, h_step, dh_next, dc_next,
                              dm_step, dm_step, dout, out, gates, cells, mids, x, lengths, w_ih, w_hh, w_hr, h0, c0,
                              reverse, True)


@runs_numba_threads
@cpu_kernel
def lstm_projected_backward_cpu(dx, dw_ih, dw_hh, dw_hr, db_ih, db_hh, dh0, dc0, dproj, dstep, h_step, dh_next,
                                dc_next, dh_all, dm_step, dout, out, gates, cells, mids, x, lengths, w_ih, w_hh, w_hr,
                                h0, c0, reverse):
    # As lstm_backward_cpu, plus dw_hr; h_step (N T, P), dh_next (N, P), dh_all (N T, P), dm_step (N, H).
    _recurrent_backward_steps(dx, dw_ih, dw_hh, dw_hr, db_ih, db_hh, dh0, dc0, dproj, dstep, h_step, dh_next, dc_next,
                              dh_all, dm_step, dout, out, gates, cells, mids, x, lengths, w_ih, w_hh, w_hr, h0, c0,
                              reverse, True)


@runs_numba_threads
@cpu_kernel
def gru_backward_cpu(dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0, dproj, dstep, h_step, dh_next, dc_next, dout, out,
                     gates, cells, x, lengths, w_ih, w_hh, h0, c0, reverse):
    w_hr, mids, dm_step = _no_projection(x)
    _recurrent_backward_steps(dx, dw_ih, dw_hh, w_hr, db_ih, db_hh, dh0, dc0, dproj, dstep, h_step, dh_next, dc_next,
                              dm_step, dm_step, dout, out, gates, cells, mids, x, lengths, w_ih, w_hh, w_hr, h0, c0,
                              reverse, False)


# --------------------------------------------------------------------------------------- CUDA kernels
# Launched with one block per sample (grid-stride over samples) and threads over hidden units.
# Every thread of a block walks the same steps, so the syncthreads calls are uniform.


def _device(func):
    """A CUDA device function (the per-sample loops shared by the LSTM and GRU kernels)."""
    return cuda_device_function(func)


@scalar_math
def _gate_preactivation(x, out, h0, w_ih, w_hh, b_ih, b_hh, n, t, prev, step, r):
    # Row r of W_ih x_t + b_ih + b_hh + W_hh h_prev (h_prev: the initial state h0 at the first step,
    # when given; zero there otherwise).
    acc = b_ih[r] + b_hh[r]
    for k in range(w_ih.shape[1]):
        acc += x[n, t, k] * w_ih[r, k]
    return acc + _recurrent_term(out, h0, w_hh, n, prev, step, r)


@scalar_math
def _recurrent_term(out, h0, w_hh, n, prev, step, r):
    # Row r of W_hh h_prev.
    acc = w_hh[r, 0] - w_hh[r, 0]
    if step > 0:
        for k in range(w_hh.shape[1]):
            acc += out[n, prev, k] * w_hh[r, k]
    elif h0.shape[0] > 0:
        for k in range(w_hh.shape[1]):
            acc += h0[n, k] * w_hh[r, k]
    return acc


@scalar_math
def _hidden_preactivation(out, h0, w_hh, b_hh, n, prev, step, r):
    # Row r of W_hh h_prev + b_hh (the GRU keeps the n gate's hidden part apart).
    return b_hh[r] + _recurrent_term(out, h0, w_hh, n, prev, step, r)


@scalar_math
def _input_preactivation(x, w_ih, b_ih, n, t, r):
    acc = b_ih[r]
    for k in range(w_ih.shape[1]):
        acc += x[n, t, k] * w_ih[r, k]
    return acc


@_device
def _zero_sample_outputs(out, n):
    for t in range(out.shape[1]):
        for j in range(cuda.threadIdx.x, out.shape[2], cuda.blockDim.x):
            out[n, t, j] = same_type(out[0, 0, 0], 0.0)
    cuda.syncthreads()


@_device
def _recurrent_forward_sample(out, gates, cells, x, lengths, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse, is_lstm, n):
    steps, hidden = out.shape[1], out.shape[2]
    _zero_sample_outputs(out, n)
    for step in range(steps):
        t = step_position(step, lengths[n], reverse)
        if t >= 0:
            prev = previous_position(t, reverse)
            for j in range(cuda.threadIdx.x, hidden, cuda.blockDim.x):
                pre_0 = _gate_preactivation(x, out, h0, w_ih, w_hh, b_ih, b_hh, n, t, prev, step, j)
                pre_1 = _gate_preactivation(x, out, h0, w_ih, w_hh, b_ih, b_hh, n, t, prev, step, hidden + j)
                if is_lstm:
                    pre_g = _gate_preactivation(x, out, h0, w_ih, w_hh, b_ih, b_hh, n, t, prev, step, 2 * hidden + j)
                    pre_o = _gate_preactivation(x, out, h0, w_ih, w_hh, b_ih, b_hh, n, t, prev, step, 3 * hidden + j)
                    c_prev = cells[n, prev, j] if step > 0 else (c0[n, j] if c0.shape[0] > 0 else same_type(pre_0, 0.0))
                    lstm_cell(gates, cells, out, pre_0, pre_1, pre_g, pre_o, c_prev, n, t, j, hidden)
                else:
                    x_n = _input_preactivation(x, w_ih, b_ih, n, t, 2 * hidden + j)
                    h_n = _hidden_preactivation(out, h0, w_hh, b_hh, n, prev, step, 2 * hidden + j)
                    h_prev_j = out[n, prev, j] if step > 0 else (h0[n, j] if h0.shape[0] > 0 else same_type(pre_0, 0.0))
                    gru_cell(gates, cells, out, pre_0, pre_1, x_n, h_n, h_prev_j, n, t, j, hidden)
        cuda.syncthreads()


@cuda_kernel
def lstm_forward_cuda(out, gates, cells, proj, hh, h_prev, x, lengths, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse):
    # proj, hh, h_prev are the CPU's scratch, unused here.
    for n in range(cuda.blockIdx.x, out.shape[0], cuda.gridDim.x):
        _recurrent_forward_sample(out, gates, cells, x, lengths, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse, True, n)


@cuda_kernel
def gru_forward_cuda(out, gates, cells, proj, hh, h_prev, x, lengths, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse):
    for n in range(cuda.blockIdx.x, out.shape[0], cuda.gridDim.x):
        _recurrent_forward_sample(out, gates, cells, x, lengths, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse, False, n)


@scalar_math
def _output_gradient(dout, dproj, w_hh, n, t, later, steps, j):
    # The full gradient of hidden feature j at (n, t): the output's, plus what the later step passes
    # back through W_hh (none at a sample's last step, later < 0).
    dh = dout[n, t, j]
    if later >= 0:
        for m in range(w_hh.shape[0]):
            dh += dproj[1, n * steps + later, m] * w_hh[m, j]
    return dh


@_device
def _recurrent_backward_sample(dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0, dproj, dc_next, dout, out, gates, cells, x,
                               lengths, w_ih, w_hh, h0, c0, reverse, is_lstm, n):
    steps, hidden = out.shape[1], out.shape[2]
    length = lengths[n]
    zero = same_type(out[0, 0, 0], 0.0)
    if not is_lstm:  # the LSTM's dc_next holds the final cell state's gradient on entry
        for j in range(cuda.threadIdx.x, hidden, cuda.blockDim.x):
            dc_next[n, j] = zero
    cuda.syncthreads()
    for step in range(steps - 1, -1, -1):
        t = step_position(step, length, reverse)
        if t >= 0:
            prev = previous_position(t, reverse)
            later = step_position(step + 1, length, reverse)
            row = n * steps + t
            for j in range(cuda.threadIdx.x, hidden, cuda.blockDim.x):
                dh = _output_gradient(dout, dproj, w_hh, n, t, later, steps, j)
                h_prev = out[n, prev, j] if step > 0 else (h0[n, j] if h0.shape[0] > 0 else zero)
                if is_lstm:
                    c_prev = cells[n, prev, j] if step > 0 else (c0[n, j] if c0.shape[0] > 0 else zero)
                    dc_next[n, j] = lstm_cell_backward(dproj, row, gates, cells, dh, dc_next[n, j], c_prev, n, t, j,
                                                       hidden)
                else:
                    dh += dc_next[n, j]  # the direct z path from the later step
                    dc_next[n, j] = gru_cell_backward(dproj, row, gates, cells, dh, h_prev, n, t, j, hidden)
        cuda.syncthreads()
    _states_and_weights_backward(dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0, dproj, dc_next, out, x, lengths, w_ih, w_hh,
                                 h0, reverse, is_lstm, n)


@_device
def _states_and_weights_backward(dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0, dproj, dc_next, out, x, lengths, w_ih, w_hh,
                                 h0, reverse, is_lstm, n):
    # After the steps of one sample: the initial state's gradients, W_hh^T of the first step's
    # hidden-side gradients (plus the GRU's direct z path, left in dc_next), and the LSTM's dc, left
    # in dc_next; the weight and bias gradients of this sample, summed over its steps, then one
    # atomic add each; its dx. The state has w_hh.shape[1] features (P when projected), the cells H.
    steps, state = out.shape[1], w_hh.shape[1]
    rows = w_hh.shape[0]
    length = lengths[n]
    zero = same_type(out[0, 0, 0], 0.0)
    first_row = n * steps + step_position(0, length, reverse)
    for j in range(cuda.threadIdx.x, state, cuda.blockDim.x):
        if dh0.shape[0] > 0:
            acc = dc_next[n, j] if not is_lstm else zero
            for m in range(rows):
                acc += dproj[1, first_row, m] * w_hh[m, j]
            dh0[n, j] = acc
    for j in range(cuda.threadIdx.x, dc_next.shape[1], cuda.blockDim.x):
        if dc0.shape[0] > 0:
            dc0[n, j] = dc_next[n, j]
    for m in range(cuda.threadIdx.x, rows, cuda.blockDim.x):
        acc_ih = zero
        acc_hh = zero
        for t in range(length):
            acc_ih += dproj[0, n * steps + t, m]
            acc_hh += dproj[1, n * steps + t, m]
        cuda.atomic.add(db_ih, m, acc_ih)
        cuda.atomic.add(db_hh, m, acc_hh)
        for k in range(x.shape[2]):
            acc = zero
            for t in range(length):
                acc += dproj[0, n * steps + t, m] * x[n, t, k]
            cuda.atomic.add(dw_ih, (m, k), acc)
        for k in range(state):
            acc = zero
            for t in range(length):
                first = t == (length - 1 if reverse else 0)
                if not first:
                    acc += dproj[1, n * steps + t, m] * out[n, previous_position(t, reverse), k]
                elif h0.shape[0] > 0:
                    acc += dproj[1, n * steps + t, m] * h0[n, k]
            cuda.atomic.add(dw_hh, (m, k), acc)
    if dx.size > 0:
        for t in range(steps):
            for k in range(cuda.threadIdx.x, x.shape[2], cuda.blockDim.x):
                acc = zero
                if t < length:
                    for m in range(rows):
                        acc += dproj[0, n * steps + t, m] * w_ih[m, k]
                dx[n, t, k] = acc
    cuda.syncthreads()


@cuda_kernel
def lstm_backward_cuda(dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0, dproj, dstep, h_step, dh_next, dc_next, dout, out,
                       gates, cells, x, lengths, w_ih, w_hh, h0, c0, reverse):
    # Accumulates into dw_ih, dw_hh, db_ih, db_hh: the launcher zeroes them first.
    for n in range(cuda.blockIdx.x, out.shape[0], cuda.gridDim.x):
        _recurrent_backward_sample(dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0, dproj, dc_next, dout, out, gates, cells,
                                   x, lengths, w_ih, w_hh, h0, c0, reverse, True, n)


@cuda_kernel
def gru_backward_cuda(dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0, dproj, dstep, h_step, dh_next, dc_next, dout, out,
                      gates, cells, x, lengths, w_ih, w_hh, h0, c0, reverse):
    for n in range(cuda.blockIdx.x, out.shape[0], cuda.gridDim.x):
        _recurrent_backward_sample(dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0, dproj, dc_next, dout, out, gates, cells,
                                   x, lengths, w_ih, w_hh, h0, c0, reverse, False, n)


@cuda_kernel
def lstm_projected_forward_cuda(out, gates, cells, mids, proj, hh, h_prev, m_step, x, lengths, w_ih, w_hh, w_hr, b_ih,
                                b_hh, h0, c0, reverse):
    # Per step: the cell update over H units (m_t into mids), then h_t = W_hr m_t over P outputs.
    for n in range(cuda.blockIdx.x, out.shape[0], cuda.gridDim.x):
        steps, hidden, size = cells.shape[1], cells.shape[2], out.shape[2]
        _zero_sample_outputs(out, n)
        _zero_sample_outputs(mids, n)
        for step in range(steps):
            t = step_position(step, lengths[n], reverse)
            if t >= 0:  # the same for every thread of the block: the syncthreads below are uniform
                prev = previous_position(t, reverse)
                for j in range(cuda.threadIdx.x, hidden, cuda.blockDim.x):
                    pre_i = _gate_preactivation(x, out, h0, w_ih, w_hh, b_ih, b_hh, n, t, prev, step, j)
                    pre_f = _gate_preactivation(x, out, h0, w_ih, w_hh, b_ih, b_hh, n, t, prev, step, hidden + j)
                    pre_g = _gate_preactivation(x, out, h0, w_ih, w_hh, b_ih, b_hh, n, t, prev, step, 2 * hidden + j)
                    pre_o = _gate_preactivation(x, out, h0, w_ih, w_hh, b_ih, b_hh, n, t, prev, step, 3 * hidden + j)
                    c_prev = cells[n, prev, j] if step > 0 else (c0[n, j] if c0.shape[0] > 0 else same_type(pre_i, 0.0))
                    lstm_cell(gates, cells, mids, pre_i, pre_f, pre_g, pre_o, c_prev, n, t, j, hidden)
                cuda.syncthreads()
                for p in range(cuda.threadIdx.x, size, cuda.blockDim.x):
                    acc = same_type(out[0, 0, 0], 0.0)
                    for j in range(hidden):
                        acc += w_hr[p, j] * mids[n, t, j]
                    out[n, t, p] = acc
            cuda.syncthreads()


@cuda_kernel
def lstm_projected_backward_cuda(dx, dw_ih, dw_hh, dw_hr, db_ih, db_hh, dh0, dc0, dproj, dstep, h_step, dh_next,
                                 dc_next, dh_all, dm_step, dout, out, gates, cells, mids, x, lengths, w_ih, w_hh, w_hr,
                                 h0, c0, reverse):
    # Accumulates into dw_ih, dw_hh, dw_hr, db_ih, db_hh: the launcher zeroes them first. Per step:
    # the full dh over P (into dh_all), then dm = W_hr^T dh and the cell backward over H units.
    for n in range(cuda.blockIdx.x, out.shape[0], cuda.gridDim.x):
        steps, hidden, size = cells.shape[1], cells.shape[2], out.shape[2]
        length = lengths[n]
        zero = same_type(out[0, 0, 0], 0.0)
        cuda.syncthreads()  # dc_next holds the final cell state's gradient on entry
        for step in range(steps - 1, -1, -1):
            t = step_position(step, length, reverse)
            if t >= 0:
                prev = previous_position(t, reverse)
                later = step_position(step + 1, length, reverse)
                row = n * steps + t
                for p in range(cuda.threadIdx.x, size, cuda.blockDim.x):
                    dh_all[row, p] = _output_gradient(dout, dproj, w_hh, n, t, later, steps, p)
                cuda.syncthreads()
                for j in range(cuda.threadIdx.x, hidden, cuda.blockDim.x):
                    dm = zero
                    for p in range(size):
                        dm += dh_all[row, p] * w_hr[p, j]
                    c_prev = cells[n, prev, j] if step > 0 else (c0[n, j] if c0.shape[0] > 0 else zero)
                    dc_next[n, j] = lstm_cell_backward(dproj, row, gates, cells, dm, dc_next[n, j], c_prev, n, t, j,
                                                       hidden)
            cuda.syncthreads()
        for p in range(cuda.threadIdx.x, size, cuda.blockDim.x):
            for j in range(hidden):
                acc = zero
                for t in range(length):
                    acc += dh_all[n * steps + t, p] * mids[n, t, j]
                cuda.atomic.add(dw_hr, (p, j), acc)
        _states_and_weights_backward(dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0, dproj, dc_next, out, x, lengths, w_ih,
                                     w_hh, h0, reverse, True, n)
