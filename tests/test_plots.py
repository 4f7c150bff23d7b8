"""numdl plot / train --plot (matplotlib PNGs of a run) and train.tensorboard (event files read back
with TensorBoard's own reader)."""

import builtins
import json

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import write_fashion_like
from numdl import images, plots
from numdl.cli import cli

PIL = pytest.importorskip("PIL.Image")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def _png_size(path):
    with PIL.open(path) as image:
        image.verify()  # a complete, valid PNG
    with PIL.open(path) as image:
        return image.format, image.size


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """One small classifier run with --plot and --tensorboard (the CLI as a user calls it)."""
    root = tmp_path_factory.mktemp("plots")
    data = write_fashion_like(root / "data", n_train=300, n_test=100)
    out = root / "run"
    result = CliRunner().invoke(cli, ["train", "--plot", "--tensorboard", "--set", f"data.path='{data}'",
                                      "--set", "train.epochs=3", "--set", "train.batch_size=32",
                                      "--set", "train.tensorboard_every=4", "--set", "data.validation_split=0.1",
                                      "--set", "schedule.type='cosine'", "--set", "optimizer.lr=1e-5",  # some mistakes to show
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_train_plot_writes_three_valid_pngs_of_the_stated_sizes(run_folder):
    folder, output = run_folder
    epochs = plots.read_epochs(folder)
    metrics_shown = plots.metric_series(epochs)
    assert list(metrics_shown)[:2] == ["loss", "accuracy"]
    assert set(metrics_shown["loss"]) == {"train", "validation", "test"}
    rows = -(-len(metrics_shown) // 2)
    width, row_height = plots.FIGURE_PIXELS["metrics_row"]
    expected = {"metrics.png": (width, row_height * rows), "confusion.png": plots.FIGURE_PIXELS["confusion"],
                "misclassified.png": plots.FIGURE_PIXELS["misclassified"]}
    for name, size in expected.items():
        assert f"wrote {folder / 'plots' / name}" in output
        assert _png_size(folder / "plots" / name) == ("PNG", size)


def test_numdl_plot_redraws_a_run_folder(run_folder, tmp_path):
    folder, _ = run_folder
    (folder / "plots" / "metrics.png").unlink()
    result = CliRunner().invoke(cli, ["plot", str(folder)])
    assert result.exit_code == 0, result.output
    assert _png_size(folder / "plots" / "metrics.png")[0] == "PNG"


def test_the_metrics_panel_plots_every_set_and_the_learning_rate(tmp_path):
    epochs = [{"epoch": e, "train_loss": 1.0 / e, "test_loss": 2.0 / e, "train_accuracy": e / 4,
               "test_mean_iou": e / 8, "lr": 0.1 / e, "epoch_seconds": 3.0, "samples_per_second": 9.0,
               "train_f1_per_class": [0.1, 0.2], "test_recall": float("nan")} for e in (1, 2, 3)]
    series = plots.metric_series(epochs)
    assert series == {"loss": {"train": [(1, 1.0), (2, 0.5), (3, 1 / 3)], "test": [(1, 2.0), (2, 1.0), (3, 2 / 3)]},
                      "accuracy": {"train": [(1, 0.25), (2, 0.5), (3, 0.75)]},
                      "mean_iou": {"test": [(1, 0.125), (2, 0.25), (3, 0.375)]}}
    plots.plot_metrics(epochs, tmp_path / "m.png", "t")
    assert _png_size(tmp_path / "m.png") == ("PNG", (1200, 760))


def test_most_confident_mistakes_come_first():
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6], [0.05, 0.95], [0.7, 0.3]])
    labels = np.array([0, 0, 0, 1, 1])
    assert plots.most_confident_mistakes(probabilities, labels, 10).tolist() == [1, 4, 2]
    assert plots.most_confident_mistakes(probabilities, labels, 2).tolist() == [1, 4]


def test_tensorboard_reader_finds_scalars_histograms_and_images(run_folder):
    folder, _ = run_folder
    from numdl.tensorboard_log import TensorBoardLogger

    logger = TensorBoardLogger(folder / "tensorboard")
    grid = images.image_grid(np.random.default_rng(0).random((6, 1, 8, 8)), columns=3)
    assert grid.shape == (2 * 10 - 2, 3 * 10 - 2) and grid.dtype == np.uint8
    logger.add_image_grid("samples", grid, 3)
    logger.close()
    reader = event_accumulator.EventAccumulator(str(folder / "tensorboard"), size_guidance={
        event_accumulator.SCALARS: 0, event_accumulator.HISTOGRAMS: 0, event_accumulator.IMAGES: 0})
    reader.Reload()
    tags = reader.Tags()
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    for key in ("train_loss", "validation_accuracy", "test_loss", "lr", "epoch_seconds"):
        events = reader.Scalars(f"epoch/{key}")
        assert [e.step for e in events] == [1, 2, 3]
        assert np.allclose([e.value for e in events], [line[key] for line in lines], rtol=1e-6)
    steps = [e.step for e in reader.Scalars("step/train_loss")]
    assert steps and all(step % 4 == 0 for step in steps) and steps == sorted(steps)
    assert len(reader.Scalars("step/lr")) == len(steps)
    histograms = [tag for tag in tags["histograms"]]
    assert any(tag.startswith("weights/") for tag in histograms)
    assert any(tag.startswith("gradients/") for tag in histograms)
    weight = reader.Histograms(next(t for t in histograms if t.startswith("weights/")))
    assert [h.step for h in weight] == [1, 2, 3] and weight[0].histogram_value.num > 0
    (image,) = reader.Images("samples")
    assert (image.width, image.height) == (28, 18) and image.step == 3


def test_plot_errors_are_one_line(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["plot", str(tmp_path)])
    assert result.exit_code != 0 and "no metrics.jsonl" in result.output and "Traceback" not in result.output
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": 0.5}\n{"epoch": 2, "train_lo')
    result = runner.invoke(cli, ["plot", str(tmp_path)])
    assert result.exit_code != 0 and "line 2: not JSON" in result.output
    assert not (tmp_path / "plots" / "metrics.png").exists()


def test_a_missing_matplotlib_is_one_line_before_training(monkeypatch, tmp_path):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    result = CliRunner().invoke(cli, ["train", "--plot", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert "plots need matplotlib: pip install 'numdl[plot]'" in result.output
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # refused before any training


def test_image_grid_rejects_what_is_not_a_stack_of_images():
    with pytest.raises(ValueError, match="expected \\(N, H, W\\)"):
        images.image_grid(np.zeros((4, 3, 8, 8)))


def test_plot_of_a_run_without_classes_draws_the_metrics_and_says_what_it_skipped(tmp_path):
    lines = [{"epoch": e, "train_loss": 250.0 - e, "test_loss": 245.0 - e, "train_kl": 18.0, "test_kl": 18.5,
              "lr": 1e-3, "epoch_seconds": 30.0, "samples_per_second": 2000.0} for e in (1, 2)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = CliRunner().invoke(cli, ["plot", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert _png_size(tmp_path / "plots" / "metrics.png") == ("PNG", (1200, 380))  # loss and kl: one row
    assert "skipped confusion.png: summary.json holds no confusion matrix" in result.output
    assert "skipped misclassified.png: no checkpoint in the run folder" in result.output
