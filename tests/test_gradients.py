"""Every registered layer and loss passes the float64 central-difference gradient check, through the
same public helpers (numdl.testing) that plugin authors use. New registrations are picked up here
automatically: a registered item without a sample below fails the coverage test."""

import numpy as np
import pytest

from numdl.plugins import registry
from numdl.testing import check_layer_gradients, check_loss_gradients

def _residual(projection):
    def make():
        import numdl

        block = [numdl.Conv2d(4, 3, padding=1, activation="relu"), numdl.BatchNorm2d(), numdl.Conv2d(4, 3, padding=1)]
        if projection == "conv_bn":  # a downsampling block: more channels, half the resolution
            block[0] = numdl.Conv2d(4, 3, stride=2, padding=1)
        return numdl.Residual(block, projection=projection, activation="relu")
    return make


def _masked_attention():
    import numdl

    layer = numdl.MultiHeadAttention(2)
    layer.attn_mask = np.array([[0.0, -1.0, 0.5, -np.inf]] * 4)  # one key forbidden, others shifted
    return layer


# sample id -> (registered name, constructor kwargs or a factory, input shape without the batch axis)
LAYER_SAMPLES = {
    "linear": ("linear", {"out_features": 4}, (5,)),
    "relu": ("relu", {}, (3, 4)),
    "leaky_relu": ("leaky_relu", {"negative_slope": 0.2}, (3, 4)),
    "sigmoid": ("sigmoid", {}, (7,)),
    "tanh": ("tanh", {}, (7,)),
    "gelu": ("gelu", {}, (7,)),
    "gelu-tanh": ("gelu", {"approximate": "tanh"}, (7,)),
    "softmax": ("softmax", {}, (2, 5)),
    "softmax-channels": ("softmax", {"axis": 1}, (3, 2, 2)),
    "log_softmax": ("log_softmax", {}, (2, 5)),
    "log_softmax-middle-axis": ("log_softmax", {"axis": -2}, (4, 3)),
    "dropout": ("dropout", {"p": 0.4}, (9,)),
    "flatten": ("flatten", {}, (2, 3, 2)),
    "reshape": ("reshape", {"shape": [3, -1]}, (2, 3, 2)),
    "conv2d": ("conv2d", {"out_channels": 4, "kernel_size": [3, 2], "stride": 2, "padding": 1, "dilation": 2,
                          "groups": 2}, (4, 7, 5)),
    "conv2d-relu": ("conv2d", {"out_channels": 3, "kernel_size": 3, "padding": 1, "activation": "relu"}, (2, 5, 5)),
    "conv2d-same-even-reflect": ("conv2d", {"out_channels": 2, "kernel_size": 4, "padding": "same",
                                            "padding_mode": "reflect", "bias": False}, (2, 5, 6)),
    "conv2d-circular-strided": ("conv2d", {"out_channels": 2, "kernel_size": 3, "padding": 2, "stride": 2,
                                           "padding_mode": "circular"}, (2, 5, 5)),
    "conv1d": ("conv1d", {"out_channels": 4, "kernel_size": 3, "stride": 2, "padding": 1}, (2, 9)),
    "maxpool2d": ("maxpool2d", {"kernel_size": 3, "stride": 2, "padding": 1}, (2, 7, 5)),
    "avgpool2d": ("avgpool2d", {"kernel_size": [2, 3], "stride": 1, "padding": 1}, (2, 5, 5)),
    "avgpool2d-ceil-exclude-pad": ("avgpool2d", {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True,
                                                 "count_include_pad": False}, (2, 6, 5)),
    "maxpool2d-ceil": ("maxpool2d", {"kernel_size": 2, "ceil_mode": True}, (2, 5, 7)),
    "maxpool2d-dilated": ("maxpool2d", {"kernel_size": 2, "stride": 1, "padding": 1, "dilation": [2, 3]}, (2, 6, 7)),
    "adaptive_avgpool2d": ("adaptive_avgpool2d", {"output_size": [3, 4]}, (2, 5, 7)),
    "adaptive_maxpool2d": ("adaptive_maxpool2d", {"output_size": [2, None]}, (2, 5, 7)),
    "global_avgpool2d": ("global_avgpool2d", {}, (3, 4, 5)),
    "batchnorm1d": ("batchnorm1d", {}, (4,)),
    "batchnorm1d-sequence": ("batchnorm1d", {}, (3, 5)),
    "batchnorm2d": ("batchnorm2d", {}, (3, 4, 5)),
    "layernorm": ("layernorm", {}, (3, 6)),
    "layernorm-two-axes-no-bias": ("layernorm", {"normalized_shape": [3, 4], "bias": False}, (2, 3, 4)),
    "layernorm-no-affine": ("layernorm", {"elementwise_affine": False}, (3, 6)),
    "groupnorm": ("groupnorm", {"num_groups": 2}, (4, 3, 2)),
    "groupnorm-no-affine": ("groupnorm", {"num_groups": 3, "affine": False}, (6, 4)),
    "batchnorm2d-no-affine-untracked": ("batchnorm2d", {"affine": False, "track_running_stats": False}, (3, 4, 5)),
    "residual-identity": ("residual", _residual("auto"), (4, 5, 5)),
    "residual-projection": ("residual", _residual("conv_bn"), (2, 6, 6)),
    "lstm": ("lstm", {"hidden_size": 3}, (4, 2)),
    "lstm-stacked-bidirectional-padded": ("lstm", {"hidden_size": 3, "num_layers": 2, "bidirectional": True,
                                                   "return_sequences": True}, (4, 2)),
    "gru": ("gru", {"hidden_size": 3, "bidirectional": True}, (4, 2)),
    "lstm-no-bias": ("lstm", {"hidden_size": 3, "bias": False, "return_sequences": True}, (4, 2)),
    "lstm-initial-state-padded": ("lstm", {"hidden_size": 3, "bidirectional": True, "initial_state": True},
                                  [(4, 2), (2, 3), (2, 3)]),
    "gru-initial-state-stacked": ("gru", {"hidden_size": 2, "num_layers": 2, "initial_state": True,
                                          "return_sequences": True}, [(3, 2), (2, 2)]),
    "gru-stacked-bidirectional-padded": ("gru", {"hidden_size": 3, "num_layers": 2, "bidirectional": True}, (4, 2)),
    "embedding": ("embedding", {"num_embeddings": 3, "embedding_dim": 2}, (5,)),
    "sequence_pool-last": ("sequence_pool", {"mode": "last"}, (4, 3)),
    "sequence_pool-mean-padded": ("sequence_pool", {"mode": "mean"}, (4, 3)),
    "linear-sequence": ("linear", {"out_features": 2}, (4, 3)),
    "multihead_attention-padded": ("multihead_attention", {"num_heads": 2}, (4, 4)),
    "multihead_attention-causal": ("multihead_attention", {"num_heads": 2, "causal": True}, (4, 4)),
    "multihead_attention-attn-mask": ("multihead_attention", _masked_attention, (4, 4)),
    "cross_attention-memory": ("cross_attention", {"num_heads": 2}, [(3, 4), (5, 6)]),
    "transformer_decoder_layer-post-norm-padded": ("transformer_decoder_layer", {"num_heads": 2, "dim_feedforward": 6,
                                                                                  "dropout": 0.2}, [(4, 4), (3, 4)]),
    "transformer_decoder_layer-pre-norm": ("transformer_decoder_layer", {"num_heads": 1, "dim_feedforward": 5,
                                                                          "norm_first": True, "activation": "gelu"},
                                           [(3, 4), (5, 6)]),
    "cross_attention-key-value": ("cross_attention", {"num_heads": 1}, [(2, 4), (3, 4), (3, 5)]),
    "transformer_encoder_layer-post-norm-padded": ("transformer_encoder_layer", {"num_heads": 2, "dim_feedforward": 6,
                                                                                  "dropout": 0.2}, (4, 4)),
    "transformer_encoder_layer-pre-norm": ("transformer_encoder_layer", {"num_heads": 1, "dim_feedforward": 5,
                                                                          "activation": "gelu", "norm_first": True},
                                           (3, 4)),
    "positional_encoding-learned": ("positional_encoding", {"kind": "learned"}, (4, 6)),
    "positional_encoding-sinusoidal": ("positional_encoding", {"kind": "sinusoidal"}, (4, 6)),
    "swap_axes": ("swap_axes", {}, (3, 5)),
    "conv_transpose2d": ("conv_transpose2d", {"out_channels": 4, "kernel_size": [3, 2], "stride": [2, 1],
                                              "padding": 1, "output_padding": [1, 0], "dilation": [1, 2],
                                              "groups": 2}, (4, 3, 4)),
    "upsample-nearest": ("upsample", {"scale_factor": [2, 1.5]}, (2, 3, 4)),
    "upsample-bilinear": ("upsample", {"scale_factor": 2, "mode": "bilinear"}, (2, 3, 4)),
    "upsample-bilinear-align-corners": ("upsample", {"size": [5, 7], "mode": "bilinear", "align_corners": True},
                                        (2, 3, 4)),
    "pad2d": ("pad2d", {"padding": [1, -1, 2, 0]}, (2, 4, 5)),
    "gaussian_sample": ("gaussian_sample", {"beta": 0.7}, (6,)),
    "gaussian_sample-eval": ("gaussian_sample", {"beta": 2.0}, (4,)),  # the mean, and the KL term still
    # merge layers: a list of input shapes
    "concat-channels": ("concat", {}, [(2, 3, 4), (1, 3, 4), (3, 3, 4)]),
    "concat-last-axis": ("concat", {"axis": -1}, [(2, 3), (2, 5)]),
    "add": ("add", {}, [(3, 4), (3, 4), (3, 4)]),
    "multiply": ("multiply", {}, [(2, 5), (2, 5)]),
    "crop2d-size": ("crop2d", {"size": [3, 6]}, [(2, 5, 4)]),
    "crop2d-match": ("crop2d", {}, [(2, 6, 5), (1, 4, 7)]),
}
PADDED_LENGTHS = [4, 2, 3]  # the batch of 3 the check draws


def _labels(rng, n, classes):
    return rng.integers(0, classes, n)


def _probabilities(rng, shape):
    p = rng.uniform(0, 1, shape)
    return p / p.sum(axis=-1, keepdims=True)


# name -> (constructor kwargs, target factory given rng and pred shape)
LOSS_SAMPLES = {
    "cross_entropy": [({}, lambda r, s: _labels(r, *s)),
                      ({"weight": [1.0, 2.0, 0.5, 1.5], "label_smoothing": 0.2}, lambda r, s: _labels(r, *s)),
                      ({"reduction": "sum"}, lambda r, s: _labels(r, *s)),
                      ({"ignore_index": 1, "label_smoothing": 0.1, "weight": [1.0, 2.0, 0.5, 1.5]},
                       lambda r, s: _labels(r, *s)),
                      ({"label_smoothing": 0.2, "weight": [1.0, 2.0, 0.5, 1.5]}, _probabilities),
                      ({"reduction": "none"}, lambda r, s: _labels(r, *s))],
    "nll": [({}, lambda r, s: _labels(r, *s)), ({"weight": [1.0, 2.0, 0.5, 1.5], "ignore_index": 0}, lambda r, s: _labels(r, *s)),
            ({"reduction": "sum"}, lambda r, s: _labels(r, *s))],
    "kl_div": [({}, _probabilities), ({"reduction": "batchmean"}, _probabilities),
               ({"reduction": "sum", "log_target": True}, lambda r, s: np.log(_probabilities(r, s)))],
    "mse": [({}, lambda r, s: r.standard_normal(s)), ({"reduction": "sum"}, lambda r, s: r.standard_normal(s)),
            ({"reduction": "batchmean"}, lambda r, s: r.standard_normal(s))],
    "mae": [({}, lambda r, s: r.standard_normal(s)), ({"reduction": "sum"}, lambda r, s: r.standard_normal(s))],
    "huber": [({"delta": 0.7}, lambda r, s: r.standard_normal(s)), ({"reduction": "sum"}, lambda r, s: r.standard_normal(s))],
    "bce_with_logits": [({}, lambda r, s: r.uniform(0, 1, s)),
                        ({"reduction": "batchmean"}, lambda r, s: r.uniform(0, 1, s)),
                        ({"pos_weight": [2.0, 0.5, 1.0, 3.0], "weight": [0.5, 1.0, 2.0, 1.5]},
                         lambda r, s: r.uniform(0, 1, s)),
                        ({"reduction": "none"}, lambda r, s: r.uniform(0, 1, s))],
}


# Layers that read another layer (final_state reads the recurrent layer before it): checked in a
# model by the test named here, not alone.
CHECKED_IN_A_MODEL = {"final_state": "test_final_state_gradients_reach_the_recurrent_layer"}


def test_every_registered_layer_and_loss_has_a_gradient_sample():
    assert set(registry().names("layer")) <= {name for name, _, _ in LAYER_SAMPLES.values()} | _plugin_names(
        "layer") | set(CHECKED_IN_A_MODEL)
    assert set(registry().names("loss")) <= set(LOSS_SAMPLES) | set(SHAPED_LOSS_SAMPLES) | _plugin_names("loss")


def _plugin_names(kind):
    return {name for name, entry in registry().items[kind].items() if not entry.source.startswith("numdl")}


@pytest.mark.parametrize("sample", sorted(LAYER_SAMPLES))
def test_layer_gradients(sample):
    name, kwargs, shape = LAYER_SAMPLES[sample]
    layer = kwargs() if callable(kwargs) else registry().get("layer", name)(**kwargs)
    assert layer.name == name
    lengths = PADDED_LENGTHS if sample.endswith("padded") else None
    errors = check_layer_gradients(layer, shape, batch_size=3, seed=1, lengths=lengths,
                                   training=not sample.endswith("-eval"))
    inputs = {f"input{i}" for i in range(len(shape))} if isinstance(shape, list) else \
        (set() if name == "embedding" else {"input"})
    assert set(errors) == set(layer.named_parameters()) | inputs


def _pixel_labels(rng, shape):
    labels = rng.integers(0, shape[1], (shape[0],) + shape[2:])
    labels[0, 0, 1] = 255  # an ignored pixel
    return labels


def _boxes(rng, shape):
    boxes = np.full((shape[0], 3, 5), -1.0)
    boxes[:, 0] = [1, 2, 9, 10, 0]
    boxes[0, 1] = [10, 3, 20, 15, shape[1] - 5]
    return boxes


# losses whose predictions are not (6, 4): name -> [(kwargs, prediction shape, target factory)]
SHAPED_LOSS_SAMPLES = {
    "pixel_cross_entropy": [({"ignore_index": 255}, (3, 4, 2, 5), _pixel_labels),
                            ({"ignore_index": 255, "weight": [1, 2, 0.5, 1], "dice_weight": 0.8}, (3, 4, 2, 5),
                             _pixel_labels),
                            ({"ignore_index": 255, "reduction": "sum"}, (2, 3, 3, 3), _pixel_labels)],
    "cross_entropy": [({"class_axis": 1, "ignore_index": 255, "label_smoothing": 0.1}, (3, 4, 2, 5), _pixel_labels),
                      ({"class_axis": 1, "reduction": "sum"}, (2, 3, 4), lambda r, s: r.integers(0, 3, (2, 4))),
                      ({}, (2, 5, 3), lambda r, s: r.integers(0, 3, (2, 5)))],  # per-step (N, T, C)
    "nll": [({"class_axis": 1, "ignore_index": 255}, (3, 4, 2, 5), _pixel_labels)],
    "centernet": [({"stride": 4}, (2, 7, 5, 6), _boxes), ({"stride": 2, "size_weight": 0.5}, (2, 6, 8, 9), _boxes)],
}


@pytest.mark.parametrize("name, index", [(n, i) for n, samples in sorted(SHAPED_LOSS_SAMPLES.items())
                                         for i in range(len(samples))])
def test_shaped_loss_gradients(name, index):
    kwargs, shape, make_target = SHAPED_LOSS_SAMPLES[name][index]
    rng = np.random.default_rng(index)
    pred = rng.standard_normal(shape) * 2
    check_loss_gradients(registry().get("loss", name)(**kwargs), pred, make_target(rng, shape))


@pytest.mark.parametrize("name, index", [(n, i) for n, samples in sorted(LOSS_SAMPLES.items())
                                         for i in range(len(samples))])
def test_loss_gradients(name, index):
    kwargs, make_target = LOSS_SAMPLES[name][index]
    rng = np.random.default_rng(index)
    pred = rng.standard_normal((6, 4)) * 2
    loss = registry().get("loss", name)(**kwargs)
    check_loss_gradients(loss, pred, make_target(rng, pred.shape))


def test_gradient_check_catches_a_wrong_backward():
    from numdl.layers import Tanh

    class WrongTanh(Tanh):
        name = "wrong_tanh"

        def backward(self, dout):
            return super().backward(dout) * 1.01

    with pytest.raises(AssertionError, match="wrong_tanh.*input"):
        check_layer_gradients(WrongTanh(), (4,))


def test_gradient_check_names_the_wrong_parameter():
    from numdl.layers import Linear

    class WrongBias(Linear):
        name = "wrong_bias"

        def backward(self, dout):
            dx = super().backward(dout)
            self.params["bias"].grad[0] += 0.5
            return dx

    with pytest.raises(AssertionError, match="parameter 'bias'"):
        check_layer_gradients(WrongBias(3), (4,))


@pytest.mark.parametrize("which", ["h", "c"])
def test_final_state_gradients_reach_the_recurrent_layer(which):
    """sum(FinalState(which)(lstm(x)) * g) against central differences for x and every LSTM weight:
    two stacked bidirectional projected layers, padded samples."""
    import numdl
    from numdl.testing import numeric_gradient

    x_in = numdl.Input((4, 3))
    lstm = numdl.LSTM(3, num_layers=2, bidirectional=True, return_sequences=True, proj_size=2)
    model = numdl.Model(x_in, numdl.FinalState(which)(lstm(x_in)), dtype="float64", seed=2, input_grad=True)
    rng = np.random.default_rng(3)
    x, lengths = rng.standard_normal((3, 4, 3)), np.array([4, 2, 3])
    g = rng.standard_normal((3,) + model.output_shape)

    def objective():
        return float((model.forward(x, training=True, lengths=lengths) * g).sum())

    objective()
    dx = model.backward(g).copy()
    np.testing.assert_allclose(dx, numeric_gradient(objective, x), rtol=1e-5, atol=1e-7)
    for name, p in lstm.params.items():
        objective()
        model.backward(g)
        analytic = p.grad.copy()
        np.testing.assert_allclose(analytic, numeric_gradient(objective, p.value), rtol=1e-5, atol=1e-7,
                                   err_msg=name)
