"""TensorBoard event files for a run (``train.tensorboard = true`` or ``numdl train --tensorboard``),
written through tensorboardX (the optional extra ``numdl[tensorboard]``) into ``RUN/tensorboard``:

- ``epoch/<metric>``: every numeric value of metrics.jsonl (train, validation and test losses and
  metrics, the learning rate, the epoch's wall time and speed), at the epoch's number;
- ``step/train_loss`` and ``step/lr`` every ``train.tensorboard_every`` steps, at the optimizer's
  step count (which a resumed run continues);
- ``weights/<parameter>`` and ``gradients/<parameter>`` histograms at the end of every epoch (the
  gradients of its last step);
- image grids through ``add_image_grid`` (the generative examples' samples).

``tensorboard --logdir runs/`` shows them.
"""

import numpy as np

from numdl.errors import ConfigError


def summary_writer_class():
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise ConfigError("train.tensorboard needs tensorboardX: pip install 'numdl[tensorboard]'") from None
    return SummaryWriter


class TensorBoardLogger:
    """fit callback writing a run's event files into ``folder``."""

    def __init__(self, folder, every_steps=50):
        self.writer = summary_writer_class()(logdir=str(folder))
        self.every_steps = every_steps
        self.model = None

    def bind(self, model, run_folder=None):
        self.model = model

    def on_batch_end(self, batch, logs):
        optimizer = getattr(self.model, "optimizer", None)
        if not self.every_steps or optimizer is None or optimizer.steps % self.every_steps:
            return
        self.writer.add_scalar("step/train_loss", float(logs["loss"]), optimizer.steps)
        self.writer.add_scalar("step/lr", float(optimizer.lr), optimizer.steps)

    def on_epoch_end(self, epoch, logs):
        for key, value in logs.items():
            if key != "epoch" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"epoch/{key}", value, epoch)
        if self.model is not None:
            to_numpy = self.model.ops.to_numpy
            for name, parameter in self.model.named_parameters().items():
                self.writer.add_histogram(f"weights/{name}", to_numpy(parameter.value).ravel(), epoch)
                gradient = to_numpy(parameter.grad).ravel()
                if np.isfinite(gradient).all():
                    self.writer.add_histogram(f"gradients/{name}", gradient, epoch)
        self.writer.flush()

    def add_image_grid(self, tag, grid, step):
        """A (H, W) grey or (H, W, 3) colour uint8 image (numdl.images.image_grid's) at ``step``."""
        grid = np.asarray(grid)
        self.writer.add_image(tag, grid, step, dataformats="HW" if grid.ndim == 2 else "HWC")
        self.writer.flush()

    def close(self):
        self.writer.close()
