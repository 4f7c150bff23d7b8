"""A dense autoencoder on Fashion-MNIST, trained with a custom loop over numdl's public pieces.

    python examples/autoencoder.py [--steps 2000] [--data DIR]

Prints the reconstruction error (MSE on standardised pixels) of the test set before and after.
"""

import argparse

import numpy as np

import numdl
from numdl.data import Normalizer, batches, load_fashion_mnist


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--data", default=None, help="folder of the four IDX files (default: numdl's search)")
    args = parser.parse_args(argv)

    x_train, _, x_test, _ = load_fashion_mnist(args.data)
    norm = Normalizer("standardize").fit(x_train)
    x_train, x_test = norm.transform(x_train).reshape(len(x_train), -1), norm.transform(x_test).reshape(len(x_test), -1)

    model = numdl.Sequential([numdl.Linear(128), numdl.ReLU(), numdl.Linear(32), numdl.ReLU(),
                              numdl.Linear(128), numdl.ReLU(), numdl.Linear(x_train.shape[1])],
                             input_shape=x_train.shape[1:], seed=0)
    loss, optimizer = numdl.MSE(), numdl.Adam(lr=1e-3)

    def test_error():
        return loss.forward(model.predict(x_test), x_test)

    before = test_error()
    rng = np.random.default_rng(0)
    step = 0
    while step < args.steps:
        for xb, _ in batches(x_train, x_train, args.batch_size, shuffle=True, rng=rng):
            loss.forward(model.forward(xb, training=True), xb)
            model.backward(loss.backward())
            optimizer.step(model.parameters())
            step += 1
            if step == args.steps:
                break
    after = test_error()
    print(f"test reconstruction MSE: {before:.4f} before, {after:.4f} after {args.steps} steps")
    return before, after


if __name__ == "__main__":
    main()
