"""One table of kernel cases drives three test layers: CPU kernel vs NumPy float64 reference
(test_kernels.py), CPU vs CUDA twin under the simulator (cudasim/), and PTX compiles (test_ptx.py).

Each case maps (family, op) -> make(dtype, rng) returning (args, work_items, expected), where
``expected`` maps argument positions to float64 reference arrays computed with plain NumPy.
Sizes are tiny on purpose: the CUDA simulator runs each thread as a Python thread.
"""

import math

import numpy as np

ELEMENTWISE = {
    # name: (forward reference, derivative reference given x, saved argument is the output?)
    "relu": (lambda x: np.maximum(x, 0), lambda x: (x > 0).astype(float), False),
    "sigmoid": (lambda x: 1 / (1 + np.exp(-x)), lambda x: np.exp(-x) / (1 + np.exp(-x)) ** 2, True),
    "tanh": (np.tanh, lambda x: 1 - np.tanh(x) ** 2, True),
    "gelu": (lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2))),
             lambda x: 0.5 * (1 + np.vectorize(math.erf)(x / math.sqrt(2))) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi),
             False),
    "gelu_tanh": (lambda x: 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3))),
                  lambda x: (0.5 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
                             + 0.5 * x * (1 - np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)) ** 2)
                             * math.sqrt(2 / math.pi) * (1 + 3 * 0.044715 * x ** 2)),
                  False),
}
SLOPE = 0.1


def f64(a):
    return np.asarray(a, dtype=np.float64)


def _linear_forward(dtype, rng, bias=True, relu=False):
    x, w = rng.standard_normal((5, 7)).astype(dtype), rng.standard_normal((3, 7)).astype(dtype)
    b = rng.standard_normal(3).astype(dtype) if bias else np.empty(0, dtype)
    out = np.zeros((5, 3), dtype)
    expected = f64(x) @ f64(w).T + (f64(b) if bias else 0)
    if relu:
        expected = np.maximum(expected, 0)
    return [out, x, w, b, relu], out.size, {0: expected}


def _linear_backward(dtype, rng, relu=False):
    x, w = rng.standard_normal((5, 7)).astype(dtype), rng.standard_normal((3, 7)).astype(dtype)
    dout = rng.standard_normal((5, 3)).astype(dtype)
    dx, dw, db = np.zeros((5, 7), dtype), np.zeros((3, 7), dtype), np.zeros(3, dtype)
    if relu:  # out as a fused ReLU left it: about half clamped to zero; the gradient stops there
        out = np.maximum(rng.standard_normal((5, 3)), 0).astype(dtype)
        dmasked = np.zeros_like(dout)
        g = np.where(out > 0, f64(dout), 0.0)
    else:
        out, dmasked, g = np.empty((0, 0), dtype), np.empty((0, 0), dtype), f64(dout)
    expected = {0: g @ f64(w), 1: g.T @ f64(x), 2: g.sum(0)}
    return [dx, dw, db, dmasked, dout, out, x, w, relu], dx.size + dw.size + db.size, expected


def _elementwise_forward(kind):
    def make(dtype, rng):
        x = rng.standard_normal(37).astype(dtype) * 3
        out = np.zeros_like(x)
        if kind == "leaky_relu":
            return [out, x, dtype(SLOPE)], x.size, {0: np.where(f64(x) > 0, f64(x), SLOPE * f64(x))}
        return [out, x], x.size, {0: ELEMENTWISE[kind][0](f64(x))}
    return make


def _elementwise_backward(kind):
    def make(dtype, rng):
        x = rng.standard_normal(37).astype(dtype) * 3
        dout = rng.standard_normal(37).astype(dtype)
        dx = np.zeros_like(x)
        if kind == "leaky_relu":
            return [dx, dout, x, dtype(SLOPE)], x.size, {0: f64(dout) * np.where(f64(x) > 0, 1.0, SLOPE)}
        forward, derivative, saves_output = ELEMENTWISE[kind]
        saved = forward(f64(x)).astype(dtype) if saves_output else x
        return [dx, dout, saved], x.size, {0: f64(dout) * derivative(f64(x))}
    return make


def _softmax_ref(x, axis=1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _softmax_forward(dtype, rng, log=False):
    """(outer, classes, inner) = (3, 6, 2): the class axis in the middle, as Softmax(axis=1) of images."""
    x = (rng.standard_normal((3, 6, 2)) * 5).astype(dtype)
    expected = _softmax_ref(f64(x))
    return [np.zeros_like(x), x], 6, {0: np.log(expected) if log else expected}


def _softmax_backward(dtype, rng, log=False):
    x, dout = rng.standard_normal((3, 6, 2)), rng.standard_normal((3, 6, 2)).astype(dtype)
    out = _softmax_ref(x)
    g = f64(dout)
    if log:
        expected, saved = g - out * g.sum(axis=1, keepdims=True), np.log(out)
    else:
        expected, saved = out * (g - (g * out).sum(axis=1, keepdims=True)), out
    return [np.zeros((3, 6, 2), dtype), dout, saved.astype(dtype)], 6, {0: expected}


def cross_entropy_reference(logits, labels, weights, smoothing):
    """Per-sample loss, per-sample weight and probabilities, as torch.nn.CrossEntropyLoss defines them."""
    logits = f64(logits)
    log_probs = logits - logits.max(1, keepdims=True)
    log_probs = log_probs - np.log(np.exp(log_probs).sum(1, keepdims=True))
    n, classes = logits.shape
    nll = -log_probs[np.arange(n), labels]
    smooth = -(log_probs * weights).sum(1) / classes
    loss = (1 - smoothing) * weights[labels] * nll + smoothing * smooth
    return loss, weights[labels], np.exp(log_probs)


CE_IGNORE = 2  # ignore_index: a valid class number, so the kernels must test it before indexing


def _ce_inputs(dtype, rng):
    """(outer, C, inner) = (3, 5, 2) logits with (3, 2) labels, one of them ignored."""
    logits = (rng.standard_normal((3, 5, 2)) * 3).astype(dtype)
    labels = rng.integers(0, 5, (3, 2)).astype(np.int64)
    labels[1, 0] = CE_IGNORE
    labels[0, 1] = 4 if labels[0, 1] == CE_IGNORE else labels[0, 1]
    weights = rng.uniform(0.5, 2.0, 5).astype(dtype)
    return logits, labels, weights, 0.1


def _rows(array):
    """(outer, C, inner) as (outer * inner, C) rows, for the row-wise references."""
    return np.moveaxis(f64(array), 1, 2).reshape(-1, array.shape[1])


def _unrows(rows, shape):
    return np.moveaxis(rows.reshape(shape[0], shape[2], shape[1]), 2, 1)


def _ce_forward(dtype, rng):
    logits, labels, weights, smoothing = _ce_inputs(dtype, rng)
    flat = labels.reshape(-1)
    loss, sample_weight, probs = cross_entropy_reference(_rows(logits), np.where(flat == CE_IGNORE, 0, flat),
                                                         f64(weights), smoothing)
    counted = flat != CE_IGNORE
    expected = {0: np.where(counted, loss, 0).reshape(3, 2), 1: np.where(counted, sample_weight, 0).reshape(3, 2)}
    args = [np.zeros((3, 2), dtype), np.zeros((3, 2), dtype), np.zeros((3, 5, 2), dtype), logits, labels, weights,
            dtype(smoothing), CE_IGNORE]
    return args, 6, expected  # probs of an ignored position are left unwritten: not compared


def _ce_backward(dtype, rng, per_position=False):
    logits, labels, weights, smoothing = _ce_inputs(dtype, rng)
    flat = labels.reshape(-1)
    safe = np.where(flat == CE_IGNORE, 0, flat)
    _, sample_weight, probs = cross_entropy_reference(_rows(logits), safe, f64(weights), smoothing)
    counted = flat != CE_IGNORE
    upstream = (rng.uniform(0.5, 2, (3, 2)) if per_position else np.full((1, 1), 1.0 / sample_weight[counted].sum()))
    factor = np.broadcast_to(upstream, (3, 2)).reshape(-1)
    onehot = np.eye(5)[safe]
    w = f64(weights)
    rows = factor[:, None] * ((1 - smoothing) * w[safe][:, None] * (probs - onehot)
                              + smoothing / 5 * (w.sum() * probs - w[None, :]))
    rows[~counted] = 0
    args = [np.zeros((3, 5, 2), dtype), _unrows(probs, (3, 5, 2)).astype(dtype), labels, weights, dtype(smoothing),
            CE_IGNORE, upstream.astype(dtype)]
    return args, 6, {0: _unrows(rows, (3, 5, 2))}


def _soft_ce_inputs(dtype, rng):
    logits = (rng.standard_normal((3, 5, 2)) * 3).astype(dtype)
    targets = rng.uniform(0, 1, (3, 5, 2))
    targets = (targets / targets.sum(axis=1, keepdims=True)).astype(dtype)
    return logits, targets, rng.uniform(0.5, 2.0, 5).astype(dtype), 0.2


def _soft_reference(logits, targets, weights, smoothing):
    rows, t = _rows(logits), (1 - smoothing) * _rows(targets) + smoothing / 5
    log_probs = rows - rows.max(1, keepdims=True)
    log_probs -= np.log(np.exp(log_probs).sum(1, keepdims=True))
    return -(f64(weights) * t * log_probs).sum(1), np.exp(log_probs), t


def _soft_ce_forward(dtype, rng):
    logits, targets, weights, smoothing = _soft_ce_inputs(dtype, rng)
    loss, probs, _ = _soft_reference(logits, targets, weights, smoothing)
    args = [np.zeros((3, 2), dtype), np.zeros((3, 5, 2), dtype), logits, targets, weights, dtype(smoothing)]
    return args, 6, {0: loss.reshape(3, 2), 1: _unrows(probs, (3, 5, 2))}


def _soft_ce_backward(dtype, rng):
    logits, targets, weights, smoothing = _soft_ce_inputs(dtype, rng)
    _, probs, t = _soft_reference(logits, targets, weights, smoothing)
    upstream = rng.uniform(0.5, 2, (3, 2))
    w = f64(weights)
    rows = upstream.reshape(-1)[:, None] * (probs * (w * t).sum(1, keepdims=True) - w * t)
    args = [np.zeros((3, 5, 2), dtype), _unrows(probs, (3, 5, 2)).astype(dtype), targets, weights, dtype(smoothing),
            upstream.astype(dtype)]
    return args, 6, {0: _unrows(rows, (3, 5, 2))}


def _nll_forward(dtype, rng):
    log_probs, labels, weights, _ = _ce_inputs(dtype, rng)
    flat = labels.reshape(-1)
    counted = flat != CE_IGNORE
    safe = np.where(counted, flat, 0)
    rows = _rows(log_probs)
    loss = np.where(counted, -f64(weights)[safe] * rows[np.arange(6), safe], 0)
    args = [np.zeros((3, 2), dtype), np.zeros((3, 2), dtype), log_probs, labels, weights, CE_IGNORE]
    return args, 6, {0: loss.reshape(3, 2), 1: np.where(counted, f64(weights)[safe], 0).reshape(3, 2)}


def _nll_backward(dtype, rng):
    _, labels, weights, _ = _ce_inputs(dtype, rng)
    flat = labels.reshape(-1)
    counted = flat != CE_IGNORE
    upstream = rng.uniform(0.5, 2, (3, 2))
    rows = np.zeros((6, 5))
    rows[np.arange(6)[counted], flat[counted]] = -(f64(weights)[flat[counted]] * upstream.reshape(-1)[counted])
    args = [np.zeros((3, 5, 2), dtype), labels, weights, CE_IGNORE, upstream.astype(dtype)]
    return args, 6, {0: _unrows(rows, (3, 5, 2))}


HUBER_DELTA = 0.7  # the standard-normal differences fall on both sides of it


BCE_WEIGHT, BCE_POS_WEIGHT = [0.5, 1.5, 2.0, 1.0], [3.0, 0.5, 1.0, 2.0]  # repeat along the 24 elements


def _element_loss_inputs(kind, dtype, rng):
    pred = rng.standard_normal(24).astype(dtype) * 2
    if kind == "bce_with_logits":
        target = rng.uniform(0, 1, 24)
    elif kind == "kl_div":
        target = rng.uniform(0, 1, 24)
        target[3] = 0.0  # xlogy: 0 where the target is 0
    else:
        target = rng.standard_normal(24)
    extra = {"huber": [dtype(HUBER_DELTA)], "kl_div": [False],
             "bce_with_logits": [np.array(BCE_WEIGHT, dtype), np.array(BCE_POS_WEIGHT, dtype)]}.get(kind, [])
    return pred, target.astype(dtype), extra


def _sum_loss_forward(kind):
    def make(dtype, rng):
        pred, target, extra = _element_loss_inputs(kind, dtype, rng)
        p, t = f64(pred), f64(target)
        d = p - t
        w, pw = np.tile(BCE_WEIGHT, 6), np.tile(BCE_POS_WEIGHT, 6)
        terms = {"mse": lambda: d ** 2, "mae": lambda: np.abs(d),
                 "huber": lambda: np.where(np.abs(d) < HUBER_DELTA, 0.5 * d ** 2,
                                           HUBER_DELTA * (np.abs(d) - 0.5 * HUBER_DELTA)),
                 "bce_with_logits": lambda: -w * (pw * t * np.log(1 / (1 + np.exp(-p)))
                                                  + (1 - t) * np.log(1 - 1 / (1 + np.exp(-p)))),
                 "kl_div": lambda: np.where(t > 0, t * (np.log(np.where(t > 0, t, 1)) - p), 0.0)}[kind]()
        return [np.zeros(24, dtype), pred, target, *extra], pred.size, {0: terms}
    return make


def _sum_loss_backward(kind):
    def make(dtype, rng):
        pred, target, extra = _element_loss_inputs(kind, dtype, rng)
        p, t, scale = f64(pred), f64(target), 0.25
        d = p - t
        w, pw = np.tile(BCE_WEIGHT, 6), np.tile(BCE_POS_WEIGHT, 6)
        s = 1 / (1 + np.exp(-p))
        expected = scale * {"mse": lambda: 2 * d, "mae": lambda: np.sign(d),
                            "huber": lambda: np.clip(d, -HUBER_DELTA, HUBER_DELTA),
                            "bce_with_logits": lambda: w * ((1 + (pw - 1) * t) * s - pw * t),
                            "kl_div": lambda: -t}[kind]()
        return [np.zeros(24, dtype), pred, target, dtype(scale), *extra], pred.size, {0: expected}
    return make


def _optimizer_state(dtype, rng, count):
    return [rng.standard_normal(19).astype(dtype) for _ in range(count)]


def _sgd_step(dtype, rng):
    param, buf, grad = _optimizer_state(dtype, rng, 3)
    lr, momentum, dampening, wd = 0.1, 0.9, 0.0, 0.01
    g = f64(grad) + wd * f64(param)
    new_buf = momentum * f64(buf) + (1 - dampening) * g
    new_param = f64(param) - lr * (g + momentum * new_buf)  # nesterov
    args = [param, buf, grad, dtype(lr), dtype(momentum), dtype(dampening), dtype(wd), True, False]
    return args, param.size, {0: new_param, 1: new_buf}


def _adam_step(amsgrad, maximize=False):
    def make(dtype, rng):
        param, m, grad = _optimizer_state(dtype, rng, 3)
        v = np.abs(rng.standard_normal(19)).astype(dtype)
        largest = (np.abs(rng.standard_normal(19)) * 2).astype(dtype) if amsgrad else np.empty(0, dtype)
        lr, b1, b2, eps, wd, step = 0.01, 0.9, 0.999, 1e-8, 0.05, 3
        bc1, bc2 = 1 - b1 ** step, 1 - b2 ** step
        g = -f64(grad) if maximize else f64(grad)
        p = f64(param) * (1 - lr * wd)  # decoupled (AdamW)
        new_m = b1 * f64(m) + (1 - b1) * g
        new_v = b2 * f64(v) + (1 - b2) * g ** 2
        used = np.maximum(f64(largest), new_v) if amsgrad else new_v
        new_p = p - lr / bc1 * new_m / (np.sqrt(used) / math.sqrt(bc2) + eps)
        args = [param, m, v, largest, grad, dtype(lr), dtype(b1), dtype(b2), dtype(eps), dtype(wd), True, dtype(bc1),
                dtype(bc2), amsgrad, maximize]
        expected = {0: new_p, 1: new_m, 2: new_v}
        if amsgrad:
            expected[3] = used
        return args, param.size, expected
    return make


def _adagrad_step(dtype, rng):
    param, grad = _optimizer_state(dtype, rng, 2)
    total = np.abs(rng.standard_normal(19)).astype(dtype)
    clr, eps, wd = 0.05, 1e-10, 0.1
    g = -f64(grad) + wd * f64(param)  # maximize
    new_sum = f64(total) + g * g
    new_p = f64(param) - clr * g / (np.sqrt(new_sum) + eps)
    return [param, total, grad, dtype(clr), dtype(eps), dtype(wd), True], param.size, {0: new_p, 1: new_sum}


def _adamax_step(dtype, rng):
    param, m, grad = _optimizer_state(dtype, rng, 3)
    u = np.abs(rng.standard_normal(19)).astype(dtype)
    clr, b1, b2, eps, wd = 0.02, 0.9, 0.99, 1e-8, 0.05
    g = f64(grad) + wd * f64(param)
    new_m = b1 * f64(m) + (1 - b1) * g
    new_u = np.maximum(b2 * f64(u), np.abs(g) + eps)
    new_p = f64(param) - clr * new_m / new_u
    args = [param, m, u, grad, dtype(clr), dtype(b1), dtype(b2), dtype(eps), dtype(wd), False]
    return args, param.size, {0: new_p, 1: new_m, 2: new_u}


def _nadam_step(dtype, rng):
    param, m, grad = _optimizer_state(dtype, rng, 3)
    v = np.abs(rng.standard_normal(19)).astype(dtype)
    lr, b1, b2, eps, wd, bc2, cg, cm = 0.01, 0.9, 0.999, 1e-8, 0.05, 0.003, 0.02, 0.05
    g = f64(grad) + wd * f64(param)
    new_m = b1 * f64(m) + (1 - b1) * g
    new_v = b2 * f64(v) + (1 - b2) * g * g
    denom = np.sqrt(new_v / bc2) + eps
    new_p = f64(param) - cg * g / denom - cm * new_m / denom
    args = [param, m, v, grad, *(dtype(a) for a in (lr, b1, b2, eps, wd)), False, dtype(bc2), dtype(cg), dtype(cm),
            False]
    return args, param.size, {0: new_p, 1: new_m, 2: new_v}


def _radam_step(rectified):
    def make(dtype, rng):
        param, m, grad = _optimizer_state(dtype, rng, 3)
        v = np.abs(rng.standard_normal(19)).astype(dtype)
        lr, b1, b2, eps, wd, bc1, bc2, rect = 0.01, 0.9, 0.999, 1e-8, 0.05, 0.4, 0.01, 0.7
        p = f64(param) * (1 - lr * wd)  # decoupled
        new_m = b1 * f64(m) + (1 - b1) * f64(grad)
        new_v = b2 * f64(v) + (1 - b2) * f64(grad) ** 2
        if rectified:
            new_p = p - new_m / bc1 * lr * (math.sqrt(bc2) / (np.sqrt(new_v) + eps)) * rect
        else:
            new_p = p - new_m / bc1 * lr
        args = [param, m, v, grad, *(dtype(a) for a in (lr, b1, b2, eps, wd)), True,
                *(dtype(a) for a in (bc1, bc2, rect)), rectified, False]
        return args, param.size, {0: new_p, 1: new_m, 2: new_v}
    return make


def _rmsprop_step(centered_with_momentum):
    # Centered with momentum reads and writes all four buffers; plain RMSprop gets empty grad_avg and
    # momentum buffers, as the optimizer passes them.
    def make(dtype, rng):
        param, grad_avg, buf, grad = _optimizer_state(dtype, rng, 4)
        grad_avg *= 0.1
        square_avg = (np.abs(rng.standard_normal(19)) + 0.5).astype(dtype)
        lr, alpha, eps, wd = 0.01, 0.9, 1e-8, 0.01
        momentum = 0.5 if centered_with_momentum else 0.0
        g = f64(grad) + wd * f64(param)
        sq = alpha * f64(square_avg) + (1 - alpha) * g * g
        if not centered_with_momentum:
            empty = np.zeros(0, dtype)
            args = [param, square_avg, empty, empty.copy(), grad, dtype(lr), dtype(alpha), dtype(eps), dtype(wd),
                    dtype(momentum), False]
            return args, param.size, {0: f64(param) - lr * g / (np.sqrt(sq) + eps), 1: sq}
        ga = alpha * f64(grad_avg) + (1 - alpha) * g
        avg = np.sqrt(sq - ga * ga) + eps
        new_buf = momentum * f64(buf) + g / avg
        args = [param, square_avg, grad_avg, buf, grad, dtype(lr), dtype(alpha), dtype(eps), dtype(wd),
                dtype(momentum), True]
        return args, param.size, {0: f64(param) - lr * new_buf, 1: sq, 2: ga, 3: new_buf}
    return make


def subnormal_step_cases(dtype, eps):
    """Optimizer steps whose decaying state is a subnormal number (2**-130) and whose gradient is 0:
    {op: (args, positions of the state that must end exactly 0 when eps > 0)}. With eps = 0 the same
    state must stay subnormal (nothing flushed where no eps guards a division); SGD has no eps and
    always flushes."""
    tiny, n = 2.0 ** -130, 5

    def arrays(count):
        return [np.ones(n, dtype)] + [np.full(n, tiny, dtype) for _ in range(count)] + [np.zeros(n, dtype)]

    d, empty = dtype, np.zeros(0, dtype)
    param, m, v, grad = arrays(2)
    adam = [param, m, v, empty, grad, d(0.01), d(0.9), d(0.999), d(eps), d(0.0), False, d(0.1), d(0.001), False,
            False]
    param, buf, grad = arrays(1)
    sgd = [param, buf, grad, d(0.1), d(0.9), d(0.0), d(0.0), False, False]
    param, total, grad = arrays(1)
    adagrad = [param, total, grad, d(0.01), d(eps), d(0.0), False]
    param, m, u, grad = arrays(2)
    adamax = [param, m, u, grad, d(0.01), d(0.9), d(0.999), d(eps), d(0.0), False]
    param, m, v, grad = arrays(2)
    nadam = [param, m, v, grad, d(0.01), d(0.9), d(0.999), d(eps), d(0.0), False, d(0.001), d(0.01), d(0.01), False]
    param, m, v, grad = arrays(2)
    radam = [param, m, v, grad, d(0.01), d(0.9), d(0.999), d(eps), d(0.0), False, d(0.1), d(0.001), d(0.5), True,
             False]
    param, sq, ga, buf, grad = arrays(3)
    rmsprop = [param, sq, ga, buf, grad, d(0.01), d(0.9), d(eps), d(0.0), d(0.5), True]
    return {"sgd_step": (sgd, (1,)), "adam_step": (adam, (1, 2)), "adagrad_step": (adagrad, (1,)),
            "adamax_step": (adamax, (1,)), "nadam_step": (nadam, (1, 2)), "radam_step": (radam, (1, 2)),
            "rmsprop_step": (rmsprop, (1, 2, 3))}


def check_subnormal_step(op, args, flushed, eps):
    """After a subnormal_step_cases step (args now hold the results): the decaying state is exactly 0
    when eps > 0 (always for SGD), still subnormal and nonzero when eps = 0; the parameter finite."""
    assert np.isfinite(args[0]).all(), op
    for position in flushed:
        state = args[position]
        if eps > 0 or op == "sgd_step":
            assert (state == 0).all(), f"{op}: argument {position} kept {state}"
        else:
            assert ((state != 0) & (np.abs(state) < 2.0 ** -126)).all(), f"{op}: argument {position} is {state}"


MASK64 = (1 << 64) - 1


def reference_uniform(seed, counter):
    """Pure-Python splitmix64, the reference of the dropout stream."""
    z = (seed * 0x9E3779B97F4A7C15 + counter) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    z ^= z >> 31
    return (z >> 40) * 2.0 ** -24


def _dropout_forward(dtype, rng):
    x = rng.standard_normal(41).astype(dtype)
    p, seed, offset = 0.3, 12345, 77
    scale = 1 / (1 - p)
    mask = np.array([scale if reference_uniform(seed, offset + i) >= p else 0.0 for i in range(41)])
    args = [np.zeros_like(x), np.zeros_like(x), x, np.float32(p), dtype(scale), np.uint64(seed), np.uint64(offset)]
    return args, x.size, {0: f64(x) * mask, 1: mask}


def _dropout_backward(dtype, rng):
    dout = rng.standard_normal(41).astype(dtype)
    mask = (rng.uniform(size=41) > 0.3).astype(dtype) * dtype(1 / 0.7)
    return [np.zeros_like(dout), dout, mask], dout.size, {0: f64(dout) * f64(mask)}



def reference_normal(seed, counter):
    """Box-Muller on the dropout stream's uniforms at 2c and 2c + 1: the reference of GaussianSample."""
    u1 = 1.0 - reference_uniform(seed, 2 * counter)
    u2 = reference_uniform(seed, 2 * counter + 1)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2 * math.pi * u2)


def _gaussian_sample_forward(sample):
    def make(dtype, rng):
        n, latent, seed, offset = 3, 5, 2024, 40
        x = rng.standard_normal((n, 2 * latent)).astype(dtype)
        eps = np.array([[reference_normal(seed, offset + i * latent + l) if sample else 0.0 for l in range(latent)]
                        for i in range(n)]).astype(dtype)
        out = f64(x[:, :latent]) + np.exp(0.5 * f64(x[:, latent:])) * f64(eps)
        args = [np.zeros((n, latent), dtype), np.zeros((n, latent), dtype), x, sample, np.uint64(seed),
                np.uint64(offset)]
        return args, n * latent, {0: out, 1: eps}
    return make


def _gaussian_kl_forward(dtype, rng):
    x = rng.standard_normal((4, 6)).astype(dtype)
    mean, log_var = f64(x[:, :3]), f64(x[:, 3:])
    kl = 0.5 * (np.exp(log_var) + mean ** 2 - 1 - log_var).sum(axis=1)
    return [np.zeros(4, dtype), x], 4, {0: kl}


def _gaussian_sample_backward(dtype, rng):
    n, latent, weight = 3, 4, 0.25
    x = rng.standard_normal((n, 2 * latent)).astype(dtype)
    noise, dout = rng.standard_normal((n, latent)).astype(dtype), rng.standard_normal((n, latent)).astype(dtype)
    mean, log_var = f64(x[:, :latent]), f64(x[:, latent:])
    dx = np.concatenate([f64(dout) + weight * mean,
                         f64(dout) * 0.5 * np.exp(0.5 * log_var) * f64(noise) + weight * 0.5 * (np.exp(log_var) - 1)],
                        axis=1)
    return [np.zeros_like(x), dout, x, noise, dtype(weight)], n * latent, {0: dx}


# ---------------------------------------------------------------------------------- dense chain
def _activation_reference(name, v):
    """float64 activation ``name`` (ACTIVATION_CODES's names, None: the identity) of v."""
    import math

    functions = {"relu": lambda v: np.maximum(v, 0), "tanh": np.tanh, "sigmoid": lambda v: 1 / (1 + np.exp(-v)),
                 "gelu": lambda v: 0.5 * v * (1 + np.vectorize(math.erf)(v / np.sqrt(2))),
                 "gelu_tanh": lambda v: 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v ** 3))),
                 None: lambda v: v}
    return functions[name](v)


def _dense_chain_reference(x, layers):
    """float64 forward of Linear layers (weight, bias or None, activation name) over rows of x."""
    h = x
    for weight, bias, activation in layers:
        h = _activation_reference(activation, h @ weight.T + (0 if bias is None else bias))
    return h


def _dense_chain_forward(widths, activations, biases, n=3, bad_inputs=False):
    """``n`` samples (one: the CPU's dot products, eight rows and then one at a time; several: its BLAS
    products) through Linear layers of ``widths`` (input first), each with its activation and with or
    without a bias, packed into one flat parameter buffer as a ParameterBank holds them. ``bad_inputs``:
    the first feature is NaN and the last inf (both counted in ``bad``)."""
    from numdl.kernels.dense_chain import ACTIVATION_CODES

    def make(dtype, rng):
        x = rng.standard_normal((n, widths[0])).astype(dtype)
        params, table, layers = [rng.standard_normal(5)], [], []  # parameters need not start at 0
        at = 5
        for in_f, out_f, activation, has_bias in zip(widths, widths[1:], activations, biases):
            weight = rng.standard_normal((out_f, in_f)) / np.sqrt(in_f)
            bias = rng.standard_normal(out_f) if has_bias else None
            table.append([in_f, out_f, at, at + weight.size if has_bias else -1, ACTIVATION_CODES.get(activation, 0)])
            params += [weight.ravel()] + ([bias] if has_bias else [])
            at += weight.size + (out_f if has_bias else 0)
            layers.append((weight, bias, activation))
        flat = np.concatenate(params).astype(dtype)
        layers = [(f64(flat[t[2]:t[2] + t[0] * t[1]].reshape(t[1], t[0])), None if t[3] < 0 else
                   f64(flat[t[3]:t[3] + t[1]]), activation) for t, (_, _, activation) in zip(table, layers)]
        expected = _dense_chain_reference(f64(x), layers)
        scratch = np.zeros((2, n * max(widths[1:-1] or [1])), dtype)
        x = x.ravel()
        args = [np.zeros(n * widths[-1], dtype), np.zeros(1, dtype), x, flat, np.array(table, np.int64), scratch]
        if bad_inputs:  # counted; the outputs are then whatever inf makes of them, and not compared
            x[-1], x[0] = np.inf, np.nan
            return args, n, {1: np.array([2])}
        return args, n, {0: expected.ravel(), 1: np.array([0])}
    return make


def _dense_chain_train(widths, activations, biases, labels, class_weights=None, smoothing=0.0, mean=True,
                       infinite_input=False, rates=(), adam=None, split=False):
    """A training step's forward, cross-entropy and backward through Linear layers of ``widths`` (input
    first), each with its activation (none, ReLU, Tanh, Sigmoid) and with or without a bias, over the
    samples of ``labels`` (-100: ignored); the parameters fill the flat buffer from 0 as a model's bank
    (the kernel counts non-finite gradients over all of it). Reference: float64 back-propagation by hand.
    ``infinite_input``: the first sample's first feature is inf, which makes every gradient NaN (counted).
    ``rates``: a Dropout rate after each hidden layer (0: none), each with a stream (seed, offset) of its own.
    GELU layers (both forms, the last one included) keep their input in acts, before their output.
    ``adam``: (decoupled, maximize, loss_ceiling): the kernel then takes an Adam step over the whole
    buffer from random state (step 3), unless a gradient or the loss is not finite or the loss is above
    loss_ceiling. A label neither a class nor -100: nothing is computed but the count of such labels.
    ``split``: a buffer for a second thread's gradient sums (NaN: every entry must be written first),
    with which the CPU kernel splits the samples between two threads when numba has two."""
    from numdl.kernels.dense_chain import ACTIVATION_CODES

    # the gradient through each activation, from its output (ReLU selects: a NaN gradient stays out where h <= 0)
    through = {"relu": lambda g, h: np.where(h <= 0, 0, g), "tanh": lambda g, h: g * (1 - h * h),
               "sigmoid": lambda g, h: g * h * (1 - h), None: lambda g, h: g}
    # GELU's slope, from its input
    slopes = {"gelu": lambda v: 0.5 * (1 + np.vectorize(__import__("math").erf)(v / np.sqrt(2)))
              + v * np.exp(-v * v / 2) / np.sqrt(2 * np.pi),
              "gelu_tanh": lambda v: 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v ** 3)))
              + 0.5 * v * (1 - np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v ** 3)) ** 2)
              * np.sqrt(2 / np.pi) * (1 + 3 * 0.044715 * v * v)}
    layers = len(widths) - 1
    drop = list(rates) + [0.0] * (layers - len(rates))

    def make(dtype, rng):
        n, classes = len(labels), widths[-1]
        x = rng.standard_normal((n, widths[0])).astype(dtype)
        if infinite_input:
            x[0, 0] = np.inf
        params, table, at, position, source = [], [], 0, 0, -1
        for index, (in_f, out_f, activation, has_bias) in enumerate(zip(widths, widths[1:], activations, biases)):
            params.append(rng.standard_normal(out_f * in_f) / np.sqrt(in_f))
            if has_bias:
                params.append(rng.standard_normal(out_f))
            last = index == layers - 1
            kept = position if activation in slopes else -1  # GELU's input, before its output
            position += out_f if activation in slopes else 0
            table.append([in_f, out_f, at, at + out_f * in_f if has_bias else -1, ACTIVATION_CODES.get(activation, 0),
                          1000 + 7 * index, 31 * index + 5, -1 if last else position, source, kept])
            if not last:  # the next layer reads this one's dropped-out copy, which follows it
                source = position + (out_f if drop[index] > 0 else 0)
                position += out_f * (2 if drop[index] > 0 else 1)
            at += out_f * in_f + (out_f if has_bias else 0)
        flat = np.concatenate(params).astype(dtype)
        weights = np.ones(classes) if class_weights is None else np.asarray(class_weights, float)
        y = np.asarray(labels, np.int64)
        with np.errstate(invalid="ignore"):  # the infinite-input case makes NaN on purpose
            inputs, pres, outputs, masks, h = [], [], [], [], f64(x)
            for index, row in enumerate(table):
                in_f, out_f, w_at, b_at, _, seed, offset = row[:7]
                weight = f64(flat[w_at:w_at + out_f * in_f]).reshape(out_f, in_f)
                inputs.append(h)
                pres.append(h @ weight.T + (f64(flat[b_at:b_at + out_f]) if b_at >= 0 else 0))
                h = _activation_reference(activations[index], pres[-1])
                outputs.append(h)
                keep = np.array([reference_uniform(seed, offset + i) >= np.float32(drop[index])
                                 for i in range(n * out_f)]).reshape(n, out_f)
                masks.append(keep / (1 - drop[index]) if drop[index] > 0 else np.ones((n, out_f)))
                h = h * masks[-1]
            logits = outputs[-1]
            lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
            probs = np.exp(logits - lse[:, None])
            counted = y != -100
            yc = np.where(counted & (y >= 0) & (y < classes), y, 0)  # (labels out of range: no reference needed)
            terms = (1 - smoothing) * weights[yc] * (lse - logits[np.arange(n), yc]) + smoothing / classes * (
                weights[None, :] * (lse[:, None] - logits)).sum(1)
            weight_sum = weights[yc][counted].sum()
            scale = (1 / weight_sum if weight_sum > 0 else 0) if mean else 1
            correct = (logits.argmax(1) == y)[counted].sum()
            one_hot = np.eye(classes)[yc]
            g = scale * ((1 - smoothing) * weights[yc][:, None] * (probs - one_hot)
                         + smoothing / classes * (weights.sum() * probs - weights[None, :]))
            g[~counted] = 0
            grads = np.zeros(flat.size)
            for index in range(layers - 1, -1, -1):
                in_f, out_f, w_at, b_at = table[index][:4]
                if activations[index] in slopes:
                    g = g * masks[index] * slopes[activations[index]](pres[index])
                else:
                    g = through[activations[index]](g * masks[index], outputs[index])
                grads[w_at:w_at + out_f * in_f] = (g.T @ inputs[index]).ravel()
                if b_at >= 0:
                    grads[b_at:b_at + out_f] = g.sum(0)
                g = g @ f64(flat[w_at:w_at + out_f * in_f]).reshape(out_f, in_f)
            loss = (terms[counted]).sum() * scale
        hidden = widths[1:-1]
        non_finite = np.count_nonzero(~np.isfinite(grads))
        outside = np.count_nonzero((y != -100) & ((y < 0) | (y >= classes)))
        none = np.empty(0, dtype)
        optimizer = [none, none, none, False, False, dtype(np.inf)]
        expected = {0: grads, 1: np.array([loss, correct, non_finite, 0, 0])}
        if outside:  # nothing but the count (the gradients are not written)
            expected = {1: np.array([0, 0, 0, outside, 0])}
        if adam is not None:
            decoupled, maximize, ceiling = adam
            m = rng.standard_normal(flat.size).astype(dtype)
            v = np.abs(rng.standard_normal(flat.size)).astype(dtype)
            lr, b1, b2, eps, wd, step = 0.01, 0.9, 0.999, 1e-8, 0.05, 3
            constants = np.array([lr, b1, b2, eps, wd, 1 - b1 ** step, 1 - b2 ** step], dtype)
            optimizer = [m, v, constants, decoupled, maximize, dtype(ceiling)]
            with np.errstate(invalid="ignore"):
                g = -grads if maximize else grads
                p = f64(flat) * (1 - lr * wd) if decoupled else f64(flat)
                g = g if decoupled else g + wd * f64(flat)
                new_m = b1 * f64(m) + (1 - b1) * g
                new_v = b2 * f64(v) + (1 - b2) * g * g
                stepped = not outside and non_finite == 0 and np.isfinite(loss) and loss <= ceiling
                expected[1][4] = 1 if stepped else 0
                if stepped:
                    new_p = p - lr / (1 - b1 ** step) * new_m / (np.sqrt(new_v) / math.sqrt(1 - b2 ** step) + eps)
                    expected.update({8: new_p, 15: new_m, 16: new_v})
                else:  # the state as it was
                    expected.update({8: f64(flat), 15: f64(m), 16: f64(v)})
        args = [np.zeros(flat.size, dtype), np.zeros(5, dtype), np.zeros(n * max(position, 1), dtype),
                np.zeros((2, n * max(hidden or (1,))), dtype), np.zeros((n, classes, 1), dtype),
                np.zeros((n, classes, 1), dtype), x.ravel(), y, flat, np.array(table, np.int64),
                np.array([[p, 1 / (1 - p)] for p in drop], dtype), weights.astype(dtype), dtype(smoothing), -100, mean,
                *optimizer, np.full((1, flat.size), np.nan, dtype) if split else np.empty((0, 0), dtype)]
        return args, 1, expected
    return make


# ----------------------------------------------------------------------------------- convolution
# The acceptance case of the CNN issue: stride 2, padding 1, dilation 2, groups 2, odd-sized input.
CONV = dict(n=2, c_in=4, h=7, w=5, c_out=6, groups=2, k=(3, 2), stride=(2, 2), pad=(1, 1), dil=(2, 2))
# A "same" 5x5 convolution (stride 1, output as large as the input) in two groups on the CPU's GEMM
# path, one sample a thread (CONV's 3x3 outputs take backward's whole-batch products instead).
CONV_SAME = dict(n=2, c_in=2, h=16, w=16, c_out=2, groups=2, k=(5, 5), stride=(1, 1), pad=(2, 2), dil=(1, 1))
# Stride 1 with outputs as wide as the input: im2col and col2im copy each tap's shifted plane as one
# run (kernels.conv._im2col_plane); dilated columns, no row padding (7 of 9 rows), 40 output
# channels (the GEMM path), three samples.
CONV_SAME_WIDTH = dict(n=3, c_in=3, h=9, w=11, c_out=40, groups=1, k=(3, 3), stride=(1, 1), pad=(0, 2),
                       dil=(1, 2))
# The GEMM path in several products per thread: 19x19 outputs are one sample a product forward and
# three backward (tuning.CONV_GEMM_*_MIN_COLUMNS), seven samples two blocks of four and three.
CONV_GEMM = dict(n=7, c_in=1, h=21, w=21, c_out=33, groups=1, k=(3, 3), stride=(1, 1), pad=(0, 0), dil=(1, 1))
# 3x3, stride 1: the CPU's direct path (kernels.conv.direct_conv); 14 output channels are a block of
# eight, one of four and two single ones of the loops (7 input channels: below
# tuning.SHIFTED_GEMM_MIN_IN_CHANNELS; dx's convolution, from 14 channels, takes the shifted products),
# three samples split unevenly over two threads.
CONV_DIRECT = dict(n=3, c_in=7, h=6, w=5, c_out=14, groups=1, k=(3, 3), stride=(1, 1), pad=(1, 1), dil=(1, 1))
# The direct path's shifted products everywhere: forward and dx (64 and 32 input channels) and dweight
# (64 x 32 channel pairs, tuning.SHIFTED_GEMM_DWEIGHT_MIN_PAIRS); two 22x22 samples' planes (1,152
# positions) are two chunks of tuning.SHIFTED_GEMM_CHUNK_PIXELS.
CONV_DIRECT_GEMM = dict(n=2, c_in=64, h=22, w=22, c_out=32, groups=1, k=(3, 3), stride=(1, 1), pad=(1, 1),
                        dil=(1, 1))
# ... and as a 1x1 kernel (one product per chunk; dweight by the loops: 8 x 6 pairs).
CONV_DIRECT_1X1_GEMM = dict(n=2, c_in=8, h=5, w=6, c_out=6, groups=1, k=(1, 1), stride=(1, 1), pad=(0, 0),
                            dil=(1, 1))
# The direct path's 1x1 kernels (a block of four and two single channels again).
CONV_DIRECT_1X1 = dict(n=3, c_in=3, h=5, w=4, c_out=6, groups=1, k=(1, 1), stride=(1, 1), pad=(0, 0), dil=(1, 1))
# Uneven padding (2 rows, no columns) and output planes past one DIRECT_CONV_CHUNK_PIXELS chunk.
CONV_DIRECT_WIDE = dict(n=2, c_in=2, h=24, w=22, c_out=5, groups=1, k=(3, 3), stride=(1, 1), pad=(2, 0),
                        dil=(1, 1))


def conv2d_reference(x, w, b, stride, pad, dil, groups, relu=False):
    """Direct float64 cross-correlation, PyTorch's definition, as plain loops."""
    n_batch, c_in, h, wid = x.shape
    c_out, c_in_g, kh, kw = w.shape
    h_out = (h + 2 * pad[0] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    w_out = (wid + 2 * pad[1] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    padded = np.zeros((n_batch, c_in, h + 2 * pad[0], wid + 2 * pad[1]))
    padded[:, :, pad[0]:pad[0] + h, pad[1]:pad[1] + wid] = x
    out = np.zeros((n_batch, c_out, h_out, w_out))
    c_out_g = c_out // groups
    for co in range(c_out):
        g = co // c_out_g
        for i in range(kh):
            for j in range(kw):
                rows = padded[:, g * c_in_g:(g + 1) * c_in_g, i * dil[0]:i * dil[0] + stride[0] * h_out:stride[0],
                              j * dil[1]:j * dil[1] + stride[1] * w_out:stride[1]]
                out[:, co] += np.einsum("nchw,c->nhw", rows, w[co, :, i, j])
        out[:, co] += b[co] if b.size else 0
    return np.maximum(out, 0) if relu else out


def _conv_inputs(dtype, rng, p=CONV):
    x = rng.standard_normal((p["n"], p["c_in"], p["h"], p["w"])).astype(dtype)
    w = rng.standard_normal((p["c_out"], p["c_in"] // p["groups"]) + p["k"]).astype(dtype)
    b = rng.standard_normal(p["c_out"]).astype(dtype)
    out = conv2d_reference(f64(x), f64(w), f64(b), p["stride"], p["pad"], p["dil"], p["groups"])
    return x, w, b, out.shape


def _conv_scalars(p=CONV):
    return [*p["stride"], *p["pad"], *p["dil"], p["groups"]]


def _conv_forward(relu, p=CONV):
    def make(dtype, rng):
        x, w, b, shape = _conv_inputs(dtype, rng, p)
        expected = conv2d_reference(f64(x), f64(w), f64(b), p["stride"], p["pad"], p["dil"], p["groups"], relu)
        return [np.zeros(shape, dtype), x, w, b, *_conv_scalars(p), relu], int(np.prod(shape)), {0: expected}
    return make


def _numeric_conv_grads(x, w, b, dout, relu, p=CONV):
    """Gradients of sum(conv(x) * dout) by linearity: exact for the linear map, masked for ReLU."""
    out = conv2d_reference(x, w, b, p["stride"], p["pad"], p["dil"], p["groups"])
    g = dout * (out > 0) if relu else dout
    dw = np.zeros_like(w)
    for idx in np.ndindex(*w.shape):
        basis = np.zeros_like(w)
        basis[idx] = 1.0
        dw[idx] = (conv2d_reference(x, basis, np.zeros(0), p["stride"], p["pad"], p["dil"], p["groups"]) * g).sum()
    dx = np.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        basis = np.zeros_like(x)
        basis[idx] = 1.0
        dx[idx] = (conv2d_reference(basis, w, np.zeros(0), p["stride"], p["pad"], p["dil"], p["groups"]) * g).sum()
    return dx, dw, g.sum(axis=(0, 2, 3)), out


def _adjoint_conv_grads(x, w, b, dout, relu, p):
    """_numeric_conv_grads by the adjoint sums instead (stride 1, no dilation, one group): each tap's
    weight gradient is the output gradient against the shifted padded input, and the input gradient
    scatters every tap back; for cases too large for one convolution per weight and input element."""
    assert p["stride"] == (1, 1) and p["dil"] == (1, 1) and p["groups"] == 1
    out = conv2d_reference(x, w, b, p["stride"], p["pad"], p["dil"], p["groups"])
    g = dout * (out > 0) if relu else dout
    (top, left), (h, wid) = p["pad"], x.shape[2:]
    padded = np.zeros((x.shape[0], x.shape[1], h + 2 * top, wid + 2 * left))
    padded[:, :, top:top + h, left:left + wid] = x
    dpadded = np.zeros_like(padded)
    dw = np.zeros_like(w)
    h_out, w_out = g.shape[2:]
    for i in range(w.shape[2]):
        for j in range(w.shape[3]):
            dw[:, :, i, j] = np.einsum("nohw,nchw->oc", g, padded[:, :, i:i + h_out, j:j + w_out])
            dpadded[:, :, i:i + h_out, j:j + w_out] += np.einsum("nohw,oc->nchw", g, w[:, :, i, j])
    return dpadded[:, :, top:top + h, left:left + wid], dw, g.sum(axis=(0, 2, 3)), out


def _conv_backward(relu, p=CONV, grads=_numeric_conv_grads):
    def make(dtype, rng):
        x, w, b, shape = _conv_inputs(dtype, rng, p)
        dout = rng.standard_normal(shape).astype(dtype)
        dx, dw, db, out = grads(f64(x), f64(w), f64(b), f64(dout), relu, p)
        out = np.maximum(out, 0) if relu else out
        args = [np.zeros_like(x), np.zeros_like(w), np.zeros_like(b), dout, out.astype(dtype), x, w,
                *_conv_scalars(p), relu]
        return args, dx.size + dw.size + db.size, {0: dx, 1: dw, 2: db}
    return make


def pool2x2_reference(y):
    """2x2 max pooling at stride 2 (floor mode) of y: the maxima and where each is in its window (0, 1
    top row, 2, 3 bottom row; the first maximum in reading order, as np.argmax)."""
    ph, pw = y.shape[2] // 2, y.shape[3] // 2
    windows = np.stack([y[:, :, i:2 * ph:2, j:2 * pw:2] for i in (0, 1) for j in (0, 1)], axis=-1)
    at = windows.argmax(axis=-1)
    return np.take_along_axis(windows, at[..., None], axis=-1)[..., 0], at


def _conv_pool_forward(relu, p=CONV):
    def make(dtype, rng):
        x, w, b, _ = _conv_inputs(dtype, rng, p)
        full = conv2d_reference(f64(x), f64(w), f64(b), p["stride"], p["pad"], p["dil"], p["groups"], relu)
        pooled, at = pool2x2_reference(full)
        args = [np.zeros(pooled.shape, dtype), np.zeros(pooled.shape, np.int8), x, w, b, *_conv_scalars(p), relu]
        return args, pooled.size, {0: pooled}  # pool_at: tests/test_kernels.py checks it
    return make


def _conv_pool_backward(relu, p=CONV):
    def make(dtype, rng):
        x, w, b, _ = _conv_inputs(dtype, rng, p)
        full = conv2d_reference(f64(x), f64(w), f64(b), p["stride"], p["pad"], p["dil"], p["groups"], relu)
        pooled, at = pool2x2_reference(full)
        dout = rng.standard_normal(pooled.shape).astype(dtype)
        # the convolution's output gradient: each window's at its maximum (through the ReLU's mask)
        g = np.zeros(full.shape)
        n, c, py, px = np.indices(pooled.shape)
        g[n, c, 2 * py + at // 2, 2 * px + at % 2] = f64(dout) * (pooled > 0 if relu else 1)
        dx, dw, db, _ = _numeric_conv_grads(f64(x), f64(w), f64(b), g, False, p)
        args = [np.zeros_like(x), np.zeros_like(w), np.zeros_like(b), dout, pooled.astype(dtype), at.astype(np.int8),
                x, w, *_conv_scalars(p), relu]
        return args, dx.size + dw.size + db.size, {0: dx, 1: dw, 2: db}
    return make


# --------------------------------------------------------------------------------------- pooling
POOL = dict(k=(3, 2), stride=(2, 2), pad=(1, 1))


def _pool_windows(x, k, stride, pad, fill, dil=(1, 1)):
    n, c, h, w = x.shape
    padded = np.full((n, c, h + 2 * pad[0], w + 2 * pad[1]), fill)
    padded[:, :, pad[0]:pad[0] + h, pad[1]:pad[1] + w] = x
    h_out = (h + 2 * pad[0] - dil[0] * (k[0] - 1) - 1) // stride[0] + 1
    w_out = (w + 2 * pad[1] - dil[1] * (k[1] - 1) - 1) // stride[1] + 1
    windows = np.zeros((n, c, h_out, w_out, k[0] * k[1]))
    for i in range(k[0]):
        for j in range(k[1]):
            top, left = i * dil[0], j * dil[1]
            windows[..., i * k[1] + j] = padded[:, :, top:top + stride[0] * h_out:stride[0],
                                                left:left + stride[1] * w_out:stride[1]]
    return windows


def _pool_x(dtype, rng):
    return rng.permutation(2 * 3 * 7 * 5).reshape(2, 3, 7, 5).astype(dtype) / 10  # distinct values: one argmax


def _pool_args():
    return [*POOL["k"], *POOL["stride"], *POOL["pad"]]


def _maxpool_forward(dtype, rng, dil=(1, 1)):
    x = _pool_x(dtype, rng)
    ref = _pool_windows(f64(x), POOL["k"], POOL["stride"], POOL["pad"], -np.inf, dil).max(-1)
    return [np.zeros(ref.shape, dtype), np.zeros(ref.shape, np.int64), x, *_pool_args(), *dil], ref.size, {0: ref}


def _maxpool_backward(dtype, rng, dil=(1, 1)):
    x = _pool_x(dtype, rng)
    ref = _pool_windows(f64(x), POOL["k"], POOL["stride"], POOL["pad"], -np.inf, dil).max(-1)
    from numdl.kernels.pool import maxpool2d_forward_cpu
    argmax = np.zeros(ref.shape, np.int64)
    maxpool2d_forward_cpu(np.zeros(ref.shape, dtype), argmax, x, *_pool_args(), *dil)
    dout = rng.standard_normal(ref.shape).astype(dtype)
    dx = np.zeros(x.shape)
    for n, c, oh, ow in np.ndindex(*ref.shape):  # the gradient goes to the element equal to the max
        hit = np.argwhere(f64(x[n, c]) == ref[n, c, oh, ow])[0]
        dx[n, c, hit[0], hit[1]] += dout[n, c, oh, ow]
    return [np.zeros_like(x), dout, argmax, *_pool_args(), *dil], x.size, {0: dx}


def _avgpool_forward(dtype, rng):
    x = _pool_x(dtype, rng)
    ref = _pool_windows(f64(x), POOL["k"], POOL["stride"], POOL["pad"], 0.0).mean(-1)
    return [np.zeros(ref.shape, dtype), x, *_pool_args(), True], ref.size, {0: ref}


def _avgpool_backward(dtype, rng):
    x = _pool_x(dtype, rng)
    shape = _pool_windows(f64(x), POOL["k"], POOL["stride"], POOL["pad"], 0.0).shape[:4]
    dout = rng.standard_normal(shape).astype(dtype)
    dx = np.zeros(x.shape)
    for idx in np.ndindex(*x.shape):  # linearity: dx = d/dx sum(avgpool(x) * dout)
        basis = np.zeros(x.shape)
        basis[idx] = 1.0
        dx[idx] = (_pool_windows(basis, POOL["k"], POOL["stride"], POOL["pad"], 0.0).mean(-1) * f64(dout)).sum()
    return [np.zeros_like(x), dout, *_pool_args(), True], x.size, {0: dx}


def _avgpool_exclude_pad(direction):
    """count_include_pad=False on a ceil_mode-sized output (3x3 windows, stride 2, padding 1 on 5x6):
    each window averages the image pixels it covers; the reference is that rule written out."""
    def windows(x, dout=None):
        n_batch, channels, h, w = x.shape
        h_out, w_out = 3, 4  # ceil((5 + 2 - 3) / 2) + 1 = 3; ceil((6 + 2 - 3) / 2) + 1 = 4, last starts at 5 < 6 + 1
        out, dx = np.zeros((n_batch, channels, h_out, w_out)), np.zeros(x.shape)
        for oh, ow in np.ndindex(h_out, w_out):
            top, left = oh * 2 - 1, ow * 2 - 1
            rows, cols = slice(max(top, 0), min(top + 3, h)), slice(max(left, 0), min(left + 3, w))
            count = (rows.stop - rows.start) * (cols.stop - cols.start)
            out[:, :, oh, ow] = x[:, :, rows, cols].sum(axis=(2, 3)) / count
            if dout is not None:
                dx[:, :, rows, cols] += dout[:, :, oh, ow][:, :, None, None] / count
        return out, dx

    def make(dtype, rng):
        x = rng.standard_normal((2, 2, 5, 6)).astype(dtype)
        if direction == "forward":
            out, _ = windows(f64(x))
            return [np.zeros(out.shape, dtype), x, 3, 3, 2, 2, 1, 1, False], out.size, {0: out}
        dout = rng.standard_normal((2, 2, 3, 4)).astype(dtype)
        _, dx = windows(f64(x), f64(dout))
        return [np.zeros_like(x), dout, 3, 3, 2, 2, 1, 1, False], x.size, {0: dx}
    return make


def _adaptive_windows(size, out):
    return [(i * size // out, -(-(i + 1) * size // out)) for i in range(out)]


def _adaptive_pool(kind, direction):
    """Adaptive pooling of 5x7 to 3x4 (overlapping windows on both axes), written out window by window."""
    def make(dtype, rng):
        x = rng.standard_normal((2, 2, 5, 7)).astype(dtype)
        rows, cols = _adaptive_windows(5, 3), _adaptive_windows(7, 4)
        out, argmax = np.zeros((2, 2, 3, 4)), np.zeros((2, 2, 3, 4), np.int64)
        for (oh, (t, b)), (ow, (l, r)) in ((a, c) for a in enumerate(rows) for c in enumerate(cols)):
            window = f64(x)[:, :, t:b, l:r]
            if kind == "avg":
                out[:, :, oh, ow] = window.mean(axis=(2, 3))
            else:
                flat = window.reshape(2, 2, -1).argmax(-1)
                out[:, :, oh, ow] = window.reshape(2, 2, -1).max(-1)
                argmax[:, :, oh, ow] = (t + flat // (r - l)) * 7 + l + flat % (r - l)
        if direction == "forward":
            if kind == "avg":
                return [np.zeros(out.shape, dtype), x], out.size, {0: out}
            return [np.zeros(out.shape, dtype), np.zeros(out.shape, np.int64), x], out.size, {0: out}
        dout = rng.standard_normal(out.shape).astype(dtype)
        dx = np.zeros(x.shape)
        for (oh, (t, b)), (ow, (l, r)) in ((a, c) for a in enumerate(rows) for c in enumerate(cols)):
            if kind == "avg":
                dx[:, :, t:b, l:r] += f64(dout)[:, :, oh, ow][:, :, None, None] / ((b - t) * (r - l))
            else:
                for n, c in np.ndindex(2, 2):
                    index = argmax[n, c, oh, ow]
                    dx[n, c, index // 7, index % 7] += dout[n, c, oh, ow]
        args = [np.zeros_like(x), dout] + ([] if kind == "avg" else [argmax])
        return args, x.size, {0: dx}
    return make


# --------------------------------------------------------------------------------- normalisation
def _bn_inputs(dtype, rng):
    x = (rng.standard_normal((4, 3, 5)) * 2 + 1).astype(dtype)
    gamma, beta = rng.uniform(0.5, 1.5, 3).astype(dtype), rng.standard_normal(3).astype(dtype)
    return x, gamma, beta


def _bn_train_forward(relu):
    # relu: the fused ReLU on the output (the other outputs are the same)
    def make(dtype, rng):
        x, gamma, beta = _bn_inputs(dtype, rng)
        xd = f64(x)
        mean, var = xd.mean(axis=(0, 2)), xd.var(axis=(0, 2))
        xhat = (xd - mean[None, :, None]) / np.sqrt(var[None, :, None] + 1e-5)
        running_mean, running_var = rng.standard_normal(3).astype(dtype), rng.uniform(0.5, 2, 3).astype(dtype)
        m = 0.1
        out = f64(gamma)[None, :, None] * xhat + f64(beta)[None, :, None]
        expected = {0: np.maximum(out, 0) if relu else out, 1: xhat, 2: mean,
                    3: 1 / np.sqrt(var + 1e-5), 4: (1 - m) * f64(running_mean) + m * mean,
                    5: (1 - m) * f64(running_var) + m * xd.var(axis=(0, 2), ddof=1)}
        args = [np.zeros_like(x), np.zeros_like(x), np.zeros(3, dtype), np.zeros(3, dtype), running_mean, running_var,
                x, gamma, beta, dtype(m), dtype(1e-5), relu]
        return args, 3, expected
    return make


def _bn_eval_forward(relu):
    def make(dtype, rng):
        x, gamma, beta = _bn_inputs(dtype, rng)
        rm, rv = rng.standard_normal(3).astype(dtype), rng.uniform(0.5, 2, 3).astype(dtype)
        ref = f64(gamma)[None, :, None] * (f64(x) - f64(rm)[None, :, None]) / np.sqrt(f64(rv)[None, :, None] + 1e-5) \
            + f64(beta)[None, :, None]
        return [np.zeros_like(x), x, rm, rv, gamma, beta, dtype(1e-5), relu], 3, {0: np.maximum(ref, 0) if relu else ref}
    return make


def _bn_backward(relu):
    # relu: through the fused ReLU, whose output (about half zeros) masks the gradient
    def make(dtype, rng):
        x, gamma, beta = _bn_inputs(dtype, rng)
        dout = rng.standard_normal(x.shape).astype(dtype)
        xd = f64(x)
        mean, var = xd.mean(axis=(0, 2), keepdims=True), xd.var(axis=(0, 2), keepdims=True)
        invstd = 1 / np.sqrt(var + 1e-5)
        xhat = (xd - mean) * invstd
        m = x.shape[0] * x.shape[2]
        out = np.maximum(rng.standard_normal(x.shape), 0).astype(dtype) if relu else np.empty((0, 0, 0), dtype)
        g = np.where(out > 0, f64(dout), 0.0) if relu else f64(dout)
        dx = f64(gamma)[None, :, None] * invstd / m * (m * g - g.sum(axis=(0, 2), keepdims=True)
                                                       - xhat * (g * xhat).sum(axis=(0, 2), keepdims=True))
        args = [np.zeros_like(x), np.zeros(3, dtype), np.zeros(3, dtype), dout, xhat.astype(dtype),
                invstd.ravel().astype(dtype), gamma, out, relu]
        return args, 3, {0: dx, 1: (g * xhat).sum(axis=(0, 2)), 2: g.sum(axis=(0, 2))}
    return make


# BatchNorm2d with the 2x2 max pooling after it: 5x6 images (S = 30, width 6), pooled 2x3 (the odd
# last row in no window); one channel's scale negative, so that the pooling picks what the affine
# maps highest, not the highest input
BN_POOL_SHAPE, BN_POOL_WIDTH = (2, 3, 5, 6), 6


def _bn_pool_inputs(dtype, rng):
    x = (rng.standard_normal(BN_POOL_SHAPE) * 2 + 1).astype(dtype)
    gamma = (rng.uniform(0.5, 1.5, 3) * np.array([1, -1, 1])).astype(dtype)
    return x, gamma, rng.standard_normal(3).astype(dtype)


def _bn_pool_statistics(x):
    xd = f64(x)
    mean, var = xd.mean(axis=(0, 2, 3)), xd.var(axis=(0, 2, 3))
    invstd = 1 / np.sqrt(var + 1e-5)
    return mean, var, (xd - mean[None, :, None, None]) * invstd[None, :, None, None], invstd


def _affine_relu(xhat, gamma, beta, relu):
    v = f64(gamma)[None, :, None, None] * xhat + f64(beta)[None, :, None, None]
    return np.maximum(v, 0) if relu else v


def _bn_pool_train_forward(relu):
    def make(dtype, rng):
        x, gamma, beta = _bn_pool_inputs(dtype, rng)
        mean, var, xhat, invstd = _bn_pool_statistics(x)
        pooled, _ = pool2x2_reference(_affine_relu(xhat, gamma, beta, relu))
        running_mean, running_var = rng.standard_normal(3).astype(dtype), rng.uniform(0.5, 2, 3).astype(dtype)
        m, n, c = 0.1, x.shape[0], x.shape[1]
        expected = {0: pooled, 2: xhat.reshape(n, c, -1), 3: mean, 4: invstd, 5: (1 - m) * f64(running_mean) + m * mean,
                    6: (1 - m) * f64(running_var) + m * f64(x).var(axis=(0, 2, 3), ddof=1)}
        args = [np.zeros(pooled.shape, dtype), np.zeros(pooled.shape, np.int8), np.zeros((n, c, x[0, 0].size), dtype),
                np.zeros(3, dtype), np.zeros(3, dtype), running_mean, running_var, x.reshape(n, c, -1), gamma, beta,
                dtype(m), dtype(1e-5), BN_POOL_WIDTH, relu]
        return args, 3, expected
    return make


def _bn_pool_eval_forward(relu):
    def make(dtype, rng):
        x, gamma, beta = _bn_pool_inputs(dtype, rng)
        rm, rv = rng.standard_normal(3).astype(dtype), rng.uniform(0.5, 2, 3).astype(dtype)
        xhat = (f64(x) - f64(rm)[None, :, None, None]) / np.sqrt(f64(rv)[None, :, None, None] + 1e-5)
        pooled, _ = pool2x2_reference(_affine_relu(xhat, gamma, beta, relu))
        args = [np.zeros(pooled.shape, dtype), np.zeros(pooled.shape, np.int8), x.reshape(x.shape[0], 3, -1), rm, rv,
                gamma, beta, dtype(1e-5), BN_POOL_WIDTH, relu]
        return args, 3, {0: pooled}
    return make


def _bn_pool_backward(relu):
    def make(dtype, rng):
        x, gamma, beta = _bn_pool_inputs(dtype, rng)
        _, _, xhat, invstd = _bn_pool_statistics(x)
        pooled, at = pool2x2_reference(_affine_relu(xhat, gamma, beta, relu))
        dout = rng.standard_normal(pooled.shape).astype(dtype)
        g = np.zeros(x.shape)  # the batch norm's output gradient: each window's at its maximum, through the ReLU
        n, c, py, px = np.indices(pooled.shape)
        g[n, c, 2 * py + at // 2, 2 * px + at % 2] = f64(dout) * (pooled > 0 if relu else 1)
        m = x.shape[0] * x[0, 0].size
        k = f64(gamma)[None, :, None, None] * invstd[None, :, None, None] / m
        dx = k * (m * g - g.sum(axis=(0, 2, 3), keepdims=True) - xhat * (g * xhat).sum(axis=(0, 2, 3), keepdims=True))
        flat = (x.shape[0], 3, -1)
        args = [np.zeros(flat[:2] + (m // x.shape[0],), dtype), np.zeros(3, dtype), np.zeros(3, dtype), dout,
                pooled.astype(dtype), at.astype(np.int8), xhat.reshape(flat).astype(dtype), invstd.astype(dtype), gamma,
                BN_POOL_WIDTH, relu]
        return args, 3, {0: dx.reshape(flat), 1: (g * xhat).sum(axis=(0, 2, 3)), 2: g.sum(axis=(0, 2, 3))}
    return make


def _ln_inputs(dtype, rng):
    x = (rng.standard_normal((5, 6)) * 2 + 1).astype(dtype)
    return x, rng.uniform(0.5, 1.5, 6).astype(dtype), rng.standard_normal(6).astype(dtype)


def _ln_forward(dtype, rng):
    x, gamma, beta = _ln_inputs(dtype, rng)
    xd = f64(x)
    invstd = 1 / np.sqrt(xd.var(axis=1) + 1e-5)
    xhat = (xd - xd.mean(axis=1, keepdims=True)) * invstd[:, None]
    args = [np.zeros_like(x), np.zeros_like(x), np.zeros(5, dtype), x, gamma, beta, dtype(1e-5)]
    return args, 5, {0: xhat * f64(gamma) + f64(beta), 1: xhat, 2: invstd}


def _ln_backward(dtype, rng):
    x, gamma, beta = _ln_inputs(dtype, rng)
    dout = rng.standard_normal(x.shape).astype(dtype)
    xd = f64(x)
    invstd = 1 / np.sqrt(xd.var(axis=1, keepdims=True) + 1e-5)
    xhat = (xd - xd.mean(axis=1, keepdims=True)) * invstd
    g = f64(dout) * f64(gamma)
    dx = invstd * (g - g.mean(axis=1, keepdims=True) - xhat * (g * xhat).mean(axis=1, keepdims=True))
    args = [np.zeros_like(x), np.zeros(6, dtype), np.zeros(6, dtype), dout, xhat.astype(dtype),
            invstd.ravel().astype(dtype), gamma]
    return args, 5 + 6, {0: dx, 1: (f64(dout) * xhat).sum(0), 2: f64(dout).sum(0)}


def _gn_reference(x, groups):
    """GroupNorm's xhat and invstd of x (N, C, S) in the kernels' (N, G, M) view."""
    n = x.shape[0]
    view = f64(x).reshape(n, groups, -1)
    invstd = 1 / np.sqrt(view.var(axis=2) + 1e-5)
    return (view - view.mean(axis=2, keepdims=True)) * invstd[:, :, None], invstd


def _gn_inputs(dtype, rng):
    """3 samples, 4 channels in 2 groups, 3 positions."""
    x = (rng.standard_normal((3, 4, 3)) * 2 + 1).astype(dtype)
    return x, rng.standard_normal(4).astype(dtype), rng.standard_normal(4).astype(dtype)


def _gn_forward(dtype, rng):
    x, gamma, beta = _gn_inputs(dtype, rng)
    xhat, invstd = _gn_reference(x, 2)
    out = xhat.reshape(3, 4, 3) * f64(gamma)[None, :, None] + f64(beta)[None, :, None]
    args = [np.zeros((3, 2, 6), dtype), np.zeros((3, 2, 6), dtype), np.zeros((3, 2), dtype), x.reshape(3, 2, 6),
            gamma, beta, dtype(1e-5)]
    return args, 6, {0: out.reshape(3, 2, 6), 1: xhat, 2: invstd}


def _gn_backward(dtype, rng, want_dx=True):
    x, gamma, _ = _gn_inputs(dtype, rng)
    dout = rng.standard_normal((3, 4, 3)).astype(dtype)
    xhat, invstd = _gn_reference(x, 2)
    v = (f64(dout) * f64(gamma)[None, :, None]).reshape(3, 2, 6)
    dx = invstd[:, :, None] * (v - v.mean(axis=2, keepdims=True) - xhat * (v * xhat).mean(axis=2, keepdims=True))
    per_channel = xhat.reshape(3, 4, 3)
    expected = {1: (f64(dout) * per_channel).sum(axis=(0, 2)), 2: f64(dout).sum(axis=(0, 2))}
    dx_arg = np.zeros((3, 2, 6), dtype) if want_dx else np.empty((0, 0, 0), dtype)
    if want_dx:
        expected[0] = dx
    args = [dx_arg, np.zeros(4, dtype), np.zeros(4, dtype), dout.reshape(3, 2, 6), xhat.astype(dtype),
            invstd.astype(dtype), gamma]
    return args, 6 + 4, expected


def _add_forward(dtype, rng):
    a, b = rng.standard_normal(29).astype(dtype), rng.standard_normal(29).astype(dtype)
    return [np.zeros_like(a), a, b], a.size, {0: f64(a) + f64(b)}


def _count_non_finite(dtype, rng):
    values = rng.standard_normal(1000).astype(dtype)
    values[[3, 500, 999]] = [np.nan, np.inf, -np.inf]
    return [np.zeros(1, dtype), values], values.size, {0: np.array([3.0])}  # zeroed: the CUDA twin adds


def _count_non_finite_none(dtype, rng):
    values = rng.standard_normal(77).astype(dtype) * 1e30  # large but finite
    return [np.zeros(1, dtype), values], values.size, {0: np.array([0.0])}


# ------------------------------------------------------------------------------------- recurrent
def _sig(v):
    return 1 / (1 + np.exp(-v))


def recurrent_reference(kind, x, lengths, w_ih, w_hh, b_ih, b_hh, reverse, h0=None, c0=None, w_hr=None,
                        final_cells=False):
    """PyTorch's LSTM / GRU equations in float64, per sample, honouring lengths and direction, from
    the initial states h0 (N, P), c0 (N, H) (zeros when None); ``w_hr`` (P, H): the LSTM's
    projection h = W_hr (o * tanh(c)) (proj_size; P = H without). ``final_cells``: also return each
    sample's last cell state c_n (N, H)."""
    n_batch, steps, _ = x.shape
    size = w_hh.shape[1]
    hidden = w_hh.shape[0] // (4 if kind == "lstm" else 3)
    out = np.zeros((n_batch, steps, size))
    finals = np.zeros((n_batch, hidden))
    for n in range(n_batch):
        h = np.zeros(size) if h0 is None else h0[n].copy()
        c = np.zeros(hidden) if c0 is None else c0[n].copy()
        order = range(lengths[n] - 1, -1, -1) if reverse else range(lengths[n])
        for t in order:
            gx, gh = w_ih @ x[n, t] + b_ih, w_hh @ h + b_hh
            if kind == "lstm":
                i, f, g, o = np.split(gx + gh, 4)
                c = _sig(f) * c + _sig(i) * np.tanh(g)
                h = _sig(o) * np.tanh(c)
                if w_hr is not None:
                    h = w_hr @ h
            else:
                r = _sig(gx[:hidden] + gh[:hidden])
                z = _sig(gx[hidden:2 * hidden] + gh[hidden:2 * hidden])
                cand = np.tanh(gx[2 * hidden:] + r * gh[2 * hidden:])
                h = (1 - z) * cand + z * h
            out[n, t] = h
        finals[n] = c
    return (out, finals) if final_cells else out


RNN = dict(n=3, t=4, i=3, h=3)


def _recurrent_inputs(kind, dtype, rng):
    g = 4 if kind == "lstm" else 3
    p = RNN
    x = rng.standard_normal((p["n"], p["t"], p["i"])).astype(dtype)
    lengths = np.array([4, 2, 3], np.int64)
    w_ih = (rng.standard_normal((g * p["h"], p["i"])) * 0.5).astype(dtype)
    w_hh = (rng.standard_normal((g * p["h"], p["h"])) * 0.5).astype(dtype)
    b_ih, b_hh = (rng.standard_normal(g * p["h"]) * 0.3).astype(dtype), (rng.standard_normal(g * p["h"]) * 0.3).astype(dtype)
    return x, lengths, w_ih, w_hh, b_ih, b_hh, g


def _recurrent_buffers(dtype, g):
    p = RNN
    n, t, h = p["n"], p["t"], p["h"]
    return [np.zeros((n, t, h), dtype), np.zeros((n, t, g * h), dtype), np.zeros((n, t, h), dtype),
            np.zeros((n * t, g * h), dtype), np.zeros((n, g * h), dtype), np.zeros((n, h), dtype)]


def _initial_states(kind, dtype, rng, given):
    """(h0, c0) for a case: (N, H) arrays when ``given`` (no c0 for the GRU), else empty ones."""
    n, h = RNN["n"], RNN["h"]
    empty = np.empty((0, 0), dtype)
    if not given:
        return empty, empty
    h0 = (rng.standard_normal((n, h)) * 0.5).astype(dtype)
    return h0, ((rng.standard_normal((n, h)) * 0.5).astype(dtype) if kind == "lstm" else empty)


def _states_or_none(state):
    return f64(state) if state.size else None


def _recurrent_forward(kind, reverse, initial=False):
    def make(dtype, rng):
        x, lengths, w_ih, w_hh, b_ih, b_hh, g = _recurrent_inputs(kind, dtype, rng)
        h0, c0 = _initial_states(kind, dtype, rng, initial)
        ref = recurrent_reference(kind, f64(x), lengths, f64(w_ih), f64(w_hh), f64(b_ih), f64(b_hh), reverse,
                                  _states_or_none(h0), _states_or_none(c0))
        args = _recurrent_buffers(dtype, g) + [x, lengths, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse]
        return args, RNN["n"], {0: ref}
    return make


def _numeric(f, array, eps=1e-6):
    from numdl.testing import numeric_gradient

    return numeric_gradient(f, array, eps)


def _recurrent_backward(kind, reverse, initial=False, final_cell=False):
    """Every gradient against central differences; with ``initial``, from given initial states and
    with their gradients (dh0, and dc0 for the LSTM); with ``final_cell`` (LSTM), a gradient of the
    final cell state c_n too (in dc_next on entry)."""
    def make(dtype, rng):
        x, lengths, w_ih, w_hh, b_ih, b_hh, g = _recurrent_inputs(kind, dtype, rng)
        p = RNN
        n, t, h = p["n"], p["t"], p["h"]
        h0, c0 = _initial_states(kind, dtype, rng, initial)
        dout = rng.standard_normal((n, t, h)).astype(dtype)
        dcn = rng.standard_normal((n, h)).astype(dtype) if final_cell else np.zeros((n, h), dtype)
        inputs = [f64(a) for a in (x, w_ih, w_hh, b_ih, b_hh)]
        states = [f64(a) for a in (h0, c0)]

        def objective():
            out, cells = recurrent_reference(kind, inputs[0], lengths, *inputs[1:], reverse,
                                             states[0] if h0.size else None, states[1] if c0.size else None,
                                             final_cells=True)
            return float((out * f64(dout)).sum() + (cells * f64(dcn)).sum())

        grads = [_numeric(objective, a) for a in inputs]
        forward = _recurrent_buffers(dtype, g)
        module = __import__("numdl.kernels.recurrent", fromlist=["x"])
        getattr(module, f"{kind}_forward_cpu")(*forward, x, lengths, w_ih, w_hh, b_ih, b_hh, h0, c0, reverse)
        out, gates, cells = forward[:3]
        scratch = [np.zeros((2, n * t, g * h), dtype), np.zeros((n, g * h), dtype), np.zeros((n * t, h), dtype),
                   np.zeros((n, h), dtype), dcn.copy()]  # dc_next: dc_n on entry
        dh0, dc0 = np.zeros_like(h0), np.zeros_like(c0)
        args = [np.zeros_like(x), np.zeros_like(w_ih), np.zeros_like(w_hh), np.zeros_like(b_ih), np.zeros_like(b_hh),
                dh0, dc0, *scratch, dout, out, gates, cells, x, lengths, w_ih, w_hh, h0, c0, reverse]
        expected = {0: grads[0], 1: grads[1], 2: grads[2], 3: grads[3], 4: grads[4]}
        if h0.size:
            expected[5] = _numeric(objective, states[0])
        if c0.size:
            expected[6] = _numeric(objective, states[1])
        return args, n, expected
    return make


PROJECTED = dict(n=3, t=4, i=3, h=4, p=2)  # P < H, as PyTorch requires


def _projected_inputs(dtype, rng, initial):
    """x, lengths, weights (w_ih, w_hh (4H, P), w_hr (P, H), b_ih, b_hh) and (h0 (N, P), c0 (N, H))
    or empty states for a projected LSTM case."""
    q = PROJECTED
    n, h, size = q["n"], q["h"], q["p"]
    x = rng.standard_normal((n, q["t"], q["i"])).astype(dtype)
    lengths = np.array([4, 2, 3], np.int64)
    weights = [(rng.standard_normal(shape) * 0.5).astype(dtype)
               for shape in ((4 * h, q["i"]), (4 * h, size), (size, h), (4 * h,), (4 * h,))]
    empty = np.empty((0, 0), dtype)
    states = [(rng.standard_normal((n, k)) * 0.5).astype(dtype) for k in (size, h)] if initial else [empty, empty]
    return x, lengths, weights, states


def _projected_forward_buffers(dtype):
    q = PROJECTED
    n, t, h, size = q["n"], q["t"], q["h"], q["p"]
    return [np.zeros((n, t, size), dtype), np.zeros((n, t, 4 * h), dtype), np.zeros((n, t, h), dtype),
            np.zeros((n, t, h), dtype), np.zeros((n * t, 4 * h), dtype), np.zeros((n, 4 * h), dtype),
            np.zeros((n, size), dtype), np.zeros((n, h), dtype)]


def _projected_reference(x, lengths, weights, reverse, states, final_cells=False):
    w_ih, w_hh, w_hr, b_ih, b_hh = weights
    return recurrent_reference("lstm", x, lengths, w_ih, w_hh, b_ih, b_hh, reverse, states[0] if states[0].size else None,
                               states[1] if states[1].size else None, w_hr, final_cells)


def _projected_forward(reverse, initial=False):
    def make(dtype, rng):
        x, lengths, weights, states = _projected_inputs(dtype, rng, initial)
        w_ih, w_hh, w_hr, b_ih, b_hh = weights
        ref = _projected_reference(f64(x), lengths, [f64(w) for w in weights], reverse, [f64(s) for s in states])
        args = _projected_forward_buffers(dtype) + [x, lengths, w_ih, w_hh, w_hr, b_ih, b_hh, *states, reverse]
        return args, PROJECTED["n"], {0: ref}
    return make


def _projected_backward(reverse, initial=False, final_cell=False):
    """Every gradient of the projected LSTM (dx, dW_ih, dW_hh, dW_hr, the biases, and with
    ``initial`` dh0 and dc0) against central differences of the float64 reference; ``final_cell``:
    with a gradient of c_n in dc_next on entry."""
    def make(dtype, rng):
        from numdl.kernels.recurrent import lstm_projected_forward_cpu

        x, lengths, weights, states = _projected_inputs(dtype, rng, initial)
        q = PROJECTED
        n, t, h, size = q["n"], q["t"], q["h"], q["p"]
        dout = rng.standard_normal((n, t, size)).astype(dtype)
        dcn = rng.standard_normal((n, h)).astype(dtype) if final_cell else np.zeros((n, h), dtype)
        inputs = [f64(x)] + [f64(w) for w in weights]
        states64 = [f64(s) for s in states]

        def objective():
            out, cells = _projected_reference(inputs[0], lengths, inputs[1:], reverse, states64, True)
            return float((out * f64(dout)).sum() + (cells * f64(dcn)).sum())

        forward = _projected_forward_buffers(dtype)
        w_ih, w_hh, w_hr, b_ih, b_hh = weights
        lstm_projected_forward_cpu(*forward, x, lengths, w_ih, w_hh, w_hr, b_ih, b_hh, *states, reverse)
        out, gates, cells, mids = forward[:4]
        scratch = [np.zeros((2, n * t, 4 * h), dtype), np.zeros((n, 4 * h), dtype), np.zeros((n * t, size), dtype),
                   np.zeros((n, size), dtype), dcn.copy(), np.zeros((n * t, size), dtype), np.zeros((n, h), dtype)]
        grads = [np.zeros_like(a) for a in (x, w_ih, w_hh, w_hr, b_ih, b_hh)]
        args = [*grads, np.zeros_like(states[0]), np.zeros_like(states[1]), *scratch, dout, out, gates, cells, mids,
                x, lengths, w_ih, w_hh, w_hr, *states, reverse]
        # argument order: dx, dw_ih, dw_hh, dw_hr, db_ih, db_hh against inputs x, w_ih, w_hh, w_hr, b_ih, b_hh
        expected = {k: _numeric(objective, a) for k, a in enumerate(inputs)}
        if initial:
            expected[6] = _numeric(objective, states64[0])
            expected[7] = _numeric(objective, states64[1])
        return args, n, expected
    return make


# -------------------------------------------------------------------------------------- sequence
SEQ_LENGTHS = np.array([4, 1, 3], np.int64)


def _last_step_forward(dtype, rng):
    x = rng.standard_normal((3, 4, 5)).astype(dtype)
    ref = np.array([[x[n, SEQ_LENGTHS[n] - 1 if f < 3 else 0, f] for f in range(5)] for n in range(3)], np.float64)
    return [np.zeros((3, 5), dtype), x, SEQ_LENGTHS, 3], 15, {0: ref}


def _last_step_backward(dtype, rng):
    dout = rng.standard_normal((3, 5)).astype(dtype)
    ref = np.zeros((3, 4, 5))
    for n in range(3):
        for f in range(5):
            ref[n, SEQ_LENGTHS[n] - 1 if f < 3 else 0, f] = dout[n, f]
    return [np.full((3, 4, 5), 7, dtype), dout, SEQ_LENGTHS, 3], 60, {0: ref}


def _mean_steps_forward(dtype, rng):
    x = rng.standard_normal((3, 4, 5)).astype(dtype)
    ref = np.array([f64(x[n, :SEQ_LENGTHS[n]]).mean(0) for n in range(3)])
    return [np.zeros((3, 5), dtype), x, SEQ_LENGTHS], 15, {0: ref}


def _mean_steps_backward(dtype, rng):
    dout = rng.standard_normal((3, 5)).astype(dtype)
    ref = np.zeros((3, 4, 5))
    for n in range(3):
        ref[n, :SEQ_LENGTHS[n]] = f64(dout[n]) / SEQ_LENGTHS[n]
    return [np.full((3, 4, 5), 7, dtype), dout, SEQ_LENGTHS], 60, {0: ref}


def _embedding_forward(dtype, rng):
    weight = rng.standard_normal((6, 4)).astype(dtype)
    indices = np.array([[0, 5, 5], [2, 2, 2]], np.int64)
    return [np.zeros((2, 3, 4), dtype), indices, weight], 24, {0: f64(weight)[indices]}


def _embedding_backward(padding_idx):
    def make(dtype, rng):
        dout = rng.standard_normal((2, 3, 4)).astype(dtype)
        indices = np.array([[0, 5, 5], [2, 2, 2]], np.int64)  # repeated indices must add up
        ref = np.zeros((6, 4))
        np.add.at(ref, indices, f64(dout))
        if padding_idx >= 0:
            ref[padding_idx] = 0  # the padding row gets no gradient
        return [np.zeros((6, 4), dtype), dout, indices, np.int64(padding_idx)], 24, {0: ref}
    return make


def _embedding_renorm(dtype, rng):
    weight = (rng.standard_normal((6, 4)) * 2).astype(dtype)
    weight[3] *= 0.01  # a row under max_norm stays as it is
    rows, max_norm, norm_type = np.array([0, 3, 4], np.int64), 1.5, 2.0
    ref = f64(weight).copy()
    for r in rows:
        norm = np.linalg.norm(ref[r])
        if norm > max_norm:
            ref[r] *= max_norm / (norm + 1e-7)
    return [weight, rows, dtype(max_norm), dtype(norm_type)], 3, {0: ref}


# ------------------------------------------------------------------------------------- attention
ATTENTION = dict(n=2, t=4, e=4, heads=2, lengths=np.array([4, 2], np.int64))
CROSS = dict(n=2, tq=3, tk=5, e=4, heads=2, lengths=np.array([5, 3], np.int64))


def attention_reference(q, k, v, lengths, heads, causal, mask=None, keep=None):
    """softmax(q k^T / sqrt(d) + masks) v per head, masks as PyTorch's key_padding_mask / is_causal /
    additive attn_mask, the weights times dropout's ``keep`` multipliers before v; q (N, Tq, E), k
    and v (N, Tk, E). Returns the context and the weights before dropout."""
    n_batch, queries, embed = q.shape
    keys = k.shape[1]
    dim = embed // heads
    ctx = np.zeros((n_batch, queries, embed))
    probs = np.zeros((n_batch, heads, queries, keys))
    for n in range(n_batch):
        for h in range(heads):
            cols = slice(h * dim, (h + 1) * dim)
            scores = q[n, :, cols] @ k[n, :, cols].T / np.sqrt(dim) + (0 if mask is None else mask)
            banned = np.arange(keys)[None, :] >= lengths[n]
            if causal:
                banned = banned | (np.arange(keys)[None, :] > np.arange(queries)[:, None])
            scores = np.where(banned, -np.inf, scores)
            p = np.exp(scores - scores.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            probs[n, h] = p
            ctx[n, :, cols] = (p if keep is None else p * keep[n, h]) @ v[n, :, cols]
    return ctx, probs


def _split_qkv(qkv, embed):
    return qkv[..., :embed], qkv[..., embed:2 * embed], qkv[..., 2 * embed:]


def _attention_forward(causal):
    """Self-attention over a packed qkv (offsets 0, E, 2E), no additive mask."""
    def make(dtype, rng):
        a = ATTENTION
        qkv = rng.standard_normal((a["n"], a["t"], 3 * a["e"])).astype(dtype)
        ctx, probs = attention_reference(*_split_qkv(f64(qkv), a["e"]), a["lengths"], a["heads"], causal)
        scale = 1 / np.sqrt(a["e"] // a["heads"])
        args = [np.zeros(ctx.shape, dtype), np.zeros(probs.shape, dtype), qkv, qkv, qkv, np.empty((0, 0), dtype),
                np.empty((0, 0, 0, 0), dtype), a["lengths"], a["heads"], causal, dtype(scale), 0, a["e"], 2 * a["e"]]
        return args, a["n"] * a["heads"] * a["t"], {0: ctx, 1: probs}
    return make


def _attention_backward(causal):
    def make(dtype, rng):
        a = ATTENTION
        qkv = rng.standard_normal((a["n"], a["t"], 3 * a["e"])).astype(dtype)
        dctx = rng.standard_normal((a["n"], a["t"], a["e"])).astype(dtype)
        _, probs = attention_reference(*_split_qkv(f64(qkv), a["e"]), a["lengths"], a["heads"], causal)
        q64 = f64(qkv)
        grad = _numeric(lambda: float((attention_reference(*_split_qkv(q64, a["e"]), a["lengths"], a["heads"],
                                                           causal)[0] * f64(dctx)).sum()), q64)
        scale = 1 / np.sqrt(a["e"] // a["heads"])
        dqkv = np.zeros_like(qkv)
        args = [dqkv, dqkv, dqkv, dctx, probs.astype(dtype), np.empty((0, 0, 0, 0), dtype), qkv, qkv, qkv,
                a["lengths"], a["heads"], causal, dtype(scale), 0, a["e"], 2 * a["e"]]
        return args, a["n"] * a["heads"] * a["t"], {0: grad}
    return make


# Heads of 16 features over 18 steps: one whole 16-lane vector of keys and one of 2 lanes in the
# float32 passes (numdl.kernels.simd), the second sample padded after 11 steps.
WIDE_ATTENTION = dict(n=2, t=18, e=32, heads=2, lengths=np.array([18, 11], np.int64))


def _wide_attention(backward, causal):
    """Self-attention with dropout on the weights at WIDE_ATTENTION's shapes: the context and
    weights, or the packed qkv's gradient (by central differences)."""
    def make(dtype, rng):
        a = WIDE_ATTENTION
        qkv = rng.standard_normal((a["n"], a["t"], 3 * a["e"])).astype(dtype)
        keep = np.where(rng.random((a["n"], a["heads"], a["t"], a["t"])) < 0.2, 0.0, 1 / 0.8).astype(dtype)
        scale = dtype(1 / np.sqrt(a["e"] // a["heads"]))
        q64, k64 = f64(qkv), f64(keep)

        def reference(x):
            return attention_reference(*_split_qkv(x, a["e"]), a["lengths"], a["heads"], causal, keep=k64)

        ctx, probs = reference(q64)
        if not backward:
            args = [np.zeros(ctx.shape, dtype), np.zeros(probs.shape, dtype), qkv, qkv, qkv, np.empty((0, 0), dtype),
                    keep, a["lengths"], a["heads"], causal, scale, 0, a["e"], 2 * a["e"]]
            return args, a["n"] * a["heads"] * a["t"], {0: ctx, 1: probs}
        dctx = rng.standard_normal(ctx.shape).astype(dtype)
        grad = _numeric(lambda: float((reference(q64)[0] * f64(dctx)).sum()), q64)
        dqkv = np.zeros_like(qkv)
        args = [dqkv, dqkv, dqkv, dctx, probs.astype(dtype), keep, qkv, qkv, qkv, a["lengths"], a["heads"], causal,
                scale, 0, a["e"], 2 * a["e"]]
        return args, a["n"] * a["heads"] * a["t"], {0: grad}
    return make


def _cross_inputs(dtype, rng):
    c = CROSS
    q = rng.standard_normal((c["n"], c["tq"], c["e"])).astype(dtype)
    kv = rng.standard_normal((c["n"], c["tk"], 2 * c["e"])).astype(dtype)  # keys and values side by side
    mask = rng.standard_normal((c["tq"], c["tk"])).astype(dtype)
    mask[0, 1] = -np.inf
    keep = np.where(rng.random((c["n"], c["heads"], c["tq"], c["tk"])) < 0.25, 0.0, 1 / 0.75).astype(dtype)
    return q, kv, mask, keep


def _cross_attention_forward(dtype, rng):
    """Cross-attention: 3 queries over 5 keys (3 valid in sample 1), keys and values from one kv
    array (offsets 0, 0, E), an additive mask with a forbidden pair, dropout on the weights."""
    c = CROSS
    q, kv, mask, keep = _cross_inputs(dtype, rng)
    ctx, probs = attention_reference(f64(q), f64(kv[..., :c["e"]]), f64(kv[..., c["e"]:]), c["lengths"], c["heads"],
                                     False, f64(mask), f64(keep))
    args = [np.zeros(ctx.shape, dtype), np.zeros(probs.shape, dtype), q, kv, kv, mask, keep, c["lengths"], c["heads"],
            False, dtype(1 / np.sqrt(c["e"] // c["heads"])), 0, 0, c["e"]]
    return args, c["n"] * c["heads"] * c["tq"], {0: ctx, 1: probs}


def _cross_attention_backward(dtype, rng):
    c = CROSS
    q, kv, mask, keep = _cross_inputs(dtype, rng)
    dctx = rng.standard_normal((c["n"], c["tq"], c["e"])).astype(dtype)
    q64, kv64, m64, k64 = f64(q), f64(kv), f64(mask), f64(keep)

    def loss():
        return float((attention_reference(q64, kv64[..., :c["e"]], kv64[..., c["e"]:], c["lengths"], c["heads"], False,
                                          m64, k64)[0] * f64(dctx)).sum())
    dq, dkv = _numeric(loss, q64), _numeric(loss, kv64)
    _, probs = attention_reference(q64, kv64[..., :c["e"]], kv64[..., c["e"]:], c["lengths"], c["heads"], False, m64)
    dkv_out = np.zeros_like(kv)
    args = [np.zeros_like(q), dkv_out, dkv_out, dctx, probs.astype(dtype), keep, q, kv, kv, c["lengths"], c["heads"],
            False, dtype(1 / np.sqrt(c["e"] // c["heads"])), 0, 0, c["e"]]
    return args, c["n"] * c["heads"] * c["tk"], {0: dq, 1: dkv}


def _broadcast_add_forward(dtype, rng):
    x, table = rng.standard_normal((3, 8)).astype(dtype), rng.standard_normal(8).astype(dtype)
    return [np.zeros_like(x), x, table], x.size, {0: f64(x) + f64(table)}


def _broadcast_add_backward(dtype, rng):
    dout = rng.standard_normal((3, 8)).astype(dtype)
    return [np.zeros(8, dtype), dout], 8, {0: f64(dout).sum(0)}


def _swap_last_axes(dtype, rng):
    x = rng.standard_normal((2, 3, 5)).astype(dtype)
    return [np.zeros((2, 5, 3), dtype), x], x.size, {0: f64(x).transpose(0, 2, 1)}


# ------------------------------------------------------------------ graph layers: products, layout
def _multiply_forward(dtype, rng):
    a, b = rng.standard_normal(29).astype(dtype), rng.standard_normal(29).astype(dtype)
    return [np.zeros_like(a), a, b], a.size, {0: f64(a) * f64(b)}


def _multiply_backward(dtype, rng):
    a, b, d = (rng.standard_normal(29).astype(dtype) for _ in range(3))
    return [np.zeros_like(a), np.zeros_like(a), d, a, b], a.size, {0: f64(d) * f64(b), 1: f64(d) * f64(a)}


def _scale_forward(dtype, rng):
    a = rng.standard_normal(29).astype(dtype)
    return [np.zeros_like(a), a, dtype(0.3)], a.size, {0: f64(a) * 0.3}


def _concat_forward(dtype, rng):
    out, x = rng.standard_normal((3, 11)).astype(dtype), rng.standard_normal((3, 4)).astype(dtype)
    expected = f64(out).copy()
    expected[:, 5:9] = x
    return [out, x, 5], x.size, {0: expected}


def _concat_backward(dtype, rng):
    dout = rng.standard_normal((3, 11)).astype(dtype)
    return [np.zeros((3, 4), dtype), dout, 5], 12, {0: f64(dout)[:, 5:9]}


def _pad_reference(x, top, left, out_hw):
    n, c, h, w = x.shape
    out = np.zeros((n, c) + out_hw)
    for oh in range(out_hw[0]):
        for ow in range(out_hw[1]):
            if 0 <= oh - top < h and 0 <= ow - left < w:
                out[:, :, oh, ow] = x[:, :, oh - top, ow - left]
    return out


def _pad2d_forward(dtype, rng):
    x = rng.standard_normal((2, 3, 5, 4)).astype(dtype)
    out = np.full((2, 3, 6, 3), 7.0, dtype)  # top 2 rows padded, bottom cropped; left column cropped
    return [out, x, 2, -1], out.size, {0: _pad_reference(f64(x), 2, -1, (6, 3))}


def _pad2d_backward(dtype, rng):
    dout = rng.standard_normal((2, 3, 6, 3)).astype(dtype)
    return [np.full((2, 3, 5, 4), 7.0, dtype), dout, 2, -1], 120, {0: _pad_reference(f64(dout), -2, 1, (5, 4))}


NUMPY_PAD_MODES = {1: "reflect", 2: "edge", 3: "wrap"}  # pad2d_mode's 1 reflect, 2 replicate, 3 circular


def _pad2d_mode_forward(mode):
    def make(dtype, rng):
        x = rng.standard_normal((2, 2, 4, 5)).astype(dtype)
        top, bottom, left, right = 2, 1, 3, 2
        expected = np.pad(f64(x), ((0, 0), (0, 0), (top, bottom), (left, right)), mode=NUMPY_PAD_MODES[mode])
        out = np.full(expected.shape, 7.0, dtype)
        return [out, x, top, left, mode], out.size, {0: expected}
    return make


def _pad2d_mode_backward(mode):
    def make(dtype, rng):
        top, bottom, left, right = 2, 1, 3, 2
        dout = rng.standard_normal((2, 2, 4 + top + bottom, 5 + left + right)).astype(dtype)
        # the adjoint of np.pad: each padded pixel's gradient onto the pixel it copied
        index = np.pad(np.arange(20).reshape(4, 5), ((top, bottom), (left, right)), mode=NUMPY_PAD_MODES[mode])
        expected = np.zeros((2, 2, 20))
        for source, grad in zip(index.ravel(), f64(dout).reshape(2, 2, -1).transpose(2, 0, 1)):
            expected[:, :, source] += grad
        # dx starts at zeros: the CUDA twin adds into it (its launcher zeroes it, as the embedding's)
        return [np.zeros((2, 2, 4, 5), dtype), dout, top, left, mode], dout.size, {0: expected.reshape(2, 2, 4, 5)}
    return make


def upsample_reference(x, out_hw, ratios, bilinear, align_corners):
    """PyTorch's nearest / bilinear interpolation as a (out, in) matrix per axis, in float64."""
    def axis_matrix(size_in, size_out, ratio):
        m = np.zeros((size_out, size_in))
        for dst in range(size_out):
            if not bilinear:
                m[dst, min(int(np.floor(dst * ratio)), size_in - 1)] = 1
                continue
            src = dst * ratio if align_corners else max(ratio * (dst + 0.5) - 0.5, 0.0)
            first = min(int(src), size_in - 1)
            second = first + 1 if first < size_in - 1 else first
            frac = src - first
            m[dst, first] += 1 - frac
            m[dst, second] += frac
        return m
    rows = axis_matrix(x.shape[2], out_hw[0], ratios[0])
    cols = axis_matrix(x.shape[3], out_hw[1], ratios[1])
    return np.einsum("oh,nchw,pw->ncop", rows, x, cols), rows, cols


UPSAMPLE = {"nearest": ((7, 9), (4 / 7, 5 / 9), False, False), "bilinear": ((8, 10), (0.5, 0.5), True, False),
            "bilinear_align_corners": ((7, 9), (3 / 6, 4 / 8), True, True)}


def _upsample_forward(kind):
    def make(dtype, rng):
        out_hw, ratios, bilinear, corners = UPSAMPLE[kind]
        x = rng.standard_normal((2, 3, 4, 5)).astype(dtype)
        expected = upsample_reference(f64(x), out_hw, ratios, bilinear, corners)[0]
        args = [np.zeros((2, 3) + out_hw, dtype), x, dtype(ratios[0]), dtype(ratios[1]), bilinear, corners]
        return args, expected.size, {0: expected}
    return make


def _upsample_backward(kind):
    def make(dtype, rng):
        out_hw, ratios, bilinear, corners = UPSAMPLE[kind]
        dout = rng.standard_normal((2, 3) + out_hw).astype(dtype)
        _, rows, cols = upsample_reference(np.zeros((2, 3, 4, 5)), out_hw, ratios, bilinear, corners)
        expected = np.einsum("oh,ncop,pw->nchw", rows, f64(dout), cols)
        args = [np.zeros((2, 3, 4, 5), dtype), dout, dtype(ratios[0]), dtype(ratios[1]), bilinear, corners]
        return args, dout.size, {0: expected}  # dx starts zeroed: the kernels accumulate
    return make


CONV_T = dict(n=2, c_in=4, h=3, w=4, c_out=6, groups=2, k=(3, 2), stride=(2, 1), pad=(1, 0), dil=(1, 2), out_pad=(1, 0))
# Windows that tile the output (kernel = stride, no padding, one group): the CPU's direct path, three
# samples over two threads, 1 x 2 x 3 = 6 column rows and 5 input channels (the 1x1 loops' blocks of
# four and single rows, in all three products: below the rules for BLAS products).
CONV_T_TILED = dict(n=3, c_in=5, h=3, w=4, c_out=1, groups=1, k=(2, 3), stride=(2, 3), pad=(0, 0), dil=(1, 1),
                    out_pad=(0, 0))
# ... with the products instead of the 1x1 loops: 16 input channels (forward), 64 = 16 x 2 x 2 column
# rows (dx's product and dweight's, kernels.conv.shifted_gemm_*).
CONV_T_TILED_GEMM = dict(n=2, c_in=16, h=3, w=2, c_out=16, groups=1, k=(2, 2), stride=(2, 2), pad=(0, 0),
                         dil=(1, 1), out_pad=(0, 0))


def conv_transpose2d_reference(x, w, b, stride, pad, dil, groups, out_hw):
    """PyTorch's transposed convolution by scattering each input element through the kernel."""
    n_batch, c_in, h, wid = x.shape
    c_out_g, kh, kw = w.shape[1:]
    c_in_g = c_in // groups
    out = np.zeros((n_batch, c_out_g * groups) + out_hw)
    for n, ci, ih, iw in np.ndindex(n_batch, c_in, h, wid):
        g = ci // c_in_g
        for col, i, j in np.ndindex(c_out_g, kh, kw):
            oh, ow = ih * stride[0] - pad[0] + i * dil[0], iw * stride[1] - pad[1] + j * dil[1]
            if 0 <= oh < out_hw[0] and 0 <= ow < out_hw[1]:
                out[n, g * c_out_g + col, oh, ow] += x[n, ci, ih, iw] * w[ci, col, i, j]
    return out + (b[None, :, None, None] if b.size else 0)


def _conv_t_setup(dtype, rng, p=CONV_T):
    out_hw = tuple((s - 1) * st - 2 * pd + d * (k - 1) + op + 1 for s, st, pd, d, k, op in
                   zip((p["h"], p["w"]), p["stride"], p["pad"], p["dil"], p["k"], p["out_pad"]))
    x = rng.standard_normal((p["n"], p["c_in"], p["h"], p["w"])).astype(dtype)
    w = rng.standard_normal((p["c_in"], p["c_out"] // p["groups"]) + p["k"]).astype(dtype)
    b = rng.standard_normal(p["c_out"]).astype(dtype)
    scalars = [*p["stride"], *p["pad"], *p["dil"], p["groups"]]
    return x, w, b, out_hw, scalars


def _conv_transpose_forward(dtype, rng, p=CONV_T):
    x, w, b, out_hw, scalars = _conv_t_setup(dtype, rng, p)
    columns = p["n"] * p["h"] * p["w"]
    expected = conv_transpose2d_reference(f64(x), f64(w), f64(b), p["stride"], p["pad"], p["dil"], p["groups"], out_hw)
    args = [np.zeros((p["n"], p["c_out"]) + out_hw, dtype), np.zeros((p["c_in"], columns), dtype),
            np.zeros((p["c_out"] * p["k"][0] * p["k"][1], columns), dtype), x, w, b, *scalars]
    return args, expected.size, {0: expected}


def _conv_transpose_backward(dtype, rng, p=CONV_T):
    x, w, b, out_hw, scalars = _conv_t_setup(dtype, rng, p)
    dout = rng.standard_normal((p["n"], p["c_out"]) + out_hw).astype(dtype)
    ref = lambda xx, ww: conv_transpose2d_reference(xx, ww, np.zeros(0), p["stride"], p["pad"], p["dil"],
                                                    p["groups"], out_hw)
    dx, dw = np.zeros(x.shape), np.zeros(w.shape)
    for idx in np.ndindex(*x.shape):  # the map is linear: each gradient entry is one basis response
        basis = np.zeros(x.shape)
        basis[idx] = 1
        dx[idx] = (ref(basis, f64(w)) * dout).sum()
    for idx in np.ndindex(*w.shape):
        basis = np.zeros(w.shape)
        basis[idx] = 1
        dw[idx] = (ref(f64(x), basis) * dout).sum()
    columns = p["n"] * p["h"] * p["w"]
    xt = np.ascontiguousarray(np.swapaxes(x, 0, 1).reshape(p["c_in"], columns))
    args = [np.zeros_like(x), np.zeros_like(w), np.zeros_like(b),
            np.zeros((p["c_out"] * p["k"][0] * p["k"][1], columns), dtype), np.zeros((p["c_in"], columns), dtype),
            dout, x, xt, w, *scalars]
    return args, dx.size + dw.size + b.size, {0: dx, 1: dw, 2: f64(dout).sum(axis=(0, 2, 3))}


# ---------------------------------------------------------------------------- segmentation losses
IGNORE = -100


def _segmentation_inputs(dtype, rng):
    logits = rng.standard_normal((2, 4, 6)).astype(dtype) * 2
    labels = rng.integers(0, 4, (2, 6))
    labels[0, 1] = labels[1, 4] = IGNORE
    weights = np.array([1.0, 2.0, 0.5, 1.5], dtype)
    shifted = np.exp(f64(logits) - f64(logits).max(axis=1, keepdims=True))
    probs = shifted / shifted.sum(axis=1, keepdims=True)
    return logits, labels, weights, probs


def _pixel_ce_forward(dtype, rng):
    logits, labels, weights, probs = _segmentation_inputs(dtype, rng)
    valid = labels != IGNORE
    safe = np.where(valid, labels, 0)
    picked = np.take_along_axis(probs, safe[:, None, :], axis=1)[:, 0]
    w = np.where(valid, f64(weights)[safe], 0.0)
    args = [np.zeros((2, 6), dtype), np.zeros((2, 6), dtype), np.zeros((2, 4, 6), dtype), logits, labels, weights,
            IGNORE]
    return args, 12, {0: -w * np.log(picked), 1: w, 2: probs}


def _pixel_ce_backward(dtype, rng):
    logits, labels, weights, probs = _segmentation_inputs(dtype, rng)
    valid = labels != IGNORE
    safe = np.where(valid, labels, 0)
    onehot = np.moveaxis(np.eye(4)[safe], -1, 1)
    w = np.where(valid, f64(weights)[safe], 0.0)[:, None, :]
    scale = 0.25
    args = [np.zeros((2, 4, 6), dtype), probs.astype(dtype), labels, weights, IGNORE, dtype(scale)]
    return args, 48, {0: scale * w * (probs - onehot)}


def _pixel_argmax(dtype, rng):
    logits, _, _, _ = _segmentation_inputs(dtype, rng)
    logits[0, 2, 3] = logits[0, 0, 3] = logits[0, :, 3].max() + 1  # a tie: the first class wins
    logits[1, 1, 2], logits[1, 3, 2] = np.nan, np.nan  # NaN: the first NaN wins, as NumPy's argmax
    expected = np.argmax(logits, axis=1)
    assert expected[0, 3] == 0 and expected[1, 2] == 1
    return [np.zeros((2, 6), dtype), logits], 12, {0: expected}


def _dice_parts(labels, probs):
    valid = (labels != IGNORE)[:, None, :]
    onehot = np.moveaxis(np.eye(4)[np.where(labels != IGNORE, labels, 0)], -1, 1) * valid
    inter = (probs * onehot).sum(axis=(0, 2))
    total = (probs * valid).sum(axis=(0, 2)) + onehot.sum(axis=(0, 2))
    return valid, onehot, inter, total


def _dice_statistics(dtype, rng):
    _, labels, _, probs = _segmentation_inputs(dtype, rng)
    _, _, inter, total = _dice_parts(labels, probs)
    return [np.zeros((4, 2), dtype), probs.astype(dtype), labels, IGNORE], 4, {0: np.stack([inter, total], 1)}


def _dice_backward(dtype, rng):
    _, labels, _, probs = _segmentation_inputs(dtype, rng)
    valid, onehot, inter, total = _dice_parts(labels, probs)
    eps, scale = 1.0, 0.3
    den = (total + eps)[None, :, None]
    g = -scale * (2 * onehot * den - (2 * inter + eps)[None, :, None]) / den ** 2  # d loss / d probs
    dlogits = probs * (g - (probs * g).sum(axis=1, keepdims=True)) * valid
    stats = np.stack([inter, total], 1).astype(dtype)
    args = [np.zeros((2, 4, 6), dtype), probs.astype(dtype), labels, stats, dtype(eps), dtype(scale), IGNORE]
    return args, 12, {0: dlogits}


# ------------------------------------------------------------------------------------ detection
def _centernet_inputs(dtype, rng):
    pred = (rng.standard_normal((2, 7, 6)) * 2).astype(dtype)  # 3 classes + 4 box channels, 6 cells
    heat = rng.uniform(0, 0.9, (2, 3, 6)).astype(dtype)
    heat[0, 1, 2] = heat[1, 0, 5] = heat[1, 2, 5] = 1.0  # object centres (two share a cell)
    regression = rng.uniform(0, 3, (2, 3, 4)).astype(dtype)
    index = np.array([[2, -1, -1], [5, 5, -1]], np.int64)
    return pred, heat, regression, index


def _focal_reference(x, y):
    p = 1 / (1 + np.exp(-x))
    loss = np.where(y >= 1, -(1 - p) ** 2 * np.log(p), -(1 - y) ** 4 * p ** 2 * np.log(1 - p))
    grad = np.where(y >= 1, (1 - p) ** 2 * (2 * p * np.log(p) - (1 - p)),
                    (1 - y) ** 4 * p ** 2 * (p - 2 * (1 - p) * np.log(1 - p)))
    return loss, grad


def _centernet_forward(dtype, rng):
    pred, heat, regression, index = _centernet_inputs(dtype, rng)
    loss, _ = _focal_reference(f64(pred[:, :3]), f64(heat))
    expected = np.zeros((2, 3))
    expected[:, 0] = loss.sum(axis=(1, 2))
    for n, k in zip(*np.nonzero(index >= 0)):
        diff = np.abs(f64(pred[n, 3:, index[n, k]]) - f64(regression[n, k]))
        expected[n, 1] += diff[:2].sum()
        expected[n, 2] += diff[2:].sum()
    return [np.zeros((2, 3), dtype), pred, heat, regression, index], 2, {0: expected}


def _centernet_backward(dtype, rng):
    pred, heat, regression, index = _centernet_inputs(dtype, rng)
    scales = (0.5, 0.1, 0.25)
    expected = np.zeros((2, 7, 6))
    expected[:, :3] = scales[0] * _focal_reference(f64(pred[:, :3]), f64(heat))[1]
    for n, k in zip(*np.nonzero(index >= 0)):
        p = index[n, k]
        sign = np.sign(f64(pred[n, 3:, p]) - f64(regression[n, k]))
        expected[n, 3:, p] += np.array([scales[1]] * 2 + [scales[2]] * 2) * sign
    args = [np.zeros((2, 7, 6), dtype), pred, heat, regression, index, *(dtype(v) for v in scales)]
    return args, expected.size, {0: expected}


def _heatmap_peaks(dtype, rng):
    heat = rng.standard_normal((2, 3, 4, 5)).astype(dtype)
    heat[0, 0, 1, 1] = heat[0, 0, 1, 2] = 5.0  # a tie: both are peaks
    padded = np.pad(f64(heat), ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    neighbourhood = np.max([padded[:, :, i:i + 4, j:j + 5] for i in range(3) for j in range(3)], axis=0)
    expected = np.where(f64(heat) >= neighbourhood, 1 / (1 + np.exp(-f64(heat))), 0.0)
    return [np.zeros_like(heat), heat], heat.size, {0: expected}


def _nms_reference(boxes, scores, classes, threshold):
    keep = (scores > 0).astype(np.int64)
    for n in range(boxes.shape[0]):
        for a in range(boxes.shape[1]):
            if not keep[n, a]:
                continue
            for b in range(a + 1, boxes.shape[1]):
                if keep[n, b] and classes[n, b] == classes[n, a]:
                    x1, y1 = np.maximum(boxes[n, a, :2], boxes[n, b, :2])
                    x2, y2 = np.minimum(boxes[n, a, 2:], boxes[n, b, 2:])
                    inter = max(x2 - x1, 0) * max(y2 - y1, 0)
                    union = np.prod(boxes[n, a, 2:] - boxes[n, a, :2]) + np.prod(boxes[n, b, 2:] - boxes[n, b, :2])
                    if inter / (union - inter) > threshold:
                        keep[n, b] = 0
    return keep


def _nms(dtype, rng):
    corner = rng.uniform(0, 10, (3, 8, 2))
    boxes = np.concatenate([corner, corner + rng.uniform(2, 6, (3, 8, 2))], -1).astype(dtype)
    boxes[0, 1] = boxes[0, 0] + 0.3  # a near duplicate of the best box
    scores = np.sort(rng.uniform(0.1, 1, (3, 8)), axis=1)[:, ::-1].astype(dtype).copy()
    scores[2, 6:] = 0  # empty slots
    classes = rng.integers(0, 2, (3, 8))
    classes[0, :2] = 1
    expected = _nms_reference(f64(boxes), f64(scores), classes, 0.4)
    return [np.zeros((3, 8), dtype), boxes, scores, classes, dtype(0.4)], 3, {0: expected}


CASES = {
    ("linear", "linear_forward"): _linear_forward,
    ("linear", "linear_backward"): _linear_backward,
    ("activation", "softmax_forward"): _softmax_forward,
    ("activation", "softmax_backward"): _softmax_backward,
    ("activation", "log_softmax_forward"): lambda dtype, rng: _softmax_forward(dtype, rng, log=True),
    ("activation", "log_softmax_backward"): lambda dtype, rng: _softmax_backward(dtype, rng, log=True),
    ("loss", "cross_entropy_forward"): _ce_forward,
    ("loss", "cross_entropy_backward"): _ce_backward,
    ("loss", "soft_cross_entropy_forward"): _soft_ce_forward,
    ("loss", "soft_cross_entropy_backward"): _soft_ce_backward,
    ("loss", "nll_forward"): _nll_forward,
    ("loss", "nll_backward"): _nll_backward,
    ("optim", "sgd_step"): _sgd_step,
    ("optim", "adam_step"): _adam_step(False),
    ("optim", "adagrad_step"): _adagrad_step,
    ("optim", "adamax_step"): _adamax_step,
    ("optim", "nadam_step"): _nadam_step,
    ("optim", "radam_step"): _radam_step(True),
    ("optim", "rmsprop_step"): _rmsprop_step(True),
    ("dropout", "dropout_forward"): _dropout_forward,
    ("dropout", "dropout_backward"): _dropout_backward,
    ("gaussian", "gaussian_sample_forward"): _gaussian_sample_forward(True),
    ("gaussian", "gaussian_kl_forward"): _gaussian_kl_forward,
    ("gaussian", "gaussian_sample_backward"): _gaussian_sample_backward,
    ("conv", "conv2d_forward"): _conv_forward(False),
    ("conv", "conv2d_backward"): _conv_backward(False),
    ("conv", "conv2d_pool_forward"): _conv_pool_forward(True),  # odd 3x3 outputs: one window, a row and column left
    ("conv", "conv2d_pool_backward"): _conv_pool_backward(True),
    ("pool", "maxpool2d_forward"): _maxpool_forward,
    ("pool", "maxpool2d_backward"): _maxpool_backward,
    ("pool", "avgpool2d_forward"): _avgpool_forward,
    ("pool", "avgpool2d_backward"): _avgpool_backward,
    ("pool", "adaptive_avgpool2d_forward"): _adaptive_pool("avg", "forward"),
    ("pool", "adaptive_avgpool2d_backward"): _adaptive_pool("avg", "backward"),
    ("pool", "adaptive_maxpool2d_forward"): _adaptive_pool("max", "forward"),
    ("pool", "adaptive_maxpool2d_backward"): _adaptive_pool("max", "backward"),
    ("norm", "batchnorm_train_forward"): _bn_train_forward(False),
    ("norm", "batchnorm_eval_forward"): _bn_eval_forward(False),
    ("norm", "batchnorm_backward"): _bn_backward(False),
    ("norm", "batchnorm_pool_train_forward"): _bn_pool_train_forward(True),
    ("norm", "batchnorm_pool_eval_forward"): _bn_pool_eval_forward(True),
    ("norm", "batchnorm_pool_backward"): _bn_pool_backward(True),
    ("norm", "layernorm_forward"): _ln_forward,
    ("norm", "layernorm_backward"): _ln_backward,
    ("norm", "groupnorm_forward"): _gn_forward,
    ("norm", "groupnorm_backward"): _gn_backward,
    ("elementwise", "add_forward"): _add_forward,
    ("recurrent", "lstm_forward"): _recurrent_forward("lstm", False),
    ("dense_chain", "dense_chain_train"): _dense_chain_train((7, 5, 6, 4), ("relu", "tanh", None), (True, False, True),
                                                              [3, 0, -100, 1, 3], class_weights=(0.5, 2.0, 1.0, 1.5),
                                                              smoothing=0.1),
    ("dense_chain", "dense_chain_forward"): _dense_chain_forward((7, 5, 6, 4, 3), ("relu", "tanh", "gelu", "sigmoid"),
                                                                 (True, False, True, True)),
    ("recurrent", "lstm_backward"): _recurrent_backward("lstm", False),
    ("recurrent", "gru_forward"): _recurrent_forward("gru", False),
    ("recurrent", "lstm_projected_forward"): _projected_forward(False),
    ("recurrent", "lstm_projected_backward"): _projected_backward(False),
    ("recurrent", "gru_backward"): _recurrent_backward("gru", False),
    ("sequence", "last_step_forward"): _last_step_forward,
    ("sequence", "last_step_backward"): _last_step_backward,
    ("sequence", "mean_steps_forward"): _mean_steps_forward,
    ("sequence", "mean_steps_backward"): _mean_steps_backward,
    ("sequence", "embedding_forward"): _embedding_forward,
    ("sequence", "embedding_backward"): _embedding_backward(-1),
    ("sequence", "embedding_renorm"): _embedding_renorm,
    ("attention", "attention_forward"): _attention_forward(False),
    ("attention", "attention_backward"): _attention_backward(False),
    ("elementwise", "broadcast_add_forward"): _broadcast_add_forward,
    ("elementwise", "broadcast_add_backward"): _broadcast_add_backward,
    ("elementwise", "swap_last_axes_forward"): _swap_last_axes,
    ("check", "count_non_finite_forward"): _count_non_finite,
    ("elementwise", "multiply_forward"): _multiply_forward,
    ("elementwise", "multiply_backward"): _multiply_backward,
    ("elementwise", "scale_forward"): _scale_forward,
    ("layout", "concat_forward"): _concat_forward,
    ("layout", "concat_backward"): _concat_backward,
    ("layout", "pad2d_forward"): _pad2d_forward,
    ("layout", "pad2d_backward"): _pad2d_backward,
    ("layout", "pad2d_mode_forward"): _pad2d_mode_forward(1),
    ("layout", "pad2d_mode_backward"): _pad2d_mode_backward(1),
    ("upsample", "upsample_forward"): _upsample_forward("bilinear"),
    ("upsample", "upsample_backward"): _upsample_backward("bilinear"),
    ("conv_transpose", "conv_transpose2d_forward"): _conv_transpose_forward,
    ("conv_transpose", "conv_transpose2d_backward"): _conv_transpose_backward,
    ("segmentation", "pixel_cross_entropy_forward"): _pixel_ce_forward,
    ("segmentation", "pixel_cross_entropy_backward"): _pixel_ce_backward,
    ("segmentation", "dice_statistics_forward"): _dice_statistics,
    ("segmentation", "pixel_argmax_forward"): _pixel_argmax,
    ("segmentation", "dice_backward"): _dice_backward,
    ("detection", "centernet_forward"): _centernet_forward,
    ("detection", "centernet_backward"): _centernet_backward,
    ("detection", "heatmap_peaks_forward"): _heatmap_peaks,
    ("detection", "nms_forward"): _nms,
}
for _kind in ("relu", "leaky_relu", "sigmoid", "tanh", "gelu", "gelu_tanh"):
    CASES[("activation", f"{_kind}_forward")] = _elementwise_forward(_kind)
    CASES[("activation", f"{_kind}_backward")] = _elementwise_backward(_kind)
for _kind in ("mse", "mae", "huber", "bce_with_logits", "kl_div"):
    CASES[("loss", f"{_kind}_forward")] = _sum_loss_forward(_kind)
    CASES[("loss", f"{_kind}_backward")] = _sum_loss_backward(_kind)

# Extra variants that exercise optional arguments (absent bias).
def _linear_backward_first_layer(dtype, rng):
    """No input gradient (an empty 2-D dx) and no bias, as for a model's first layer."""
    args, _, expected = _linear_backward(dtype, rng)
    args[0], args[2] = np.empty((0, 0), dtype), np.empty(0, dtype)
    return args, args[1].size, {1: expected[1]}


def _kl_log_target(direction):
    """KL divergence with the target given as log-probabilities: exp(t) (t - x), gradient -exp(t)."""
    def make(dtype, rng):
        log_probs, target = (rng.standard_normal(24) * 2).astype(dtype), rng.uniform(-3, 0, 24).astype(dtype)
        x, t = f64(log_probs), f64(target)
        if direction == "forward":
            return [np.zeros(24, dtype), log_probs, target, True], 24, {0: np.exp(t) * (t - x)}
        return [np.zeros(24, dtype), log_probs, target, dtype(0.5), True], 24, {0: -0.5 * np.exp(t)}
    return make


VARIANTS = {
    "groupnorm_backward_no_input_grad": (("norm", "groupnorm_backward"), lambda d, r: _gn_backward(d, r, False)),
    "maxpool2d_forward_dilated": (("pool", "maxpool2d_forward"), lambda d, r: _maxpool_forward(d, r, dil=(2, 3))),
    "maxpool2d_backward_dilated": (("pool", "maxpool2d_backward"), lambda d, r: _maxpool_backward(d, r, dil=(2, 3))),
    "cross_entropy_backward_per_position": (("loss", "cross_entropy_backward"),
                                            lambda d, r: _ce_backward(d, r, per_position=True)),
    "kl_div_forward_log_target": (("loss", "kl_div_forward"), _kl_log_target("forward")),
    "kl_div_backward_log_target": (("loss", "kl_div_backward"), _kl_log_target("backward")),
    "count_non_finite_when_all_finite": (("check", "count_non_finite_forward"), _count_non_finite_none),
    "linear_forward_without_bias": (("linear", "linear_forward"), lambda d, r: _linear_forward(d, r, bias=False)),
    "linear_backward_first_layer": (("linear", "linear_backward"), _linear_backward_first_layer),
    "linear_forward_fused_relu": (("linear", "linear_forward"), lambda d, r: _linear_forward(d, r, relu=True)),
    "linear_backward_fused_relu": (("linear", "linear_backward"), lambda d, r: _linear_backward(d, r, relu=True)),
    "gaussian_sample_forward_mean": (("gaussian", "gaussian_sample_forward"), _gaussian_sample_forward(False)),
    "embedding_backward_padding_idx": (("sequence", "embedding_backward"), _embedding_backward(5)),
    "avgpool2d_forward_exclude_pad_ceil": (("pool", "avgpool2d_forward"), _avgpool_exclude_pad("forward")),
    "avgpool2d_backward_exclude_pad_ceil": (("pool", "avgpool2d_backward"), _avgpool_exclude_pad("backward")),
    "adam_step_amsgrad_maximize": (("optim", "adam_step"), _adam_step(True, maximize=True)),
    "radam_step_unrectified": (("optim", "radam_step"), _radam_step(False)),
    "rmsprop_step_plain": (("optim", "rmsprop_step"), _rmsprop_step(False)),
    "pad2d_mode_forward_replicate": (("layout", "pad2d_mode_forward"), _pad2d_mode_forward(2)),
    "pad2d_mode_backward_replicate": (("layout", "pad2d_mode_backward"), _pad2d_mode_backward(2)),
    "pad2d_mode_forward_circular": (("layout", "pad2d_mode_forward"), _pad2d_mode_forward(3)),
    "pad2d_mode_backward_circular": (("layout", "pad2d_mode_backward"), _pad2d_mode_backward(3)),
    "batchnorm_train_forward_fused_relu": (("norm", "batchnorm_train_forward"), _bn_train_forward(True)),
    "batchnorm_eval_forward_fused_relu": (("norm", "batchnorm_eval_forward"), _bn_eval_forward(True)),
    "batchnorm_backward_fused_relu": (("norm", "batchnorm_backward"), _bn_backward(True)),
    "batchnorm_pool_train_forward_no_relu": (("norm", "batchnorm_pool_train_forward"), _bn_pool_train_forward(False)),
    "batchnorm_pool_eval_forward_no_relu": (("norm", "batchnorm_pool_eval_forward"), _bn_pool_eval_forward(False)),
    "batchnorm_pool_backward_no_relu": (("norm", "batchnorm_pool_backward"), _bn_pool_backward(False)),
    "conv2d_forward_fused_relu": (("conv", "conv2d_forward"), _conv_forward(True)),
    "conv2d_backward_fused_relu": (("conv", "conv2d_backward"), _conv_backward(True)),
    "lstm_forward_initial_state": (("recurrent", "lstm_forward"), _recurrent_forward("lstm", False, True)),
    "lstm_backward_initial_state": (("recurrent", "lstm_backward"), _recurrent_backward("lstm", False, True)),
    "lstm_backward_reverse_initial_state": (("recurrent", "lstm_backward"), _recurrent_backward("lstm", True, True)),
    "gru_forward_initial_state": (("recurrent", "gru_forward"), _recurrent_forward("gru", True, True)),
    "gru_backward_initial_state": (("recurrent", "gru_backward"), _recurrent_backward("gru", False, True)),
    "gru_backward_reverse_initial_state": (("recurrent", "gru_backward"), _recurrent_backward("gru", True, True)),
    "lstm_forward_reverse": (("recurrent", "lstm_forward"), _recurrent_forward("lstm", True)),
    "lstm_projected_forward_reverse_initial_state": (("recurrent", "lstm_projected_forward"),
                                                     _projected_forward(True, True)),
    "lstm_projected_backward_initial_state": (("recurrent", "lstm_projected_backward"), _projected_backward(False, True)),
    "lstm_projected_backward_reverse_initial_state": (("recurrent", "lstm_projected_backward"),
                                                      _projected_backward(True, True)),
    "lstm_projected_backward_final_cell": (("recurrent", "lstm_projected_backward"),
                                           _projected_backward(False, False, True)),
    "lstm_backward_reverse": (("recurrent", "lstm_backward"), _recurrent_backward("lstm", True)),
    "lstm_backward_final_cell": (("recurrent", "lstm_backward"), _recurrent_backward("lstm", False, True, True)),
    "lstm_backward_reverse_final_cell": (("recurrent", "lstm_backward"), _recurrent_backward("lstm", True, False, True)),
    "gru_forward_reverse": (("recurrent", "gru_forward"), _recurrent_forward("gru", True)),
    "gru_backward_reverse": (("recurrent", "gru_backward"), _recurrent_backward("gru", True)),
    "attention_forward_causal": (("attention", "attention_forward"), _attention_forward(True)),
    "attention_forward_cross_masked": (("attention", "attention_forward"), _cross_attention_forward),
    "attention_backward_cross": (("attention", "attention_backward"), _cross_attention_backward),
    "attention_backward_causal": (("attention", "attention_backward"), _attention_backward(True)),
    "attention_forward_wide": (("attention", "attention_forward"), _wide_attention(False, False)),
    "attention_forward_wide_causal": (("attention", "attention_forward"), _wide_attention(False, True)),
    "attention_backward_wide": (("attention", "attention_backward"), _wide_attention(True, False)),
    "attention_backward_wide_causal": (("attention", "attention_backward"), _wide_attention(True, True)),
    "upsample_forward_nearest": (("upsample", "upsample_forward"), _upsample_forward("nearest")),
    "upsample_backward_nearest": (("upsample", "upsample_backward"), _upsample_backward("nearest")),
    "upsample_forward_align_corners": (("upsample", "upsample_forward"), _upsample_forward("bilinear_align_corners")),
    "upsample_backward_align_corners": (("upsample", "upsample_backward"), _upsample_backward("bilinear_align_corners")),
    "conv2d_forward_same": (("conv", "conv2d_forward"), _conv_forward(False, p=CONV_SAME)),
    "conv2d_backward_same": (("conv", "conv2d_backward"), _conv_backward(False, p=CONV_SAME)),
    "conv2d_forward_same_width": (("conv", "conv2d_forward"), _conv_forward(True, p=CONV_SAME_WIDTH)),
    "conv2d_backward_same_width": (("conv", "conv2d_backward"), _conv_backward(True, p=CONV_SAME_WIDTH)),
    "conv2d_forward_gemm_chunks": (("conv", "conv2d_forward"), _conv_forward(True, p=CONV_GEMM)),
    "conv2d_backward_gemm_chunks": (("conv", "conv2d_backward"), _conv_backward(True, p=CONV_GEMM)),
    # the pooled convolution on the CPU's other paths: direct (6x5 outputs) and GEMM chunks (19x19), the
    # latter without a ReLU
    "conv2d_pool_forward_direct": (("conv", "conv2d_pool_forward"), _conv_pool_forward(True, p=CONV_DIRECT)),
    "conv2d_pool_backward_direct": (("conv", "conv2d_pool_backward"), _conv_pool_backward(True, p=CONV_DIRECT)),
    "conv2d_pool_forward_gemm_chunks": (("conv", "conv2d_pool_forward"), _conv_pool_forward(False, p=CONV_GEMM)),
    "conv2d_pool_backward_gemm_chunks": (("conv", "conv2d_pool_backward"), _conv_pool_backward(False, p=CONV_GEMM)),
    "conv2d_forward_direct": (("conv", "conv2d_forward"), _conv_forward(True, p=CONV_DIRECT)),
    "conv2d_backward_direct": (("conv", "conv2d_backward"), _conv_backward(True, p=CONV_DIRECT)),
    "conv_transpose2d_forward_tiled": (("conv_transpose", "conv_transpose2d_forward"),
                                       lambda d, r: _conv_transpose_forward(d, r, CONV_T_TILED)),
    "conv_transpose2d_backward_tiled": (("conv_transpose", "conv_transpose2d_backward"),
                                        lambda d, r: _conv_transpose_backward(d, r, CONV_T_TILED)),
    "conv_transpose2d_forward_tiled_gemm": (("conv_transpose", "conv_transpose2d_forward"),
                                            lambda d, r: _conv_transpose_forward(d, r, CONV_T_TILED_GEMM)),
    "conv_transpose2d_backward_tiled_gemm": (("conv_transpose", "conv_transpose2d_backward"),
                                             lambda d, r: _conv_transpose_backward(d, r, CONV_T_TILED_GEMM)),
    "conv2d_forward_direct_1x1": (("conv", "conv2d_forward"), _conv_forward(True, p=CONV_DIRECT_1X1)),
    "conv2d_backward_direct_1x1": (("conv", "conv2d_backward"), _conv_backward(True, p=CONV_DIRECT_1X1)),
    "conv2d_forward_direct_wide": (("conv", "conv2d_forward"), _conv_forward(False, p=CONV_DIRECT_WIDE)),
    "conv2d_backward_direct_wide": (("conv", "conv2d_backward"), _conv_backward(False, p=CONV_DIRECT_WIDE)),
    "dense_chain_train_dropout": (("dense_chain", "dense_chain_train"),
                                  _dense_chain_train((6, 9, 5, 3), ("relu", "tanh", None), (True, True, False),
                                                     [2, 0, 1, 1], rates=(0.5, 0.25))),
    "dense_chain_train_gelu": (("dense_chain", "dense_chain_train"),
                               _dense_chain_train((5, 7, 6, 4), ("gelu", "gelu_tanh", "gelu"), (True, True, True),
                                                  [3, 1, 0], rates=(0.3, 0.0))),
    "dense_chain_train_sum": (("dense_chain", "dense_chain_train"),
                              _dense_chain_train((6, 5, 3), ("sigmoid", None), (True, False), [2, 0, 1], mean=False)),
    "dense_chain_train_non_finite": (("dense_chain", "dense_chain_train"),
                                     _dense_chain_train((3, 4, 2), ("relu", None), (True, True), [0, 1],
                                                        infinite_input=True)),
    "dense_chain_train_one_sample": (("dense_chain", "dense_chain_train"),
                                     _dense_chain_train((4, 3), (None,), (True,), [1])),
    # the optimizer's step inside the call: Adam; AdamW climbing; none after a NaN gradient or a loss
    # above the ceiling; and labels out of range, which stop the kernel before anything is computed
    "dense_chain_train_adam": (("dense_chain", "dense_chain_train"),
                               _dense_chain_train((7, 5, 6, 4), ("relu", "tanh", None), (True, False, True),
                                                  [3, 0, -100, 1, 3], smoothing=0.1, adam=(False, False, math.inf))),
    "dense_chain_train_adamw_maximize": (("dense_chain", "dense_chain_train"),
                                         _dense_chain_train((5, 6, 3), ("sigmoid", None), (True, True), [2, 0, 1, 1],
                                                            adam=(True, True, 50.0))),
    "dense_chain_train_adam_non_finite": (("dense_chain", "dense_chain_train"),
                                          _dense_chain_train((3, 4, 2), ("relu", None), (True, True), [0, 1],
                                                             infinite_input=True, adam=(False, False, math.inf))),
    "dense_chain_train_adam_above_ceiling": (("dense_chain", "dense_chain_train"),
                                             _dense_chain_train((4, 5, 3), ("tanh", None), (True, True), [0, 2, 1],
                                                                adam=(False, False, 0.25))),
    "dense_chain_train_labels_outside": (("dense_chain", "dense_chain_train"),
                                         _dense_chain_train((4, 5, 3), ("tanh", None), (True, True), [0, 3, -100, -2],
                                                            adam=(False, False, math.inf))),
    # with a second thread's gradient buffer: ten samples as a part of eight and one of two (each
    # part's Dropout masks by its samples' places in the batch), AdamW's step after the parts' sums
    "dense_chain_train_split": (("dense_chain", "dense_chain_train"),
                                _dense_chain_train((6, 9, 7, 4), ("relu", "gelu", None), (True, False, True),
                                                   [3, 0, -100, 1, 2, 2, 0, 3, 1, 0], rates=(0.5, 0.25),
                                                   adam=(True, False, math.inf), split=True)),
    "dense_chain_forward_gelu_tanh": (("dense_chain", "dense_chain_forward"),
                                      _dense_chain_forward((4, 6, 2), ("gelu_tanh", None), (False, True))),
    "dense_chain_forward_one_sample": (("dense_chain", "dense_chain_forward"),
                                       _dense_chain_forward((19, 11, 9, 3), ("relu", "sigmoid", None), (True, True, False),
                                                            n=1)),
    "dense_chain_forward_non_finite": (("dense_chain", "dense_chain_forward"),
                                       _dense_chain_forward((6, 4, 2), ("tanh", None), (True, True), bad_inputs=True)),
    "dense_chain_forward_one_layer": (("dense_chain", "dense_chain_forward"),
                                      _dense_chain_forward((5, 3), (None,), (True,), n=2)),
    "conv2d_forward_direct_gemm": (("conv", "conv2d_forward"), _conv_forward(True, p=CONV_DIRECT_GEMM)),
    "conv2d_backward_direct_gemm": (("conv", "conv2d_backward"), _conv_backward(True, p=CONV_DIRECT_GEMM,
                                                                                    grads=_adjoint_conv_grads)),
    "conv2d_forward_direct_1x1_gemm": (("conv", "conv2d_forward"), _conv_forward(False, p=CONV_DIRECT_1X1_GEMM)),
    "conv2d_backward_direct_1x1_gemm": (("conv", "conv2d_backward"), _conv_backward(False, p=CONV_DIRECT_1X1_GEMM)),
}

DTYPES = (np.float32, np.float64)
TOLERANCE = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-9, atol=1e-11)}
# References computed by central differences are good to about 1e-8, not 1e-11.
NUMERIC_REFERENCE_TOLERANCE = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-6, atol=1e-8)}
NUMERIC_REFERENCE_CASES = {"recurrent.lstm_backward", "recurrent.gru_backward", "lstm_backward_reverse",
                           "lstm_backward_initial_state", "lstm_backward_reverse_initial_state",
                           "gru_backward_initial_state", "gru_backward_reverse_initial_state",
                           "gru_backward_reverse", "attention.attention_backward", "attention_backward_causal",
                           "attention_backward_cross", "attention_backward_wide", "attention_backward_wide_causal", "recurrent.lstm_projected_backward",
                           "lstm_backward_final_cell", "lstm_backward_reverse_final_cell",
                           "lstm_projected_backward_final_cell",
                           "lstm_projected_backward_initial_state", "lstm_projected_backward_reverse_initial_state"}


def tolerance(case_id, dtype):
    table = NUMERIC_REFERENCE_TOLERANCE if case_id in NUMERIC_REFERENCE_CASES else TOLERANCE
    return table[dtype]


# Cases that exist to reach a CPU path and are too large for the simulator's Python threads (about a
# minute each); the CUDA twin has one path, which the other conv2d cases check.
CPU_PATH_ONLY = {"conv2d_forward_direct_gemm", "conv2d_backward_direct_gemm"}


def all_cases():
    """[(id, family, op, make)] for parametrisation."""
    items = [(f"{family}.{op}", family, op, make) for (family, op), make in CASES.items()]
    items += [(name, family, op, make) for name, ((family, op), make) in VARIANTS.items()]
    return items
