"""Semantics follow PyTorch: losses, optimizer trajectories and layers compared with torch itself
(the float64 NumPy references in kernel_cases.py check the kernels; these check the formulas)."""

import numpy as np
import pytest

import numdl

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("kwargs", [{}, {"label_smoothing": 0.15}, {"weight": [0.5, 2.0, 1.0, 3.0]},
                                    {"weight": [0.5, 2.0, 1.0, 3.0], "label_smoothing": 0.3},
                                    {"reduction": "sum", "label_smoothing": 0.1}])
def test_cross_entropy_matches_torch(kwargs):
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((8, 4)) * 3, rng.integers(0, 4, 8)
    _assert_cross_entropy_matches_torch(numdl.CrossEntropy(**kwargs), kwargs, logits, labels)


def _assert_cross_entropy_matches_torch(ours, kwargs, logits, labels):
    """Loss value and logits gradient of ``ours`` against torch.nn.CrossEntropyLoss(**kwargs)."""
    value = ours.forward(logits, labels)
    grad = ours.backward()
    t_kwargs = dict(kwargs)
    if "weight" in t_kwargs:
        t_kwargs["weight"] = torch.tensor(t_kwargs["weight"], dtype=torch.float64)
    t_logits = torch.tensor(logits, requires_grad=True)
    t_loss = torch.nn.CrossEntropyLoss(**t_kwargs)(t_logits, torch.tensor(labels))
    t_loss.backward()
    assert value == pytest.approx(t_loss.item(), rel=1e-12)
    np.testing.assert_allclose(grad, t_logits.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_batchmean_is_the_sum_over_each_sample_averaged_over_samples():
    """PyTorch has reduction="batchmean" for KLDivLoss only; for the element-wise losses it is their
    "sum" divided by the batch size (a VAE's per-image reconstruction term)."""
    rng = np.random.default_rng(1)
    pred, target = rng.standard_normal((5, 3, 2)) * 4, rng.uniform(0, 1, (5, 3, 2))
    for ours_cls, torch_cls in ((numdl.MSE, torch.nn.MSELoss), (numdl.BCEWithLogits, torch.nn.BCEWithLogitsLoss)):
        ours = ours_cls(reduction="batchmean")
        value = ours.forward(pred, target)
        t_pred = torch.tensor(pred, requires_grad=True)
        t_loss = torch_cls(reduction="sum")(t_pred, torch.tensor(target)) / len(pred)
        t_loss.backward()
        assert value == pytest.approx(t_loss.item(), rel=1e-12)
        np.testing.assert_allclose(ours.backward(), t_pred.grad.numpy(), rtol=1e-10)


@pytest.mark.parametrize("ours_cls, torch_cls, kwargs", [
    (numdl.MSE, torch.nn.MSELoss, {}), (numdl.BCEWithLogits, torch.nn.BCEWithLogitsLoss, {}),
    (numdl.MAE, torch.nn.L1Loss, {}), (numdl.MAE, torch.nn.L1Loss, {"reduction": "sum"}),
    (numdl.Huber, torch.nn.HuberLoss, {}), (numdl.Huber, torch.nn.HuberLoss, {"delta": 2.5, "reduction": "sum"})])
def test_elementwise_losses_match_torch(ours_cls, torch_cls, kwargs):
    rng = np.random.default_rng(1)
    pred, target = rng.standard_normal((5, 3)) * 4, rng.uniform(0, 1, (5, 3))
    ours = ours_cls(**kwargs)
    value = ours.forward(pred, target)
    t_pred = torch.tensor(pred, requires_grad=True)
    t_loss = torch_cls(**kwargs)(t_pred, torch.tensor(target))
    t_loss.backward()
    assert value == pytest.approx(t_loss.item(), rel=1e-12)
    np.testing.assert_allclose(ours.backward(), t_pred.grad.numpy(), rtol=1e-10)


OPTIMIZERS = [
    (numdl.SGD, torch.optim.SGD, {"lr": 0.1}),
    (numdl.SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.01}),
    (numdl.SGD, torch.optim.SGD, {"lr": 0.1, "momentum": 0.9, "dampening": 0.3}),
    (numdl.SGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.1}),
    (numdl.Adam, torch.optim.Adam, {"lr": 0.01}),
    (numdl.Adam, torch.optim.Adam, {"lr": 0.01, "betas": [0.8, 0.99], "weight_decay": 0.1}),
    (numdl.AdamW, torch.optim.AdamW, {"lr": 0.01}),
    (numdl.AdamW, torch.optim.AdamW, {"lr": 0.02, "weight_decay": 0.5, "eps": 1e-6}),
    (numdl.RMSprop, torch.optim.RMSprop, {"lr": 0.01}),
    (numdl.RMSprop, torch.optim.RMSprop, {"lr": 0.01, "momentum": 0.9, "centered": True, "weight_decay": 0.01}),
    (numdl.Adam, torch.optim.Adam, {"lr": 0.01, "amsgrad": True, "weight_decay": 0.1}),
    (numdl.AdamW, torch.optim.AdamW, {"lr": 0.01, "amsgrad": True, "maximize": True}),
    (numdl.Adam, torch.optim.Adam, {"lr": 0.01, "maximize": True}),
    (numdl.Adagrad, torch.optim.Adagrad, {"lr": 0.1}),
    (numdl.Adagrad, torch.optim.Adagrad, {"lr": 0.1, "lr_decay": 0.05, "weight_decay": 0.1,
                                          "initial_accumulator_value": 0.3, "maximize": True}),
    (numdl.Adamax, torch.optim.Adamax, {"lr": 0.02}),
    (numdl.Adamax, torch.optim.Adamax, {"lr": 0.02, "betas": [0.8, 0.99], "weight_decay": 0.1, "maximize": True}),
    (numdl.NAdam, torch.optim.NAdam, {"lr": 0.02}),
    (numdl.NAdam, torch.optim.NAdam, {"lr": 0.02, "weight_decay": 0.1, "momentum_decay": 0.01}),
    (numdl.NAdam, torch.optim.NAdam, {"lr": 0.02, "weight_decay": 0.1, "decoupled_weight_decay": True}),
    (numdl.RAdam, torch.optim.RAdam, {"lr": 0.01}),  # 12 steps: past rho_t > 5, the rectified phase
    (numdl.RAdam, torch.optim.RAdam, {"lr": 0.01, "betas": [0.9, 0.99], "weight_decay": 0.1,
                                      "decoupled_weight_decay": True, "maximize": True}),
]


@pytest.mark.parametrize("ours_cls, torch_cls, kwargs", OPTIMIZERS,
                         ids=[f"{o.name}-{i}" for i, (o, _, _) in enumerate(OPTIMIZERS)])
def test_optimizer_trajectory_matches_torch(ours_cls, torch_cls, kwargs):
    rng = np.random.default_rng(2)
    start = rng.standard_normal(13)
    grads = [rng.standard_normal(13) for _ in range(12)]
    param = numdl.Parameter("p", start.copy(), np.zeros(13))
    ours = ours_cls(**kwargs)
    t_param = torch.nn.Parameter(torch.tensor(start.copy()))
    t_kwargs = {k: tuple(v) if k == "betas" else v for k, v in kwargs.items()}
    theirs = torch_cls([t_param], foreach=False, **t_kwargs)
    for g in grads:
        param.grad[:] = g
        ours.step([param])
        t_param.grad = torch.tensor(g)
        theirs.step()
    np.testing.assert_allclose(param.value, t_param.detach().numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("ours, theirs", [(numdl.GELU(), torch.nn.GELU()),
                                          (numdl.GELU(approximate="tanh"), torch.nn.GELU(approximate="tanh")),
                                          (numdl.Sigmoid(), torch.nn.Sigmoid()),
                                          (numdl.LeakyReLU(0.2), torch.nn.LeakyReLU(0.2)),
                                          (numdl.Softmax(), torch.nn.Softmax(dim=-1))])
def test_activation_layers_match_torch(ours, theirs):
    from numdl.backend import get_ops

    x = np.random.default_rng(3).standard_normal((4, 6)) * 3
    ours.build((6,), get_ops("cpu"), np.float64, np.random.default_rng(0))
    _assert_step_matches_torch(ours, theirs, x, np.random.default_rng(4), out_rtol=1e-12)


def _assert_step_matches_torch(ours, theirs, x, rng, out_rtol=1e-10, clear_grads=False):
    """One training-mode forward and backward of a built numdl layer against a torch module on the
    same float64 input: output, input gradient and every parameter's gradient (same names)."""
    out = ours.forward(x, training=True).copy()
    dout = rng.standard_normal(out.shape)
    dx = ours.backward(dout)
    t_x = torch.tensor(x, requires_grad=True)
    t_out = theirs(t_x)
    t_out.backward(torch.tensor(dout))
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=out_rtol, atol=1e-12)
    np.testing.assert_allclose(dx, t_x.grad.numpy(), rtol=1e-10, atol=1e-12)
    for name, p in ours.params.items():
        t_p = getattr(theirs, name)
        np.testing.assert_allclose(p.grad, t_p.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)
        if clear_grads:
            t_p.grad = None


def test_linear_matches_torch_layout():
    from numdl.backend import get_ops

    layer = numdl.Linear(3)
    layer.build((5,), get_ops("cpu"), np.float64, np.random.default_rng(0))
    t_layer = torch.nn.Linear(5, 3).double()
    with torch.no_grad():
        t_layer.weight.copy_(torch.tensor(layer.params["weight"].value))
        t_layer.bias.copy_(torch.tensor(layer.params["bias"].value))
    x = np.random.default_rng(1).standard_normal((4, 5))
    np.testing.assert_allclose(layer.forward(x), t_layer(torch.tensor(x)).detach().numpy(), rtol=1e-12)


def _layer_against_torch(layer, t_module, shape, seed=0, batch=2):
    """Forward, input gradient and parameter gradients of a float64 numdl layer and a torch module
    sharing its weights."""
    from numdl.backend import get_ops

    rng = np.random.default_rng(seed)
    layer.build(shape, get_ops("cpu"), np.float64, rng)
    layer.needs_input_grad = True
    for name, param in layer.named_parameters().items():
        getattr(t_module, name).data = torch.tensor(np.array(param.value))
    x = rng.standard_normal((batch,) + shape)
    t_x = torch.tensor(x, requires_grad=True)
    t_out = t_module(t_x)
    out = layer.forward(x, training=True)
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-10, atol=1e-12)
    upstream = rng.standard_normal(out.shape)
    t_out.backward(torch.tensor(upstream))
    np.testing.assert_allclose(layer.backward(upstream), t_x.grad.numpy(), rtol=1e-10, atol=1e-12)
    for name, param in layer.named_parameters().items():
        np.testing.assert_allclose(param.grad, getattr(t_module, name).grad.numpy(), rtol=1e-10, atol=1e-12,
                                   err_msg=name)


@pytest.mark.parametrize("kwargs", [
    {"kernel_size": 2, "stride": 2},
    {"kernel_size": 3, "stride": 2, "padding": 1, "output_padding": 1},
    {"kernel_size": [3, 2], "stride": [2, 1], "padding": [1, 0], "dilation": [1, 2], "groups": 3},
    {"kernel_size": 4, "stride": 3, "padding": 2, "output_padding": 2, "bias": False},
])
def test_conv_transpose2d_matches_torch(kwargs):
    t_kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    _layer_against_torch(numdl.ConvTranspose2d(6, **kwargs), torch.nn.ConvTranspose2d(3, 6, **t_kwargs).double(),
                         (3, 5, 4))


@pytest.mark.parametrize("kwargs", [
    {"scale_factor": 2}, {"scale_factor": [2, 3]}, {"scale_factor": 1.7}, {"size": [7, 5]},
    {"scale_factor": 2, "mode": "bilinear"}, {"scale_factor": 2.5, "mode": "bilinear"},
    {"size": [7, 9], "mode": "bilinear"}, {"size": [7, 9], "mode": "bilinear", "align_corners": True},
    {"scale_factor": 3, "mode": "bilinear", "align_corners": True},
])
def test_upsample_matches_torch(kwargs):
    t_kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    if "scale_factor" in t_kwargs and isinstance(t_kwargs["scale_factor"], tuple):
        t_kwargs["scale_factor"] = tuple(float(v) for v in t_kwargs["scale_factor"])
    _layer_against_torch(numdl.Upsample(**kwargs), torch.nn.Upsample(**t_kwargs), (2, 4, 3))


@pytest.mark.parametrize("padding", [[1, 2, 0, 3], [-1, 1, 2, -2], 2])
def test_pad2d_matches_torch_functional_pad(padding):
    amounts = [padding] * 4 if isinstance(padding, int) else padding

    class Pad(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.pad(x, amounts)

    _layer_against_torch(numdl.Pad2d(padding), Pad(), (2, 5, 6))


def test_concat_and_multiply_match_torch():
    from numdl.backend import get_ops

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 3, 4, 5)), rng.standard_normal((2, 2, 4, 5))
    concat = numdl.Concat(axis=1)
    concat.build([(3, 4, 5), (2, 4, 5)], get_ops("cpu"), np.float64, rng)
    t_a, t_b = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
    t_out = torch.cat([t_a, t_b], dim=1)
    np.testing.assert_array_equal(concat.forward([a, b]), t_out.detach().numpy())
    upstream = rng.standard_normal(t_out.shape)
    t_out.backward(torch.tensor(upstream))
    da, db = concat.backward(upstream)
    np.testing.assert_array_equal(da, t_a.grad.numpy())
    np.testing.assert_array_equal(db, t_b.grad.numpy())


@pytest.mark.parametrize("kwargs", [{}, {"weight": [0.5, 2.0, 1.0, 3.0]}, {"ignore_index": 2},
                                    {"weight": [0.5, 2.0, 1.0, 3.0], "ignore_index": 255, "reduction": "sum"}])
def test_pixel_cross_entropy_matches_torch(kwargs):
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((3, 4, 5, 6)) * 3, rng.integers(0, 4, (3, 5, 6))
    if kwargs.get("ignore_index") == 255:
        labels[0, :2] = 255
    _assert_cross_entropy_matches_torch(numdl.PixelCrossEntropy(**kwargs), kwargs, logits, labels)


@pytest.mark.parametrize("kwargs", [{"padding_idx": 2}, {"padding_idx": -1}, {"max_norm": 1.5},
                                    {"max_norm": 2.0, "norm_type": 1.0, "padding_idx": 0}])
def test_embedding_options_match_torch(kwargs):
    """padding_idx (a zero row without gradient), max_norm (looked-up rows renormalised in place)."""
    from numdl.backend import get_ops

    rng = np.random.default_rng(5)
    ids = np.array([[0, 2, 2, 4], [5, 1, 2, 5]])
    ours = numdl.Embedding(6, 3, **kwargs)
    ours.build((4,), get_ops("cpu"), np.float64, np.random.default_rng(0))
    theirs = torch.nn.Embedding(6, 3, dtype=torch.float64, **kwargs)
    if "padding_idx" in kwargs:
        assert not ours.params["weight"].value[kwargs["padding_idx"]].any()  # both start the row at zeros
    weight = ours.params["weight"].value.copy()
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor(weight))
    for _ in range(2):  # a second pass: max_norm's rows are renormalised already
        out = ours.forward(ids, training=True).copy()
        dout = rng.standard_normal(out.shape)
        ours.backward(dout)
        theirs.zero_grad()
        t_out = theirs(torch.tensor(ids))
        t_out.backward(torch.tensor(dout))
        np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(ours.params["weight"].value, theirs.weight.detach().numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(ours.params["weight"].grad, theirs.weight.grad.numpy(), rtol=1e-10, atol=1e-14)


NORM_OPTIONS = [
    (lambda: numdl.BatchNorm1d(momentum=None), lambda: torch.nn.BatchNorm1d(3, momentum=None), (5, 3)),
    (lambda: numdl.BatchNorm2d(affine=False), lambda: torch.nn.BatchNorm2d(2, affine=False), (4, 2, 3, 3)),
    (lambda: numdl.BatchNorm2d(track_running_stats=False), lambda: torch.nn.BatchNorm2d(2, track_running_stats=False),
     (4, 2, 3, 3)),
    (lambda: numdl.BatchNorm1d(momentum=0.3, affine=False), lambda: torch.nn.BatchNorm1d(3, momentum=0.3, affine=False),
     (4, 3, 5)),
    (lambda: numdl.LayerNorm([3, 4]), lambda: torch.nn.LayerNorm([3, 4]), (2, 5, 3, 4)),
    (lambda: numdl.LayerNorm(4, bias=False, eps=1e-3), lambda: torch.nn.LayerNorm(4, bias=False, eps=1e-3), (2, 5, 4)),
    (lambda: numdl.LayerNorm(elementwise_affine=False), lambda: torch.nn.LayerNorm(4, elementwise_affine=False),
     (2, 5, 4)),
    (lambda: numdl.GroupNorm(2), lambda: torch.nn.GroupNorm(2, 4), (3, 4, 3, 2)),
    (lambda: numdl.GroupNorm(3, eps=1e-3, affine=False), lambda: torch.nn.GroupNorm(3, 6, eps=1e-3, affine=False),
     (2, 6, 5)),
    (lambda: numdl.GroupNorm(1), lambda: torch.nn.GroupNorm(1, 5), (4, 5)),  # one group: LayerNorm over channels
]


@pytest.mark.parametrize("make_ours, make_theirs, shape", NORM_OPTIONS, ids=[
    "bn-cumulative", "bn-no-affine", "bn-untracked", "bn1d-seq-no-affine", "ln-last-two-axes", "ln-no-bias",
    "ln-no-affine", "gn-images", "gn-sequences-no-affine", "gn-one-group"])
def test_norm_options_match_torch(make_ours, make_theirs, shape):
    """Three training steps (forward, input and parameter gradients, running statistics), then an
    evaluation pass, against torch in float64."""
    from numdl.backend import get_ops

    rng = np.random.default_rng(6)
    ours, theirs = make_ours(), make_theirs().double()
    ours.build(shape[1:], get_ops("cpu"), np.float64, np.random.default_rng(0))
    ours.needs_input_grad = True
    assert set(ours.params) == {name for name, _ in theirs.named_parameters()}
    theirs.train()
    for _ in range(3):
        _assert_step_matches_torch(ours, theirs, rng.standard_normal(shape) * 2 + 1, rng, clear_grads=True)
        for name, value in ours.state.items():
            np.testing.assert_allclose(np.asarray(value).reshape(-1), getattr(theirs, name).numpy().reshape(-1),
                                       rtol=1e-12, atol=1e-14, err_msg=name)
    x = rng.standard_normal(shape)
    np.testing.assert_allclose(ours.forward(x, training=False), theirs.eval()(torch.tensor(x)).detach().numpy(),
                               rtol=1e-10, atol=1e-12)


CONV_OPTIONS = [
    (2, {"kernel_size": 3, "padding": "same"}, (2, 2, 5, 6)),
    (2, {"kernel_size": 4, "padding": "same", "bias": False}, (2, 2, 5, 6)),          # the odd one at the bottom/right
    (2, {"kernel_size": [2, 3], "padding": "same", "dilation": [3, 1]}, (2, 2, 7, 6)),
    (2, {"kernel_size": 3, "padding": "valid", "groups": 2}, (2, 2, 5, 6)),
    (2, {"kernel_size": 3, "padding": [2, 1], "padding_mode": "reflect"}, (2, 2, 5, 6)),
    (2, {"kernel_size": 4, "padding": "same", "padding_mode": "replicate"}, (2, 2, 5, 6)),
    (2, {"kernel_size": 3, "padding": 2, "stride": 2, "padding_mode": "circular"}, (2, 2, 5, 6)),
    (1, {"kernel_size": 4, "padding": "same", "padding_mode": "reflect"}, (2, 2, 9)),
    (1, {"kernel_size": 3, "padding": 2, "padding_mode": "circular", "bias": False}, (2, 2, 9)),
]


@pytest.mark.parametrize("dims, kwargs, shape", CONV_OPTIONS, ids=[f"conv{d}d-{i}" for i, (d, _, _) in
                                                                    enumerate(CONV_OPTIONS)])
def test_conv_padding_options_match_torch(dims, kwargs, shape):
    """padding='same'/'valid', padding_mode (zeros, reflect, replicate, circular), bias=False: forward,
    input gradient and parameter gradients against torch in float64."""
    from numdl.backend import get_ops

    rng = np.random.default_rng(7)
    ours = (numdl.Conv2d if dims == 2 else numdl.Conv1d)(4, **kwargs)
    ours.build(shape[1:], get_ops("cpu"), np.float64, np.random.default_rng(0))
    ours.needs_input_grad = True
    theirs = (torch.nn.Conv2d if dims == 2 else torch.nn.Conv1d)(shape[1], 4, dtype=torch.float64, **kwargs)
    assert set(ours.params) == {name for name, _ in theirs.named_parameters()}
    with torch.no_grad():
        for name, p in ours.params.items():
            getattr(theirs, name).copy_(torch.tensor(p.value))
    _assert_step_matches_torch(ours, theirs, rng.standard_normal(shape), rng)


@pytest.mark.parametrize("kwargs, shape, needle", [
    ({"kernel_size": 3, "padding": "same", "stride": 2}, (2, 5, 5), "not supported for strided convolutions"),
    ({"kernel_size": 3, "padding": "full"}, (2, 5, 5), "padding must be a size, a list of two, 'same' or 'valid'"),
    ({"kernel_size": 3, "padding": 1, "padding_mode": "mirror"}, (2, 5, 5), "padding_mode must be one of"),
    ({"kernel_size": 3, "padding": 5, "padding_mode": "reflect"}, (2, 5, 5), "pads at most the input size less one"),
])
def test_conv_padding_errors_are_named(kwargs, shape, needle):
    from numdl.backend import get_ops
    from numdl.errors import NumdlError

    with pytest.raises(NumdlError, match=needle):
        numdl.Conv2d(3, **kwargs).build(shape, get_ops("cpu"), np.float32, np.random.default_rng(0))


POOL_OPTIONS = [
    (numdl.MaxPool2d, torch.nn.MaxPool2d, {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}, (2, 7, 6)),
    (numdl.MaxPool2d, torch.nn.MaxPool2d, {"kernel_size": 2, "ceil_mode": True}, (2, 5, 7)),  # half windows
    (numdl.MaxPool2d, torch.nn.MaxPool2d, {"kernel_size": 3, "stride": 1, "padding": 1, "dilation": 2}, (2, 7, 6)),
    (numdl.MaxPool2d, torch.nn.MaxPool2d, {"kernel_size": [2, 3], "stride": 2, "padding": 1, "dilation": [3, 2],
                                           "ceil_mode": True}, (2, 9, 8)),
    (numdl.AvgPool2d, torch.nn.AvgPool2d, {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}, (2, 7, 6)),
    (numdl.AvgPool2d, torch.nn.AvgPool2d, {"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False},
     (2, 7, 6)),
    (numdl.AvgPool2d, torch.nn.AvgPool2d, {"kernel_size": [3, 2], "stride": 2, "padding": 1, "ceil_mode": True,
                                           "count_include_pad": False}, (2, 5, 6)),
]


@pytest.mark.parametrize("ours_cls, torch_cls, kwargs, shape", POOL_OPTIONS,
                         ids=[f"{o.name}-{i}" for i, (o, _, _, _) in enumerate(POOL_OPTIONS)])
def test_pool_options_match_torch(ours_cls, torch_cls, kwargs, shape):
    """ceil_mode (output sizes and the windows that hang over the edge) and count_include_pad=False."""
    from numdl.backend import get_ops

    ours = ours_cls(**kwargs)
    ours.build(shape, get_ops("cpu"), np.float64, np.random.default_rng(0))
    theirs = torch_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})
    rng = np.random.default_rng(8)
    _assert_step_matches_torch(ours, theirs, rng.standard_normal((3,) + shape), rng)


@pytest.mark.parametrize("ours, theirs, shape", [
    (numdl.AdaptiveAvgPool2d([3, 4]), torch.nn.AdaptiveAvgPool2d((3, 4)), (2, 5, 7)),   # overlapping windows
    (numdl.AdaptiveAvgPool2d(1), torch.nn.AdaptiveAvgPool2d(1), (3, 4, 6)),
    (numdl.AdaptiveMaxPool2d([2, None]), torch.nn.AdaptiveMaxPool2d((2, None)), (2, 5, 7)),
    (numdl.AdaptiveMaxPool2d(3), torch.nn.AdaptiveMaxPool2d(3), (2, 7, 8)),
], ids=["avg-3x4", "avg-1", "max-2xNone", "max-3"])
def test_adaptive_pooling_matches_torch(ours, theirs, shape):
    from numdl.backend import get_ops

    ours.build(shape, get_ops("cpu"), np.float64, np.random.default_rng(0))
    rng = np.random.default_rng(9)
    _assert_step_matches_torch(ours, theirs, rng.standard_normal((3,) + shape), rng)


def _assert_loss_matches_torch(ours, theirs, pred, target, rng):
    """Value (or per-position values) and prediction gradient of a numdl loss against a torch one;
    reduction "none" goes back with a random upstream gradient."""
    value = ours.forward(pred, target)
    t_pred = torch.tensor(pred, requires_grad=True)
    t_loss = theirs(t_pred, torch.tensor(target))
    if ours.reduction == "none":
        upstream = rng.standard_normal(t_loss.shape)
        grad = ours.backward(upstream)
        t_loss.backward(torch.tensor(upstream))
        np.testing.assert_allclose(value, t_loss.detach().numpy(), rtol=1e-10, atol=1e-14)
    else:
        grad = ours.backward()
        t_loss.backward()
        assert value == pytest.approx(t_loss.item(), rel=1e-10)
    np.testing.assert_allclose(grad, t_pred.grad.numpy(), rtol=1e-10, atol=1e-14)


def _torch_kwargs(kwargs):
    return {k: torch.tensor(v, dtype=torch.float64) if k in ("weight", "pos_weight") else v
            for k, v in kwargs.items() if k != "class_axis"}


CE_OPTIONS = [  # (numdl and torch kwargs, logits shape): PyTorch's (N, C, d1, ...) layout is class_axis 1
    ({"ignore_index": 2}, (7, 4)),  # ignore_index on a real class
    ({"ignore_index": -100, "reduction": "none"}, (7, 4)),
    ({"class_axis": 1, "weight": [0.5, 2.0, 1.0, 3.0], "label_smoothing": 0.2}, (5, 4, 3, 2)),
    ({"class_axis": 1, "reduction": "none", "weight": [0.5, 2.0, 1.0, 3.0]}, (5, 4, 6)),
    ({"class_axis": 1, "reduction": "sum", "ignore_index": 0, "label_smoothing": 0.1}, (3, 4, 2, 2)),
]


@pytest.mark.parametrize("kwargs, shape", CE_OPTIONS, ids=[str(i) for i in range(len(CE_OPTIONS))])
def test_cross_entropy_options_match_torch(kwargs, shape):
    """ignore_index (-100 marks padding in every batch below), reduction none/sum, (N, C, d1, ...)."""
    rng = np.random.default_rng(len(shape))
    logits = rng.standard_normal(shape) * 3
    labels = rng.integers(0, shape[1], (shape[0],) + shape[2:])
    labels.reshape(-1)[::5] = kwargs.get("ignore_index", -100)
    _assert_loss_matches_torch(numdl.CrossEntropy(**kwargs), torch.nn.CrossEntropyLoss(**_torch_kwargs(kwargs)),
                               logits, labels, rng)


@pytest.mark.parametrize("kwargs, shape", [
    ({}, (6, 5)), ({"label_smoothing": 0.3, "weight": [0.5, 2.0, 1.0, 3.0, 1.5]}, (6, 5)),
    ({"class_axis": 1, "reduction": "sum"}, (3, 5, 2, 3)), ({"class_axis": 1, "reduction": "none"}, (3, 5, 4))])
def test_cross_entropy_probability_targets_match_torch(kwargs, shape):
    rng = np.random.default_rng(3)
    logits, targets = rng.standard_normal(shape) * 3, rng.uniform(0, 1, shape)
    targets /= targets.sum(axis=1, keepdims=True)
    _assert_loss_matches_torch(numdl.CrossEntropy(**kwargs), torch.nn.CrossEntropyLoss(**_torch_kwargs(kwargs)),
                               logits, targets, rng)


@pytest.mark.parametrize("kwargs, shape", [
    ({}, (6, 4)), ({"weight": [0.5, 2.0, 1.0, 3.0], "ignore_index": 3}, (6, 4)),
    ({"class_axis": 1, "reduction": "sum", "weight": [0.5, 2.0, 1.0, 3.0]}, (3, 4, 2, 3)),
    ({"class_axis": 1, "reduction": "none"}, (3, 4, 5))])
def test_nll_loss_matches_torch(kwargs, shape):
    rng = np.random.default_rng(4)
    log_probs = torch.log_softmax(torch.tensor(rng.standard_normal(shape)), dim=1).numpy()
    labels = rng.integers(0, shape[1], (shape[0],) + shape[2:])
    _assert_loss_matches_torch(numdl.NLLLoss(**kwargs), torch.nn.NLLLoss(**_torch_kwargs(kwargs)), log_probs,
                               labels, rng)


@pytest.mark.parametrize("kwargs", [
    {"pos_weight": [2.0, 0.5, 3.0]}, {"weight": [1.0, 0.2, 2.5], "reduction": "sum"},
    {"weight": [[0.5], [1.0], [2.0], [0.1], [1.5]], "pos_weight": [2.0, 0.5, 3.0]},  # per sample, broadcast
    {"pos_weight": [2.0, 0.5, 3.0], "reduction": "none"}])
def test_bce_with_logits_weights_match_torch(kwargs):
    rng = np.random.default_rng(5)
    logits, targets = rng.standard_normal((5, 3)) * 3, rng.uniform(0, 1, (5, 3))
    _assert_loss_matches_torch(numdl.BCEWithLogits(**kwargs), torch.nn.BCEWithLogitsLoss(**_torch_kwargs(kwargs)),
                               logits, targets, rng)


@pytest.mark.parametrize("kwargs", [{"reduction": "batchmean"}, {"reduction": "sum"}, {"reduction": "none"},
                                    {"reduction": "batchmean", "log_target": True}])
def test_kl_div_matches_torch(kwargs):
    rng = np.random.default_rng(6)
    log_probs = torch.log_softmax(torch.tensor(rng.standard_normal((5, 4))), dim=1).numpy()
    targets = rng.uniform(0, 1, (5, 4))
    targets[0, 1] = 0.0
    if kwargs.get("log_target"):
        targets = np.log(targets + 0.05)
    _assert_loss_matches_torch(numdl.KLDiv(**kwargs), torch.nn.KLDivLoss(**kwargs), log_probs, targets, rng)


@pytest.mark.parametrize("ours_cls, torch_cls", [(numdl.MSE, torch.nn.MSELoss), (numdl.MAE, torch.nn.L1Loss),
                                                 (numdl.Huber, torch.nn.HuberLoss)])
def test_elementwise_losses_reduction_none_match_torch(ours_cls, torch_cls):
    rng = np.random.default_rng(7)
    _assert_loss_matches_torch(ours_cls(reduction="none"), torch_cls(reduction="none"), rng.standard_normal((4, 3)) * 2,
                               rng.standard_normal((4, 3)), rng)


@pytest.mark.parametrize("ours_cls, torch_cls", [(numdl.Softmax, torch.nn.Softmax),
                                                 (numdl.LogSoftmax, torch.nn.LogSoftmax)])
@pytest.mark.parametrize("axis", [1, 2, -1])
def test_softmax_over_any_axis_matches_torch(ours_cls, torch_cls, axis):
    from numdl.backend import get_ops

    ours = ours_cls(axis=axis)
    ours.build((4, 3, 5), get_ops("cpu"), np.float64, np.random.default_rng(0))
    rng = np.random.default_rng(10 + axis)
    _assert_step_matches_torch(ours, torch_cls(dim=axis), rng.standard_normal((2, 4, 3, 5)) * 3, rng, out_rtol=1e-12)


@pytest.mark.parametrize("ours_cls, torch_cls", [(numdl.AdamW, torch.optim.AdamW), (numdl.SGD, torch.optim.SGD)])
def test_parameter_groups_match_torch(ours_cls, torch_cls):
    """A per-layer learning rate and no weight decay on biases and norms: the trajectory of every
    parameter equals PyTorch's with the same groups written out by hand."""
    rng = np.random.default_rng(11)
    model = numdl.Sequential([numdl.Linear(4), numdl.LayerNorm(), numdl.ReLU(), numdl.Linear(3)], input_shape=(5,),
                             dtype="float64", seed=0)
    extra = {"momentum": 0.9} if ours_cls is numdl.SGD else {}
    model.compile(numdl.CrossEntropy(), ours_cls(lr=0.05, weight_decay=0.1, decay_biases_and_norms=False,
                                                 param_groups=[{"params": "3.*", "lr": 0.005}], **extra))
    theirs = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.LayerNorm(4), torch.nn.ReLU(),
                                 torch.nn.Linear(4, 3)).double()
    named = model.named_parameters()
    for t_param, param in zip(theirs.parameters(), named.values()):
        t_param.data = torch.tensor(param.value.copy())
    groups = [{"params": [theirs[0].weight]}, {"params": [theirs[0].bias, theirs[1].weight, theirs[1].bias],
                                               "weight_decay": 0.0},
              {"params": [theirs[3].weight], "lr": 0.005}, {"params": [theirs[3].bias], "lr": 0.005, "weight_decay": 0.0}]
    t_opt = torch_cls(groups, lr=0.05, weight_decay=0.1, foreach=False, **extra)
    x, y = rng.standard_normal((16, 5)), rng.integers(0, 3, 16)
    for _ in range(6):
        model.train_step(x, y)
        t_opt.zero_grad()
        torch.nn.functional.cross_entropy(theirs(torch.tensor(x)), torch.tensor(y)).backward()
        t_opt.step()
    for t_param, (name, param) in zip(theirs.parameters(), named.items()):
        np.testing.assert_allclose(param.value, t_param.detach().numpy(), rtol=1e-10, atol=1e-13, err_msg=name)


def _copy_attention_weights(ours, theirs):
    """numdl's attention parameters into a torch.nn.MultiheadAttention, by PyTorch's names."""
    own = {name: p.value for name, p in ours.named_parameters().items()}
    with torch.no_grad():
        for ours_name, torch_name in ours.torch_names().items():
            module, _, attribute = torch_name.rpartition(".")
            target = getattr(theirs.out_proj, attribute) if module == "out_proj" else getattr(theirs, torch_name)
            target.copy_(torch.tensor(own[ours_name]))


def _assert_attention_matches_torch(ours, theirs, inputs, t_kwargs, rng, average_weights=True):
    """Output, every input's gradient, every parameter's gradient and the averaged weights."""
    out = ours.forward(inputs if len(inputs) > 1 else inputs[0], training=True).copy()
    t_inputs = [torch.tensor(x, requires_grad=True) for x in inputs]
    query, key, value = t_inputs[0], t_inputs[min(1, len(t_inputs) - 1)], t_inputs[-1]
    t_out, t_weights = theirs(query, key, value, need_weights=True, **t_kwargs)
    upstream = rng.standard_normal(out.shape)
    (t_out * torch.tensor(upstream)).sum().backward()
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ours.attention_weights(), t_weights.detach().numpy(), rtol=1e-10, atol=1e-12)
    grads = ours.backward(upstream)
    grads = grads if isinstance(grads, list) else [grads]
    for index, (grad, t_input) in enumerate(zip(grads, t_inputs)):
        np.testing.assert_allclose(grad, t_input.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=f"input {index}")
    own = {name: p.grad for name, p in ours.named_parameters().items()}
    for ours_name, torch_name in ours.torch_names().items():
        t_param = dict(theirs.named_parameters())[torch_name]
        np.testing.assert_allclose(own[ours_name], t_param.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=ours_name)


@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_self_attention_attn_mask_matches_torch(mask_kind):
    from numdl.backend import get_ops

    rng = np.random.default_rng(12)
    ours = numdl.MultiHeadAttention(2)
    ours.build((5, 4), get_ops("cpu"), np.float64, rng)
    ours.params["in_proj_bias"].value[:] = rng.standard_normal(12) * 0.1
    theirs = torch.nn.MultiheadAttention(4, 2, batch_first=True).double()
    _copy_attention_weights(ours, theirs)
    mask = rng.random((5, 5)) < 0.3 if mask_kind == "bool" else rng.standard_normal((5, 5))
    np.fill_diagonal(mask, False if mask_kind == "bool" else 0.0)  # every query keeps a key
    ours.attn_mask, ours.lengths = mask, np.array([5, 4])
    padding = torch.tensor(np.arange(5)[None, :] >= np.array([5, 4])[:, None])
    if mask_kind == "float":  # torch wants both masks of one kind
        padding = torch.where(padding, -torch.inf, 0.0).double()
    _assert_attention_matches_torch(ours, theirs, [rng.standard_normal((2, 5, 4))],
                                    {"attn_mask": torch.tensor(mask), "key_padding_mask": padding}, rng)


@pytest.mark.parametrize("shapes", [[(3, 4), (6, 4)], [(3, 4), (6, 5)], [(3, 4), (6, 5), (6, 3)]],
                         ids=["packed-memory", "kdim-memory", "key-and-value"])
def test_cross_attention_matches_torch(shapes):
    """Queries from one sequence, keys and values from another (of other lengths and widths:
    PyTorch's kdim / vdim), with source padding (key_lengths) and an additive attn_mask."""
    from numdl.backend import get_ops

    rng = np.random.default_rng(13)
    ours = numdl.CrossAttention(2)
    ours.build(shapes, get_ops("cpu"), np.float64, rng)
    ours.params["in_proj_bias"].value[:] = rng.standard_normal(12) * 0.1
    kdim, vdim = shapes[1][1], shapes[-1][1]
    theirs = torch.nn.MultiheadAttention(4, 2, batch_first=True, kdim=kdim, vdim=vdim).double()
    _copy_attention_weights(ours, theirs)
    inputs = [rng.standard_normal((2,) + shape) for shape in shapes]
    ours.key_lengths = np.array([6, 4])
    ours.attn_mask = rng.standard_normal((3, 6))
    padding = torch.where(torch.tensor(np.arange(6)[None, :] >= np.array([6, 4])[:, None]), -torch.inf, 0.0).double()
    _assert_attention_matches_torch(ours, theirs, inputs, {"attn_mask": torch.tensor(ours.attn_mask),
                                                           "key_padding_mask": padding}, rng)


@pytest.mark.parametrize("norm_first", [False, True])
def test_transformer_decoder_layer_matches_torch(norm_first):
    """Causal self-attention over a padded target, cross-attention to a padded memory of another
    length and width, the feed-forward block: outputs, both inputs' gradients and every parameter's
    gradient against nn.TransformerDecoderLayer, its weights copied through torch_names."""
    from numdl.backend import get_ops

    rng = np.random.default_rng(14)
    ours = numdl.TransformerDecoderLayer(2, dim_feedforward=6, dropout=0.0, norm_first=norm_first, activation="gelu",
                                         layer_norm_eps=1e-6)
    ours.build([(5, 4), (6, 4)], get_ops("cpu"), np.float64, rng)
    theirs = torch.nn.TransformerDecoderLayer(4, 2, dim_feedforward=6, dropout=0.0, activation="gelu",
                                              layer_norm_eps=1e-6, batch_first=True, norm_first=norm_first).double()
    own = ours.named_parameters()
    t_state = theirs.state_dict()
    assert sorted(ours.torch_names().values()) == sorted(t_state)
    for ours_name, torch_name in ours.torch_names().items():
        own[ours_name].value[:] = t_state[torch_name].numpy() + rng.standard_normal(own[ours_name].value.shape) * 0.1
    with torch.no_grad():
        for ours_name, torch_name in ours.torch_names().items():
            t_state[torch_name].copy_(torch.tensor(own[ours_name].value))
    target, memory = rng.standard_normal((2, 5, 4)), rng.standard_normal((2, 6, 4))
    ours.lengths, ours.memory_lengths = np.array([5, 3]), np.array([6, 4])
    out = ours.forward([target, memory], training=True).copy()
    t_target, t_memory = torch.tensor(target, requires_grad=True), torch.tensor(memory, requires_grad=True)
    t_out = theirs(t_target, t_memory, tgt_mask=torch.nn.Transformer.generate_square_subsequent_mask(5).double(),
                   tgt_key_padding_mask=torch.where(torch.tensor(np.arange(5)[None] >= np.array([[5], [3]])),
                                                    -torch.inf, 0.0).double(),
                   memory_key_padding_mask=torch.tensor(np.arange(6)[None] >= np.array([[6], [4]])))
    upstream = rng.standard_normal(out.shape)
    (t_out * torch.tensor(upstream)).sum().backward()
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-9, atol=1e-11)
    d_target, d_memory = ours.backward(upstream)
    np.testing.assert_allclose(d_target, t_target.grad.numpy(), rtol=1e-10, atol=1e-11)
    np.testing.assert_allclose(d_memory, t_memory.grad.numpy(), rtol=1e-10, atol=1e-11)
    t_params = dict(theirs.named_parameters())
    for ours_name, torch_name in ours.torch_names().items():
        np.testing.assert_allclose(own[ours_name].grad, t_params[torch_name].grad.numpy(), rtol=1e-10, atol=1e-11,
                                   err_msg=ours_name)


def _copy_rnn_weights(ours, rnn):
    """numdl's LSTM/GRU weights into nn.LSTM/nn.GRU (the same names and layouts)."""
    with torch.no_grad():
        for name, p in ours.params.items():
            getattr(rnn, name).copy_(torch.tensor(p.value))


def _assert_rnn_gradients_match(ours, rnn):
    for name, p in ours.params.items():
        np.testing.assert_allclose(p.grad, getattr(rnn, name).grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


def _assert_rnn_matches_torch(ours, rnn, out, dout, grads, t_out, t_final, t_inputs):
    """Back-propagates ``dout`` through PyTorch's ``t_out``, then compares the outputs, the final states
    (PyTorch's (layers * directions, batch, features) against numdl's batch-first ones), the inputs'
    gradients and every parameter's."""
    t_out.backward(torch.tensor(dout))
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-10, atol=1e-12)
    for ours_state, theirs in zip(ours.final_states(), t_final):
        np.testing.assert_allclose(ours_state, theirs.transpose(0, 1).detach().numpy(), rtol=1e-10, atol=1e-12)
    for index, (grad, t_input) in enumerate(zip(grads, t_inputs)):
        np.testing.assert_allclose(grad, t_input.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=f"input {index}")
    _assert_rnn_gradients_match(ours, rnn)


class _Sequences(torch.nn.Module):
    """nn.LSTM / nn.GRU returning the whole output sequence (numdl's return_sequences = true)."""

    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(x)[0]


@pytest.mark.parametrize("ours_cls, torch_cls", [(numdl.LSTM, torch.nn.LSTM), (numdl.GRU, torch.nn.GRU)])
def test_recurrent_without_bias_matches_torch(ours_cls, torch_cls):
    from numdl.backend import get_ops

    ours = ours_cls(3, num_layers=2, bidirectional=True, return_sequences=True, bias=False)
    ours.build((5, 4), get_ops("cpu"), np.float64, np.random.default_rng(0))
    assert not any("bias" in name for name in ours.params)
    rnn = torch_cls(4, 3, num_layers=2, bidirectional=True, bias=False, batch_first=True).double()
    _copy_rnn_weights(ours, rnn)
    rng = np.random.default_rng(15)
    x = rng.standard_normal((2, 5, 4))
    out = ours.forward(x, training=True).copy()
    dout = rng.standard_normal(out.shape)
    dx = ours.backward(dout)
    t_x = torch.tensor(x, requires_grad=True)
    t_out = _Sequences(rnn)(t_x)
    t_out.backward(torch.tensor(dout))
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, t_x.grad.numpy(), rtol=1e-10, atol=1e-12)
    _assert_rnn_gradients_match(ours, rnn)


@pytest.mark.parametrize("ours_cls, torch_cls", [(numdl.LSTM, torch.nn.LSTM), (numdl.GRU, torch.nn.GRU)])
@pytest.mark.parametrize("return_sequences", [True, False])
def test_recurrent_initial_and_final_states_match_torch(ours_cls, torch_cls, return_sequences):
    """PyTorch's rnn(x, (h0, c0)) -> out, (h_n, c_n), two stacked bidirectional layers, batch first:
    numdl's layer with initial_state takes [x, h0, c0] of shape (batch, layers * directions, hidden)
    (PyTorch's states with the batch first), gives the gradients of all three, and final_states()."""
    from numdl.backend import get_ops

    lstm = ours_cls is numdl.LSTM
    ours = ours_cls(3, num_layers=2, bidirectional=True, return_sequences=return_sequences, initial_state=True)
    shapes = [(5, 4)] + [(4, 3)] * (2 if lstm else 1)
    ours.build(shapes, get_ops("cpu"), np.float64, np.random.default_rng(0))
    rnn = torch_cls(4, 3, num_layers=2, bidirectional=True, batch_first=True).double()
    _copy_rnn_weights(ours, rnn)
    rng = np.random.default_rng(16)
    inputs = [rng.standard_normal((2,) + shape) for shape in shapes]
    out = ours.forward(inputs, training=True).copy()
    dout = rng.standard_normal(out.shape)
    grads = ours.backward(dout)
    t_inputs = [torch.tensor(a, requires_grad=True) for a in inputs]
    t_states = [s.transpose(0, 1) for s in t_inputs[1:]]  # PyTorch's (layers * directions, batch, hidden)
    t_out, t_final = rnn(t_inputs[0], tuple(t_states) if lstm else t_states[0])
    t_final = t_final if lstm else (t_final,)
    if not return_sequences:  # numdl's last output: the forward direction's last step, the reverse's first
        t_out = torch.cat([t_out[:, -1, :3], t_out[:, 0, 3:]], dim=1)
    _assert_rnn_matches_torch(ours, rnn, out, dout, grads, t_out, t_final, t_inputs)


@pytest.mark.parametrize("return_sequences", [True, False])
def test_lstm_proj_size_matches_torch(return_sequences):
    """nn.LSTM(proj_size=2), two stacked bidirectional layers, initial states (h0 with proj_size
    features, c0 with hidden_size): outputs, final states, the gradients of x, h0, c0 and of every
    parameter (weight_hr_l0 ... included), PyTorch's parameter names and shapes."""
    from numdl.backend import get_ops

    ours = numdl.LSTM(4, num_layers=2, bidirectional=True, return_sequences=return_sequences, initial_state=True,
                      proj_size=2)
    shapes = [(5, 3), (4, 2), (4, 4)]
    ours.build(shapes, get_ops("cpu"), np.float64, np.random.default_rng(0))
    rnn = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True, proj_size=2).double()
    assert {name: p.value.shape for name, p in ours.params.items()} == {
        name: tuple(p.shape) for name, p in rnn.named_parameters()}
    assert list(ours.params) == [name for name, _ in rnn.named_parameters()]  # the same order
    _copy_rnn_weights(ours, rnn)
    rng = np.random.default_rng(17)
    inputs = [rng.standard_normal((2,) + shape) for shape in shapes]
    out = ours.forward(inputs, training=True).copy()
    dout = rng.standard_normal(out.shape)
    grads = ours.backward(dout)
    t_inputs = [torch.tensor(a, requires_grad=True) for a in inputs]
    t_out, t_final = rnn(t_inputs[0], tuple(s.transpose(0, 1) for s in t_inputs[1:]))
    if not return_sequences:
        t_out = torch.cat([t_out[:, -1, :2], t_out[:, 0, 2:]], dim=1)
    _assert_rnn_matches_torch(ours, rnn, out, dout, grads, t_out, t_final, t_inputs)


def test_lstm_proj_size_with_padded_lengths_matches_torch_packed():
    """Padded samples (numdl's lengths) against PyTorch's packed sequences, projected and
    bidirectional: every valid step's output and every gradient."""
    from numdl.backend import get_ops

    ours = numdl.LSTM(5, bidirectional=True, return_sequences=True, proj_size=3)
    ours.build((6, 2), get_ops("cpu"), np.float64, np.random.default_rng(1))
    rnn = torch.nn.LSTM(2, 5, bidirectional=True, batch_first=True, proj_size=3).double()
    _copy_rnn_weights(ours, rnn)
    rng = np.random.default_rng(18)
    x, lengths = rng.standard_normal((3, 6, 2)), np.array([6, 2, 4])
    ours.lengths = lengths
    out = ours.forward(x, training=True).copy()
    valid = np.arange(6)[None, :, None] < lengths[:, None, None]
    dout = rng.standard_normal(out.shape) * valid
    dx = ours.backward(dout)
    t_x = torch.tensor(x, requires_grad=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(t_x, torch.tensor(lengths), batch_first=True,
                                                     enforce_sorted=False)
    t_out, _ = torch.nn.utils.rnn.pad_packed_sequence(rnn(packed)[0], batch_first=True, total_length=6)
    t_out.backward(torch.tensor(dout))
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, t_x.grad.numpy(), rtol=1e-10, atol=1e-12)
    _assert_rnn_gradients_match(ours, rnn)


@pytest.mark.parametrize("ours_cls, torch_cls, extra", [(numdl.LSTM, torch.nn.LSTM, {}),
                                                         (numdl.LSTM, torch.nn.LSTM, {"proj_size": 2}),
                                                         (numdl.GRU, torch.nn.GRU, {})],
                         ids=["lstm", "lstm-proj", "gru"])
def test_gradients_through_final_states_match_torch(ours_cls, torch_cls, extra):
    """PyTorch's out, (h_n, c_n) = rnn(packed x) with a loss on all three: numdl's
    add_final_state_grad (what FinalState does in a graph) carries h_n's and c_n's gradients back,
    two stacked bidirectional layers, padded samples (their h_n at the last valid step)."""
    from numdl.backend import get_ops

    lstm = ours_cls is numdl.LSTM
    ours = ours_cls(3, num_layers=2, bidirectional=True, return_sequences=True, **extra)
    ours.build((5, 4), get_ops("cpu"), np.float64, np.random.default_rng(0))
    rnn = torch_cls(4, 3, num_layers=2, bidirectional=True, batch_first=True, **extra).double()
    _copy_rnn_weights(ours, rnn)
    rng = np.random.default_rng(19)
    x, lengths = rng.standard_normal((3, 5, 4)), np.array([5, 2, 4])
    ours.lengths = lengths
    out = ours.forward(x, training=True).copy()
    finals = ours.final_states()
    valid = np.arange(5)[None, :, None] < lengths[:, None, None]
    dout = rng.standard_normal(out.shape) * valid
    state_grads = [rng.standard_normal(f.shape) for f in finals]
    for which, grad in zip("hc", state_grads):
        ours.add_final_state_grad(which, grad)
    dx = ours.backward(dout)
    t_x = torch.tensor(x, requires_grad=True)
    packed = torch.nn.utils.rnn.pack_padded_sequence(t_x, torch.tensor(lengths), batch_first=True,
                                                     enforce_sorted=False)
    t_packed, t_final = rnn(packed)
    t_out, _ = torch.nn.utils.rnn.pad_packed_sequence(t_packed, batch_first=True, total_length=5)
    t_final = t_final if lstm else (t_final,)
    loss = (t_out * torch.tensor(dout)).sum()
    for theirs, grad in zip(t_final, state_grads):
        loss = loss + (theirs.transpose(0, 1) * torch.tensor(grad)).sum()
    loss.backward()
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-10, atol=1e-12)
    for ours_state, theirs in zip(finals, t_final):
        np.testing.assert_allclose(ours_state, theirs.transpose(0, 1).detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, t_x.grad.numpy(), rtol=1e-10, atol=1e-12)
    _assert_rnn_gradients_match(ours, rnn)
    assert not ours._final_grads  # used once: the next backward carries none


def test_an_encoder_decoder_graph_passes_final_states_with_gradients_like_torch():
    """numdl.FinalState in a graph: an encoder LSTM's (h_n, c_n) start a decoder LSTM
    (initial_state), as seq2seq models in PyTorch do; outputs and every gradient against PyTorch."""
    nn = torch.nn
    source, target = numdl.Input((6, 4)), numdl.Input((5, 2))
    encoder = numdl.LSTM(3, num_layers=2, return_sequences=True)
    memory = encoder(source)
    decoder = numdl.LSTM(3, num_layers=2, return_sequences=True, initial_state=True)
    decoded = decoder([target, numdl.FinalState("h")(memory), numdl.FinalState("c")(memory)])
    model = numdl.Model([source, target], numdl.Linear(2)(decoded), dtype="float64", seed=0, input_grad=True)
    t_encoder, t_decoder = nn.LSTM(4, 3, num_layers=2, batch_first=True).double(), nn.LSTM(
        2, 3, num_layers=2, batch_first=True).double()
    t_head = nn.Linear(3, 2).double()
    with torch.no_grad():
        for module, layer in ((t_encoder, encoder), (t_decoder, decoder)):
            for name, p in layer.params.items():
                getattr(module, name).copy_(torch.tensor(p.value))
        head = model.layers[-1]
        t_head.weight.copy_(torch.tensor(head.params["weight"].value))
        t_head.bias.copy_(torch.tensor(head.params["bias"].value))
    rng = np.random.default_rng(20)
    xs = [rng.standard_normal((2, 6, 4)), rng.standard_normal((2, 5, 2))]
    out = model.forward(xs, training=True).copy()
    dout = rng.standard_normal(out.shape)
    dxs = model.backward(dout)
    t_xs = [torch.tensor(a, requires_grad=True) for a in xs]
    _, states = t_encoder(t_xs[0])
    t_out = t_head(t_decoder(t_xs[1], states)[0])
    (t_out * torch.tensor(dout)).sum().backward()
    np.testing.assert_allclose(out, t_out.detach().numpy(), rtol=1e-10, atol=1e-12)
    for grad, t_x in zip(dxs, t_xs):
        np.testing.assert_allclose(grad, t_x.grad.numpy(), rtol=1e-10, atol=1e-12)
    for module, layer in ((t_encoder, encoder), (t_decoder, decoder)):
        for name, p in layer.params.items():
            np.testing.assert_allclose(p.grad, getattr(module, name).grad.numpy(), rtol=1e-10, atol=1e-12,
                                       err_msg=name)
