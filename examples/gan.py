"""A tiny GAN: a generator learns to turn N(0, 1) noise into samples of N(4, 1.25^2).

    python examples/gan.py [--steps 3000]

Written with numdl's public pieces: the discriminator is built with ``input_grad=True`` so its
backward pass hands the generator the gradient with respect to the generated samples.
"""

import argparse

import numpy as np

import numdl


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    target_mean, target_std = 4.0, 1.25

    generator = numdl.Sequential([numdl.Linear(16), numdl.LeakyReLU(0.2), numdl.Linear(1)], input_shape=(4,), seed=1)
    discriminator = numdl.Sequential([numdl.Linear(32), numdl.LeakyReLU(0.2), numdl.Linear(1)], input_shape=(1,),
                                     seed=2, input_grad=True)
    bce = numdl.BCEWithLogits()
    g_opt, d_opt = numdl.Adam(lr=1e-3, betas=[0.5, 0.999]), numdl.Adam(lr=1e-3, betas=[0.5, 0.999])
    n = args.batch_size
    ones, zeros = np.ones((n, 1), np.float32), np.zeros((n, 1), np.float32)

    for _ in range(args.steps):
        noise = rng.standard_normal((n, 4)).astype(np.float32)
        fake = generator.forward(noise, training=True).copy()
        real = rng.normal(target_mean, target_std, (n, 1)).astype(np.float32)
        # Discriminator: real -> 1, fake -> 0 (two backward passes, one step on the summed gradients).
        bce.forward(discriminator.forward(real, training=True), ones)
        discriminator.backward(bce.backward())
        real_grads = [p.grad.copy() for p in discriminator.parameters()]
        bce.forward(discriminator.forward(fake, training=True), zeros)
        discriminator.backward(bce.backward())
        for p, g in zip(discriminator.parameters(), real_grads):
            p.grad += g
        d_opt.step(discriminator.parameters())
        # Generator: make the discriminator say 1 on fakes; its input gradient flows back.
        bce.forward(discriminator.forward(fake, training=True), ones)
        dfake = discriminator.backward(bce.backward())
        generator.forward(noise, training=True)
        generator.backward(dfake)
        g_opt.step(generator.parameters())

    samples = generator.predict(rng.standard_normal((5000, 4)).astype(np.float32))
    print(f"generated mean {samples.mean():.3f} (target {target_mean}), std {samples.std():.3f} (target {target_std})")
    return float(samples.mean()), float(samples.std())


if __name__ == "__main__":
    main()
