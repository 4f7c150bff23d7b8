"""The Ops contract: everything layers, losses and optimizers may ask of a device.

Layers hold arrays of the backend's kind (NumPy arrays on the CPU, device arrays on CUDA) and never
touch kernels; they call these methods, which fix argument order (outputs first), cast scalars to the
array dtype (no float64 constants sneaking into float32 kernels), and hand over to ``_run``. A
backend only implements memory (``empty``, ``asarray``, ``to_numpy``) and ``_call``.
"""

import importlib
import math

import numpy as np

ELEMENTWISE_ACTIVATIONS = ("relu", "leaky_relu", "sigmoid", "tanh", "gelu", "gelu_tanh")


class Ops:
    name = "base"
    #: Whether transposed convolutions use their GEMM work buffers (the CPU does; the CUDA twin
    #: convolves directly).
    uses_im2col = False

    def __init__(self):
        self._nothing = {}
        self._kernels = {}
        self._non_finite_counts = {}  # dtype -> the (1,) result buffer
        self._chain_scalars = (None, None, None)  # dense_chain_train's last (key, ceiling, smoothing)

    # ------------------------------------------------------------------------------- memory
    def empty(self, shape, dtype):
        raise NotImplementedError

    def zeros(self, shape, dtype):
        raise NotImplementedError

    def asarray(self, array, dtype=None):
        """Bring a host array onto this device (no copy where it already is one of ours)."""
        raise NotImplementedError

    def to_numpy(self, array):
        raise NotImplementedError

    def nothing(self, dtype, ndim=1):
        """The empty array that stands for an absent optional argument (no bias, no dx). It has the
        rank of the array it replaces, so the kernel keeps one compiled version for both cases."""
        key = (dtype, ndim)  # dtype objects hash; no np.dtype() call on this per-kernel path
        array = self._nothing.get(key)
        if array is None:
            array = self._nothing[key] = self.empty((0,) * ndim, dtype)
        return array

    @staticmethod
    def scalar(value, dtype):
        try:  # an np.dtype (what kernels' callers pass): no isinstance test on this per-step path
            return dtype.type(value)
        except AttributeError:  # a scalar type such as np.float32
            return np.dtype(dtype).type(value)

    @staticmethod
    def flat(array):
        return array.reshape(-1)

    # ----------------------------------------------------------------------------- dispatch
    def _run(self, family, op, work_items, *args, per_sample=False):
        """Run kernel ``<op>_<self.name>`` of ``numdl.kernels.<family>`` over ``work_items`` items
        (``per_sample``: work_items samples, one GPU block each, as the recurrent kernels expect)."""
        key = (family, op)
        kernel = self._kernels.get(key)
        if kernel is None:
            module = importlib.import_module(f"numdl.kernels.{family}")
            kernel = self._kernels[key] = getattr(module, f"{op}_{self.name}")
        self._call(kernel, work_items, args, per_sample)

    def run_kernels(self, cpu_kernel, cuda_kernel, work_items, *args):
        """Run a plugin's own kernel pair: ``cpu_kernel(*args)`` on the CPU, ``cuda_kernel`` launched
        grid-stride over ``work_items`` on a GPU. Scalars should already have the arrays' dtype."""
        kernel = cpu_kernel if self.name == "cpu" else cuda_kernel
        if kernel is None:
            from numdl.errors import DeviceError

            raise DeviceError(f"{cpu_kernel.__name__} has no CUDA twin: this plugin item is CPU-only")
        self._call(kernel, work_items, args, False)

    def _call(self, kernel, work_items, args, per_sample):
        """Call or launch one kernel; ``work_items`` sizes a GPU grid, the CPU ignores it."""
        raise NotImplementedError

    def zero_(self, array):
        """Set every element of ``array`` to zero, in place."""
        raise NotImplementedError

    def step_finished(self, samples, seconds):
        """A training step of ``samples`` took ``seconds`` (the CPU backend's --threads auto times them)."""

    # ------------------------------------------------------------------------------- linear
    def linear_forward(self, out, x, weight, bias, relu=False):
        """relu: apply a fused ReLU to the output."""
        bias = self.nothing(x.dtype) if bias is None else bias
        self._run("linear", "linear_forward", out.size, out, x, weight, bias, bool(relu))

    def linear_backward(self, dx, dweight, dbias, dout, x, weight, out=None, dmasked=None):
        """dx or dbias None: that gradient is not computed. With a fused ReLU, pass the forward's
        ``out`` and ``dmasked``, scratch shaped like dout."""
        dx = self.nothing(x.dtype, ndim=2) if dx is None else dx
        dbias = self.nothing(x.dtype) if dbias is None else dbias
        relu = out is not None
        out = self.nothing(x.dtype, ndim=2) if out is None else out
        dmasked = self.nothing(x.dtype, ndim=2) if dmasked is None else dmasked
        work = dweight.size + dbias.size + dx.size
        self._run("linear", "linear_backward", work, dx, dweight, dbias, dmasked, dout, out, x, weight, relu)

    def dense_chain_forward(self, out, bad, x, params, table, scratch):
        """Inference through a chain of Linear layers and their activations in one kernel call
        (kernels/dense_chain: x and out (n, features), params a flat parameter buffer, table the
        layers' rows, scratch (2, >= n * widest hidden layer)); overwrites out, and bad (1,) of x's
        dtype with the number of non-finite values in x."""
        if self.name != "cpu":
            self.zero_(bad)  # the CPU kernel overwrites it; the CUDA twin adds to it
        self._run("dense_chain", "dense_chain_forward", x.shape[0], self.flat(out), bad, self.flat(x), params, table,
                  scratch, per_sample=True)

    def dense_chain_train(self, grads, stats, acts, deltas, logits, probs, x, labels, params, table, rates,
                          class_weights, smoothing, ignore_index, mean, adam=None, loss_ceiling=math.inf):
        """One training step's forward, hard-label cross-entropy and backward through a chain of Linear
        layers in one kernel call (kernels/dense_chain, "Training"): writes the chain's gradients into
        the flat gradient buffer ``grads`` and (loss, correct, non-finite gradients, labels out of range,
        stepped) into ``stats`` (5,). ``adam``: None, or (exp_avg, exp_avg_sq, constants, decoupled,
        maximize) of an Adam step over all of ``params`` that the kernel then takes unless a gradient
        or the loss is not finite or the loss is above ``loss_ceiling``."""
        dtype = params.dtype
        if adam is None:
            none = self.nothing(dtype)
            adam = (none, none, none, False, False)
        exp_avg, exp_avg_sq, constants, decoupled, maximize = adam
        key = (loss_ceiling, smoothing, dtype)
        scalars = self._chain_scalars  # (one read: another thread's step may replace it meanwhile)
        if scalars[0] != key:  # the same from step to step: converted once (~1 us a step)
            ceiling = dtype.type(loss_ceiling)
            if ceiling > loss_ceiling:  # rounded down: loss <= ceiling in the kernel iff loss <= loss_ceiling
                ceiling = np.nextafter(ceiling, dtype.type(-np.inf))
            scalars = self._chain_scalars = (key, ceiling, self.scalar(smoothing, dtype))
        _, ceiling, smoothing = scalars
        # one work item: the CUDA twin runs in one block (its phases synchronise all of its threads)
        self._run("dense_chain", "dense_chain_train", 1, grads, stats, acts, deltas, logits, probs, self.flat(x),
                  labels, params, table, rates, class_weights, smoothing, int(ignore_index),
                  bool(mean), exp_avg, exp_avg_sq, constants, bool(decoupled), bool(maximize), ceiling,
                  self.dense_chain_partials(grads, x.shape[0]), per_sample=True)

    def dense_chain_partials(self, grads, samples):
        """dense_chain_train's per-thread weight-gradient sums for a batch of ``samples``: (threads - 1,
        grads.size), or empty (the kernel then shares each product between the threads). None here."""
        return self.nothing(grads.dtype, 2)

    @staticmethod
    def dense_chain_activation_codes():
        """{activation kernel name: code} for dense_chain_forward's table (0: no activation)."""
        from numdl.kernels.dense_chain import ACTIVATION_CODES

        return ACTIVATION_CODES

    # --------------------------------------------------------------------------- activation
    def activation_forward(self, kind, out, x, slope=None):
        """Element-wise activation ``kind`` (one of ELEMENTWISE_ACTIVATIONS); overwrites out."""
        extra = () if slope is None else (self.scalar(slope, x.dtype),)
        self._run("activation", f"{kind}_forward", x.size, self.flat(out), self.flat(x), *extra)

    def activation_backward(self, kind, dx, dout, saved, slope=None):
        """``saved`` is the input for relu/leaky_relu/gelu, the output for sigmoid/tanh."""
        extra = () if slope is None else (self.scalar(slope, saved.dtype),)
        args = (self.flat(dx), self.flat(dout), self.flat(saved), *extra)
        self._run("activation", f"{kind}_backward", saved.size, *args)

    def softmax_forward(self, out, x):
        """out, x (outer, classes, inner): softmax along axis 1 (a class-last array is (rows, C, 1))."""
        self._run("activation", "softmax_forward", x.shape[0] * x.shape[2], out, x)

    def softmax_backward(self, dx, dout, out):
        self._run("activation", "softmax_backward", out.shape[0] * out.shape[2], dx, dout, out)

    def log_softmax_forward(self, out, x):
        """out, x (outer, classes, inner): log-softmax along axis 1."""
        self._run("activation", "log_softmax_forward", x.shape[0] * x.shape[2], out, x)

    def log_softmax_backward(self, dx, dout, out):
        self._run("activation", "log_softmax_backward", out.shape[0] * out.shape[2], dx, dout, out)

    def dropout_forward(self, out, mask, x, p, seed, offset):
        dtype = x.dtype
        args = (self.flat(out), self.flat(mask), self.flat(x), np.float32(p),
                self.scalar(1.0 / (1.0 - p), dtype), np.uint64(seed), np.uint64(offset))
        self._run("dropout", "dropout_forward", x.size, *args)

    def dropout_backward(self, dx, dout, mask):
        self._run("dropout", "dropout_backward", dout.size, self.flat(dx), self.flat(dout), self.flat(mask))

    # ------------------------------------------------------------------- gaussian (VAE) sampling
    def gaussian_sample_forward(self, out, noise, kl, x, sample, seed, offset):
        """x (N, 2L) means then log-variances -> out (N, L): mean + exp(log_var / 2) * noise (noise
        from the stream (seed, offset) when ``sample``, else zeros), kl (N,) per-sample KL divergence."""
        self._run("gaussian", "gaussian_sample_forward", out.size, out, noise, x, bool(sample), np.uint64(seed),
                  np.uint64(offset))
        self._run("gaussian", "gaussian_kl_forward", x.shape[0], kl, x)

    def gaussian_sample_backward(self, dx, dout, x, noise, kl_weight):
        """dx of out and of kl_weight * sum(kl) (kl_weight: the term's weight over the batch size)."""
        self._run("gaussian", "gaussian_sample_backward", dout.size, dx, dout, x, noise,
                  self.scalar(kl_weight, x.dtype))

    # -------------------------------------------------------------------------------- losses
    def cross_entropy_forward(self, sample_loss, sample_weight, probs, logits, labels, class_weights,
                              smoothing, ignore_index):
        """logits, probs (outer, C, inner); labels, sample_loss, sample_weight (outer, inner)."""
        self._run("loss", "cross_entropy_forward", sample_loss.size, sample_loss, sample_weight, probs, logits,
                  labels, class_weights, self.scalar(smoothing, logits.dtype), int(ignore_index))

    def cross_entropy_backward(self, dlogits, probs, labels, class_weights, smoothing, ignore_index, upstream):
        """upstream: (outer, inner) per-position factors, or (1, 1) holding the reduction's scale."""
        self._run("loss", "cross_entropy_backward", labels.size, dlogits, probs, labels, class_weights,
                  self.scalar(smoothing, probs.dtype), int(ignore_index), upstream)

    def soft_cross_entropy_forward(self, sample_loss, probs, logits, targets, class_weights, smoothing):
        """Probability targets (outer, C, inner), as the logits."""
        self._run("loss", "soft_cross_entropy_forward", sample_loss.size, sample_loss, probs, logits, targets,
                  class_weights, self.scalar(smoothing, logits.dtype))

    def soft_cross_entropy_backward(self, dlogits, probs, targets, class_weights, smoothing, upstream):
        self._run("loss", "soft_cross_entropy_backward", probs.shape[0] * probs.shape[2], dlogits, probs, targets,
                  class_weights, self.scalar(smoothing, probs.dtype), upstream)

    def nll_forward(self, sample_loss, sample_weight, log_probs, labels, class_weights, ignore_index):
        self._run("loss", "nll_forward", sample_loss.size, sample_loss, sample_weight, log_probs, labels,
                  class_weights, int(ignore_index))

    def nll_backward(self, dlog_probs, labels, class_weights, ignore_index, upstream):
        self._run("loss", "nll_backward", labels.size, dlog_probs, labels, class_weights, int(ignore_index),
                  upstream)

    def pixel_cross_entropy_forward(self, pixel_loss, pixel_weight, probs, logits, labels, class_weights,
                                    ignore_index):
        """(N, C, P) logits, (N, P) int64 labels; see numdl.kernels.segmentation."""
        self._run("segmentation", "pixel_cross_entropy_forward", pixel_loss.size, pixel_loss, pixel_weight, probs,
                  logits, labels, class_weights, int(ignore_index))

    def pixel_cross_entropy_backward(self, dlogits, probs, labels, class_weights, ignore_index, scale):
        self._run("segmentation", "pixel_cross_entropy_backward", dlogits.size, dlogits, probs, labels, class_weights,
                  int(ignore_index), self.scalar(scale, probs.dtype))

    def pixel_argmax(self, pred, logits):
        """pred (N, P), the logits' dtype: each pixel's predicted class, from (N, C, P) logits."""
        self._run("segmentation", "pixel_argmax_forward", pred.size, pred, logits)

    def dice_statistics(self, stats, probs, labels, ignore_index):
        self._run("segmentation", "dice_statistics_forward", stats.shape[0], stats, probs, labels, int(ignore_index))

    def dice_backward(self, dlogits, probs, labels, stats, eps, scale, ignore_index):
        self._run("segmentation", "dice_backward", labels.size, dlogits, probs, labels, stats,
                  self.scalar(eps, probs.dtype), self.scalar(scale, probs.dtype), int(ignore_index))

    def centernet_forward(self, terms, pred, heat, regression, index):
        """pred (N, C + 4, P); see numdl.kernels.detection."""
        self._run("detection", "centernet_forward", terms.shape[0], terms, pred, heat, regression, index)

    def centernet_backward(self, dpred, pred, heat, regression, index, scale_focal, scale_size, scale_offset):
        dtype = pred.dtype
        self._run("detection", "centernet_backward", dpred.size, dpred, pred, heat, regression, index,
                  self.scalar(scale_focal, dtype), self.scalar(scale_size, dtype), self.scalar(scale_offset, dtype))

    def heatmap_peaks(self, scores, heat):
        self._run("detection", "heatmap_peaks_forward", heat.size, scores, heat)

    def nms(self, keep, boxes, scores, classes, threshold):
        self._run("detection", "nms_forward", boxes.shape[0], keep, boxes, scores, classes,
                  self.scalar(threshold, boxes.dtype))

    def elementwise_loss_forward(self, kind, terms, pred, target, *params):
        """terms = the element losses of ``kind`` ('mse', 'mae', 'huber' (params: delta),
        'bce_with_logits' (params: weight, pos_weight arrays) or 'kl_div' (params: log_target))."""
        self._run("loss", f"{kind}_forward", pred.size, self.flat(terms), self.flat(pred), self.flat(target),
                  *self._loss_params(params, pred.dtype))

    def elementwise_loss_backward(self, kind, dpred, pred, target, scale, *params):
        self._run("loss", f"{kind}_backward", pred.size, self.flat(dpred), self.flat(pred),
                  self.flat(target), self.scalar(scale, pred.dtype), *self._loss_params(params, pred.dtype))

    def _loss_params(self, params, dtype):
        # Flags stay bools, numbers take the arrays' dtype, arrays go flat.
        return [p if isinstance(p, bool) else self.scalar(p, dtype) if isinstance(p, (int, float)) else self.flat(p)
                for p in params]

    # ----------------------------------------------------------------------------- optimizers
    def sgd_step(self, param, momentum_buf, grad, lr, momentum, dampening, weight_decay, nesterov,
                 first_step):
        d = param.dtype
        self._run("optim", "sgd_step", param.size, self.flat(param), self.flat(momentum_buf),
                  self.flat(grad), self.scalar(lr, d), self.scalar(momentum, d), self.scalar(dampening, d),
                  self.scalar(weight_decay, d), bool(nesterov), bool(first_step))

    def adam_step(self, param, exp_avg, exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay,
                  decoupled, bias_correction1, bias_correction2, max_exp_avg_sq=None, maximize=False):
        """max_exp_avg_sq: amsgrad's running maximum (None: plain Adam)."""
        d = param.dtype
        amsgrad = max_exp_avg_sq is not None
        maximum = self.flat(max_exp_avg_sq) if amsgrad else self.nothing(d)
        self._run("optim", "adam_step", param.size, self.flat(param), self.flat(exp_avg),
                  self.flat(exp_avg_sq), maximum, self.flat(grad), self.scalar(lr, d), self.scalar(beta1, d),
                  self.scalar(beta2, d), self.scalar(eps, d), self.scalar(weight_decay, d),
                  bool(decoupled), self.scalar(bias_correction1, d), self.scalar(bias_correction2, d), amsgrad,
                  bool(maximize))

    def adagrad_step(self, param, state_sum, grad, clr, eps, weight_decay, maximize):
        d = param.dtype
        self._run("optim", "adagrad_step", param.size, self.flat(param), self.flat(state_sum), self.flat(grad),
                  self.scalar(clr, d), self.scalar(eps, d), self.scalar(weight_decay, d), bool(maximize))

    def adamax_step(self, param, exp_avg, exp_inf, grad, clr, beta1, beta2, eps, weight_decay, maximize):
        d = param.dtype
        self._run("optim", "adamax_step", param.size, self.flat(param), self.flat(exp_avg), self.flat(exp_inf),
                  self.flat(grad), self.scalar(clr, d), self.scalar(beta1, d), self.scalar(beta2, d),
                  self.scalar(eps, d), self.scalar(weight_decay, d), bool(maximize))

    def nadam_step(self, param, exp_avg, exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                   bias_correction2, grad_coefficient, momentum_coefficient, maximize):
        d = param.dtype
        self._run("optim", "nadam_step", param.size, self.flat(param), self.flat(exp_avg), self.flat(exp_avg_sq),
                  self.flat(grad), *(self.scalar(v, d) for v in (lr, beta1, beta2, eps, weight_decay)),
                  bool(decoupled), *(self.scalar(v, d) for v in (bias_correction2, grad_coefficient,
                                                                  momentum_coefficient)), bool(maximize))

    def radam_step(self, param, exp_avg, exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, decoupled,
                   bias_correction1, bias_correction2, rect, rectified, maximize):
        d = param.dtype
        self._run("optim", "radam_step", param.size, self.flat(param), self.flat(exp_avg), self.flat(exp_avg_sq),
                  self.flat(grad), *(self.scalar(v, d) for v in (lr, beta1, beta2, eps, weight_decay)),
                  bool(decoupled), *(self.scalar(v, d) for v in (bias_correction1, bias_correction2, rect)),
                  bool(rectified), bool(maximize))

    def rmsprop_step(self, param, square_avg, grad_avg, momentum_buf, grad, lr, alpha, eps, weight_decay,
                     momentum, centered):
        d = param.dtype
        self._run("optim", "rmsprop_step", param.size, self.flat(param), self.flat(square_avg),
                  self.flat(grad_avg), self.flat(momentum_buf), self.flat(grad), self.scalar(lr, d),
                  self.scalar(alpha, d), self.scalar(eps, d), self.scalar(weight_decay, d),
                  self.scalar(momentum, d), bool(centered))

    # ----------------------------------------------------------------------------- convolution
    def conv2d_forward(self, out, x, weight, bias, stride, padding, dilation, groups, relu):
        """stride, padding, dilation: (h, w) pairs; see numdl.kernels.conv."""
        bias = self.nothing(x.dtype) if bias is None else bias
        self._run("conv", "conv2d_forward", out.size, out, x, weight, bias, *stride, *padding, *dilation, int(groups),
                  bool(relu))

    def conv2d_backward(self, dx, dweight, dbias, dout, out, x, weight, stride, padding, dilation, groups, relu):
        """dx, dbias: None when not wanted; out: forward's output (read for a fused ReLU's mask)."""
        dx = self.nothing(x.dtype, ndim=4) if dx is None else dx
        dbias = self.nothing(x.dtype) if dbias is None else dbias
        work = dweight.size + dbias.size + dx.size
        self._run("conv", "conv2d_backward", work, dx, dweight, dbias, dout, out, x, weight, *stride, *padding,
                  *dilation, int(groups), bool(relu))

    def conv2d_pool_forward(self, out, pool_at, x, weight, bias, stride, padding, dilation, groups, relu):
        """conv2d_forward, its ReLU and a 2x2 max pooling at stride 2 in one pass: out is pooled and
        pool_at (int8, out's shape) records where each window's maximum is."""
        bias = self.nothing(x.dtype) if bias is None else bias
        self._run("conv", "conv2d_pool_forward", out.size, out, pool_at, x, weight, bias, *stride, *padding,
                  *dilation, int(groups), bool(relu))

    def conv2d_pool_backward(self, dx, dweight, dbias, dout, out, pool_at, x, weight, stride, padding, dilation, groups,
                             relu):
        """conv2d_backward of conv2d_pool_forward: dout and out (the pooled output) and pool_at pooled."""
        dx = self.nothing(x.dtype, ndim=4) if dx is None else dx
        dbias = self.nothing(x.dtype) if dbias is None else dbias
        work = dweight.size + dbias.size + dx.size
        self._run("conv", "conv2d_pool_backward", work, dx, dweight, dbias, dout, out, pool_at, x, weight, *stride,
                  *padding, *dilation, int(groups), bool(relu))

    def conv_transpose2d_forward(self, out, xt, cols, x, weight, bias, stride, padding, dilation, groups):
        """xt (C_in, N H W) is kept for backward; cols is CPU scratch (both may be empty on CUDA)."""
        bias = self.nothing(x.dtype) if bias is None else bias
        self._run("conv_transpose", "conv_transpose2d_forward", out.size, out, xt, cols, x, weight, bias, *stride,
                  *padding, *dilation, int(groups))

    def conv_transpose2d_backward(self, dx, dweight, dbias, dcols, dxt, dout, x, xt, weight, stride, padding,
                                  dilation, groups):
        dx = self.nothing(x.dtype, ndim=4) if dx is None else dx
        dbias = self.nothing(x.dtype) if dbias is None else dbias
        work = dweight.size + dbias.size + dx.size
        self._run("conv_transpose", "conv_transpose2d_backward", work, dx, dweight, dbias, dcols, dxt, dout, x, xt,
                  weight, *stride, *padding, *dilation, int(groups))

    # ------------------------------------------------------------------------------ resampling
    def upsample_forward(self, out, x, scale, bilinear, align_corners):
        """scale: (h, w) source-per-output ratios (see numdl.kernels.upsample)."""
        self._run("upsample", "upsample_forward", out.size, out, x, self.scalar(scale[0], x.dtype),
                  self.scalar(scale[1], x.dtype), bool(bilinear), bool(align_corners))

    def upsample_backward(self, dx, dout, scale, bilinear, align_corners):
        self.zero_(dx)  # the kernels accumulate
        self._run("upsample", "upsample_backward", dout.size, dx, dout, self.scalar(scale[0], dout.dtype),
                  self.scalar(scale[1], dout.dtype), bool(bilinear), bool(align_corners))

    # ---------------------------------------------------------------------------------- layout
    def concat_forward(self, out, x, offset):
        """out and x viewed as (R, width) (see numdl.kernels.layout); x's block starts at ``offset``."""
        self._run("layout", "concat_forward", x.size, out, x, int(offset))

    def concat_backward(self, dx, dout, offset):
        self._run("layout", "concat_backward", dx.size, dx, dout, int(offset))

    def pad2d_forward(self, out, x, top, left):
        self._run("layout", "pad2d_forward", out.size, out, x, int(top), int(left))

    def pad2d_backward(self, dx, dout, top, left):
        self._run("layout", "pad2d_backward", dx.size, dx, dout, int(top), int(left))

    #: pad2d_mode's modes (numdl.kernels.layout)
    PADDING_MODES = {"reflect": 1, "replicate": 2, "circular": 3}

    def pad2d_mode_forward(self, out, x, top, left, mode):
        """Pad x into out copying image pixels as ``mode`` (reflect, replicate, circular) says."""
        self._run("layout", "pad2d_mode_forward", out.size, out, x, int(top), int(left), self.PADDING_MODES[mode])

    def pad2d_mode_backward(self, dx, dout, top, left, mode):
        self.zero_(dx)  # the CUDA twin adds into it with atomics
        self._run("layout", "pad2d_mode_backward", dout.size, dx, dout, int(top), int(left), self.PADDING_MODES[mode])

    # --------------------------------------------------------------------------------- pooling
    def maxpool2d_forward(self, out, argmax, x, kernel, stride, padding, dilation=(1, 1)):
        self._run("pool", "maxpool2d_forward", out.size, out, argmax, x, *kernel, *stride, *padding, *dilation)

    def maxpool2d_backward(self, dx, dout, argmax, kernel, stride, padding, dilation=(1, 1)):
        self._run("pool", "maxpool2d_backward", dx.size, dx, dout, argmax, *kernel, *stride, *padding, *dilation)

    def avgpool2d_forward(self, out, x, kernel, stride, padding, count_include_pad=True):
        self._run("pool", "avgpool2d_forward", out.size, out, x, *kernel, *stride, *padding, bool(count_include_pad))

    def avgpool2d_backward(self, dx, dout, kernel, stride, padding, count_include_pad=True):
        self._run("pool", "avgpool2d_backward", dx.size, dx, dout, *kernel, *stride, *padding,
                  bool(count_include_pad))

    def adaptive_pool2d_forward(self, kind, out, x, argmax=None):
        """kind "avg" or "max" (argmax: the (N, C, H_out, W_out) int64 flat indices of the maxima)."""
        args = (out, x) if kind == "avg" else (out, argmax, x)
        self._run("pool", f"adaptive_{kind}pool2d_forward", out.size, *args)

    def adaptive_pool2d_backward(self, kind, dx, dout, argmax=None):
        args = (dx, dout) if kind == "avg" else (dx, dout, argmax)
        self._run("pool", f"adaptive_{kind}pool2d_backward", dx.size, *args)

    # --------------------------------------------------------------------------- normalisation
    def batchnorm_train_forward(self, out, xhat, mean, invstd, running_mean, running_var, x, gamma, beta,
                                momentum, eps, relu=False):
        """x, out, xhat: (N, C, S) views; the rest per channel. Updates the running statistics.
        relu: apply a following ReLU in the same pass."""
        d = x.dtype
        self._run("norm", "batchnorm_train_forward", x.shape[1], out, xhat, mean, invstd, running_mean,
                  running_var, x, gamma, beta, self.scalar(momentum, d), self.scalar(eps, d), bool(relu))

    def batchnorm_eval_forward(self, out, x, running_mean, running_var, gamma, beta, eps, relu=False):
        self._run("norm", "batchnorm_eval_forward", x.shape[1], out, x, running_mean, running_var, gamma, beta,
                  self.scalar(eps, x.dtype), bool(relu))

    def batchnorm_backward(self, dx, dgamma, dbeta, dout, xhat, invstd, gamma, out=None):
        """out: the forward's output when it applied a ReLU (its gradient stops where out <= 0)."""
        dx = self.nothing(dout.dtype, ndim=3) if dx is None else dx
        relu = out is not None
        out = self.nothing(dout.dtype, ndim=3) if out is None else out
        self._run("norm", "batchnorm_backward", dout.shape[1], dx, dgamma, dbeta, dout, xhat, invstd, gamma, out,
                  relu)

    def batchnorm_pool_train_forward(self, out, pool_at, xhat, mean, invstd, running_mean, running_var, x, gamma,
                                     beta, momentum, eps, width, relu=False):
        """batchnorm_train_forward with a 2x2 max pooling at stride 2 after it (and its ReLU): x, xhat
        (N, C, S) views of (N, C, H, W) with W = width; out and pool_at (int8) (N, C, H // 2, W // 2)."""
        d = x.dtype
        self._run("norm", "batchnorm_pool_train_forward", x.shape[1], out, pool_at, xhat, mean, invstd, running_mean,
                  running_var, x, gamma, beta, self.scalar(momentum, d), self.scalar(eps, d), int(width), bool(relu))

    def batchnorm_pool_eval_forward(self, out, pool_at, x, running_mean, running_var, gamma, beta, eps, width,
                                    relu=False):
        self._run("norm", "batchnorm_pool_eval_forward", x.shape[1], out, pool_at, x, running_mean, running_var, gamma,
                  beta, self.scalar(eps, x.dtype), int(width), bool(relu))

    def batchnorm_pool_backward(self, dx, dgamma, dbeta, dout, out, pool_at, xhat, invstd, gamma, width, relu=False):
        """dout, out (the pooled output) and pool_at pooled; dx (None: not wanted) and xhat (N, C, S)."""
        dx = self.nothing(dout.dtype, ndim=3) if dx is None else dx
        self._run("norm", "batchnorm_pool_backward", xhat.shape[1], dx, dgamma, dbeta, dout, out, pool_at, xhat, invstd,
                  gamma, int(width), bool(relu))

    def layernorm_forward(self, out, xhat, invstd, x, gamma, beta, eps):
        """x, out, xhat: (R, D) views."""
        self._run("norm", "layernorm_forward", x.shape[0], out, xhat, invstd, x, gamma, beta,
                  self.scalar(eps, x.dtype))

    def layernorm_backward(self, dx, dgamma, dbeta, dout, xhat, invstd, gamma):
        dx = self.nothing(dout.dtype, ndim=2) if dx is None else dx
        work = (dout.shape[0] if dx.size else 0) + dout.shape[1]
        self._run("norm", "layernorm_backward", work, dx, dgamma, dbeta, dout, xhat, invstd, gamma)

    def groupnorm_forward(self, out, xhat, invstd, x, gamma, beta, eps):
        """x, out, xhat: (N, G, M) views; invstd (N, G); gamma, beta (C,)."""
        self._run("norm", "groupnorm_forward", x.shape[0] * x.shape[1], out, xhat, invstd, x, gamma, beta,
                  self.scalar(eps, x.dtype))

    def groupnorm_backward(self, dx, dgamma, dbeta, dout, xhat, invstd, gamma):
        dx = self.nothing(dout.dtype, ndim=3) if dx is None else dx
        work = (dout.shape[0] * dout.shape[1] if dx.size else 0) + dgamma.size
        self._run("norm", "groupnorm_backward", work, dx, dgamma, dbeta, dout, xhat, invstd, gamma)

    # ------------------------------------------------------------------------------- recurrent
    def recurrent_forward(self, kind, out, gates, cells, proj, hh, h_prev, x, lengths, w_ih, w_hh, b_ih, b_hh,
                          reverse, h0=None, c0=None, projection=None):
        """kind 'lstm' or 'gru'; one direction of one layer over the whole sequence; h0, c0 (N, H)
        initial states, or None for zeros. ``projection``: (w_hr, mids, m_step) of an LSTM with
        proj_size (numdl.kernels.recurrent), or None."""
        h0 = self.nothing(x.dtype, 2) if h0 is None else h0
        c0 = self.nothing(x.dtype, 2) if c0 is None else c0
        if projection is not None:
            w_hr, mids, m_step = projection
            self._run("recurrent", "lstm_projected_forward", x.shape[0], out, gates, cells, mids, proj, hh, h_prev,
                      m_step, x, lengths, w_ih, w_hh, w_hr, b_ih, b_hh, h0, c0, bool(reverse), per_sample=True)
            return
        self._run("recurrent", f"{kind}_forward", x.shape[0], out, gates, cells, proj, hh, h_prev, x, lengths,
                  w_ih, w_hh, b_ih, b_hh, h0, c0, bool(reverse), per_sample=True)

    def recurrent_gate_gradient_rows(self, kind, batch, steps):
        """Rows of recurrent_backward's ``dproj`` scratch (2, rows, G H) a layer of ``kind`` needs: one
        per sample and step (the CPU's LSTM kernel keeps its gate gradients per step and needs none)."""
        return batch * steps

    def recurrent_backward(self, kind, dx, dw_ih, dw_hh, db_ih, db_hh, scratch, dout, out, gates, cells, x, lengths,
                           w_ih, w_hh, reverse, dh0=None, dc0=None, h0=None, c0=None, projection=None, dcn=None):
        """``scratch``: (dproj, dstep, h_step, dh_next, dc_next). dx, dh0, dc0 None: not computed.
        ``projection``: (dw_hr, dh_all, dm_step, mids, w_hr) of an LSTM with proj_size, or None.
        ``dcn``: the LSTM's final cell state's gradient (N, H), or None (the gradient of h_n is the
        caller's to add to ``dout`` at the last valid steps)."""
        if kind == "lstm":  # the kernel reads dc_next on entry as dc_n
            dc_next = scratch[4]
            if dcn is None:
                self.zero_(dc_next)
            else:
                self.concat_forward(dc_next, dcn, 0)
        dx = self.nothing(x.dtype, ndim=3) if dx is None else dx
        dh0, dc0, h0, c0 = (self.nothing(x.dtype, 2) if a is None else a for a in (dh0, dc0, h0, c0))
        grads = (dw_ih, dw_hh, db_ih, db_hh) + ((projection[0],) if projection is not None else ())
        for grad in grads:
            self.zero_(grad)  # the CUDA twin accumulates across samples
        if projection is not None:
            dw_hr, dh_all, dm_step, mids, w_hr = projection
            self._run("recurrent", "lstm_projected_backward", x.shape[0], dx, dw_ih, dw_hh, dw_hr, db_ih, db_hh, dh0,
                      dc0, *scratch, dh_all, dm_step, dout, out, gates, cells, mids, x, lengths, w_ih, w_hh, w_hr, h0,
                      c0, bool(reverse), per_sample=True)
            return
        self._run("recurrent", f"{kind}_backward", x.shape[0], dx, dw_ih, dw_hh, db_ih, db_hh, dh0, dc0, *scratch,
                  dout, out, gates, cells, x, lengths, w_ih, w_hh, h0, c0, bool(reverse), per_sample=True)

    # -------------------------------------------------------------------------------- sequence
    def last_step_forward(self, out, x, lengths, split):
        self._run("sequence", "last_step_forward", out.size, out, x, lengths, int(split))

    def last_step_backward(self, dx, dout, lengths, split):
        self._run("sequence", "last_step_backward", dx.size, dx, dout, lengths, int(split))

    def mean_steps_forward(self, out, x, lengths):
        self._run("sequence", "mean_steps_forward", out.size, out, x, lengths)

    def mean_steps_backward(self, dx, dout, lengths):
        self._run("sequence", "mean_steps_backward", dx.size, dx, dout, lengths)

    def embedding_forward(self, out, indices, weight):
        self._run("sequence", "embedding_forward", out.size, out, indices, weight)

    def embedding_backward(self, dweight, dout, indices, padding_idx=-1):
        """padding_idx >= 0: that row gets no gradient."""
        self.zero_(dweight)  # the CUDA twin accumulates repeated indices with atomics
        self._run("sequence", "embedding_backward", dout.size, dweight, dout, indices, np.int64(padding_idx))

    def embedding_renorm(self, weight, rows, max_norm, norm_type):
        """Scale the rows ``rows`` (distinct int64 ids) of ``weight`` whose norm exceeds max_norm, in place."""
        self._run("sequence", "embedding_renorm", rows.size, weight, rows, self.scalar(max_norm, weight.dtype),
                  self.scalar(norm_type, weight.dtype))

    # ------------------------------------------------------------------------------- attention
    def attention_forward(self, ctx, probs, q_src, k_src, v_src, mask, lengths, heads, causal, scale, offsets,
                          keep=None):
        """offsets (q_off, k_off, v_off): where the projections start in q_src, k_src and v_src (see
        numdl.kernels.attention); mask (Tq, Tk) additive, or None; keep: dropout's multipliers of the
        weights (like probs), or None."""
        d = q_src.dtype
        mask = self.nothing(d, 2) if mask is None else mask
        keep = self.nothing(d, 4) if keep is None else keep
        self._run("attention", "attention_forward", q_src.shape[0] * heads * q_src.shape[1], ctx, probs, q_src, k_src,
                  v_src, mask, keep, lengths, int(heads), bool(causal), self.scalar(scale, d),
                  *(int(o) for o in offsets))

    def attention_backward(self, dq_src, dk_src, dv_src, dctx, probs, q_src, k_src, v_src, lengths, heads, causal,
                           scale, offsets, keep=None):
        """The gradients of q_src, k_src and v_src (one array for self-attention, as the sources)."""
        d = q_src.dtype
        keep = self.nothing(d, 4) if keep is None else keep
        steps = max(q_src.shape[1], k_src.shape[1])
        self._run("attention", "attention_backward", q_src.shape[0] * heads * steps, dq_src, dk_src, dv_src, dctx,
                  probs, keep, q_src, k_src, v_src, lengths, int(heads), bool(causal), self.scalar(scale, d),
                  *(int(o) for o in offsets))

    # ------------------------------------------------------------------------------ arithmetic
    def count_non_finite(self, values):
        """How many elements of ``values`` are inf or NaN (an int; one small copy back on a GPU)."""
        count = self._non_finite_counts.get(values.dtype)
        if count is None:
            count = self._non_finite_counts[values.dtype] = self.zeros((1,), values.dtype)
        self.zero_(count)  # the CPU kernel overwrites it; the CUDA twin adds to it
        self._run("check", "count_non_finite_forward", values.size, count, self.flat(values))
        return int(self.to_numpy(count)[0])

    def add(self, out, a, b):
        self._run("elementwise", "add_forward", out.size, self.flat(out), self.flat(a), self.flat(b))

    def multiply(self, out, a, b):
        self._run("elementwise", "multiply_forward", out.size, self.flat(out), self.flat(a), self.flat(b))

    def multiply_backward(self, da, db, dout, a, b):
        """da = dout * b, db = dout * a; either may be None (not computed)."""
        da = self.nothing(dout.dtype) if da is None else self.flat(da)
        db = self.nothing(dout.dtype) if db is None else self.flat(db)
        self._run("elementwise", "multiply_backward", dout.size, da, db, self.flat(dout), self.flat(a),
                  self.flat(b))

    def scale(self, out, a, factor):
        """out = a * factor."""
        self._run("elementwise", "scale_forward", out.size, self.flat(out), self.flat(a),
                  self.scalar(factor, a.dtype))

    def broadcast_add_forward(self, out, x, table):
        """out = x + table, with x and out viewed as (N, table.size)."""
        rows = (x.shape[0], table.size)
        self._run("elementwise", "broadcast_add_forward", out.size, out.reshape(rows), x.reshape(rows),
                  self.flat(table))

    def broadcast_add_backward(self, dtable, dout):
        self._run("elementwise", "broadcast_add_backward", dtable.size, self.flat(dtable),
                  dout.reshape(dout.shape[0], dtable.size))

    def swap_last_axes(self, out, x):
        """out (N, B, A) = x (N, A, B) with its last two axes swapped."""
        self._run("elementwise", "swap_last_axes_forward", x.size, out, x)

    # ------------------------------------------------------------------------------- helpers
    def sum(self, array):
        """Sum of all elements as a Python float (reductions outside the hot path)."""
        return float(self.to_numpy(array).sum(dtype=np.float64))
