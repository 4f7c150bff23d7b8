"""A chain of dense layers in one call: Linear layers, each followed by an optional element-wise
activation (what a Sequential MLP is: Flatten, Linear, ReLU, Dropout, Linear, ...), for inference on
a batch and for a training step.

Why: ``model.predict`` on one sample went through one kernel call per layer plus the Python around
each (24.6 us for a 784-128-64-10 MLP, of which the products were a few), and a training step at
batch 64 through ten calls and ~60 us of Python; one compiled call runs the whole chain.

Shapes: x (n * in_0,) the samples' features flat; params the model's flat parameter buffer
(ParameterBank.values); table (layers, 5) int64 rows (in_features, out_features, weight offset, bias
offset or -1, activation code), each weight (out, in) row-major at its offset (PyTorch's layout).
Activation codes: ACTIVATION_CODES. The scalar activations are the layers' own (kernels/activation),
so a chain computes what the layers do.

Inference (``dense_chain_forward``): out (n * out_last,); bad (1,) of x's dtype, the number of
non-finite values in x (the CPU overwrites it, the CUDA twin adds to it: zero it first); scratch (2,
>= n * widest hidden layer), the activations between layers. The products sum in another order than
the layers' BLAS products (the last bits of float32 outputs can differ from a batch predicted layer by
layer). CPU: one sample by contiguous dot products, eight weight rows at a time; several by
matmul.split_product per layer, shared between numba's threads (the kernel takes the cores:
runs_numba_threads); then the bias and activation. From tuning.SPLIT_MIN_ELEMENTS values, the
non-finite count and the bias and activation passes are shared between the threads too, by the
sample halves the products give each (model.predict at batch 1000: 3% and 5% less time than one
thread doing them, in-process A/B). CUDA: one block per sample, its threads over a
layer's output units, synchronised between layers.

Training (``dense_chain_train``): forward, softmax cross-entropy on integer labels (the loss kernels'
per-sample math: class weights, label smoothing, ignore_index; a mean over the targets' weights or a
sum) and backward, into grads, the flat gradient buffer (ParameterBank.grads, every entry written:
the chain holds all of the model's parameters). Activations: none, ReLU, Tanh, Sigmoid (their slopes
come from their outputs) and GELU (both forms: table column 9 says where its input is kept in acts,
per sample; -1 for the others). A hidden layer may be followed by a Dropout: rates (layers, 2) of the
parameters' dtype holds its (p, 1 / (1 - p)) (p = 0: none), its stream's
(seed, offset) in table columns 5 and 6 (int64 holding the uint64 bits), the mask drawn as the Dropout
kernels draw it and drawn again in backward (nothing stored). Table columns 7 and 8: where the layer's
output (-1: the logits) and its input (-1: x) start in acts, per sample (times n). Buffers, all
overwritten: acts the hidden layers' outputs, each after its GELU input when it has one and followed by
its dropped-out copy when it has a Dropout; deltas (2, n * widest hidden layer) their gradients,
alternating; logits and probs (n, classes, 1), probs ending as the logits' gradient; stats (5,) of the
parameters' dtype: (loss, correct predictions, non-finite gradient entries, labels neither a class nor
ignore_index (when any: nothing else is computed), 1 when the optimizer stepped else 0).
The optimizer step: with exp_avg and exp_avg_sq not empty (Adam's state over the whole flat buffer),
the kernel then runs Adam's (or AdamW's) step on params, adam_step's math, with adam (7,) = (lr,
beta1, beta2, eps, weight_decay, bias corrections 1 and 2 of this step) and the flags decoupled and
maximize, unless a gradient is not finite or the loss is not finite or above loss_ceiling (of the
parameters' dtype; inf: no limit): the checks after the call then raise with the parameters as they
were. Why: the separate optimizer call's Python, dispatch and thread start (2.5-3% of a step at batch
64, in-process A/B). CPU: the Linear kernels' products in their order, shared between numba's
threads (the kernel takes the cores: runs_numba_threads): float32 by register blocks
(matmul.split_product: faster than OpenBLAS at these sizes, see its docstring), so float32 gradients
equal the layer path's to rounding and float64 ones exactly. With partials (threads - 1, grads.size)
not empty (the backend passes one from tuning.CHAIN_SPLIT_MIN_SAMPLES samples) and numba at as many
threads, each thread instead runs every layer on its own block of samples (whole register blocks of
rows), its weight and bias gradients into grads (the first) or its row of partials (overwritten),
which are then added into grads, in the shares Adam's step takes next. Why: shared products hand each
buffer between the cores' caches several times a step (one product splits it by rows, the next by
columns); split by samples only the gradients meet, once. The reference MLP's step at batch 256:
0.94-0.98 of the time, at 512: 0.89-0.96 (in-process A/B). The gradients are then sums of the blocks'
sums: equal to the layer path's to rounding (float64 too). CUDA: one block for the whole batch, its
threads over each phase's outputs, synchronised between phases (partials is not used).
"""


import math

import numpy as np
from numba import float32, prange, uint64

from numdl.kernels.activation import exp_nonpositive, gelu, gelu_grad, gelu_tanh, gelu_tanh_grad, relu, sigmoid, tanh
from numdl.kernels.check import non_finite_count
from numdl.kernels.common import (cpu_kernel, cpu_parallel_kernel, cuda, cuda_kernel, numba_threads, runs_numba_threads,
                                  same_type, scalar_math, thread_share, vector_share, worth_splitting)
from numdl.kernels.dropout import uniform_from_counter
from numdl.kernels.loss import class_weight_total, cross_entropy_at, cross_entropy_backward_at, zero_classes_at
from numdl.kernels.matmul import product, split_product
from numdl.kernels.optim import adam_constants, adam_element, adam_step_cpu, flush_floor

#: The activation after each Linear of a chain, by the layers' kernel names (0: none).
ACTIVATION_CODES = {"relu": 1, "tanh": 2, "sigmoid": 3, "gelu": 4, "gelu_tanh": 5}


# --------------------------------------------------------------------------- scalar math (both targets)


@scalar_math
def activate(v, code):
    # Activation ``code`` (ACTIVATION_CODES) of one value.
    if code == 1:
        return relu(v)
    if code == 2:
        return tanh(v)
    if code == 3:
        return sigmoid(v)
    if code == 4:
        return gelu(v)
    if code == 5:
        return gelu_tanh(v)
    return v


@scalar_math
def through_activation(d, out, code):
    # The gradient d of an activation's output passed back to its input, from the output (training
    # chains take the activations whose output gives their slope: none, ReLU, Tanh, Sigmoid), as the
    # layers' backward: ReLU lets d through where out > 0 (and where it is NaN), else zero.
    one = same_type(out, 1.0)
    if code == 1:
        return same_type(out, 0.0) if out <= same_type(out, 0.0) else d
    if code == 2:
        return d * (one - out * out)
    if code == 3:
        return d * (out * (one - out))
    return d


@scalar_math
def dropout_factor(rate, scale, seed, offset, i):
    # Element i's factor of a Dropout layer's mask for a call whose stream starts at (seed, offset): 0
    # or scale = 1 / (1 - rate); the Dropout kernels' draw (kernels/dropout), so the same mask.
    keep = uniform_from_counter(seed, offset + uint64(i)) >= float32(rate)
    return scale if keep else scale - scale


# ---------------------------------------------------------------------------------------- CPU kernels


@cpu_kernel
def _dense_rows(dst, src, params, in_f, out_f, w_at):
    # dst[j] = W[j] . src for one sample: eight weight rows per pass over src (eight independent sums
    # hide the add's latency: one row at a time ran 784 -> 128 in 8-10 us, eight in 6-8, where
    # streaming the 400 KB of weights from the L2 cache takes about 5).
    zero = same_type(params[0], 0.0)
    j = 0
    while j + 8 <= out_f:
        at = w_at + j * in_f
        r0, r1 = params[at:at + in_f], params[at + in_f:at + 2 * in_f]
        r2, r3 = params[at + 2 * in_f:at + 3 * in_f], params[at + 3 * in_f:at + 4 * in_f]
        r4, r5 = params[at + 4 * in_f:at + 5 * in_f], params[at + 5 * in_f:at + 6 * in_f]
        r6, r7 = params[at + 6 * in_f:at + 7 * in_f], params[at + 7 * in_f:at + 8 * in_f]
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = zero
        for k in range(in_f):
            v = src[k]
            a0 += r0[k] * v
            a1 += r1[k] * v
            a2 += r2[k] * v
            a3 += r3[k] * v
            a4 += r4[k] * v
            a5 += r5[k] * v
            a6 += r6[k] * v
            a7 += r7[k] * v
        dst[j], dst[j + 1], dst[j + 2], dst[j + 3] = a0, a1, a2, a3
        dst[j + 4], dst[j + 5], dst[j + 6], dst[j + 7] = a4, a5, a6, a7
        j += 8
    while j < out_f:
        row = params[w_at + j * in_f:w_at + (j + 1) * in_f]
        acc = zero
        for k in range(in_f):
            acc += row[k] * src[k]
        dst[j] = acc
        j += 1


@cpu_kernel
def _dense_layer(dst, src, params, n, in_f, out_f, w_at, b_at, code):
    # dst[s out_f + j] = activate(W[j] . src[s in_f:(s + 1) in_f] + b[j]) for every sample s: one sample
    # by _dense_rows, several by split_product (8 samples through the reference MLP: 21-25 us a
    # predict call, 31 with one BLAS call per layer), then the bias and activation in place.
    rows = dst[:n * out_f].reshape((n, out_f))
    if n == 1:
        _dense_rows(dst, src, params, in_f, out_f, w_at)
    else:
        split_product(rows, src[:n * in_f].reshape((n, in_f)),
                      params[w_at:w_at + out_f * in_f].reshape((out_f, in_f)), False, True)
    if worth_splitting(rows.size):
        _bias_activate_by_samples(rows, params, b_at, code, numba_threads())
    else:
        _add_bias_activate(rows, params, b_at, code)


@cpu_parallel_kernel
def _bias_activate_by_samples(rows, params, b_at, code, parts):
    # _add_bias_activate over rows' samples shared between the threads as the product before split
    # them (its rows halves at 1000 samples): each thread reads back what its own core wrote.
    n = rows.shape[0]
    for part in prange(parts):
        lo, hi = _product_rows_share(n, part, parts)
        _add_bias_activate(rows[lo:hi], params, b_at, code)


@cpu_kernel
def _product_rows_share(n, part, parts):
    # [lo, hi): the rows of an n-row product that split_product gives thread ``part`` of ``parts`` when
    # it splits by rows (whole register blocks of four; the last part here also takes the few rows
    # past them, which split_product leaves to the BLAS on the calling thread)
    lo, hi = thread_share(n // 4, part, parts)
    return 4 * lo, n if part == parts - 1 else 4 * hi


@cpu_parallel_kernel
def _non_finite_by_samples(counts, x, n, in_f):
    # counts[part] = the non-finite values among the samples of part ``part`` of counts.size: the row
    # halves split_product gives each thread in the first layer's product, so that this read brings
    # each thread's samples into its own core's cache (one thread counting 1000 samples of 784 took
    # 60 us hot, 120 from memory, ~7% of a predict call).
    parts = counts.size
    for part in prange(parts):
        lo, hi = _product_rows_share(n, part, parts)
        counts[part] = non_finite_count(x[lo * in_f:hi * in_f]) if hi > lo else 0


@runs_numba_threads
@cpu_kernel
def dense_chain_forward_cpu(out, bad, x, params, table, scratch):
    # Overwrites out and bad (see the module docstring); the hidden layers alternate between scratch's
    # rows. The count of non-finite inputs is what predict's input check needs, without a call of its own.
    layers = table.shape[0]
    n = x.size // table[0, 0]
    if worth_splitting(x.size):
        counts = np.zeros(numba_threads(), x.dtype)
        _non_finite_by_samples(counts, x, n, table[0, 0])
        bad[0] = counts.sum()
    else:
        bad[0] = non_finite_count(x)
    for layer in range(layers):
        in_f, out_f, w_at, b_at, code = (table[layer, 0], table[layer, 1], table[layer, 2], table[layer, 3],
                                         table[layer, 4])
        src = x if layer == 0 else scratch[(layer - 1) % 2]
        dst = out if layer == layers - 1 else scratch[layer % 2]
        _dense_layer(dst, src, params, n, in_f, out_f, w_at, b_at, code)


@scalar_math
def _first_largest(logits, o):
    # The class of sample o's largest logit, the first of equals (as argmax).
    best = 0
    for c in range(1, logits.shape[1]):
        if logits[o, c, 0] > logits[o, best, 0]:
            best = c
    return best


@cpu_kernel
def _add_bias_activate(dst, params, b_at, code):
    # dst (n, out), C-contiguous, = activate(dst + bias, code), the bias at params[b_at:] (none when
    # b_at < 0). One flat loop per code, so that each is a plain loop LLVM vectorises (a switch per
    # element ran 2x slower; a row's slice per sample cost more than its 128 additions at batch 256:
    # 5.7 us against 2.3 for bias and ReLU in one pass); ReLU takes the bias in the same pass.
    n, width = dst.shape
    flat = dst.reshape(-1)
    if b_at >= 0:
        bias = params[b_at:b_at + width]
        if code == 1:
            for s in range(n):
                at = s * width
                for j in range(width):
                    flat[at + j] = relu(flat[at + j] + bias[j])
            return
        for s in range(n):
            at = s * width
            for j in range(width):
                flat[at + j] += bias[j]
    if code == 1:
        for i in range(flat.size):
            flat[i] = relu(flat[i])
    elif code == 2:
        for i in range(flat.size):
            flat[i] = tanh(flat[i])
    elif code == 3:
        for i in range(flat.size):
            flat[i] = sigmoid(flat[i])
    elif code == 4:
        for i in range(flat.size):
            flat[i] = gelu(flat[i])
    elif code == 5:
        for i in range(flat.size):
            flat[i] = gelu_tanh(flat[i])


@cpu_kernel
def _times_gelu_slope(g, pre, code):
    # g (n, out) *= GELU's slope at its input pre (code 4: exact, 5: tanh form), as the GELU layer's backward.
    for s in range(g.shape[0]):
        row, h = g[s], pre[s]
        if code == 4:
            for j in range(row.size):
                row[j] = row[j] * gelu_grad(h[j])
        else:
            for j in range(row.size):
                row[j] = row[j] * gelu_tanh_grad(h[j])


@cpu_kernel
def _through_activation_rows(g, out, code):
    # g (n, out) = through_activation(g, out, code), both C-contiguous, one flat loop per code
    # (vectorised; see above).
    flat, y = g.reshape(-1), out.reshape(-1)
    if code == 1:
        for i in range(flat.size):
            flat[i] = through_activation(flat[i], y[i], 1)
    elif code == 2:
        for i in range(flat.size):
            flat[i] = through_activation(flat[i], y[i], 2)
    elif code == 3:
        for i in range(flat.size):
            flat[i] = through_activation(flat[i], y[i], 3)


@cpu_kernel
def _dropout_rows(dst, src, rate, scale, seed, offset):
    # dst = src * the Dropout layer's mask for this call (dropout_factor): its forward, or with dst and
    # src the gradient, its backward.
    for i in range(dst.size):
        dst[i] = src[i] * dropout_factor(rate, scale, seed, offset, i)


@cpu_kernel
def _cross_entropy_forward(probs, logits, labels, class_weights, smoothing, ignore_index):
    # The loss's forward for the whole batch: cross_entropy_at's math (probs (n, classes) the softmax)
    # with the samples in the inner loops, over transposed copies, so that each pass vectorises (one
    # sample at a time by cross_entropy_at, ten classes a loop, took 4.4 us at batch 64 and 16.5 at
    # 256, this way 2.2 and 6.2: exp's and log's latency). A second copy of that math, kept beside
    # the chain: the loss kernels' layouts (outer, C, inner) take it one position at a time. Returns
    # (summed terms (float64), summed target weights, correct predictions); samples whose label is
    # ignore_index are skipped, as the loss skips them.
    n, classes = logits.shape
    columns = np.empty((classes, n), logits.dtype)  # the logits, one class a row
    shifted = np.empty((classes, n), logits.dtype)  # logit - the sample's largest
    peak = np.empty(n, logits.dtype)
    total = np.zeros(n, logits.dtype)
    for o in range(n):
        for c in range(classes):
            columns[c, o] = logits[o, c]
    peak[:] = columns[0]
    for c in range(1, classes):
        row = columns[c]
        for o in range(n):
            peak[o] = max(peak[o], row[o])
    for c in range(classes):
        row, out = columns[c], shifted[c]
        for o in range(n):
            out[o] = row[o] - peak[o]
    log_total = np.empty(n, logits.dtype)
    smooth_sum = np.zeros(n, logits.dtype)
    exps = np.empty((classes, n), logits.dtype)
    for c in range(classes):
        out, e = shifted[c], exps[c]
        for o in range(n):
            e[o] = exp_nonpositive(out[o])
            total[o] += e[o]
    for o in range(n):
        log_total[o] = math.log(total[o])
    for c in range(classes):
        out, weight_c = shifted[c], class_weights[c]
        for o in range(n):
            smooth_sum[o] += weight_c * (log_total[o] - out[o])
    one = same_type(peak[0], 1.0)
    for o in range(n):
        inverse = one / total[o]
        for c in range(classes):
            probs[o, c] = exps[c, o] * inverse
    terms = 0.0  # float64 sums, as the loss class reduces
    weights = 0.0
    correct = 0
    keep, spread = one - smoothing, smoothing / same_type(smoothing, classes)
    for o in range(n):
        y = labels[o]
        if y == ignore_index:
            continue
        terms += keep * class_weights[y] * (log_total[o] - shifted[y, o]) + spread * smooth_sum[o]
        weights += class_weights[y]
        best = 0  # the first largest logit, as argmax
        for c in range(1, classes):
            if columns[c, o] > columns[best, o]:
                best = c
        correct += 1 if best == y else 0
    return terms, weights, correct


@scalar_math
def _label_outside(y, classes, ignore_index):
    # Whether label y is neither a class nor ignore_index (it would index past the logits).
    return y != ignore_index and (y < 0 or y >= classes)


@scalar_math
def _step_allowed(stats, loss_ceiling):
    # Whether the optimizer may step after this batch: the gradients finite and the loss finite and at
    # most loss_ceiling (train.divergence_factor times the run's first loss, inf when off; in the
    # stats' dtype, rounded down, so the comparison is the model's in float64): the
    # conditions under which model._check_loss and the gradient check raise, negated, so that a batch
    # they reject leaves the parameters and the optimizer's state as they were.
    loss = stats[0]
    return stats[2] == 0 and abs(loss) < same_type(loss, math.inf) and loss <= loss_ceiling


@cpu_kernel
def _product(c, a, b, trans_a, trans_b, shared):
    # c = op(a) @ op(b): over numba's threads (shared: the whole batch's product) or on this thread
    # (one part's, inside the parts' own parallel loop)
    if shared:
        split_product(c, a, b, trans_a, trans_b)
    else:
        product(c, a, b, trans_a, trans_b, False)


@cpu_kernel
def _train_samples(grads, sums, part, lo, hi, acts, deltas, logits, probs, x, labels, params, table, rates,
                   class_weights, smoothing, ignore_index, upstream, weight_total, shared):
    # Forward, loss and backward of samples lo..hi-1: their rows of acts, deltas, logits and probs; the
    # loss's summed terms and correct predictions into sums[part]; the weight and bias gradients of
    # these samples into grads (every entry written). The same products, sums and scalar math as the
    # Linear, Dropout and cross-entropy kernels, in their order (a Dropout's mask element by the
    # element's place in the whole batch).
    layers = table.shape[0]
    n, classes = logits.shape[0], logits.shape[1]
    rows = hi - lo
    logit_rows = logits.reshape(-1)[lo * classes:hi * classes].reshape((rows, classes))
    prob_rows = probs.reshape(-1)[lo * classes:hi * classes].reshape((rows, classes))
    for layer in range(layers):  # forward: the hidden layers' outputs (and dropped-out copies) kept in acts
        in_f, out_f, w_at, b_at, code = (table[layer, 0], table[layer, 1], table[layer, 2], table[layer, 3],
                                         table[layer, 4])
        at, source = n * table[layer, 7], n * table[layer, 8]
        src = x[lo * in_f:hi * in_f] if source < 0 else acts[source + lo * in_f:source + hi * in_f]
        dst = logit_rows if layer == layers - 1 else acts[at + lo * out_f:at + hi * out_f].reshape((rows, out_f))
        _product(dst, src.reshape((rows, in_f)), params[w_at:w_at + out_f * in_f].reshape((out_f, in_f)), False, True,
                 shared)
        if table[layer, 9] >= 0:  # GELU: its input kept for backward
            _add_bias_activate(dst, params, b_at, 0)
            kept = n * table[layer, 9]
            acts[kept + lo * out_f:kept + hi * out_f] = dst.reshape(-1)
            _add_bias_activate(dst, params, -1, code)
        else:
            _add_bias_activate(dst, params, b_at, code)
        if layer < layers - 1 and rates[layer, 0] > 0:
            _dropout_rows(acts[at + (n + lo) * out_f:at + (n + hi) * out_f], acts[at + lo * out_f:at + hi * out_f],
                          rates[layer, 0], rates[layer, 1], uint64(table[layer, 5]),
                          uint64(table[layer, 6]) + uint64(lo * out_f))
    total, weight, correct = _cross_entropy_forward(prob_rows, logit_rows, labels[lo:hi], class_weights, smoothing,
                                                    ignore_index)
    sums[part, 0] = total
    sums[part, 1] = correct
    # backward: the logits' gradient replaces probs (each entry is read just before it is written);
    # the hidden layers' gradients alternate between deltas' two rows
    for o in range(lo, hi):
        y = labels[o]
        if y == ignore_index:
            zero_classes_at(probs, o, 0)
        else:
            cross_entropy_backward_at(probs, probs, class_weights, weight_total, smoothing, y, upstream, o, 0)
    # These samples' stretch of each deltas row starts at lo times the widest layer, whatever the
    # layer: with lo times its own width, a part one layer ahead of another wrote into the other's
    # stretch (parts run unsynchronised, and the two rows serve layers of different widths).
    row = 0
    base = lo * (deltas.shape[1] // n) if lo > 0 else 0
    for layer in range(layers - 1, -1, -1):
        in_f, out_f, w_at, b_at, code = (table[layer, 0], table[layer, 1], table[layer, 2], table[layer, 3],
                                         table[layer, 4])
        at, source = n * table[layer, 7], n * table[layer, 8]
        last = layer == layers - 1
        g = prob_rows if last else deltas[row, base:base + rows * out_f].reshape((rows, out_f))
        if not last and rates[layer, 0] > 0:  # the gradient of the dropped-out copy, back through its mask
            flat = deltas[row, base:base + rows * out_f]
            _dropout_rows(flat, flat, rates[layer, 0], rates[layer, 1], uint64(table[layer, 5]),
                          uint64(table[layer, 6]) + uint64(lo * out_f))
        if table[layer, 9] >= 0:
            kept = n * table[layer, 9]
            _times_gelu_slope(g, acts[kept + lo * out_f:kept + hi * out_f].reshape((rows, out_f)), code)
        elif code != 0:
            out = logit_rows if last else acts[at + lo * out_f:at + hi * out_f].reshape((rows, out_f))
            _through_activation_rows(g, out, code)
        src = x[lo * in_f:hi * in_f] if source < 0 else acts[source + lo * in_f:source + hi * in_f]
        _product(grads[w_at:w_at + out_f * in_f].reshape((out_f, in_f)), g, src.reshape((rows, in_f)), True, False,
                 shared)
        if b_at >= 0:  # the column sums of g, sample by sample (the layer path's order), over flat rows
            dbias, g_flat = grads[b_at:b_at + out_f], g.reshape(-1)
            for j in range(out_f):
                dbias[j] = 0
            for s in range(rows):
                at = s * out_f
                for j in range(out_f):
                    dbias[j] += g_flat[at + j]
        if layer > 0:
            row = 0 if last else 1 - row
            weight_rows = params[w_at:w_at + out_f * in_f].reshape((out_f, in_f))
            _product(deltas[row, base:base + rows * in_f].reshape((rows, in_f)), g, weight_rows, False, False, shared)


@cpu_parallel_kernel
def _train_parts(grads, partials, sums, block, acts, deltas, logits, probs, x, labels, params, table, rates,
                 class_weights, smoothing, ignore_index, upstream, weight_total):
    # _train_samples of each block of samples on a thread of its own, the first's gradients into
    # grads, the others' into partials
    n = logits.shape[0]
    for part in prange(sums.shape[0]):
        lo, hi = min(part * block, n), min((part + 1) * block, n)
        _train_samples(grads if part == 0 else partials[part - 1], sums, part, lo, hi, acts, deltas, logits, probs, x,
                       labels, params, table, rates, class_weights, smoothing, ignore_index, upstream, weight_total,
                       False)


@cpu_parallel_kernel
def _add_partials(grads, partials, counts):
    # grads += each row of partials, and counts[part] = the non-finite sums, in counts.size shares of
    # grads (the shares Adam's split step takes next: each thread reads back what it wrote)
    parts = counts.size
    for part in prange(parts):
        lo, hi = vector_share(grads.size, part, parts)
        if hi > lo:
            total = grads[lo:hi]
            for other in range(partials.shape[0]):
                share = partials[other, lo:hi]
                for i in range(total.size):
                    total[i] += share[i]
            counts[part] = non_finite_count(total)


@runs_numba_threads
@cpu_kernel
def dense_chain_train_cpu(grads, stats, acts, deltas, logits, probs, x, labels, params, table, rates, class_weights,
                          smoothing, ignore_index, mean, exp_avg, exp_avg_sq, adam, decoupled, maximize, loss_ceiling,
                          partials):
    # Overwrites every array before x, and partials (see "Training" in the module docstring); the
    # Adam step is adam_step's.
    n, classes = logits.shape[0], logits.shape[1]
    outside = 0
    for o in range(n):
        outside += 1 if _label_outside(labels[o], classes, ignore_index) else 0
    stats[3] = outside
    stats[4] = 0
    if stats[3] > 0:  # nothing else computed: a label would index past the logits
        stats[0] = 0
        stats[1] = 0
        stats[2] = 0
        return
    weight = 0.0  # the targets' summed weights (float64, in the samples' order, as the loss sums them)
    for o in range(n):
        if labels[o] != ignore_index:
            weight += class_weights[labels[o]]
    scale = (1.0 / weight if weight > 0 else 0.0) if mean else 1.0
    upstream = same_type(params[0], scale)
    weight_total = class_weight_total(class_weights)
    threads = min(numba_threads(), partials.shape[0] + 1)
    block = n if threads < 2 else ((n + threads - 1) // threads + 3) // 4 * 4  # whole register blocks of rows
    parts = (n + block - 1) // block
    sums = np.zeros((parts, 2))
    if parts == 1:  # the batch at once, each product shared between the threads
        _train_samples(grads, sums, 0, 0, n, acts, deltas, logits, probs, x, labels, params, table, rates,
                       class_weights, smoothing, ignore_index, upstream, weight_total, True)
        stats[2] = non_finite_count(grads)  # the chain holds every parameter of the model: all of grads
    else:
        _train_parts(grads, partials, sums, block, acts, deltas, logits, probs, x, labels, params, table, rates,
                     class_weights, smoothing, ignore_index, upstream, weight_total)
        counts = np.zeros(numba_threads(), grads.dtype)
        _add_partials(grads, partials[:parts - 1], counts)
        stats[2] = counts.sum()
    total, correct = 0.0, 0.0
    for part in range(parts):
        total += sums[part, 0]
        correct += sums[part, 1]
    stats[0] = total * scale
    stats[1] = correct
    if exp_avg.size > 0 and _step_allowed(stats, loss_ceiling):
        amsgrad = exp_avg.size < 0  # False, typed as adam_step_cpu's own calls type it (not a literal)
        adam_step_cpu(params, exp_avg, exp_avg_sq, exp_avg_sq, grads, adam[0], adam[1], adam[2], adam[3], adam[4],
                      decoupled, adam[5], adam[6], amsgrad, maximize)
        stats[4] = 1


# --------------------------------------------------------------------------------------- CUDA kernels
# One block per sample (launched per sample); every thread of a block runs the same layers, so the
# syncthreads calls are uniform.


@cuda_kernel
def dense_chain_forward_cuda(out, bad, x, params, table, scratch):
    layers = table.shape[0]
    n = x.size // table[0, 0]
    zero = same_type(params[0], 0.0)
    for s in range(cuda.blockIdx.x, n, cuda.gridDim.x):
        for k in range(cuda.threadIdx.x, table[0, 0], cuda.blockDim.x):
            if not math.isfinite(x[s * table[0, 0] + k]):
                cuda.atomic.add(bad, 0, same_type(bad[0], 1.0))
        for layer in range(layers):
            in_f, out_f, w_at, b_at, code = (table[layer, 0], table[layer, 1], table[layer, 2], table[layer, 3],
                                         table[layer, 4])
            for j in range(cuda.threadIdx.x, out_f, cuda.blockDim.x):
                acc = zero
                for k in range(in_f):
                    if layer == 0:
                        v = x[s * in_f + k]
                    else:
                        v = scratch[(layer - 1) % 2, s * in_f + k]
                    acc += params[w_at + j * in_f + k] * v
                if b_at >= 0:
                    acc += params[b_at + j]
                acc = activate(acc, code)
                if layer == layers - 1:
                    out[s * out_f + j] = acc
                else:
                    scratch[layer % 2, s * out_f + j] = acc
            cuda.syncthreads()


@cuda_kernel
def dense_chain_train_cuda(grads, stats, acts, deltas, logits, probs, x, labels, params, table, rates, class_weights,
                           smoothing, ignore_index, mean, exp_avg, exp_avg_sq, adam, decoupled, maximize, loss_ceiling,
                           partials):
    # One block (launched with one: the phases synchronise all of its threads), its threads over a
    # phase's independent items: outputs, samples, gradient entries (partials, the CPU's per-thread
    # gradient sums, is not used). No reshape (numba-cuda's checks
    # sizes in float64): logits and probs come 3-D, acts and deltas are indexed flat.
    if cuda.blockIdx.x != 0:
        return
    tid, threads = cuda.threadIdx.x, cuda.blockDim.x
    layers = table.shape[0]
    n = logits.shape[0]
    zero = same_type(params[0], 0.0)
    if tid == 0:
        stats[0] = zero
        stats[1] = zero
        stats[2] = zero  # the targets' summed weights until the end, then the non-finite count
        stats[3] = zero
        stats[4] = zero
    cuda.syncthreads()
    bad = zero
    for o in range(tid, n, threads):
        if _label_outside(labels[o], logits.shape[1], ignore_index):
            bad += same_type(zero, 1.0)
    if bad > zero:
        cuda.atomic.add(stats, 3, bad)
    cuda.syncthreads()
    if stats[3] > zero:  # nothing computed: a label would index past the logits (every thread returns)
        return
    for layer in range(layers):
        in_f, out_f, w_at, b_at, code = (table[layer, 0], table[layer, 1], table[layer, 2], table[layer, 3],
                                         table[layer, 4])
        at, source = n * table[layer, 7], n * table[layer, 8]
        for item in range(tid, n * out_f, threads):
            s, j = item // out_f, item % out_f
            acc = zero
            for k in range(in_f):
                v = x[s * in_f + k] if source < 0 else acts[source + s * in_f + k]
                acc += v * params[w_at + j * in_f + k]
            acc += params[b_at + j] if b_at >= 0 else zero
            if table[layer, 9] >= 0:  # GELU: its input kept for backward
                acts[n * table[layer, 9] + item] = acc
            v = activate(acc, code)
            if layer == layers - 1:
                logits[s, j, 0] = v
            else:
                acts[at + item] = v
                if rates[layer, 0] > zero:
                    acts[at + n * out_f + item] = v * dropout_factor(rates[layer, 0], rates[layer, 1],
                                                                     uint64(table[layer, 5]), uint64(table[layer, 6]),
                                                                     item)
        cuda.syncthreads()
    for o in range(tid, n, threads):
        y = labels[o]
        if y != ignore_index:
            term = cross_entropy_at(probs, logits, class_weights, smoothing, y, o, 0)
            cuda.atomic.add(stats, 0, same_type(stats[0], term))
            cuda.atomic.add(stats, 2, same_type(stats[2], class_weights[y]))
            if _first_largest(logits, o) == y:
                cuda.atomic.add(stats, 1, same_type(stats[1], 1.0))
    cuda.syncthreads()
    weight = stats[2]
    one = same_type(params[0], 1.0)  # the scale in the parameters' dtype (no float64 in float32 kernels)
    upstream = (one / weight if weight > zero else zero) if mean else one
    weight_total = class_weight_total(class_weights)
    for o in range(tid, n, threads):
        y = labels[o]
        if y == ignore_index:
            zero_classes_at(probs, o, 0)
        else:
            cross_entropy_backward_at(probs, probs, class_weights, weight_total, smoothing, y, upstream, o, 0)
    cuda.syncthreads()
    if tid == 0:
        stats[0] *= upstream
        stats[2] = zero
    row = 0
    for layer in range(layers - 1, -1, -1):
        in_f, out_f, w_at, b_at, code = (table[layer, 0], table[layer, 1], table[layer, 2], table[layer, 3],
                                         table[layer, 4])
        at, source = n * table[layer, 7], n * table[layer, 8]
        last = layer == layers - 1
        for item in range(tid, n * out_f, threads):
            s, j = item // out_f, item % out_f
            d = probs[s, j, 0] if last else deltas[row, item]
            if not last and rates[layer, 0] > zero:
                d *= dropout_factor(rates[layer, 0], rates[layer, 1], uint64(table[layer, 5]), uint64(table[layer, 6]),
                                    item)
            if table[layer, 9] >= 0:
                h = acts[n * table[layer, 9] + item]
                d = d * (gelu_grad(h) if code == 4 else gelu_tanh_grad(h))
            else:
                d = through_activation(d, logits[s, j, 0] if last else acts[at + item], code)
            if last:
                probs[s, j, 0] = d
            else:
                deltas[row, item] = d
        cuda.syncthreads()
        for item in range(tid, out_f * in_f, threads):
            j, k = item // in_f, item % in_f
            acc = zero
            for s in range(n):
                g = probs[s, j, 0] if last else deltas[row, s * out_f + j]
                acc += g * (x[s * in_f + k] if source < 0 else acts[source + s * in_f + k])
            grads[w_at + item] = acc
        if b_at >= 0:
            for j in range(tid, out_f, threads):
                acc = zero
                for s in range(n):
                    acc += probs[s, j, 0] if last else deltas[row, s * out_f + j]
                grads[b_at + j] = acc
        if layer > 0:
            into = 0 if last else 1 - row
            for item in range(tid, n * in_f, threads):
                s, k = item // in_f, item % in_f
                acc = zero
                for j in range(out_f):
                    g = probs[s, j, 0] if last else deltas[row, s * out_f + j]
                    acc += g * params[w_at + j * in_f + k]
                deltas[into, item] = acc
            row = into
        cuda.syncthreads()
    found = same_type(stats[2], 0.0)
    for i in range(tid, grads.size, threads):
        if not abs(grads[i]) < same_type(grads[i], math.inf):
            found += same_type(found, 1.0)
    if found > same_type(found, 0.0):
        cuda.atomic.add(stats, 2, found)
    cuda.syncthreads()
    if exp_avg.size > 0 and _step_allowed(stats, loss_ceiling):  # adam_step_cuda's loop, over the block
        step_size, root_correction2 = adam_constants(adam[0], adam[5], adam[6])
        floor = flush_floor(adam[3])
        for i in range(tid, params.size, threads):
            p, m, v, _ = adam_element(params[i], grads[i], exp_avg[i], exp_avg_sq[i], zero, adam[0], adam[1], adam[2],
                                      adam[3], adam[4], decoupled, step_size, root_correction2, False, maximize, floor)
            params[i] = p
            exp_avg[i] = m
            exp_avg_sq[i] = v
        if tid == 0:
            stats[4] = same_type(zero, 1.0)
