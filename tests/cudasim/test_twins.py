"""CUDA twins under Numba's simulator: each against its CPU kernel on the same inputs, and a whole
training step of a small model on device='cuda' against the same step on the CPU.

Run by tests/test_cuda_simulator.py in a separate process with NUMBA_ENABLE_CUDASIM=1.
"""

import importlib
import os

import numpy as np
import pytest

from kernel_cases import CPU_PATH_ONLY, DTYPES, TOLERANCE, all_cases, check_subnormal_step, subnormal_step_cases
from numdl.testing import check_kernel_twin

pytestmark = [
    pytest.mark.skipif(os.environ.get("NUMBA_ENABLE_CUDASIM") != "1", reason="needs the CUDA simulator"),
    # The simulator runs the dropout hash on NumPy uint64 scalars, which warn on the intended wrap-around.
    pytest.mark.filterwarnings("ignore:overflow encountered in scalar multiply:RuntimeWarning"),
    # ... and meets the NaN that the non-finite cases make on purpose (inf - inf) in NumPy scalars too.
    pytest.mark.filterwarnings("ignore:invalid value encountered in scalar:RuntimeWarning"),
]


TWIN_CASES = [case for case in all_cases() if case[0] not in CPU_PATH_ONLY]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case_id, family, op, make", TWIN_CASES, ids=[c[0] for c in TWIN_CASES])
def test_cuda_twin_matches_cpu_kernel(case_id, family, op, make, dtype, monkeypatch):
    from numdl.kernels import tuning

    # A small grid makes every thread loop more than once: the grid-stride path is exercised.
    monkeypatch.setattr(tuning, "CUDA_THREADS_PER_BLOCK", 4)
    monkeypatch.setattr(tuning, "CUDA_MAX_BLOCKS", 2)
    module = importlib.import_module(f"numdl.kernels.{family}")
    args, work, expected = make(dtype, np.random.default_rng(11))
    check_kernel_twin(getattr(module, f"{op}_cpu"), getattr(module, f"{op}_cuda"), args, work,
                      compare=set(expected), **TOLERANCE[dtype])


def _model(device):
    import numdl

    layers = [numdl.Flatten(), numdl.Linear(6), numdl.Tanh(), numdl.Dropout(0.2, seed=3), numdl.Linear(3)]
    model = numdl.Sequential(layers, input_shape=(2, 2), dtype="float64", device=device, seed=0)
    return model.compile(numdl.CrossEntropy(label_smoothing=0.1), numdl.Adam(lr=0.01))


def _assert_steps_match(cpu, gpu, x, y, rtol):
    """Two training steps on each device give the same losses, parameters and predictions."""
    for _ in range(2):
        loss_cpu, _ = cpu.train_step(x, y)
        loss_gpu, _ = gpu.train_step(gpu.ops.asarray(x), y)
        assert loss_gpu == pytest.approx(loss_cpu, rel=1e-10)
    for (name, p_cpu), p_gpu in zip(cpu.named_parameters().items(), gpu.parameters()):
        np.testing.assert_allclose(gpu.ops.to_numpy(p_gpu.value), p_cpu.value, rtol=rtol, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(gpu.predict(x), cpu.predict(x), rtol=rtol)


def test_training_steps_on_cuda_match_cpu(monkeypatch):
    from numdl.kernels import tuning

    monkeypatch.setattr(tuning, "CUDA_THREADS_PER_BLOCK", 8)
    monkeypatch.setattr(tuning, "CUDA_MAX_BLOCKS", 2)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((5, 2, 2)), rng.integers(0, 3, 5)
    _assert_steps_match(_model("cpu"), _model("cuda"), x, y, rtol=1e-10)

def _cnn(device):
    import numdl

    layers = [numdl.Reshape([1, 6, 6]), numdl.Conv2d(2, 3, padding=1, activation="relu"), numdl.BatchNorm2d(),
              numdl.Conv2d(2, 4, padding="same", padding_mode="reflect"),  # a padding pass before the kernels
              numdl.BatchNorm2d(momentum=None, affine=False),
              numdl.Residual([numdl.Conv2d(3, 3, stride=2, padding=1), numdl.BatchNorm2d()], activation="relu"),
              numdl.MaxPool2d(2, padding=1), numdl.AvgPool2d(2, stride=1), numdl.GlobalAvgPool2d(),
              numdl.LayerNorm(), numdl.Linear(3)]
    model = numdl.Sequential(layers, input_shape=(6, 6), dtype="float64", device=device, seed=0)
    return model.compile(numdl.CrossEntropy(), numdl.SGD(lr=0.1, momentum=0.9))


def test_cnn_training_steps_on_cuda_match_cpu(monkeypatch):
    from numdl.kernels import tuning

    monkeypatch.setattr(tuning, "CUDA_THREADS_PER_BLOCK", 16)
    monkeypatch.setattr(tuning, "CUDA_MAX_BLOCKS", 4)
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((3, 6, 6)), rng.integers(0, 3, 3)
    _assert_steps_match(_cnn("cpu"), _cnn("cuda"), x, y, rtol=1e-9)

def _sequence_model(device):
    import numdl

    layers = [numdl.Embedding(5, 4), numdl.LSTM(4, bidirectional=True, return_sequences=True),
              numdl.PositionalEncoding("learned"),
              numdl.TransformerEncoderLayer(2, dim_feedforward=6, dropout=0.0, norm_first=True),
              numdl.LSTM(3, num_layers=2, bidirectional=True, return_sequences=True, proj_size=2),
              numdl.GRU(3, return_sequences=True), numdl.SequencePool("mean"), numdl.Linear(2)]
    model = numdl.Sequential(layers, input_shape=(4,), dtype="float64", device=device, seed=0)
    return model.compile(numdl.CrossEntropy(), numdl.RMSprop(lr=0.01, momentum=0.5))


def test_sequence_training_steps_on_cuda_match_cpu(monkeypatch):
    from numdl.kernels import tuning

    monkeypatch.setattr(tuning, "CUDA_THREADS_PER_BLOCK", 16)
    monkeypatch.setattr(tuning, "CUDA_MAX_BLOCKS", 4)
    monkeypatch.setattr(tuning, "CUDA_RECURRENT_THREADS", 4)
    rng = np.random.default_rng(2)
    ids, y = rng.integers(0, 5, (3, 4)), rng.integers(0, 2, 3)
    lengths = np.array([4, 2, 3])
    cpu, gpu = _sequence_model("cpu"), _sequence_model("cuda")
    for _ in range(2):
        for model, x in ((cpu, ids), (gpu, gpu.ops.asarray(ids))):
            logits = model.forward(x, training=True, lengths=lengths)
            model.loss.forward(logits, y)
            model.backward(model.loss.backward())
            model.optimizer.step(model.parameters())
    for (name, p_cpu), p_gpu in zip(cpu.named_parameters().items(), gpu.parameters()):
        np.testing.assert_allclose(gpu.ops.to_numpy(p_gpu.value), p_cpu.value, rtol=1e-9, atol=1e-12, err_msg=name)


def _graph(device):
    """A small U-Net-like graph: transposed convolution, upsampling, concat, a shared layer, a skip
    added back, and a per-pixel loss (pixel cross-entropy with a Dice term)."""
    import numdl

    x = numdl.Input((1, 4, 4))
    enc = numdl.Conv2d(2, 3, padding=1)(x)
    down = numdl.MaxPool2d(2)(enc)
    shared = numdl.Conv2d(2, 1)
    deep = shared(shared(down))
    up = numdl.Concat()([numdl.ConvTranspose2d(2, 2, stride=2)(deep), numdl.Upsample(scale_factor=2,
                                                                                     mode="bilinear")(down)])
    joined = numdl.Add()([numdl.Conv2d(2, 1)(up), enc])
    model = numdl.Model(x, numdl.Conv2d(3, 1)(numdl.Crop2d()([joined, x])), dtype="float64", device=device, seed=0)
    return model.compile(numdl.PixelCrossEntropy(dice_weight=0.5), numdl.Adam(lr=0.01))


def test_graph_training_steps_on_cuda_match_cpu(monkeypatch):
    from numdl.kernels import tuning

    monkeypatch.setattr(tuning, "CUDA_THREADS_PER_BLOCK", 16)
    monkeypatch.setattr(tuning, "CUDA_MAX_BLOCKS", 4)
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((2, 1, 4, 4)), rng.integers(0, 3, (2, 4, 4))
    _assert_steps_match(_graph("cpu"), _graph("cuda"), x, y, rtol=1e-9)


def _vae(device):
    """A tiny VAE: encoder to means and log-variances, GaussianSample (noise from the shared stream,
    its KL term added to the loss), decoder; reconstruction loss summed per sample."""
    import numdl

    layers = [numdl.Linear(6), numdl.Tanh(), numdl.Linear(4), numdl.GaussianSample(beta=0.5), numdl.Linear(5)]
    model = numdl.Sequential(layers, input_shape=(5,), dtype="float64", device=device, seed=0)
    return model.compile(numdl.MSE(reduction="batchmean"), numdl.Adam(lr=0.01))


def test_vae_training_steps_on_cuda_match_cpu(monkeypatch):
    from numdl.kernels import tuning

    monkeypatch.setattr(tuning, "CUDA_THREADS_PER_BLOCK", 8)
    monkeypatch.setattr(tuning, "CUDA_MAX_BLOCKS", 2)
    x = np.random.default_rng(3).standard_normal((4, 5))
    cpu, gpu = _vae("cpu"), _vae("cuda")
    _assert_steps_match(cpu, gpu, x, x, rtol=1e-9)
    assert cpu.last_loss_terms.keys() == gpu.last_loss_terms.keys() == {"mse", "kl"}
    assert gpu.last_loss_terms["kl"] == pytest.approx(cpu.last_loss_terms["kl"], rel=1e-10)


def _final_states_model(device):
    """A projected bidirectional LSTM whose final states (h_n, c_n, with their gradients) are what
    the classifier reads (numdl.FinalState)."""
    import numdl

    x = numdl.Input((4, 3))
    steps = numdl.LSTM(4, num_layers=2, bidirectional=True, return_sequences=True, proj_size=2)(x)
    both = numdl.Concat(axis=-1)([numdl.FinalState("h")(steps), numdl.FinalState("c")(steps)])
    model = numdl.Model(x, numdl.Linear(3)(numdl.Flatten()(both)), dtype="float64", device=device, seed=0)
    return model.compile(numdl.CrossEntropy(), numdl.Adam(lr=0.01))


def test_final_state_training_steps_on_cuda_match_cpu(monkeypatch):
    from numdl.kernels import tuning

    monkeypatch.setattr(tuning, "CUDA_THREADS_PER_BLOCK", 8)
    monkeypatch.setattr(tuning, "CUDA_MAX_BLOCKS", 2)
    monkeypatch.setattr(tuning, "CUDA_RECURRENT_THREADS", 4)
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((3, 4, 3)), rng.integers(0, 3, 3)
    _assert_steps_match(_final_states_model("cpu"), _final_states_model("cuda"), x, y, rtol=1e-9)


@pytest.mark.parametrize("eps", [1e-8, 0.0])
def test_cuda_optimizer_steps_flush_subnormal_state_as_the_cpu_does(eps):
    from numba import cuda

    from numdl.kernels import optim
    from numdl.kernels.common import launch

    for op, (args, flushed) in subnormal_step_cases(np.float32, eps).items():
        device = [cuda.to_device(a) if isinstance(a, np.ndarray) else a for a in args]
        launch(getattr(optim, f"{op}_cuda"), args[0].size, *device)
        results = [d.copy_to_host() if isinstance(a, np.ndarray) else a for a, d in zip(args, device)]
        check_subnormal_step(op, results, flushed, eps)
