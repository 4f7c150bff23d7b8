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
}
SLOPE = 0.1


def f64(a):
    return np.asarray(a, dtype=np.float64)


def _linear_forward(dtype, rng, bias=True):
    x, w = rng.standard_normal((5, 7)).astype(dtype), rng.standard_normal((3, 7)).astype(dtype)
    b = rng.standard_normal(3).astype(dtype) if bias else np.empty(0, dtype)
    out = np.zeros((5, 3), dtype)
    expected = f64(x) @ f64(w).T + (f64(b) if bias else 0)
    return [out, x, w, b], out.size, {0: expected}


def _linear_backward(dtype, rng):
    x, w = rng.standard_normal((5, 7)).astype(dtype), rng.standard_normal((3, 7)).astype(dtype)
    dout = rng.standard_normal((5, 3)).astype(dtype)
    dx, dw, db = np.zeros((5, 7), dtype), np.zeros((3, 7), dtype), np.zeros(3, dtype)
    expected = {0: f64(dout) @ f64(w), 1: f64(dout).T @ f64(x), 2: f64(dout).sum(0)}
    return [dx, dw, db, dout, x, w], dx.size + dw.size + db.size, expected


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


def _softmax_ref(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _softmax_forward(dtype, rng):
    x = (rng.standard_normal((4, 6)) * 5).astype(dtype)
    return [np.zeros_like(x), x], 4, {0: _softmax_ref(f64(x))}


def _softmax_backward(dtype, rng):
    x, dout = rng.standard_normal((4, 6)), rng.standard_normal((4, 6)).astype(dtype)
    out = _softmax_ref(x)
    expected = out * (f64(dout) - (f64(dout) * out).sum(axis=1, keepdims=True))
    return [np.zeros((4, 6), dtype), dout, out.astype(dtype)], 4, {0: expected}


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


def _ce_inputs(dtype, rng):
    logits = (rng.standard_normal((6, 5)) * 3).astype(dtype)
    labels = rng.integers(0, 5, 6).astype(np.int64)
    weights = rng.uniform(0.5, 2.0, 5).astype(dtype)
    return logits, labels, weights, 0.1


def _ce_forward(dtype, rng):
    logits, labels, weights, smoothing = _ce_inputs(dtype, rng)
    loss, sample_weight, probs = cross_entropy_reference(logits, labels, f64(weights), smoothing)
    args = [np.zeros(6, dtype), np.zeros(6, dtype), np.zeros((6, 5), dtype), logits, labels, weights, dtype(smoothing)]
    return args, 6, {0: loss, 1: sample_weight, 2: probs}


def _ce_backward(dtype, rng):
    logits, labels, weights, smoothing = _ce_inputs(dtype, rng)
    _, sample_weight, probs = cross_entropy_reference(logits, labels, f64(weights), smoothing)
    scale = 1.0 / sample_weight.sum()
    onehot = np.eye(5)[labels]
    w = f64(weights)
    expected = scale * ((1 - smoothing) * w[labels][:, None] * (probs - onehot)
                        + smoothing / 5 * (w.sum() * probs - w[None, :]))
    args = [np.zeros((6, 5), dtype), probs.astype(dtype), labels, weights, dtype(smoothing), dtype(scale)]
    return args, 6, {0: expected}


def _sum_loss_forward(kind):
    def make(dtype, rng):
        pred = rng.standard_normal(23).astype(dtype)
        target = (rng.standard_normal(23) if kind == "mse" else rng.uniform(0, 1, 23)).astype(dtype)
        p, t = f64(pred), f64(target)
        if kind == "mse":
            total = ((p - t) ** 2).sum()
        else:
            total = (np.maximum(p, 0) - p * t + np.log1p(np.exp(-np.abs(p)))).sum()
        return [np.zeros(1, dtype), pred, target], pred.size, {0: np.array([total])}
    return make


def _sum_loss_backward(kind):
    def make(dtype, rng):
        pred = rng.standard_normal(23).astype(dtype)
        target = rng.uniform(0, 1, 23).astype(dtype)
        p, t, scale = f64(pred), f64(target), 0.25
        expected = scale * (2 * (p - t) if kind == "mse" else 1 / (1 + np.exp(-p)) - t)
        return [np.zeros(23, dtype), pred, target, dtype(scale)], pred.size, {0: expected}
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


def _adam_step(dtype, rng):
    param, m, grad = _optimizer_state(dtype, rng, 3)
    v = np.abs(rng.standard_normal(19)).astype(dtype)
    lr, b1, b2, eps, wd, step = 0.01, 0.9, 0.999, 1e-8, 0.05, 3
    bc1, bc2 = 1 - b1 ** step, 1 - b2 ** step
    p = f64(param) * (1 - lr * wd)  # decoupled (AdamW)
    new_m = b1 * f64(m) + (1 - b1) * f64(grad)
    new_v = b2 * f64(v) + (1 - b2) * f64(grad) ** 2
    new_p = p - lr / bc1 * new_m / (np.sqrt(new_v) / math.sqrt(bc2) + eps)
    args = [param, m, v, grad, dtype(lr), dtype(b1), dtype(b2), dtype(eps), dtype(wd), True, dtype(bc1), dtype(bc2)]
    return args, param.size, {0: new_p, 1: new_m, 2: new_v}


def _rmsprop_step(dtype, rng):
    param, grad_avg, buf, grad = _optimizer_state(dtype, rng, 4)
    grad_avg *= 0.1
    square_avg = (np.abs(rng.standard_normal(19)) + 0.5).astype(dtype)
    lr, alpha, eps, wd, momentum = 0.01, 0.9, 1e-8, 0.01, 0.5
    g = f64(grad) + wd * f64(param)
    sq = alpha * f64(square_avg) + (1 - alpha) * g * g
    ga = alpha * f64(grad_avg) + (1 - alpha) * g
    avg = np.sqrt(sq - ga * ga) + eps
    new_buf = momentum * f64(buf) + g / avg
    args = [param, square_avg, grad_avg, buf, grad, dtype(lr), dtype(alpha), dtype(eps), dtype(wd),
            dtype(momentum), True]
    return args, param.size, {0: f64(param) - lr * new_buf, 1: sq, 2: ga, 3: new_buf}


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


CASES = {
    ("linear", "linear_forward"): _linear_forward,
    ("linear", "linear_backward"): _linear_backward,
    ("activation", "softmax_forward"): _softmax_forward,
    ("activation", "softmax_backward"): _softmax_backward,
    ("loss", "cross_entropy_forward"): _ce_forward,
    ("loss", "cross_entropy_backward"): _ce_backward,
    ("optim", "sgd_step"): _sgd_step,
    ("optim", "adam_step"): _adam_step,
    ("optim", "rmsprop_step"): _rmsprop_step,
    ("dropout", "dropout_forward"): _dropout_forward,
    ("dropout", "dropout_backward"): _dropout_backward,
}
for _kind in ("relu", "leaky_relu", "sigmoid", "tanh", "gelu"):
    CASES[("activation", f"{_kind}_forward")] = _elementwise_forward(_kind)
    CASES[("activation", f"{_kind}_backward")] = _elementwise_backward(_kind)
for _kind in ("mse", "bce_with_logits"):
    CASES[("loss", f"{_kind}_forward")] = _sum_loss_forward(_kind)
    CASES[("loss", f"{_kind}_backward")] = _sum_loss_backward(_kind)

# Extra variants that exercise optional arguments (absent bias).
def _linear_backward_first_layer(dtype, rng):
    """No input gradient (an empty 2-D dx) and no bias, as for a model's first layer."""
    args, _, expected = _linear_backward(dtype, rng)
    args[0], args[2] = np.empty((0, 0), dtype), np.empty(0, dtype)
    return args, args[1].size, {1: expected[1]}


VARIANTS = {
    "linear_forward_without_bias": (("linear", "linear_forward"), lambda d, r: _linear_forward(d, r, bias=False)),
    "linear_backward_first_layer": (("linear", "linear_backward"), _linear_backward_first_layer),
}

DTYPES = (np.float32, np.float64)
TOLERANCE = {np.float32: dict(rtol=2e-4, atol=2e-5), np.float64: dict(rtol=1e-9, atol=1e-11)}


def all_cases():
    """[(id, family, op, make)] for parametrisation."""
    items = [(f"{family}.{op}", family, op, make) for (family, op), make in CASES.items()]
    items += [(name, family, op, make) for name, ((family, op), make) in VARIANTS.items()]
    return items
