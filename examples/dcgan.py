"""A DCGAN on Fashion-MNIST (Radford et al., 2016, scaled to 28x28): a generator of transposed
convolutions and batch norm turns 64 N(0, 1) numbers into an image in [-1, 1]; a convolutional
discriminator tells real images from generated ones. Two models, two Adam optimizers (lr 2e-4,
betas 0.5 and 0.999, as the paper), and the discriminator's input gradient handed to the generator:
numdl's public API only.

    python examples/dcgan.py --out runs/dcgan [--epochs 10]

Every epoch writes RUN/samples-NNN.png (a 10x10 grid from the same fixed noise, so the grids show
training progress) and, with --tensorboard, the grid and both losses to RUN/tensorboard. At the end:
RUN/samples.npy (5,000 samples as 0-255 pixels) and RUN/report.json with their FID and KID against
the test set on numdl's Fashion-MNIST features (and those of the untrained generator's samples, the
baseline), and the share of the samples numdl's classifier assigns to each class. Measured here
(benchmarks/RESULTS.md): FID 58 after 10 epochs against 837 untrained, all ten classes at 8.5-12%,
2.6 minutes an epoch on 2 quiet cores.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

import numdl
from numdl import generative, images
from numdl.data import load_fashion_mnist

LATENT = 64


def generator(seed):
    layers = [numdl.Linear(128 * 7 * 7), numdl.BatchNorm1d(), numdl.ReLU(), numdl.Reshape([128, 7, 7]),
              numdl.ConvTranspose2d(64, 4, stride=2, padding=1), numdl.BatchNorm2d(), numdl.ReLU(),   # 14x14
              numdl.ConvTranspose2d(1, 4, stride=2, padding=1), numdl.Tanh()]                         # 28x28
    return numdl.Sequential(layers, input_shape=(LATENT,), seed=seed)


def discriminator(seed):
    layers = [numdl.Conv2d(64, 4, stride=2, padding=1), numdl.LeakyReLU(0.2),                     # 14x14
              numdl.Conv2d(128, 4, stride=2, padding=1), numdl.BatchNorm2d(), numdl.LeakyReLU(0.2),  # 7x7
              numdl.Flatten(), numdl.Linear(1)]
    # input_grad: backward returns the gradient with respect to the images, the generator's signal
    return numdl.Sequential(layers, input_shape=(1, 28, 28), seed=seed, input_grad=True)


def to_pixels(batch):
    """Generator output in [-1, 1] -> 0-255 pixels (N, 28, 28)."""
    return np.round((np.clip(batch.reshape(len(batch), 28, 28), -1, 1) + 1) * 127.5).astype(np.uint8)


def sample(gen, count, seed):
    noise = np.random.default_rng(seed).standard_normal((count, LATENT)).astype(np.float32)
    return to_pixels(gen.predict(noise, batch_size=500))


def train(gen, disc, x, epochs, batch_size, out, on_epoch=None, seed=0):
    """Alternating steps: the discriminator on a real and a generated batch, then the generator
    through the discriminator. Returns the per-epoch mean losses."""
    rng = np.random.default_rng(seed)
    bce = numdl.BCEWithLogits()
    d_opt = numdl.Adam(lr=2e-4, betas=[0.5, 0.999])
    g_opt = numdl.Adam(lr=2e-4, betas=[0.5, 0.999])
    ones, zeros = np.ones((batch_size, 1), np.float32), np.zeros((batch_size, 1), np.float32)
    fixed = np.random.default_rng(12345).standard_normal((100, LATENT)).astype(np.float32)
    history = []
    for epoch in range(1, epochs + 1):
        start, d_total, g_total, steps = time.perf_counter(), 0.0, 0.0, 0
        order = rng.permutation(len(x))
        for begin in range(0, len(x) - batch_size + 1, batch_size):
            real = x[order[begin:begin + batch_size]]
            noise = rng.standard_normal((batch_size, LATENT)).astype(np.float32)
            fake = gen.forward(noise, training=True)  # its cache stays for the generator's backward
            # Discriminator: real -> 1, generated -> 0 (two passes, one step on the summed gradients)
            d_loss = bce.forward(disc.forward(real, training=True), ones)
            disc.backward(bce.backward())
            real_grads = [p.grad.copy() for p in disc.parameters()]
            d_loss += bce.forward(disc.forward(fake.copy(), training=True), zeros)
            disc.backward(bce.backward())
            for p, g in zip(disc.parameters(), real_grads):
                p.grad += g
            d_opt.step(disc.parameters())
            # Generator: make the discriminator say 1 on its images (the non-saturating loss)
            g_loss = bce.forward(disc.forward(fake, training=True), ones)
            gen.backward(disc.backward(bce.backward()))
            g_opt.step(gen.parameters())
            d_total, g_total, steps = d_total + d_loss, g_total + g_loss, steps + 1
        grid = images.image_grid(to_pixels(gen.predict(fixed)), columns=10)
        if out is not None:
            images.save_grey(out / f"samples-{epoch:03d}.png", grid, scale=3)
        record = {"epoch": epoch, "d_loss": d_total / steps, "g_loss": g_total / steps,
                  "seconds": time.perf_counter() - start}
        history.append(record)
        print(f"epoch {epoch}/{epochs}  d_loss {record['d_loss']:.4f}  g_loss {record['g_loss']:.4f}  "
              f"{record['seconds']:.0f}s", flush=True)
        if on_epoch is not None:
            on_epoch(epoch, record, grid)
    return history


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/dcgan"))
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-size", type=int, default=60000, help="training images used (fewer: a quick run)")
    parser.add_argument("--samples", type=int, default=5000, help="samples judged by FID and KID at the end")
    parser.add_argument("--data", type=Path, help="folder of the Fashion-MNIST files (default: numdl's search)")
    parser.add_argument("--features", type=Path, help="the feature network's checkpoint (default: numdl's, "
                                                      "trained once into numdl's cache)")
    parser.add_argument("--tensorboard", action="store_true", help="also log to OUT/tensorboard")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    x_train, _, x_test, _ = load_fashion_mnist(args.data)
    x = (x_train[:args.train_size].astype(np.float32) / 127.5 - 1)[:, None]  # [-1, 1], the tanh's range
    gen, disc = generator(seed=1), discriminator(seed=2)
    untrained = sample(gen, args.samples, seed=7)

    logger = None
    if args.tensorboard:
        from numdl.tensorboard_log import TensorBoardLogger

        logger = TensorBoardLogger(args.out / "tensorboard")

    def log(epoch, record, grid):
        if logger is not None:
            logger.writer.add_scalar("dcgan/d_loss", record["d_loss"], epoch)
            logger.writer.add_scalar("dcgan/g_loss", record["g_loss"], epoch)
            logger.add_image_grid("dcgan/samples", grid, epoch)

    history = train(gen, disc, x, args.epochs, args.batch_size, args.out, log)
    if logger is not None:
        logger.close()
    samples = sample(gen, args.samples, seed=7)
    np.save(args.out / "samples.npy", samples)

    network = generative.FeatureNetwork(args.features or generative.feature_checkpoint(data_path=args.data))
    trained = generative.evaluate_samples(network, samples, x_test)
    baseline = generative.evaluate_samples(network, untrained, x_test)
    report = {"epochs": history, "fid": trained["fid"], "kid": trained["kid"], "kid_std": trained["kid_std"],
              "untrained_fid": baseline["fid"], "untrained_kid": baseline["kid"],
              "class_names": trained["class_names"], "class_shares": trained["class_shares"],
              "train_seconds": sum(e["seconds"] for e in history)}
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    shares = ", ".join(f"{name} {share:.2f}" for name, share in zip(report["class_names"], report["class_shares"]))
    print(f"FID {report['fid']:.2f} (untrained generator {report['untrained_fid']:.2f}); KID {report['kid']:.4f} "
          f"+- {report['kid_std']:.4f}\nclasses of {args.samples} samples: {shares}")
    return report


if __name__ == "__main__":
    main()
