"""``numdl bench``: numdl against PyTorch in the same process, on the same data, initial weights,
batch size and thread count.

Suites:

- ``mlp``, ``cnn``, ``lstm``, ``transformer``: training throughput (an epoch's worth of batches)
  and, for the MLP, inference over 10,000 images, for the reference models;
- ``kernels``: every kernel family, forward and forward+backward, at a small size (where per-call
  overhead decides) and a large one (where the arithmetic does);
- ``startup``: ``numdl train`` in a fresh process with a warm kernel cache, time to its first step,
  and the peak resident memory of ``numdl train`` against a PyTorch script doing the same job;
- ``ceiling``: for the MLP and LSTM cases, the samples/s of a step that did nothing but its matrix
  products (numdl's BLAS) against PyTorch's full step: the highest ratio this machine allows;
- ``tabular``: reading and preprocessing a generated 1,000,000-row table (20 numeric columns with 2%
  missing, 5 categorical) from CSV and from Parquet, and training the tabular MLP (25 inputs,
  64-64 hidden, batch 256) against PyTorch.

Timing: numdl and PyTorch repetitions alternate (numdl, torch, numdl, ...), so both see the same
machine; each side's figure is the median of its repetitions and the ratio is numdl / PyTorch.
Kernel compile time (loading from numba's cache when warm) is reported apart, never timed.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SUITES = ("mlp", "cnn", "lstm", "transformer", "tabular", "unet", "latency", "kernels", "startup", "ceiling",
          "contention")
DEFAULT_SUITES = ("mlp", "cnn", "lstm", "transformer", "tabular", "unet", "latency", "startup", "ceiling")
INPUT_SHAPES = {"tabular": (25,), "unet": (1, 64, 64)}  # the image models take (28, 28)
CLASSES = {"tabular": 2, "unet": 11}
LABEL_SHAPES = {"unet": (64, 64)}  # per-pixel labels; the others one per sample
# examples/unet.toml's widths: encoder stages, the two bottom convolutions, decoder stages (from the
# deepest), the transposed convolutions' outputs (from the deepest); a test keeps them equal.
UNET = {"encoder": (8, 32, 64), "bottom": 128, "decoder": (32, 16, 8), "up": (32, 16, 8)}


def _data(samples, shape, classes=10, seed=0, label_shape=()):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((samples,) + shape).astype(np.float32),
            rng.integers(0, classes, (samples,) + label_shape))


# Pause before each timed run: after a run, OpenBLAS's threads (numdl) or OpenMP's (PyTorch) keep
# spinning for a while, and on two cores they would slow whichever side runs next.
SETTLE_SECONDS = 0.3


def _timed(run):
    time.sleep(SETTLE_SECONDS)
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def _orders(count, repeats):
    """The order of ``count`` runs in each of ``repeats`` rounds: rows of a balanced Latin square
    (Williams), so that every run follows every other equally often. A fixed order let one side
    always follow the same peer, and a peer's after-effect landed on it alone: MLP inference at
    batch 1000 took a median 20.4 ms right after a JAX epoch against 15.1 after its own and 15.7
    after PyTorch's (onnxruntime 17.0 against 12.6-13.0, PyTorch 18.5 against 16.6-17.4), with the
    0.3 s pause between and no CPU used during it; numdl ran after JAX in every round."""
    first = [0]
    low, high = 1, count - 1
    while len(first) < count:
        first.append(low)
        low += 1
        if len(first) < count:
            first.append(high)
            high -= 1
    rows = [[(index + shift) % count for index in first] for shift in range(count)]
    if count % 2:  # an odd count needs the reversed rows too for every pair to come in both orders
        rows += [row[::-1] for row in rows]
    return [rows[round_ % len(rows)] for round_ in range(repeats)]


def _alternate(ours, theirs, repeats, *more):
    """Run ``ours``, ``theirs`` and any ``more`` ``repeats`` times each (after one warm-up call each),
    alternating in the orders of ``_orders``; returns the median seconds of each, None for a run that
    is None (a peer not installed)."""
    runs = (ours, theirs) + more
    present = [index for index, run in enumerate(runs) if run]
    for index in present:
        runs[index]()
    seconds = [[] for _ in runs]
    for order in _orders(len(present), repeats):
        for position in order:
            index = present[position]
            seconds[index].append(_timed(runs[index]))
    return [statistics.median(times) if times else None for times in seconds]


def _result(case, work, ours_seconds, theirs_seconds, unit="samples/s", **extra):
    result = {"case": case, "unit": unit, "numdl": work / ours_seconds, **extra}
    if theirs_seconds:
        result["torch"] = work / theirs_seconds
        result["ratio"] = result["numdl"] / result["torch"]
    return result


def _torch(threads):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch


# ----------------------------------------------------------------------------------- models


def _copy_weights_to_torch(torch, model, modules):
    """Copy numdl's weights into torch modules in order (same layouts by design)."""
    params = [p.value for p in model.parameters()]
    torch_params = [p for m in modules for p in m.parameters()]
    with torch.no_grad():
        for ours, theirs in zip(params, torch_params):
            theirs.copy_(torch.from_numpy(np.ascontiguousarray(ours)).reshape(theirs.shape))


def _numdl_unet():
    """examples/unet.toml's U-Net through the functional API (the bench runs without the examples)."""
    import numdl

    def stage(x, channels):
        return numdl.ReLU()(numdl.BatchNorm2d()(numdl.Conv2d(channels, 3, padding=1, bias=False)(x)))

    image = numdl.Input((1, 64, 64))
    skips, h = [], image
    for channels in UNET["encoder"]:
        h = stage(h, channels)
        skips.append(h)
        h = numdl.MaxPool2d(2)(h)
    h = stage(stage(h, UNET["bottom"]), UNET["bottom"])
    for channels, up, skip in zip(UNET["decoder"], UNET["up"], reversed(skips)):
        h = stage(numdl.Concat()([numdl.ConvTranspose2d(up, 2, stride=2)(h), skip]), channels)
    model = numdl.Model(image, numdl.Conv2d(11, 1)(h), seed=0)
    return model.compile(numdl.PixelCrossEntropy(), numdl.Adam(lr=1e-3))


def _torch_unet(torch):
    """The same U-Net in PyTorch, its modules created in the order numdl's layers hold parameters."""
    nn = torch.nn

    def stage(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            widths, channels = [], 1
            self.encoder = nn.ModuleList()
            for width in UNET["encoder"]:
                self.encoder.append(stage(channels, width))
                widths.append(width)
                channels = width
            self.bottom = nn.Sequential(stage(channels, UNET["bottom"]), stage(UNET["bottom"], UNET["bottom"]))
            channels = UNET["bottom"]
            self.ups, self.decoder = nn.ModuleList(), nn.ModuleList()
            for width, up, skip in zip(UNET["decoder"], UNET["up"], reversed(widths)):
                self.ups.append(nn.ConvTranspose2d(channels, up, 2, stride=2))
                self.decoder.append(stage(up + skip, width))
                channels = width
            self.head = nn.Conv2d(channels, 11, 1)

        def forward(self, x):
            skips = []
            for block in self.encoder:
                x = block(x)
                skips.append(x)
                x = nn.functional.max_pool2d(x, 2)
            x = self.bottom(x)
            for up, block, skip in zip(self.ups, self.decoder, reversed(skips)):
                x = block(torch.cat([up(x), skip], 1))
            return self.head(x)

    net = UNet()
    # numdl's parameter order: encoder, bottom, then per decoder level the transposed convolution and
    # the stage; torch registered all ups before all decoder stages, so reorder its modules.
    ordered = list(net.encoder) + list(net.bottom)
    for up, block in zip(net.ups, net.decoder):
        ordered += [up, block]
    net.ordered_modules = lambda: [m for part in ordered + [net.head] for m in part.modules()
                                   if not list(m.children())]
    return net


def _numdl_model(kind):
    import numdl

    if kind == "unet":
        return _numdl_unet()
    if kind == "mlp":
        layers = [numdl.Flatten(), numdl.Linear(128), numdl.ReLU(), numdl.Linear(64), numdl.ReLU(), numdl.Linear(10)]
    elif kind == "tabular":
        layers = [numdl.Linear(64), numdl.ReLU(), numdl.Linear(64), numdl.ReLU(), numdl.Linear(2)]
    elif kind == "cnn":
        layers = [numdl.Reshape([1, 28, 28]), numdl.Conv2d(32, 3, padding=1), numdl.ReLU(), numdl.MaxPool2d(2),
                  numdl.Conv2d(64, 3, padding=1), numdl.ReLU(), numdl.MaxPool2d(2), numdl.Flatten(),
                  numdl.Linear(128), numdl.ReLU(), numdl.Linear(10)]
    elif kind == "lstm":
        layers = [numdl.LSTM(128), numdl.Linear(10)]
    else:  # examples/transformer.toml: 7x7 patches, 2 post-norm encoder layers of width 64, mean pool
        layers = [numdl.Reshape([1, 28, 28]), numdl.Conv2d(64, 7, stride=7), numdl.Reshape([64, 16]),
                  numdl.SwapAxes(), numdl.PositionalEncoding(kind="learned"),
                  numdl.TransformerEncoderLayer(4, 128, dropout=0.1),
                  numdl.TransformerEncoderLayer(4, 128, dropout=0.1),
                  numdl.SequencePool("mean"), numdl.Linear(10)]
    model = numdl.Sequential(layers, input_shape=INPUT_SHAPES.get(kind, (28, 28)), seed=0)
    return model.compile(numdl.CrossEntropy(), numdl.Adam(lr=1e-3))


def _torch_model(torch, kind):
    nn = torch.nn
    if kind == "unet":
        return _torch_unet(torch)
    if kind == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                             nn.Linear(64, 10))
    if kind == "tabular":
        return nn.Sequential(nn.Linear(25, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
    if kind == "cnn":
        return nn.Sequential(nn.Unflatten(1, (1, 28)), nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                             nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10))
    if kind == "lstm":
        class LastStep(nn.Module):
            def __init__(self):
                super().__init__()
                self.lstm, self.head = nn.LSTM(28, 128, batch_first=True), nn.Linear(128, 10)

            def forward(self, x):
                return self.head(self.lstm(x)[0][:, -1])

        return LastStep()

    class PatchTransformer(nn.Module):
        def __init__(self):
            super().__init__()
            self.patches = nn.Conv2d(1, 64, 7, stride=7)
            self.position = nn.Parameter(torch.zeros(16, 64))
            layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.1, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(64, 10)

        def forward(self, x):
            h = self.patches(x.unsqueeze(1)).flatten(2).transpose(1, 2) + self.position
            return self.head(self.encoder(h).mean(1))

    return PatchTransformer()


def model_case(kind, mode, batch_size, samples, repeats, threads):
    """Training (an epoch of ``samples``) or inference throughput of one reference model."""
    x, y = _data(samples, INPUT_SHAPES.get(kind, (28, 28)), CLASSES.get(kind, 10), label_shape=LABEL_SHAPES.get(kind, ()))
    ours = _numdl_model(kind)
    compile_seconds = ours.warmup(batch_size)
    batches = [(x[b:b + batch_size], y[b:b + batch_size]) for b in range(0, samples, batch_size)]

    def run_ours():
        if mode == "train":
            for xb, yb in batches:
                ours.train_step(xb, yb)
        else:
            ours.predict(x, batch_size=batch_size)

    run_theirs = _torch_run(_torch(threads), kind, mode, batches, ours)
    run_ort = _onnxruntime_run(ours, batches, threads) if mode == "predict" else None
    from numdl import bench_jax

    run_jax = bench_jax.epoch(kind, mode, batches, ours, threads)
    mine, others, ort_seconds, jax_seconds = _alternate(run_ours, run_theirs, repeats, run_ort, run_jax)
    result = _result(f"{kind} {mode} b{batch_size}", samples, mine, others, compile_seconds=compile_seconds)
    for peer, seconds in (("onnxruntime", ort_seconds), ("jax", jax_seconds)):
        if seconds:
            result[peer] = samples / seconds
            result[f"ratio_{peer}"] = result["numdl"] / result[peer]
    return result


def _onnxruntime_run(model, batches, threads):
    """onnxruntime's inference over ``batches`` of the same model exported to ONNX, or None when
    onnx / onnxruntime are not installed or the model has a layer ONNX export does not cover."""
    try:
        import onnxruntime

        from numdl.errors import ConfigError
        from numdl.onnx_export import to_onnx

        proto = to_onnx(model)
    except (ImportError, ConfigError):
        return None
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def run():
        for xb, _ in batches:
            session.run(None, {"input": xb})

    return run


def _torch_run(torch, kind, mode, batches, ours=None):
    """PyTorch's epoch over ``batches`` (training steps, or no-grad forward passes), or None without
    PyTorch. ``ours``: a numdl model whose initial weights PyTorch's copies (not the transformer's)."""
    if torch is None:
        return None
    net = _torch_model(torch, kind)
    if ours is not None and kind != "transformer":  # same layouts: same initial weights
        modules = net.ordered_modules() if hasattr(net, "ordered_modules") else \
            [m for m in net.modules() if not list(m.children())]
        _copy_weights_to_torch(torch, ours, modules)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    theirs = [(torch.from_numpy(xb), torch.from_numpy(yb)) for xb, yb in batches]

    def run_theirs():
        if mode == "train":
            for xb, yb in theirs:
                opt.zero_grad()
                loss_fn(net(xb), yb).backward()
                opt.step()
        else:
            with torch.no_grad():
                for xb, _ in theirs:
                    net(xb)

    return run_theirs


# ------------------------------------------------------------------------------ latency
#: Batch sizes of the latency suite: one sample (a serving call) and a few.
LATENCY_BATCHES = (1, 8)


def latency_cases(repeats, threads, quick):
    """model.predict's time per call on one and on eight samples of the reference MLP (batches of
    calls, their median over alternating repetitions), against PyTorch eager (a no-grad forward of
    the same weights) and JAX (the jitted forward, to the result). Unit us; ratio and vs jax are the
    peer's time over numdl's (above 1: numdl is faster)."""
    from numdl import bench_jax

    torch = _torch(threads)
    model = _numdl_model("mlp")
    calls = 300 if quick else 3000
    results = []
    for batch in LATENCY_BATCHES:
        x = _data(batch, INPUT_SHAPES.get("mlp", (28, 28)))[0]

        def ours():
            for _ in range(calls):
                model.predict(x)

        theirs = jax_run = None
        if torch is not None:
            net = _torch_model(torch, "mlp")
            _copy_weights_to_torch(torch, model, [m for m in net.modules() if not list(m.children())])
            torch_x = torch.from_numpy(x)

            def theirs():
                with torch.no_grad():
                    for _ in range(calls):
                        net(torch_x)
        loaded = bench_jax.load(threads)
        if loaded is not None:
            jax, jnp, _ = loaded
            forward = jax.jit(bench_jax._forward(jax, jnp, "mlp"))
            params = [jnp.asarray(np.array(p.value)) for p in model.parameters()]
            jax_x = jnp.asarray(x)

            def jax_run():
                for _ in range(calls):
                    forward(params, jax_x).block_until_ready()
        mine, others, jax_seconds = _alternate(ours, theirs, repeats, jax_run)
        result = {"case": f"mlp predict latency b{batch}", "unit": "us", "numdl": mine / calls * 1e6}
        if others:
            result["torch"], result["ratio"] = others / calls * 1e6, others / mine
        if jax_seconds:
            result["jax"], result["ratio_jax"] = jax_seconds / calls * 1e6, jax_seconds / mine
        results.append(result)
    return results


# ------------------------------------------------------------------------------ GEMM ceilings
# The matrix products one step of a reference model needs, as (rows, inner, columns, count): what
# numdl's kernels hand to the BLAS (the LSTM's per-step products once per step; the first layer
# computes no input gradient). Their time alone bounds a step from below, whatever else is fused away.


def _step_products(kind, mode, batch):
    """(rows, inner, columns, count, trans_a, trans_b) of every product in a step of the reference
    model ``kind``, from its weights' shapes: out (rows, columns) = op(a) @ op(b) over ``inner``, op
    a transpose where the flag says, as the kernels pass them."""
    model = _numdl_model(kind)
    weights = [p.value.shape for name, p in model.named_parameters().items() if "weight" in name]
    if kind == "mlp":  # Linear weights (out, in)
        products = [(batch, n_in, n_out, 1, False, True) for n_out, n_in in weights]  # x @ W.T
        if mode == "train":
            products += [(n_out, batch, n_in, 1, True, False) for n_out, n_in in weights]  # dW = g.T @ x
            products += [(batch, n_out, n_in, 1, False, False) for n_out, n_in in weights[1:]]  # dx = g @ W
        return products
    if kind == "lstm":  # weight_ih (G, I), weight_hh (G, H), the head's weight (C, H)
        (gates, inputs), (_, hidden), (classes, _) = weights
        steps = model.input_shape[0]
        return [(batch * steps, inputs, gates, 1, False, True), (batch, hidden, gates, steps, False, False),
                (batch, hidden, classes, 1, False, True),
                (classes, batch, hidden, 1, True, False), (batch, classes, hidden, 1, False, False),  # head dW, dx
                (batch, gates, hidden, steps, False, False),  # dh_prev = dgates @ W_hh, per step
                (gates, batch * steps, hidden, 1, True, False),  # dW_hh, dW_ih
                (gates, batch * steps, inputs, 1, True, False)]
    raise ValueError(f"no product list for {kind}")


def _gemm_seconds(products, repeats, multiply):
    """Median seconds of one pass over ``products``, each computed ``count`` times by ``multiply``
    (out, a, b, trans_a, trans_b) on preallocated float32 arrays."""
    rng = np.random.default_rng(0)
    operands = [(np.empty((m, n), np.float32), rng.standard_normal((k, m) if trans_a else (m, k), dtype=np.float32),
                 rng.standard_normal((n, k) if trans_b else (k, n), dtype=np.float32), count, trans_a, trans_b)
                for m, k, n, count, trans_a, trans_b in products]

    def one_pass():
        for out, a, b, count, trans_a, trans_b in operands:
            for _ in range(count):
                multiply(out, a, b, trans_a, trans_b)

    start = time.perf_counter()
    for _ in range(3):  # warm-up: compile, fault in the pages
        one_pass()
    # Each timed run lasts about as long as a model case's epoch (~0.4 s): after the settle pause,
    # a run of a few milliseconds would mostly time the BLAS threads waking up.
    passes = max(5, int(0.4 / max((time.perf_counter() - start) / 3, 1e-6)))
    times = []
    for _ in range(repeats):
        times.append(_timed(lambda: [one_pass() for _ in range(passes)]) / passes)
    return statistics.median(times)


def _split_product_caller():
    """numdl.kernels.matmul.split_product, callable from Python (it is for compiled callers)."""
    from numba import njit

    from numdl.kernels.matmul import split_product

    @njit
    def multiply(out, a, b, trans_a, trans_b):
        split_product(out, a, b, trans_a, trans_b)

    return multiply


# (model, mode, batch size, samples of PyTorch's timed epoch)
CEILING_CASES = (("mlp", "train", 64, 6400), ("mlp", "train", 256, 12800), ("mlp", "predict", 1000, 10000),
                 ("lstm", "train", 128, 1280))


def ceiling_cases(repeats, threads, quick):
    """For the MLP and LSTM cases: the samples/s numdl would reach if a step were its matrix products
    and nothing else (through numdl's own products, split_product, on numba's threads, where the
    training kernels of both models run them), PyTorch's measured full step, and their ratio: the
    most numdl can reach against this PyTorch on this machine. PyTorch's own products-only bound
    (MKL) is in the report as ``torch_gemm_bound``."""
    from numdl.backend import get_ops

    get_ops("cpu").use_threads("numba")
    numba_product = _split_product_caller()

    torch = _torch(threads)
    results = []
    for kind, mode, batch, samples in CEILING_CASES:
        samples = samples // 2 if quick else samples
        products = _step_products(kind, mode, batch)
        ours = _gemm_seconds(products, repeats, numba_product) * samples / batch
        extra, theirs = {}, None
        if torch is not None:
            def torch_product(out, a, b, trans_a, trans_b):
                a, b = torch.from_numpy(a), torch.from_numpy(b)
                torch.mm(a.T if trans_a else a, b.T if trans_b else b, out=torch.from_numpy(out))

            extra["torch_gemm_bound"] = batch / _gemm_seconds(products, repeats, torch_product)
            x, y = _data(samples, (28, 28))
            run_theirs = _torch_run(torch, kind, mode, [(x[b:b + batch], y[b:b + batch])
                                                        for b in range(0, samples, batch)])
            run_theirs()  # warm-up
            theirs = statistics.median(_timed(run_theirs) for _ in range(repeats))
        results.append(_result(f"{kind} {mode} b{batch} GEMM bound", samples, ours, theirs, **extra))
    return results


# ---------------------------------------------------------------------------------- kernels


def _kernel_cases(torch):
    """(family, size, numdl layers, input shape without batch, batch, torch module factory)."""
    import numdl

    nn = torch.nn
    return [
        ("linear", "64x784->128", [numdl.Linear(128)], (784,), 64, lambda: nn.Linear(784, 128)),
        ("linear", "1024x1024->1024", [numdl.Linear(1024)], (1024,), 1024, lambda: nn.Linear(1024, 1024)),
        ("relu", "64x128", [numdl.ReLU()], (128,), 64, nn.ReLU),
        ("relu", "256x16384", [numdl.ReLU()], (16384,), 256, nn.ReLU),
        ("tanh", "64x128", [numdl.Tanh()], (128,), 64, nn.Tanh),
        ("tanh", "256x16384", [numdl.Tanh()], (16384,), 256, nn.Tanh),
        ("gelu", "256x16384", [numdl.GELU()], (16384,), 256, nn.GELU),
        ("conv2d", "8x1x28x28 3x3->32", [numdl.Conv2d(32, 3, padding=1)], (1, 28, 28), 8,
         lambda: nn.Conv2d(1, 32, 3, padding=1)),
        ("conv2d", "128x32x14x14 3x3->64", [numdl.Conv2d(64, 3, padding=1)], (32, 14, 14), 128,
         lambda: nn.Conv2d(32, 64, 3, padding=1)),
        # Conv2d -> ReLU -> MaxPool2d(2) as the CNN runs them: one fused pass in numdl (kernels.conv's
        # conv2d_pool_*), three modules in PyTorch
        ("conv2d_relu_maxpool", "128x1x28x28 3x3->32", [numdl.Conv2d(32, 3, padding=1), numdl.ReLU(),
                                                         numdl.MaxPool2d(2)], (1, 28, 28), 128,
         lambda: nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))),
        ("conv_transpose2d", "8x32x14x14 2x2/2->16", [numdl.ConvTranspose2d(16, 2, stride=2)], (32, 14, 14), 8,
         lambda: nn.ConvTranspose2d(32, 16, 2, stride=2)),
        ("conv_transpose2d", "32x32x32x32 2x2/2->16", [numdl.ConvTranspose2d(16, 2, stride=2)], (32, 32, 32), 32,
         lambda: nn.ConvTranspose2d(32, 16, 2, stride=2)),
        ("upsample", "8x16x16x16 bilinear x2", [numdl.Upsample(scale_factor=2, mode="bilinear")], (16, 16, 16), 8,
         lambda: nn.Upsample(scale_factor=2, mode="bilinear")),
        ("upsample", "32x16x32x32 nearest x2", [numdl.Upsample(scale_factor=2)], (16, 32, 32), 32,
         lambda: nn.Upsample(scale_factor=2)),
        ("maxpool2d", "8x32x28x28", [numdl.MaxPool2d(2)], (32, 28, 28), 8, lambda: nn.MaxPool2d(2)),
        ("maxpool2d", "128x32x28x28", [numdl.MaxPool2d(2)], (32, 28, 28), 128, lambda: nn.MaxPool2d(2)),
        ("batchnorm2d", "8x32x14x14", [numdl.BatchNorm2d()], (32, 14, 14), 8, lambda: nn.BatchNorm2d(32)),
        ("batchnorm2d", "128x64x14x14", [numdl.BatchNorm2d()], (64, 14, 14), 128, lambda: nn.BatchNorm2d(64)),
        ("layernorm", "64x128", [numdl.LayerNorm()], (128,), 64, lambda: nn.LayerNorm(128)),
        ("layernorm", "4096x512", [numdl.LayerNorm()], (512,), 4096, lambda: nn.LayerNorm(512)),
        ("lstm", "8x28x28->128", [numdl.LSTM(128, return_sequences=True)], (28, 28), 8,
         lambda: _wrapped(nn.LSTM(28, 128, batch_first=True), _outputs)),
        ("lstm", "128x28x28->128", [numdl.LSTM(128, return_sequences=True)], (28, 28), 128,
         lambda: _wrapped(nn.LSTM(28, 128, batch_first=True), _outputs)),
        ("attention", "8x16x64 4 heads", [numdl.MultiHeadAttention(4)], (16, 64), 8,
         lambda: _wrapped(nn.MultiheadAttention(64, 4, batch_first=True), _self_attention)),
        ("attention", "64x64x128 8 heads", [numdl.MultiHeadAttention(8)], (64, 128), 64,
         lambda: _wrapped(nn.MultiheadAttention(128, 8, batch_first=True), _self_attention)),
    ]


def _wrapped(module, forward):
    """A torch module computing ``forward(module, x)``: adapts modules not called as ``f(x) -> y``."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = module

        def forward(self, x):
            return forward(self.inner, x)

    return Wrapped()


def _outputs(module, x):
    return module(x)[0]  # nn.LSTM: (output, (h_n, c_n))


def _self_attention(module, x):
    return module(x, x, x, need_weights=False)[0]


def kernel_cases(repeats, threads, quick):
    """Each kernel family at two sizes: forward, and forward + backward, numdl against PyTorch."""
    torch = _torch(threads)
    if torch is None:
        return []
    results = []
    for family, size, layers, shape, batch, make_torch in _kernel_cases(torch):
        results += _layer_case(torch, family, size, layers, shape, batch, make_torch, repeats, quick)
    # the optimizer step over every parameter at once
    for count in (10_000, 10_000_000):
        results.append(_adam_case(torch, count, repeats, quick))
    # softmax + cross-entropy, fused in numdl's loss
    for rows, classes in ((64, 10), (4096, 1000)):
        results.append(_cross_entropy_case(torch, rows, classes, repeats, quick))
    return results


def _layer_case(torch, family, size, layers, shape, batch, make_torch, repeats, quick):
    """One layer, forward and forward + backward (input gradient included), numdl against PyTorch."""
    import numdl

    model = numdl.Sequential(layers, input_shape=shape, seed=0, input_grad=True)
    x = np.random.default_rng(0).standard_normal((batch,) + shape).astype(np.float32)
    out = model.forward(x, training=True)
    dout = np.ones(out.shape, np.float32)
    module = make_torch()
    tx = torch.from_numpy(x).requires_grad_(True)
    tdout = torch.from_numpy(dout)
    calls = 3 if quick else max(3, min(200, int(2e8 // max(1, x.size * 50))))

    def ours_forward():
        for _ in range(calls):
            model.forward(x, training=True)

    def ours_step():
        for _ in range(calls):
            model.forward(x, training=True)
            model.backward(dout)

    def theirs_forward():
        with torch.no_grad():
            for _ in range(calls):
                module(tx)

    def theirs_step():
        for _ in range(calls):
            module(tx).backward(tdout)

    results = []
    for mode, ours, theirs in (("forward", ours_forward, theirs_forward),
                               ("forward+backward", ours_step, theirs_step)):
        mine, others = _alternate(ours, theirs, repeats)
        results.append(_result(f"{family} {size} {mode}", calls, mine, others, unit="calls/s"))
    return results


def _adam_case(torch, count, repeats, quick):
    import numdl

    model = numdl.Sequential([numdl.Linear(count // 100, bias=False)], input_shape=(100,), seed=0)
    optimizer = numdl.Adam(lr=1e-3)
    params = model.parameters()
    params[0].grad[...] = 0.01
    tensor = torch.nn.Parameter(torch.from_numpy(params[0].value.copy()))
    tensor.grad = torch.full_like(tensor, 0.01)
    torch_optimizer = torch.optim.Adam([tensor], lr=1e-3)
    calls = 3 if quick else (200 if count < 1e6 else 10)

    def ours():
        for _ in range(calls):
            optimizer.step(params)

    def theirs():
        for _ in range(calls):
            torch_optimizer.step()

    mine, others = _alternate(ours, theirs, repeats)
    return _result(f"adam step {count:,} params", calls, mine, others, unit="calls/s")


def _cross_entropy_case(torch, rows, classes, repeats, quick):
    import numdl

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((rows, classes)).astype(np.float32)
    labels = rng.integers(0, classes, rows)
    loss = numdl.CrossEntropy()
    tlogits = torch.from_numpy(logits).requires_grad_(True)
    tlabels = torch.from_numpy(labels)
    calls = 3 if quick else (500 if rows < 1000 else 20)

    def ours():
        for _ in range(calls):
            loss.forward(logits, labels)
            loss.backward()

    def theirs():
        for _ in range(calls):
            torch.nn.functional.cross_entropy(tlogits, tlabels).backward()

    mine, others = _alternate(ours, theirs, repeats)
    return _result(f"softmax+cross-entropy {rows}x{classes} forward+backward", calls, mine, others,
                   unit="calls/s")


# ------------------------------------------------------------------------- start-up, memory

# VmHWM, not getrusage: Linux carries ru_maxrss over exec, so a child would report its parent's peak.
_PEAK_RSS = """
for line in open('/proc/self/status'):
    if line.startswith('VmHWM:'):
        print('PEAK_RSS_KIB', line.split()[1])
"""

_NUMDL_TRAIN = """
import sys
from numdl.cli import cli
try:
    cli(sys.argv[1:])
except SystemExit as done:
    assert done.code in (0, None), done.code
""" + _PEAK_RSS

# The PyTorch side of the memory comparison: the embedded default job (Fashion-MNIST read from the
# same IDX files, standardised with the training-set statistics, MLP 784-128-64-10, Adam 1e-3,
# batch 64, shuffled, then the test set evaluated), without importing numdl.
_TORCH_TRAIN = """
import gzip, sys
import numpy as np
import torch
torch.set_num_threads(int(sys.argv[6]))
def read(path, offset):
    with (gzip.open(path) if path.endswith(".gz") else open(path, "rb")) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)
epochs = int(sys.argv[5])
x = read(sys.argv[1], 16).reshape(-1, 784)
y = torch.from_numpy(read(sys.argv[2], 8).astype(np.int64))
xt = read(sys.argv[3], 16).reshape(-1, 784)
yt = torch.from_numpy(read(sys.argv[4], 8).astype(np.int64))
mean, std = float(x.mean()), float(x.std())
x = torch.from_numpy((x.astype(np.float32) - mean) / std)
xt = torch.from_numpy((xt.astype(np.float32) - mean) / std)
net = torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64), torch.nn.ReLU(),
                          torch.nn.Linear(64, 10))
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
generator = torch.Generator().manual_seed(0)
for epoch in range(epochs):
    order = torch.randperm(len(x), generator=generator)
    for b in range(0, len(x), 64):
        index = order[b:b + 64]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x[index]), y[index]).backward()
        opt.step()
with torch.no_grad():
    accuracy = (net(xt).argmax(1) == yt).float().mean().item()
print("accuracy", accuracy)
""" + _PEAK_RSS


def _run_python(code, *args, env=None):
    result = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                            check=False)
    if result.returncode != 0:
        raise RuntimeError(f"benchmark subprocess failed: {result.stderr.strip().splitlines()[-1:]}")
    peak = [line for line in result.stdout.splitlines() if line.startswith("PEAK_RSS_KIB")]
    return result.stdout, int(peak[-1].split()[1]) / 1024


def startup_cases(threads, quick):
    """numdl train on the embedded default in fresh processes (the first warms the kernel cache):
    seconds to the first training step; and peak RSS of numdl train against PyTorch's same job."""
    from numdl.data.fashion_mnist import _find_in, candidate_dirs

    found = next((f for f in map(_find_in, candidate_dirs()) if f), None)
    epochs = 1
    env = dict(os.environ)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        firsts, peaks = [], []
        for run in range(2 if quick else 3):
            out = os.path.join(tmp, f"run{run}")
            _, peak = _run_python(_NUMDL_TRAIN, "--threads", threads, "train", "--quiet", "--out", out,
                                  "--set", f"train.epochs={epochs}", env=env)
            summary = json.loads(Path(out, "summary.json").read_text())
            firsts.append(summary["first_step_seconds"])
            peaks.append(peak)
        # the first run may have compiled; the others load every kernel from the cache
        results.append({"case": "numdl train: first step, warm cache", "unit": "s", "numdl": min(firsts[1:]),
                        "first_run": firsts[0]})
        try:
            import torch  # noqa: F401
        except ImportError:
            found = None
        if found is None:
            results.append({"case": f"train default MLP peak RSS ({epochs} epoch)", "unit": "MiB",
                            "numdl": max(peaks)})
            return results
        paths = [str(found[key]) for key in ("train_images", "train_labels", "test_images", "test_labels")]
        _, torch_peak = _run_python(_TORCH_TRAIN, *paths, epochs, threads, env=env)
        results.append({"case": f"train default MLP peak RSS ({epochs} epoch)", "unit": "MiB", "numdl": max(peaks),
                        "torch": torch_peak, "ratio": max(peaks) / torch_peak})
    return results


# ------------------------------------------------------------------------------------ plans


def make_table(rows, seed=0):
    """The tabular suite's table: 20 numeric columns (2% missing), 5 categorical (12 values each), a
    binary target: a pyarrow Table."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    columns = {}
    for i in range(20):
        values = rng.standard_normal(rows)
        columns[f"n{i}"] = pa.array(values, mask=rng.random(rows) < 0.02)
    for i in range(5):
        columns[f"c{i}"] = pa.array(rng.choice([f"v{k}" for k in range(12)], rows))
    columns["target"] = pa.array(rng.integers(0, 2, rows))
    return pa.table(columns)


def table_read_cases(quick):
    """Seconds to read the 1,000,000-row table and fit and apply its preprocessing, from CSV and from
    Parquet (numdl alone: PyTorch has no table reader)."""
    try:
        import pyarrow.csv as pacsv
        import pyarrow.parquet as pq
    except ImportError:
        return []
    from numdl.data.table import TablePreprocessor, read_table

    rows = 200_000 if quick else 1_000_000
    table = make_table(rows)
    features = [name for name in table.column_names if name != "target"]
    categorical = [name for name in features if name.startswith("c")]
    results = []
    with tempfile.TemporaryDirectory() as folder:
        paths = {"CSV": Path(folder, "table.csv"), "Parquet": Path(folder, "table.parquet")}
        pacsv.write_csv(table, paths["CSV"])
        pq.write_table(table, paths["Parquet"])
        for kind, path in paths.items():
            def prepare():
                read = read_table(path)
                TablePreprocessor(features, categorical).fit(read).transform(read)

            seconds = min(_timed(prepare) for _ in range(1 if quick else 3))
            results.append({"case": f"read + preprocess {rows:,} rows ({kind})", "unit": "s", "numdl": seconds})
    return results


def cases(suites, quick):
    """The model cases: (kind, mode, batch size, samples)."""
    plan = {
        "mlp": [("mlp", "train", 64, 6000 if quick else 30000), ("mlp", "train", 256, 6000 if quick else 30000),
                ("mlp", "predict", 1000, 10000), ("mlp", "predict", 64, 10000)],
        "cnn": [("cnn", "train", 128, 512 if quick else 2560)],
        "lstm": [("lstm", "train", 128, 1024 if quick else 5120)],
        "transformer": [("transformer", "train", 128, 1024 if quick else 5120)],
        "tabular": [("tabular", "train", 256, 25600 if quick else 102400)],
        "unet": [("unet", "train", 32, 64 if quick else 320)],
    }
    return [case for suite in suites for case in plan.get(suite, [])]


# ------------------------------------------------------------------------------ contention
#: Each busy process spins at most this long (the suite stops them sooner; a killed suite's end here).
BUSY_SECONDS_LIMIT = 900
_BUSY = "import time\nend = time.monotonic() + {limit}\nwhile time.monotonic() < end:\n    pass\n"


class BusyProcesses:
    """``count`` processes that keep one core each busy while the block runs (bounded by
    BUSY_SECONDS_LIMIT, stopped on leaving it): another user's job on a shared machine."""

    def __init__(self, count):
        self.count, self.processes = count, []

    def __enter__(self):
        import subprocess
        import sys

        code = _BUSY.format(limit=BUSY_SECONDS_LIMIT)
        self.processes = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(self.count)]
        time.sleep(0.5)  # running before the first timed step
        return self

    def __exit__(self, *exc):
        for process in self.processes:
            process.kill()
            process.wait()


CONTENTION_SAMPLES = {False: 30000, True: 6000}  # samples per epoch: full run, --quick


def contention_cases(repeats, threads, quick, busy_counts=(1, 2)):
    """Training with one and with two busy processes on the machine: numdl's default (``--threads
    auto``; its repetitions are the epochs of one run, the choice carried from one to the next)
    against ``--threads 1`` under the same load, and against PyTorch and JAX at every core under the
    same load."""
    from numdl import bench_jax
    from numdl.backend import get_ops
    from numdl.backend.cpu import limit_threads

    samples = CONTENTION_SAMPLES[bool(quick)]
    results = []
    try:
        for busy in busy_counts:
            with BusyProcesses(busy):
                for batch_size in (64,):
                    x, y = _data(samples, (28, 28))
                    ours = _numdl_model("mlp")
                    ours.warmup(batch_size)
                    batches = [(x[b:b + batch_size], y[b:b + batch_size]) for b in range(0, samples, batch_size)]

                    chooser = []  # the auto run's ThreadChooser, once made

                    def epoch(setting):
                        def run():
                            if setting == "auto" and chooser:
                                get_ops("cpu").resume_thread_chooser(chooser[0])
                            else:
                                limit_threads(setting)
                                if setting == "auto":
                                    chooser.append(get_ops("cpu").thread_chooser)
                            for xb, yb in batches:
                                ours.train_step(xb, yb)
                        return run

                    run_theirs = _torch_run(_torch(threads), "mlp", "train", batches, ours)
                    run_jax = bench_jax.epoch("mlp", "train", batches, ours, threads)
                    auto, one, theirs, jax = _alternate(epoch("auto"), epoch(1), repeats, run_theirs, run_jax)
                    result = _result(f"mlp train b{batch_size}, {busy} busy", samples, auto, theirs)
                    for peer, seconds in (("threads_1", one), ("jax", jax)):
                        if seconds:
                            result[peer] = samples / seconds
                            result[f"ratio_{peer}"] = result["numdl"] / result[peer]
                    results.append(result)
    finally:
        limit_threads(threads)  # the other suites' fixed count
    return results


# OpenBLAS core types without AVX-512 kernels (OPENBLAS_CORETYPE names, lower case).
PRE_AVX512_CORES = {"haswell", "zen", "sandybridge", "nehalem", "core2", "penryn", "dunnington", "prescott", "atom",
                    "barcelona", "bobcat", "bulldozer", "piledriver", "steamroller", "excavator", "opteron"}


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def blas_report():
    """(the BLAS numdl's products run in, as threadpoolctl names it, or None; a warning when the
    environment forces OpenBLAS onto older kernels or cache sizes than this CPU has, or None)."""
    import scipy.linalg.cython_blas  # noqa: F401  (the BLAS numba's products call, loaded)
    from threadpoolctl import ThreadpoolController

    infos = [c.info() for c in ThreadpoolController().select(user_api="blas").lib_controllers]
    # SciPy's own copy (a folder named scipy*), not NumPy's libscipy_openblas64_, which is another build
    scipys = [i for i in infos if any(part.startswith("scipy") for part in Path(i.get("filepath", "")).parent.parts)]
    info = (scipys or infos or [None])[0]
    kernel = None if info is None else " ".join(
        str(info.get(key)) for key in ("internal_api", "version", "architecture") if info.get(key))
    forced = [f"{name}={os.environ[name]}" for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if os.environ.get(name)]
    older = os.environ.get("OPENBLAS_CORETYPE", "").lower() in PRE_AVX512_CORES and "avx512f" in _cpu_flags()
    warning = None
    if forced:
        what = "older kernels than this AVX-512 CPU runs" if older else "its kernel or cache choice"
        warning = (f"{' '.join(forced)} overrides OpenBLAS's {what}: figures differ from a user's; run "
                   f"`env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE numdl bench ...`")
    return kernel, warning


def peak_memory_mib():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(suites=DEFAULT_SUITES, quick=False, repeats=None, threads=None):
    threads = threads or os.cpu_count()
    repeats = repeats or (2 if quick else 5)
    # PyTorch loads first: it ships its own libgomp under the soname numba's OpenMP threading layer
    # asks for, and whichever loads first serves both. With the system's loaded first (numba's pool
    # started by numdl's recurrent kernels before the import), PyTorch's MLP step ran 4x slower.
    torch_found = _torch(threads) is not None
    results = [model_case(*case, repeats=repeats, threads=threads) for case in cases(suites, quick)]
    if "latency" in suites:
        results += latency_cases(repeats, threads, quick)
    if "kernels" in suites:
        results += kernel_cases(repeats, threads, quick)
    if "startup" in suites:
        results += startup_cases(threads, quick)
    if "ceiling" in suites:
        results += ceiling_cases(repeats, threads, quick)
    if "tabular" in suites:
        results += table_read_cases(quick)
    if "contention" in suites:
        results += contention_cases(repeats, threads, quick)
    kernel, warning = blas_report()
    return {"threads": threads, "repeats": repeats, "results": results, "peak_rss_mib": peak_memory_mib(),
            "torch": torch_found, "blas": kernel, "blas_warning": warning}


def compare(report, baseline, tolerance):
    """[(case, now, before)] of throughput cases whose numdl figure fell below (1 - tolerance) x
    baseline (time and memory cases, where lower is better, are left out)."""
    before = {r["case"]: r["numdl"] for r in baseline["results"]}
    return [(r["case"], r["numdl"], before[r["case"]]) for r in report["results"]
            if r["case"] in before and r.get("unit", "samples/s").endswith("/s")
            and r["numdl"] < (1 - tolerance) * before[r["case"]]]


# extra columns, when measured: (key, title, ratio title)
PEERS = (("jax", "jax", "vs jax"), ("onnxruntime", "onnxrt", "vs ort"), ("threads_1", "threads 1", "vs t1"))


def format_table(report):
    width = max([len(r["case"]) for r in report["results"]] + [4])
    peers = [peer for peer in PEERS if any(peer[0] in r for r in report["results"])]
    extra = "".join(f" {title:>12} {versus:>7}" for _, title, versus in peers)
    lines = [f"{'case':<{width}} {'unit':>9} {'numdl':>12} {'torch':>12} {'ratio':>7} {'compile s':>10}{extra}"]
    for r in report["results"]:
        number = {"s": lambda v: f"{v:>12,.2f}", "us": lambda v: f"{v:>12,.1f}"}.get(r.get("unit"),
                                                                                     lambda v: f"{v:>12,.0f}")
        theirs = number(r["torch"]) if "torch" in r else f"{'-':>12}"
        ratio = f"{r['ratio']:>6.2f}x" if "ratio" in r else f"{'-':>7}"
        compiled = f"{r['compile_seconds']:>10.2f}" if "compile_seconds" in r else f"{'':>10}"
        columns = "".join(f" {number(r[key])} {r['ratio_' + key]:>6.2f}x" if key in r else f" {'-':>12} {'-':>7}"
                          for key, _, _ in peers)
        lines.append(f"{r['case']:<{width}} {r.get('unit', 'samples/s'):>9} {number(r['numdl'])} {theirs} {ratio}"
                     f" {compiled}{columns}")
    lines.append(f"threads {report['threads']}, median of {report['repeats']} alternating repetitions, "
                 f"peak RSS of this process {report['peak_rss_mib']:.0f} MiB")
    if report.get("blas"):
        lines.append(f"BLAS: {report['blas']}")
    if report.get("blas_warning"):
        lines.append(f"warning: {report['blas_warning']}")
    if not report.get("torch", True):
        lines.append("PyTorch is not installed, so the torch and ratio columns are empty: "
                     "pip install 'numdl[bench]' for the comparison")
    return "\n".join(lines)


def save(report, path):
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
