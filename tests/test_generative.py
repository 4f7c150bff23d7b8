"""FID and KID (numdl.generative) against direct computations, the feature network trained once and
reused, and numdl gen-eval as a user runs it (good and bad input)."""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import linalg

from helpers import write_fashion_like
from numdl import generative
from numdl.cli import cli


def _correlated(rng, n, d, scale):
    mixing = rng.standard_normal((d, d)) * scale
    return rng.standard_normal((n, d)) @ mixing + rng.standard_normal(d)


def _direct_fid(a, b):
    # the same quantity by another route: Tr((S_a S_b)^(1/2)) from the eigenvalues of
    # S_a^(1/2) S_b S_a^(1/2) (symmetric, so eigvalsh), which equal those of S_a S_b
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a.T), np.cov(b.T)
    half = linalg.sqrtm(s_a).real
    eigenvalues = np.linalg.eigvalsh(half @ s_b @ half)
    return ((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2 * np.sqrt(eigenvalues.clip(0)).sum()


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # the singular case's direct root
def test_frechet_distance_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    for d in (3, 16, 64):
        a, b = _correlated(rng, 500, d, 1.0), _correlated(rng, 400, d, 0.5)
        assert generative.frechet_distance(a, b) == pytest.approx(_direct_fid(a, b), rel=1e-6, abs=1e-8)
    a = _correlated(rng, 300, 8, 1.0)
    assert abs(generative.frechet_distance(a, a)) < 1e-6
    # features that never fire (a dead ReLU unit: a zero column) make the covariances singular
    a, b = np.maximum(_correlated(rng, 400, 12, 1.0), 0), np.maximum(_correlated(rng, 400, 12, 1.0), 0)
    a[:, 3] = b[:, 3] = 0
    assert generative.frechet_distance(a, b) == pytest.approx(_direct_fid(a, b), rel=1e-6, abs=1e-8)


def _direct_mmd(x, y):
    # unbiased MMD^2 with k(u, v) = (u.v / d + 1)^3, pair by pair
    d, m = x.shape[1], len(x)
    k = lambda u, v: (u @ v / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_is_the_unbiased_polynomial_mmd_averaged_over_subsets():
    rng = np.random.default_rng(1)
    a, b = _correlated(rng, 40, 5, 1.0), _correlated(rng, 40, 5, 1.0) + 0.5
    # one subset holding every sample (in another order: the estimate does not depend on it)
    mean, std = generative.kernel_inception_distance(a, b, subsets=1, subset_size=40)
    assert mean == pytest.approx(_direct_mmd(a, b), rel=1e-9) and std == 0.0
    # several subsets: their mean and standard deviation, reproducible by seed
    small = [_direct_mmd(a[rng_a], b[rng_b]) for rng_a, rng_b in _subsets(seed=3, n=40, size=10, count=5)]
    mean, std = generative.kernel_inception_distance(a, b, subsets=5, subset_size=10, seed=3)
    assert mean == pytest.approx(np.mean(small), rel=1e-9) and std == pytest.approx(np.std(small), rel=1e-9)


def _subsets(seed, n, size, count):
    rng = np.random.default_rng(seed)
    return [(rng.choice(n, size, replace=False), rng.choice(n, size, replace=False)) for _ in range(count)]


def test_kid_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((600, 8)), rng.standard_normal((600, 8))
    same, _ = generative.kernel_inception_distance(a, b, subsets=20, subset_size=200)
    shifted, _ = generative.kernel_inception_distance(a, b + 1.0, subsets=20, subset_size=200)
    assert abs(same) < 0.02 < shifted


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache folder whose feature network was trained (once) on Fashion-MNIST-like data."""
    root = tmp_path_factory.mktemp("generative")
    data = write_fashion_like(root / "data", n_train=600, n_test=300)
    lines = []
    checkpoint = generative.feature_checkpoint(root / "features", data_path=data, on_line=lines.append)
    assert checkpoint.is_file() and any("training the feature network once" in line for line in lines)
    assert not list(root.glob("features.partial-*"))  # trained beside, moved into place
    return root, data, checkpoint


def test_the_feature_network_is_reused_once_trained(cache):
    root, data, checkpoint = cache
    lines = []
    assert generative.feature_checkpoint(root / "features", data_path=data, on_line=lines.append) == checkpoint
    assert lines == []
    network = generative.FeatureNetwork(checkpoint)
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28))
    features = network.features(images, batch_size=3)
    assert features.shape == (7, 128) and features.dtype == np.float64 and (features >= 0).all()  # after ReLU
    assert np.allclose(network.features(images[:, None]), features, rtol=1e-5, atol=1e-5)  # batches differ
    assert network.classify(images).shape == (7,)


def test_gen_eval_tells_real_images_from_noise(cache, tmp_path, monkeypatch):
    root, data, checkpoint = cache
    from numdl.data import load_fashion_mnist

    x_train, _, _, _ = load_fashion_mnist(data)
    real, noise = tmp_path / "real.npy", tmp_path / "noise.npy"
    np.save(real, x_train[:300])
    np.save(noise, np.random.default_rng(0).random((300, 1, 28, 28)))  # in [0, 1]: needs --input-range
    runner = CliRunner()
    common = ["--features", str(checkpoint), "--data", str(data), "--subsets", "10", "--subset-size", "100"]
    result = runner.invoke(cli, ["gen-eval", str(real), *common, "--json", str(tmp_path / "real.json")])
    assert result.exit_code == 0, result.output
    assert "FID" in result.output and "KID" in result.output and "classes of the samples" in result.output
    real_figures = json.loads((tmp_path / "real.json").read_text())
    refused = runner.invoke(cli, ["gen-eval", str(noise), *common])
    assert refused.exit_code == 1 and "--input-range" in refused.output
    result = runner.invoke(cli, ["gen-eval", str(noise), *common, "--input-range", "0,1", "--json",
                                 str(tmp_path / "noise.json")])
    assert result.exit_code == 0, result.output
    noise_figures = json.loads((tmp_path / "noise.json").read_text())
    assert noise_figures["fid"] > 10 * real_figures["fid"] > 0
    assert noise_figures["kid"] > real_figures["kid"]
    assert real_figures["samples"] == 300 and real_figures["reference"] == 300
    assert sum(real_figures["class_shares"]) == pytest.approx(1.0) and real_figures["class_names"][1] == "Trouser"
    result = runner.invoke(cli, ["gen-eval", str(real), *common, "--reference-size", "50", "--json",
                                 str(tmp_path / "fifty.json")])
    assert result.exit_code == 0 and "against 50 test images" in result.output
    # the default feature network comes from the cache folder: trained there once, then reused
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    first = runner.invoke(cli, ["gen-eval", str(real), "--data", str(data), "--subsets", "2"])
    assert first.exit_code == 0 and "training the feature network once" in first.output
    second = runner.invoke(cli, ["gen-eval", str(real), "--data", str(data), "--subsets", "2"])
    assert second.exit_code == 0 and "training" not in second.output


@pytest.mark.parametrize("array, needle", [
    (np.zeros((5, 32, 32)), "expected images of shape (N, 28, 28) or (N, 1, 28, 28), got (5, 32, 32)"),
    (np.zeros((5, 3, 28, 28)), "got (5, 3, 28, 28)"),
    (np.zeros((1, 28, 28)), "1 image(s); the statistics need at least 2"),
    (np.full((4, 28, 28), np.nan), "holds NaN or infinite values"),
])
def test_gen_eval_bad_samples_are_one_line(cache, tmp_path, array, needle):
    _, data, checkpoint = cache
    path = tmp_path / "samples.npy"
    np.save(path, array)
    result = CliRunner().invoke(cli, ["gen-eval", str(path), "--features", str(checkpoint), "--data", str(data)])
    assert result.exit_code == 1 and needle in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output


def test_gen_eval_refuses_a_file_that_is_not_an_array(tmp_path):
    path = tmp_path / "samples.npy"
    path.write_bytes(b"not numpy")
    result = CliRunner().invoke(cli, ["gen-eval", str(path)])
    assert result.exit_code == 1 and "not a plain .npy array" in result.output


def test_gaussian_sample_draws_from_the_stated_gaussian_and_reports_its_kl():
    import numdl
    from numdl.backend import get_ops

    layer = numdl.GaussianSample(beta=0.5, seed=11)
    layer.build((4,), get_ops("cpu"), np.float64, np.random.default_rng(0))
    n = 20000
    x = np.empty((n, 4))
    x[:, :2] = [1.5, -2.0]                      # means
    x[:, 2:] = [np.log(4.0), np.log(0.25)]      # log-variances: standard deviations 2 and 0.5
    drawn = np.array(layer.forward(x, training=True))
    assert drawn.shape == (n, 2)
    assert np.allclose(drawn.mean(axis=0), [1.5, -2.0], atol=0.05)
    assert np.allclose(drawn.std(axis=0), [2.0, 0.5], rtol=0.03)
    assert abs(np.corrcoef(drawn.T)[0, 1]) < 0.03
    kl = 0.5 * ((4.0 + 1.5 ** 2 - 1 - np.log(4.0)) + (0.25 + 2.0 ** 2 - 1 - np.log(0.25)))
    assert layer.added_loss == pytest.approx(kl, rel=1e-12) and layer.added_loss_weight == 0.5
    assert layer.get_rng_state() == {"seed": 11, "offset": 2 * n * 2}  # two uniforms per draw
    again = np.array(layer.forward(x, training=True))
    assert not np.allclose(again, drawn)                    # the stream moves on
    layer.set_rng_state({"seed": 11, "offset": 0})
    assert np.array_equal(np.array(layer.forward(x, training=True)), drawn)   # and replays from its state
    assert np.array_equal(np.array(layer.forward(x, training=False)), x[:, :2])  # evaluation: the mean


def test_gaussian_sample_bad_settings_are_named():
    import numdl
    from numdl.backend import get_ops
    from numdl.errors import ConfigError, ShapeError

    with pytest.raises(ConfigError, match="beta must be a number >= 0"):
        numdl.GaussianSample(beta=-1)
    with pytest.raises(ShapeError, match="gaussian_sample: expects \\(batch, 2 L\\)"):
        numdl.GaussianSample().build((5,), get_ops("cpu"), np.float32, np.random.default_rng(0))


def test_the_loss_with_added_terms_is_their_weighted_sum_in_fit_and_evaluate():
    import numdl

    rng = np.random.default_rng(0)
    x = rng.random((64, 6)).astype(np.float32)
    model = numdl.Sequential([numdl.Linear(8), numdl.GaussianSample(beta=3.0), numdl.Linear(6)], seed=0)
    model.compile(numdl.BCEWithLogits(reduction="batchmean"), numdl.Adam(lr=1e-2))
    history = model.fit(x, x, epochs=2, batch_size=16, verbose=0, eval_data={"test": (x, x)})
    for epoch in history:
        for split in ("train", "test"):
            assert epoch[f"{split}_loss"] == pytest.approx(epoch[f"{split}_bce_with_logits"] + 3 * epoch[f"{split}_kl"])
    result = model.evaluate(x, x)
    assert result["terms"]["kl"] == pytest.approx(history[-1]["test_kl"])
    # batchmean: summed over each sample's elements, averaged over the samples (PyTorch's KLDivLoss reduction)
    out = model.predict(x)
    per_element = np.maximum(out, 0) - out * x + np.log1p(np.exp(-np.abs(out)))
    assert result["terms"]["bce_with_logits"] == pytest.approx(per_element.sum() / len(x), rel=1e-5)


def test_image_targets_refuse_augmentation_and_unknown_targets(tmp_path):
    from numdl import config as config_module
    from numdl import train
    from numdl.errors import ConfigError

    data = write_fashion_like(tmp_path / "data", n_train=50, n_test=20)
    resolved = config_module.resolve(None, [f"data.path='{data}'", "data.target='image'"])
    splits, _, _ = train.load_data(resolved)
    x, y = splits["train"]
    assert y.shape == (50, 1, 28, 28) and y.dtype == np.float32 and 0 <= y.min() and y.max() <= 1
    for override, needle in (("data.crop_padding=2", "turn them off for an autoencoder"),
                             ("data.target='pixels'", "fashion_mnist gives 'labels' \\(the default\\) or 'image'")):
        with pytest.raises(ConfigError, match=needle):
            train.load_data(config_module.resolve(None, [f"data.path='{data}'", "data.target='image'", override]))
