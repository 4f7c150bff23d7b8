"""Pictures and numbers of a trained autoencoder run (examples/conv_autoencoder.toml or
examples/conv_vae.toml), written into RUN/pictures:

- reconstructions.png: test images (odd rows) above their reconstructions (even rows);
- both grids also into RUN/tensorboard when the run was trained with --tensorboard;
- for a VAE (a model with a gaussian_sample layer): samples.png, images decoded from codes drawn
  from N(0, I), and samples.npy (5,000 of them as 0-255 pixels), judged by FID and KID against the
  test set on numdl's Fashion-MNIST features (numdl gen-eval: its feature network is trained once,
  about 3 minutes, then reused).

    numdl train examples/conv_vae.toml --out runs/conv_vae
    python examples/autoencoder_pictures.py runs/conv_vae
"""

import argparse
import json
from pathlib import Path

import numpy as np

import numdl
from numdl import generative, images, train
from numdl.data import load_fashion_mnist


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def as_pixels(outputs, logits):
    """Model outputs as (N, 28, 28) values in [0, 1] (a decoder ending in logits gets its sigmoid)."""
    values = sigmoid(outputs) if logits else outputs
    return np.clip(values.reshape(len(values), 28, 28), 0, 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="the run folder numdl train wrote")
    parser.add_argument("--samples", type=int, default=5000, help="VAE samples drawn for FID and KID")
    parser.add_argument("--no-fid", action="store_true", help="skip FID/KID (and the feature network)")
    parser.add_argument("--features", type=Path, help="the feature network's checkpoint (default: numdl's)")
    parser.add_argument("--data", type=Path, help="folder of the Fashion-MNIST files (default: numdl's search)")
    args = parser.parse_args(argv)

    model, meta = numdl.load_model(args.run / "checkpoints" / "best.safetensors", reset_optimizer=True, with_meta=True)
    config = meta["config"]
    if args.data is not None:
        config["data"]["path"] = str(args.data)
    data, _, _ = train.load_data(config)
    x_test, y_test = data["test"]
    logits = config["loss"]["type"] == "bce_with_logits"
    out = args.run / "pictures"
    out.mkdir(exist_ok=True)

    shown = 10
    originals = y_test[:shown].reshape(shown, 28, 28)
    rebuilt = as_pixels(model.predict(x_test[:shown]), logits)
    rows = np.stack([originals, rebuilt], axis=1).reshape(2 * shown, 28, 28)  # pairs: image, reconstruction
    grid = images.image_grid(np.concatenate([rows[0::2][:5], rows[1::2][:5], rows[0::2][5:], rows[1::2][5:]]),
                             columns=5)
    images.save_grey(out / "reconstructions.png", grid, scale=3)
    report = {"reconstructions": str(out / "reconstructions.png"),
              "test_reconstruction_mse": float(np.mean((as_pixels(model.predict(x_test), logits)
                                                        - y_test.reshape(-1, 28, 28)) ** 2))}

    if generative.latent_layer_index(model) is not None:
        latent = model.layers[generative.latent_layer_index(model)].output_shape[0]
        codes = np.random.default_rng(0).standard_normal((args.samples, latent))
        samples = as_pixels(generative.decode(model, codes), logits)
        images.save_grey(out / "samples.png", images.image_grid(samples[:100], columns=10), scale=3)
        pixels = np.round(samples * 255).astype(np.uint8)
        np.save(out / "samples.npy", pixels)
        report["samples"] = str(out / "samples.png")
        if not args.no_fid:
            checkpoint = args.features or generative.feature_checkpoint(data_path=args.data)
            network = generative.FeatureNetwork(checkpoint)
            reference = load_fashion_mnist(args.data)[2]
            figures = generative.evaluate_samples(network, pixels, reference)
            report.update({key: figures[key] for key in ("fid", "kid", "kid_std", "class_shares")})
    if (args.run / "tensorboard").is_dir():  # a run trained with --tensorboard: the grids go there too
        from numdl.tensorboard_log import TensorBoardLogger

        epoch = len((args.run / "metrics.jsonl").read_text().splitlines())
        logger = TensorBoardLogger(args.run / "tensorboard")
        logger.add_image_grid("reconstructions", grid, epoch)
        if "samples" in report:
            logger.add_image_grid("samples", images.image_grid(samples[:100], columns=10), epoch)
        logger.close()
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
