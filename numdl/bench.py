"""``numdl bench``: training and inference throughput of reference models, numdl against PyTorch in
the same process, on the same data, initial weights, batch size and thread count.

Each case reports numdl's and PyTorch's samples per second (medians of ``repeats`` timed runs after
a warm-up) and their ratio; kernel compile time is reported apart (the warm-up). Results can be
saved as JSON and compared with a saved baseline, failing on a slowdown beyond a tolerance.
"""

import json
import os
import statistics
import time

import numpy as np

SUITES = ("mlp", "cnn", "lstm")


def _data(samples, shape, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((samples,) + shape).astype(np.float32), rng.integers(0, classes, samples)


def _median_rate(run, samples, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return samples / statistics.median(times)


def _copy_weights_to_torch(torch, model, modules):
    """Copy numdl's weights into torch modules in order (same layouts by design)."""
    params = [p.value for p in model.parameters()]
    torch_params = [p for m in modules for p in m.parameters()]
    with torch.no_grad():
        for ours, theirs in zip(params, torch_params):
            theirs.copy_(torch.from_numpy(np.ascontiguousarray(ours)).reshape(theirs.shape))


def _numdl_model(kind):
    import numdl

    if kind == "mlp":
        layers = [numdl.Flatten(), numdl.Linear(128), numdl.ReLU(), numdl.Linear(64), numdl.ReLU(), numdl.Linear(10)]
    elif kind == "cnn":
        layers = [numdl.Reshape([1, 28, 28]), numdl.Conv2d(32, 3, padding=1), numdl.ReLU(), numdl.MaxPool2d(2),
                  numdl.Conv2d(64, 3, padding=1), numdl.ReLU(), numdl.MaxPool2d(2), numdl.Flatten(),
                  numdl.Linear(128), numdl.ReLU(), numdl.Linear(10)]
    else:
        layers = [numdl.LSTM(128), numdl.Linear(10)]
    model = numdl.Sequential(layers, input_shape=(28, 28), seed=0)
    return model.compile(numdl.CrossEntropy(), numdl.Adam(lr=1e-3))


def _torch_model(torch, kind):
    nn = torch.nn
    if kind == "mlp":
        net = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                            nn.Linear(64, 10))
    elif kind == "cnn":
        net = nn.Sequential(nn.Unflatten(1, (1, 28)), nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                            nn.Linear(3136, 128), nn.ReLU(), nn.Linear(128, 10))
    else:
        class LastStep(nn.Module):
            def __init__(self):
                super().__init__()
                self.lstm, self.head = nn.LSTM(28, 128, batch_first=True), nn.Linear(128, 10)

            def forward(self, x):
                return self.head(self.lstm(x)[0][:, -1])

        net = LastStep()
    return net


def run_case(kind, mode, batch_size, samples, repeats, threads):
    """One benchmark case; returns a dict of the measurements."""
    x, y = _data(samples, (28, 28))
    ours = _numdl_model(kind)
    compile_seconds = ours.warmup(batch_size)

    if mode == "train":
        def run_ours():
            for b in range(0, samples, batch_size):
                ours.train_step(x[b:b + batch_size], y[b:b + batch_size])
    else:
        def run_ours():
            ours.predict(x, batch_size=batch_size)

    result = {"case": f"{kind} {mode} b{batch_size}", "numdl": _median_rate(run_ours, samples, repeats),
              "compile_seconds": compile_seconds}
    try:
        import torch
    except ImportError:
        return result
    torch.set_num_threads(threads)
    net = _torch_model(torch, kind)
    _copy_weights_to_torch(torch, ours, [m for m in net.modules() if not list(m.children())])
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    if mode == "train":
        def run_theirs():
            for b in range(0, samples, batch_size):
                opt.zero_grad()
                loss_fn(net(tx[b:b + batch_size]), ty[b:b + batch_size]).backward()
                opt.step()
    else:
        def run_theirs():
            with torch.no_grad():
                for b in range(0, samples, batch_size):
                    net(tx[b:b + batch_size])

    run_theirs()  # warm-up
    result["torch"] = _median_rate(run_theirs, samples, repeats)
    result["ratio"] = result["numdl"] / result["torch"]
    return result


def cases(suites, quick):
    plan = {
        "mlp": [("mlp", "train", 64, 6000 if quick else 30000), ("mlp", "train", 256, 6000 if quick else 30000),
                ("mlp", "predict", 1000, 10000)],
        "cnn": [("cnn", "train", 128, 512 if quick else 2560)],
        "lstm": [("lstm", "train", 128, 1024 if quick else 5120)],
    }
    return [case for suite in suites for case in plan[suite]]


def peak_memory_mib():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(suites=SUITES, quick=False, repeats=None, threads=None):
    threads = threads or os.cpu_count()
    repeats = repeats or (2 if quick else 5)
    results = [run_case(*case, repeats=repeats, threads=threads) for case in cases(suites, quick)]
    return {"threads": threads, "repeats": repeats, "results": results, "peak_rss_mib": peak_memory_mib()}


def compare(report, baseline, tolerance):
    """[(case, now, before)] of cases whose numdl throughput fell below (1 - tolerance) x baseline."""
    before = {r["case"]: r["numdl"] for r in baseline["results"]}
    return [(r["case"], r["numdl"], before[r["case"]]) for r in report["results"]
            if r["case"] in before and r["numdl"] < (1 - tolerance) * before[r["case"]]]


def format_table(report):
    lines = [f"{'case':<22} {'numdl/s':>12} {'torch/s':>12} {'ratio':>7} {'compile s':>10}"]
    for r in report["results"]:
        torch_rate = f"{r['torch']:>12,.0f}" if "torch" in r else f"{'-':>12}"
        ratio = f"{r['ratio']:>6.2f}x" if "ratio" in r else f"{'-':>7}"
        lines.append(f"{r['case']:<22} {r['numdl']:>12,.0f} {torch_rate} {ratio} {r['compile_seconds']:>10.2f}")
    lines.append(f"threads {report['threads']}, median of {report['repeats']}, peak RSS {report['peak_rss_mib']:.0f} MiB")
    return "\n".join(lines)


def save(report, path):
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
