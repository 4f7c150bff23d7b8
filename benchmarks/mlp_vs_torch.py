"""Reference MLP (784-128-64-10, ReLU, cross-entropy, Adam lr 1e-3) training throughput, numdl
against PyTorch in the same process: same initial weights, same data order, same batch size, same
thread count. Reports medians of several one-epoch repetitions; the first numdl epoch is preceded by
a warm-up so compile time is reported apart.

    python benchmarks/mlp_vs_torch.py [--batch-size 64] [--repeats 3] [--threads 2]
"""

import argparse
import os
import statistics
import time

import numpy as np

import numdl
from numdl.data import Normalizer, load_fashion_mnist


def numdl_model(weights):
    model = numdl.Sequential([numdl.Flatten(), numdl.Linear(128), numdl.ReLU(), numdl.Linear(64), numdl.ReLU(),
                              numdl.Linear(10)], input_shape=(28, 28))
    for layer, (w, b) in zip([l for l in model.layers if l.name == "linear"], weights):
        layer.params["weight"].value[:] = w
        layer.params["bias"].value[:] = b
    return model.compile(numdl.CrossEntropy(), numdl.Adam(lr=1e-3))


def torch_model(torch, weights):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 128), torch.nn.ReLU(),
                                torch.nn.Linear(128, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    with torch.no_grad():
        for layer, (w, b) in zip([m for m in model if isinstance(m, torch.nn.Linear)], weights):
            layer.weight.copy_(torch.from_numpy(w))
            layer.bias.copy_(torch.from_numpy(b))
    return model, torch.optim.Adam(model.parameters(), lr=1e-3), torch.nn.CrossEntropyLoss()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--samples", type=int, default=60000)
    args = parser.parse_args(argv)

    import torch

    # numdl's matmuls run in SciPy's OpenBLAS, which uses every core unless OPENBLAS_NUM_THREADS
    # says otherwise; give PyTorch the same count.
    torch.set_num_threads(args.threads)
    x, y, _, _ = load_fashion_mnist()
    x = Normalizer().fit_transform(x)[: args.samples]
    y = y[: args.samples].astype(np.int64)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = np.ascontiguousarray(x[order]), y[order]
    init = numdl_model([])  # default-initialised weights, shared by both
    weights = [(l.params["weight"].value.copy(), l.params["bias"].value.copy())
               for l in init.layers if l.name == "linear"]
    n, bs = len(x), args.batch_size

    ours = numdl_model(weights)
    compile_seconds = ours.warmup(bs)
    ours_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for b in range(0, n, bs):
            ours.train_step(x[b:b + bs], y[b:b + bs])
        ours_times.append(time.perf_counter() - start)

    model, opt, loss_fn = torch_model(torch, weights)
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)
    torch_times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for b in range(0, n, bs):
            opt.zero_grad()
            loss = loss_fn(model(tx[b:b + bs]), ty[b:b + bs])
            loss.backward()
            opt.step()
        torch_times.append(time.perf_counter() - start)

    ours_rate, torch_rate = n / statistics.median(ours_times), n / statistics.median(torch_times)
    print(f"MLP 784-128-64-10 Adam, batch {bs}, {args.threads} threads, {n} samples/epoch, median of {args.repeats}")
    print(f"  numdl   {ours_rate:>10,.0f} samples/s   (kernels ready in {compile_seconds:.2f}s)")
    print(f"  PyTorch {torch_rate:>10,.0f} samples/s   (torch {torch.__version__})")
    print(f"  ratio   {ours_rate / torch_rate:>10.2f}x")
    return ours_rate, torch_rate


if __name__ == "__main__":
    main()
