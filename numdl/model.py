"""Sequential: a stack of layers with Keras-style ``fit``/``evaluate``/``predict``.

Its pieces are public, so a custom loop (a GAN, an autoencoder) is a few lines::

    logits = model.forward(x, training=True)
    loss = model.loss.forward(logits, y)
    model.backward(model.loss.backward())
    model.optimizer.step(model.parameters())

Data are validated once at the boundary (shape, dtype, NaN/Inf, labels), never inside the loop.
"""

import time

import numpy as np

from numdl import dense_chain
from numdl.backend import get_ops
from numdl.data import ondisk
from numdl.errors import ConfigError, DataError, ShapeError, TrainingDiverged
from numdl.layers.base import Parameter, ParameterBank
from numdl.layers.composite import fuse_runs

DTYPES = ("float32", "float64")


class Sequential:
    def __init__(self, layers, input_shape=None, dtype="float32", device="cpu", seed=0, input_grad=False,
                 fuse=True):
        """``input_grad=True`` makes ``backward`` return the gradient of the input too (a GAN's
        discriminator passes it on to the generator); otherwise the first layer skips that work.
        ``fuse``: a Linear, Conv2d or batch norm followed by a ReLU applies the ReLU itself, and a Conv2d
        or BatchNorm2d (and its ReLU) followed by a 2x2 max pooling at stride 2 applies the pooling too,
        inside composite layers as well (a residual block, a Transformer's feed-forward): the same
        numbers, fewer passes over memory each way."""
        if str(np.dtype(dtype)) not in DTYPES:
            raise ConfigError(f"model dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.layers = list(layers)
        if not self.layers:
            raise ConfigError("a model needs at least one layer")
        if type(self) is Sequential:
            joining = next((layer for layer in self.layers if getattr(layer, "many_inputs", False)), None)
            if joining is not None:
                raise ConfigError(f"layer {joining.name!r} joins several tensors: wire it in a graph model "
                                  f"(numdl.Model, or [[model.nodes]] in a config)")
        self.dtype = np.dtype(dtype)
        self.device = device
        self.ops = get_ops(device)
        self.seed = seed
        self.input_grad = input_grad
        self.fuse = fuse
        self.input_shape = self.output_shape = None
        self.loss = self.optimizer = None
        self.stop_training = False
        self.fit_position = None
        self.last_loss_terms = None  # {term: value} of the last loss, when layers add terms to it
        self.clip_grad_norm = 0.0  # > 0: gradients are scaled so their global L2 norm is at most this
        # train_step on a chain of dense layers with cross-entropy runs forward, loss and backward in
        # one kernel call (numdl.dense_chain); False: layer by layer (same results, for comparison)
        self.fused_training = True
        # > 0: a training step whose loss exceeds this many times the run's first loss stops training
        # (a finite but diverged run: Adam at lr 1e6 kept a loss of 5e5 and 0.10 accuracy for ever).
        self.divergence_factor = 0.0
        self.reference_loss = None  # the first (positive) training loss of the run; fit sets it
        # Data-parallel training sets this (numdl.distributed.GradientAverager): called with the flat
        # gradient buffer and the loss after backward, it averages both over the ranks.
        self.reduce_gradients = None
        if input_shape is not None:
            self.build(input_shape)

    # ------------------------------------------------------------------------------ set-up
    def build(self, input_shape):
        """Create every layer's parameters for samples of ``input_shape`` (no batch axis)."""
        rng = np.random.default_rng(self.seed)
        shape = tuple(int(d) for d in input_shape)
        self.input_shape = shape
        for index, layer in enumerate(self.layers):
            if hasattr(layer, "producer") and index > 0:  # final_state reads the layer before it
                layer.producer = self.layers[index - 1]
            try:
                shape = layer.build(shape, self.ops, self.dtype, rng)
            except ShapeError as error:
                raise ShapeError(f"model.layers.{index} ({layer.name}): {error}") from None
            except MemoryError:
                raise ConfigError(f"model.layers.{index} ({layer.name}): its parameters for input {shape} do not "
                                  f"fit in memory") from None
        self.output_shape = shape
        if self.fuse:  # ReLUs and 2x2 max poolings applied by the layer before them, nested ones too
            fuse_runs(self.layers)
        for path, param in self.named_parameters().items():
            param.path = path
        params = self.parameters()
        # One flat buffer for all values and one for all gradients (see ParameterBank).
        self._bank = ParameterBank(self.ops, params, self.dtype) if params else None
        self._chains = {}  # predict's and train_step's dense-chain plans: made again on first use
        # Backward stops at the first layer with parameters: nothing before it has a gradient to
        # receive, so e.g. a Linear after a Flatten skips its whole dx GEMM.
        trainable = [i for i, layer in enumerate(self.layers) if layer.parameters()]
        self._backward_from = 0 if self.input_grad else (trainable[0] if trainable else len(self.layers))
        for index, layer in enumerate(self.layers):
            layer.needs_input_grad = index > self._backward_from or self.input_grad
        return self

    def compile(self, loss, optimizer):
        """Attach a loss and an optimizer: instances, or registered names with default settings."""
        from numdl.plugins import registry

        self.loss = registry().get("loss", loss)() if isinstance(loss, str) else loss
        for part in getattr(self.loss, "losses", [self.loss]):
            if getattr(part, "reduction", None) == "none":
                raise ConfigError(f"loss {part.name!r} has reduction 'none' (one loss per position, for your own "
                                  f"weighting); training needs 'mean' or 'sum'")
        self.optimizer = registry().get("optimizer", optimizer)() if isinstance(optimizer, str) else optimizer
        return self

    @property
    def _input_dtype(self):
        """The model's dtype, or the first layer's own input dtype (integer ids for an embedding)."""
        return np.dtype(getattr(self.layers[0], "input_dtype", None) or self.dtype)

    @property
    def built(self):
        return self.input_shape is not None

    def parameters(self):
        return [p for layer in self.layers for p in layer.parameters()]

    def named_parameters(self):
        """{"<index>.<layer name>.<param>": Parameter}, stable across runs (for checkpoints)."""
        return {f"{i}.{layer.name}.{name}": p for i, layer in enumerate(self.layers)
                for name, p in layer.named_parameters().items()}

    def named_state(self):
        """{"<index>.<layer name>.<state>": array}: non-trained arrays (batch-norm statistics)."""
        return {f"{i}.{layer.name}.{name}": a for i, layer in enumerate(self.layers)
                for name, a in layer.named_state().items()}

    def _input_shapes(self):
        return [self.input_shape]

    def _input_dtypes(self):
        return [self._input_dtype]

    def parameter_count(self):
        return int(sum(np.prod(p.value.shape) for p in self.parameters()))

    # ---------------------------------------------------------------------------- running
    def forward(self, x, training=False, lengths=None):
        """Forward pass of one batch. ``lengths`` (one per sample) marks the valid steps of padded
        sequences for the layers that use them. A NumPy batch of another dtype is converted (and
        checked) as ``fit`` and ``predict`` convert theirs; the fast path is a batch already in the
        model's dtype (and on its device)."""
        if isinstance(x, np.ndarray) and x.dtype != self._input_dtype:
            x = self.ops.asarray(self.prepare(x, None, "input data")[0])
        self._check_batch(x)
        for layer in self.layers:
            if getattr(layer, "uses_lengths", False):
                layer.lengths = lengths
        for layer in self.layers:
            x = layer.forward(x, training)
        return x

    def backward(self, dout):
        """Backward pass from the gradient of the output; fills every parameter's ``grad``.

        Returns the gradient of the input when the model was made with ``input_grad=True``."""
        for layer in reversed(self.layers[self._backward_from:]):
            dout = layer.backward(dout)
        return dout if self.input_grad else None

    def train_step(self, x, y, lengths=None):
        """One optimizer step on a batch; returns (loss, number of correct predictions or None)."""
        started = time.perf_counter()
        if lengths is None and self.reduce_gradients is None and self.fused_training:
            chain = self._dense_chain(training=True)
            if chain is not None and chain.trains(self, x, y):
                return self._chain_train_step(chain, x, y, started)
        logits = self.forward(x, training=True, lengths=lengths)
        loss = self._with_added_losses(self.loss.forward(logits, y))
        if self.reduce_gradients is None:
            self._check_loss(loss, x, lengths)
            self.backward(self.loss.backward())
        else:  # data-parallel: every rank judges the same averaged loss and gradients (no rank waits alone)
            self.backward(self.loss.backward())
            loss = self.reduce_gradients(self._bank.grads, loss)
            self._check_loss(loss, x, lengths, "averaged over the ranks")
        if self.device == "cpu" and not self._gradients_finite():  # on a GPU: a copy per step
            self._raise_non_finite_gradient()
        correct = _count_correct(self.ops, logits, y, _class_axis(self.loss), self.loss)
        return loss, self._optimizer_step(x, started, correct)

    def _optimizer_step(self, x, started, correct):
        """train_step's end: clipping, the optimizer's step, the thread chooser's timing; returns correct."""
        if self.clip_grad_norm > 0:
            self.clip_gradients(self.clip_grad_norm)
        self.optimizer.step(self._bank.params if self._bank is not None else self.parameters())
        self.ops.step_finished(_count(x), time.perf_counter() - started)  # --threads auto times the steps
        return correct

    def _raise_non_finite_gradient(self):
        for name, p in self.named_parameters().items():
            if not np.isfinite(self.ops.to_numpy(p.grad)).all():
                raise TrainingDiverged(f"the gradient of {name} is not finite")

    def _chain_train_step(self, chain, x, y, started):
        """train_step of a dense chain through one kernel call (numdl.dense_chain): the same checks,
        errors and results as the layer path."""
        self.loss.ops = self.ops
        optimizer = self.optimizer
        adam, ceiling = None, np.inf
        if self.clip_grad_norm <= 0 and hasattr(optimizer, "kernel_step"):  # Adam's step inside the call
            adam = optimizer.kernel_step(self._bank.params, self._bank.values)
            ceiling = (self.divergence_factor * self.reference_loss if self.divergence_factor > 0
                       and self.reference_loss is not None and self.reference_loss > 0 else np.inf)
        loss, correct, non_finite, stepped = chain.train_step(self, x, y, adam, ceiling)
        self.last_loss_terms = None
        self._check_loss(loss, x, None)
        if non_finite:
            self._raise_non_finite_gradient()
        if not stepped:
            return loss, self._optimizer_step(x, started, correct)
        optimizer.steps += 1
        self.ops.step_finished(_count(x), time.perf_counter() - started)
        return loss, correct

    def _loss_adders(self):
        """The layers (as run) that add a term of their own to the loss: a VAE's GaussianSample."""
        adders = self.__dict__.get("_adders")
        if adders is None:
            adders = self._adders = [layer for layer in self._running_layers()
                                     if getattr(layer, "added_loss_name", None)]
        return adders

    def _running_layers(self):
        return self.layers

    def _with_added_losses(self, loss):
        """The loss plus the terms layers added on the last forward pass (each times its weight);
        ``self.last_loss_terms`` then holds each term unweighted, the loss's own under its name."""
        adders = self._loss_adders()
        if not adders:
            self.last_loss_terms = None
            return loss
        terms = {getattr(self.loss, "name", None) or "data_loss": loss}
        for layer in adders:
            terms[layer.added_loss_name] = terms.get(layer.added_loss_name, 0.0) + layer.added_loss
            loss = loss + layer.added_loss_weight * layer.added_loss
        self.last_loss_terms = terms
        return loss

    def _check_loss(self, loss, x, lengths, averaged=""):
        if not np.isfinite(loss):
            where = averaged or self._first_non_finite(x, lengths)
            raise TrainingDiverged(f"loss is {loss}: {where}")
        if self.divergence_factor > 0:
            if self.reference_loss is None or self.reference_loss <= 0:
                self.reference_loss = float(loss)
            elif loss > self.divergence_factor * self.reference_loss:
                raise TrainingDiverged(f"the loss {loss:.6g} is more than {self.divergence_factor:g} times the "
                                       f"run's first loss {self.reference_loss:.6g} (train.divergence_factor); "
                                       f"no step was taken with it")

    def _gradients_finite(self):
        if self._bank is not None:
            return self.ops.count_non_finite(self._bank.grads) == 0
        return all(np.isfinite(p.grad).all() for p in self.parameters())

    def clip_gradients(self, max_norm):
        """Scale all gradients by max_norm / norm when their global L2 norm exceeds max_norm (as
        torch.nn.utils.clip_grad_norm_); returns the norm before clipping."""
        grads = [self.ops.to_numpy(p.grad) for p in self.parameters()]
        norm = float(np.sqrt(sum(float(np.dot(g.ravel().astype(np.float64), g.ravel())) for g in grads)))
        if norm > max_norm:
            factor = max_norm / (norm + 1e-6)
            for p, g in zip(self.parameters(), grads):
                scaled = (g * g.dtype.type(factor)).astype(g.dtype)
                if isinstance(p.grad, np.ndarray):
                    p.grad[...] = scaled
                else:
                    p.grad.copy_to_device(scaled)
        return norm

    def _first_non_finite(self, x, lengths):
        """Which layer's output first went non-finite on this batch (the weights are untouched)."""
        for layer in self.layers:
            if getattr(layer, "uses_lengths", False):
                layer.lengths = lengths
        rng_states = [layer.get_rng_state() for layer in self.layers]
        h = x
        try:
            for index, layer in enumerate(self.layers):
                h = layer.forward(h, training=True)
                if not np.isfinite(self.ops.to_numpy(h)).all():
                    return f"the output of model.layers.{index} ({layer.name}) is the first non-finite value"
            return "every layer output is finite; the loss itself overflowed"
        finally:
            for layer, state in zip(self.layers, rng_states):
                layer.set_rng_state(state)

    def warmup(self, batch_size=2):
        """Compile every kernel a training step needs, without changing weights or optimizer state.

        Returns the seconds it took (mostly JIT compilation; loading from numba's cache is fast).
        """
        self._require_compiled()
        start = time.perf_counter()
        rng_states = [layer.get_rng_state() for layer in self.layers]
        x, target = self._example_batch(batch_size)
        logits = self.forward(x, training=True)
        self.loss.forward(logits, target)
        self.backward(self.loss.backward())
        scratch = [Parameter(p.name, self.ops.zeros(p.value.shape, self.dtype), p.grad) for p in self.parameters()]
        for copy, param in zip(scratch, self.parameters()):
            copy.path = param.path  # parameter groups match it
        type(self.optimizer)(**self.optimizer.hyperparameters()).step(scratch)
        self.forward(x, training=False)
        for layer, state in zip(self.layers, rng_states):
            layer.set_rng_state(state)
        return time.perf_counter() - start

    def _example_batch(self, batch_size):
        """(zero inputs, targets of the loss's kind) for a warm-up step."""
        x = self.ops.zeros((batch_size,) + self.input_shape, self._input_dtype)
        return x, _example_target(self.loss, batch_size, self.output_shape, self.dtype)

    # --------------------------------------------------------------------- Keras-style API
    def fit(self, x, y, epochs=1, batch_size=32, shuffle=True, seed=None, validation_data=None,
            eval_data=None, callbacks=(), augment=None, lengths=None, resume=None, verbose="auto",
            sampling_weights=None, shard=None, eval_batch_size=None):
        """Train for ``epochs``; returns the history (one dict of metrics per epoch).

        ``eval_data`` maps a name to (x, y), evaluated after each epoch as ``<name>_loss`` and
        ``<name>_accuracy``; ``validation_data`` is the Keras spelling of ``{"val": (x, y)}``.
        ``callbacks`` are objects with any of ``on_epoch_begin(epoch, model)``,
        ``on_batch_end(batch, logs)`` and ``on_epoch_end(epoch, logs)``. ``augment(batch, rng)``
        returns a transformed copy of each training batch (see ``numdl.data.Augmenter``); it draws
        from the run's seeded generator. ``lengths`` gives each training sample's valid steps
        (padded sequences); evaluation sets may then be (x, y, lengths) triples.

        ``self.fit_position`` always says where training stands (epoch, batches done in it, the
        generator state at the epoch's start, the epoch's running sums); passing a saved one as
        ``resume`` continues from exactly there: the epoch's order is redrawn from the saved state
        and the augmentation draws of the batches already done are replayed, so a resumed run
        computes bit for bit what an uninterrupted one does.

        ``sampling_weights`` (one per sample, summing to 1): each epoch draws n samples with
        replacement with these probabilities instead of a permutation (a balanced sampler:
        probabilities 1 / the sample's class count, normalised).

        ``shard = (rank, size)`` (data-parallel training): this process trains on every size-th
        sample of each epoch's order from ``rank`` on, the order cut to a multiple of ``size`` so that
        every rank takes the same number of steps.

        ``eval_batch_size``: samples per evaluation batch (default: the larger of batch_size and 1000;
        smaller for large samples, whose activations at 1000 a batch take gigabytes).

        ``verbose`` as Keras's: 1 (or "auto") a progress bar per epoch in a terminal and one line per
        epoch (loss, accuracy, the evaluation sets, samples/s), 2 the line alone, 0 nothing.
        """
        self._require_compiled()
        if verbose not in ("auto", 0, 1, 2):
            raise ConfigError(f"verbose must be 'auto', 0, 1 or 2, got {verbose!r}")
        verbose = 1 if verbose == "auto" else verbose
        x, y = self.prepare(x, y, "training data")
        lengths = None if lengths is None else np.asarray(lengths)
        evals = dict(eval_data or {})
        if validation_data is not None:
            evals["val"] = validation_data
        evals = {name: (*self.prepare(data[0], data[1], f"{name} data"), data[2] if len(data) > 2 else None)
                 for name, data in evals.items()}
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if sampling_weights is not None:
            sampling_weights = np.asarray(sampling_weights, np.float64)
            if sampling_weights.shape != (_count(x),) or not np.isclose(sampling_weights.sum(), 1.0) \
                    or (sampling_weights < 0).any():
                raise DataError(f"sampling_weights must be {_count(x)} non-negative numbers summing to 1")
        rng = np.random.default_rng(self.seed if seed is None else seed)
        n = _count(x)
        if augment is not None and isinstance(x, list):
            raise ConfigError("augment takes one input array; augment a model with several inputs in the data")
        if lengths is not None and isinstance(x, list):
            raise ConfigError("lengths are for one sequence input")
        gather = [np.empty((min(batch_size, n),) + a.shape[1:], a.dtype) for a in _parts(x)]
        if verbose:
            from numdl.progress import FitReporter

            reporter = FitReporter(verbose, epochs, n)
            callbacks = [*callbacks, reporter]
        try:
            self._eval_batch_size = eval_batch_size or max(batch_size, 1000)
            return self._fit_epochs(x, y, lengths, evals, epochs, batch_size, shuffle, rng, gather, callbacks,
                                    augment, resume, sampling_weights, shard)
        finally:
            if verbose:
                reporter.close()

    def _fit_epochs(self, x, y, lengths, evals, epochs, batch_size, shuffle, rng, gather, callbacks, augment,
                    resume, sampling_weights, shard):
        history = []
        self.stop_training = False
        n = _count(x) if shard is None else _count(x) // shard[1]  # the samples this process trains on
        first_epoch = 1 if resume is None else int(resume["epoch"])
        self.reference_loss = None if resume is None else resume.get("reference_loss")
        steps_per_epoch = -(-n // batch_size)
        if resume is not None and not 0 <= int(resume["step"]) <= steps_per_epoch:
            raise DataError(f"the resume position (epoch {resume['epoch']}, step {resume['step']}) lies outside an "
                            f"epoch of {steps_per_epoch} steps: not this run's checkpoint")
        pages = ondisk.PageBudget(_parts(x)[0])  # a memmapped x: its pages are dropped as batches are read
        for epoch in range(first_epoch, epochs + 1):
            resuming = resume is not None and epoch == first_epoch
            if resuming:
                try:
                    rng.bit_generator.state = resume["epoch_rng_state"]
                except (TypeError, ValueError, KeyError):
                    raise DataError("the resume position's generator state is malformed") from None
            epoch_rng_state = rng.bit_generator.state
            _call(callbacks, "on_epoch_begin", epoch, self)
            start = time.perf_counter()
            # Batches are gathered one at a time (into one reused buffer), not as a shuffled copy of
            # the whole set: that copy cost the memory of the training set again and ~0.3 s per epoch.
            if sampling_weights is not None:
                order = rng.choice(n, size=n, replace=True, p=sampling_weights)
            elif shuffle and pages.array is not None:  # on disk: shuffled within windows of chunks
                order = ondisk.window_shuffle(rng, n, pages.row_bytes)
            else:
                order = rng.permutation(_count(x)) if shuffle else None
            if shard is not None:  # every rank drew the same order: each takes its share
                rank, ranks = shard
                order = (np.arange(_count(x)) if order is None else order)[:n * ranks][rank::ranks]
            total_loss, correct, counted = 0.0, 0, 0
            term_totals = {}  # the added-loss terms' sums (a VAE's reconstruction and KL)
            done = 0
            if resuming:
                total_loss, correct, counted = resume["total_loss"], resume["correct"], resume["counted"]
                term_totals = dict(resume.get("term_totals", {}))
                done = int(resume["step"])
            for batch, begin in enumerate(range(0, n, batch_size)):
                rows = slice(begin, begin + batch_size) if order is None else order[begin:begin + batch_size]
                pages.took(batch_size)
                if augment is not None or batch >= done:
                    xb = _take(x, rows, order is not None, gather)
                if augment is not None:
                    xb = augment(xb, rng)
                if batch < done:
                    continue  # already trained before the interruption; its draws are replayed above
                xb = _on_device(self.ops, xb)
                yb = _index(y, rows)
                lb = None if lengths is None else lengths[rows]
                try:
                    loss, right = self.train_step(xb, yb, lb)
                except TrainingDiverged as error:
                    raise TrainingDiverged(f"training diverged at epoch {epoch}, step {batch + 1}: {error}") from None
                size = _count(xb)
                total_loss += loss * size
                if self.last_loss_terms:
                    for term, value in self.last_loss_terms.items():
                        term_totals[term] = term_totals.get(term, 0.0) + value * size
                if right is not None:
                    correct += right
                    counted += _label_count(yb, self.loss)
                self.fit_position = {"epoch": epoch, "step": batch + 1, "epoch_rng_state": epoch_rng_state,
                                     "total_loss": total_loss, "correct": correct, "counted": counted,
                                     "reference_loss": self.reference_loss}
                if term_totals:
                    self.fit_position["term_totals"] = dict(term_totals)
                _call(callbacks, "on_batch_end", batch, {"loss": loss, "size": size})
            seconds = time.perf_counter() - start
            logs = {"epoch": epoch, "train_loss": total_loss / n,
                    "train_accuracy": correct / counted if counted else None,
                    "epoch_seconds": seconds, "samples_per_second": n / seconds}
            logs.update({f"train_{term}": value / n for term, value in term_totals.items()})
            self.last_evaluations = {}  # each set's evaluate() result, for callbacks that report more of it
            for name, (ex, ey, el) in evals.items():
                result = self.evaluate(ex, ey, batch_size=self._eval_batch_size, lengths=el)
                logs[f"{name}_loss"], logs[f"{name}_accuracy"] = result["loss"], result["accuracy"]
                logs.update({f"{name}_{term}": value for term, value in result.get("terms", {}).items()})
                self.last_evaluations[name] = result
            history.append(logs)
            self.fit_position = {"epoch": epoch + 1, "step": 0, "epoch_rng_state": rng.bit_generator.state,
                                 "total_loss": 0.0, "correct": 0, "counted": 0, "reference_loss": self.reference_loss}
            _call(callbacks, "on_epoch_end", epoch, logs)
            if self.stop_training:
                break
        return history

    def evaluate(self, x, y, batch_size=1000, lengths=None, scores=False):
        """{"loss", "accuracy" (None unless class labels), "predictions"} over all of x; with
        ``scores``, also "scores": the class probabilities (softmax of the outputs), or None."""
        self._require_compiled()
        x, y = self.prepare(x, y, "evaluation data")
        total, correct, predictions, probabilities, terms = 0.0, 0, [], [], {}
        pages = ondisk.PageBudget(_parts(x)[0])
        axis = _class_axis(self.loss)
        n = _count(x)
        for begin in range(0, n, batch_size):
            pages.took(batch_size)
            rows = slice(begin, begin + batch_size)
            xb = _on_device(self.ops, _index(x, rows))
            yb = _index(y, rows)
            lb = None if lengths is None else np.asarray(lengths)[begin:begin + batch_size]
            out = self.forward(xb, training=False, lengths=lb)
            total += self._with_added_losses(self.loss.forward(out, yb)) * _count(xb)
            for term, value in (self.last_loss_terms or {}).items():
                terms[term] = terms.get(term, 0.0) + value * _count(xb)
            if _is_class_output(self.loss):
                host = self.ops.to_numpy(out)
                predicted = host.argmax(axis=axis)
                predictions.append(predicted)
                labels = _hard_labels(yb, host.ndim, axis)
                valid = _valid_labels(labels, self.loss)
                correct += int(((predicted == labels) & valid).sum())
                if scores:
                    shifted = np.exp(host - host.max(axis=axis, keepdims=True))
                    probabilities.append(shifted / shifted.sum(axis=axis, keepdims=True))
        labelled = _label_count(_hard_labels(y, len(self.output_shape) + 1, axis), self.loss) if predictions else 0
        result = {"loss": total / n, "accuracy": correct / labelled if predictions and labelled else None,
                  "predictions": np.concatenate(predictions) if predictions else None}
        if scores:
            result["scores"] = np.concatenate(probabilities) if probabilities else None
        if terms:  # the loss's terms, each unweighted: a VAE's reconstruction and KL
            result["terms"] = {term: value / n for term, value in terms.items()}
        return result

    def predict(self, x, batch_size=1000, lengths=None):
        """Model outputs for every sample of x, as a NumPy array."""
        if not self.built:
            raise ConfigError("the model is not built: call build(input_shape) or fit first")
        if not batch_size >= 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        if (lengths is None and type(x) is np.ndarray and x.dtype == self.dtype and x.ndim > 1
                and 0 < x.shape[0] and x.shape[1:] == self.input_shape and x.flags.c_contiguous
                and dense_chain.ONE_CALL_PREDICT):
            chain = self._dense_chain()
            if chain is not None:  # a dense model: one kernel call per batch (numdl.dense_chain)
                return chain.predict(self, x, batch_size)
        # NaN/inf are looked for batch by batch, just before each batch's forward: that read brings
        # the batch into the cache for the first product (one pass over the whole input first cost
        # ~7% of an MLP's predict at batch 1000).
        x = self.prepare(x, None, "input data", check_finite=False)[0]
        input_names = [f"input data ({node.name})" for node in self.input_nodes] if isinstance(x, list) else \
            ["input data"]
        lengths = None if lengths is None else np.asarray(lengths)
        n = _count(x)
        several = isinstance(self.output_shape, list)
        shapes = self.output_shape if several else [self.output_shape]
        results = [np.empty((n,) + tuple(shape), self.dtype) for shape in shapes]  # filled batch by batch
        pages = ondisk.PageBudget(_parts(x)[0])
        for b in range(0, n, batch_size):
            pages.took(batch_size)
            batch = _index(x, slice(b, b + batch_size))
            for part, what in zip(_parts(batch), input_names):
                _refuse_non_finite(part, what, first_sample=b)
            out = self.forward(_on_device(self.ops, batch),
                               lengths=None if lengths is None else lengths[b:b + batch_size])
            for result, part in zip(results, out if several else [out]):
                result[b:b + batch_size] = self.ops.to_numpy(part)
        return results if several else results[0]

    def _dense_chain(self, training=False):
        """predict's one-call plan, or train_step's for a batch (numdl.dense_chain),
        or None; made once per build (and again when a parameter's array was replaced)."""
        chains = self.__dict__.setdefault("_chains", {})
        chain = chains.get(training, False)
        if chain is False or (chain is not None and not chain.current(self)):
            chain = chains[training] = dense_chain.plan(self, training)
        return chain

    # ------------------------------------------------------------------------------ persistence
    def save(self, path, meta=None):
        """Write weights, layer state and optimizer state to a safetensors checkpoint, atomically."""
        from numdl.checkpoint import save_checkpoint

        return save_checkpoint(path, self, self.optimizer, meta)

    def load_weights(self, path, reset_optimizer=False):
        """Restore a checkpoint written by ``save`` into this (built) model and its optimizer;
        returns the checkpoint's metadata. A mismatch lists every missing, unexpected, mis-shaped,
        mis-typed and non-finite tensor at once. A stateful optimizer's state must be in the file
        unless ``reset_optimizer`` (then it starts afresh at step 0)."""
        from numdl.checkpoint import apply_checkpoint, read_checkpoint

        if not self.built:
            raise ConfigError("build the model before loading weights into it")
        tensors, meta = read_checkpoint(path)
        apply_checkpoint(self, tensors, self.optimizer, path, reset_optimizer=reset_optimizer, meta=meta)
        if self.optimizer is not None and "optimizer" in meta:
            self.optimizer.lr = float(meta["optimizer"]["lr"])  # a schedule may have moved it
            if reset_optimizer:
                self.optimizer.steps, self.optimizer.state = 0, None
            else:
                self.optimizer.steps = int(meta["optimizer"]["steps"])
        for layer, state in zip(self.layers, meta.get("rng_states", [])):
            layer.set_rng_state(state)
        return meta

    # -------------------------------------------------------------------------- validation
    def prepare(self, x, y, what, index=None, check_finite=True):
        """Check data once at the boundary and convert x to the model's dtype (a host array). A
        pandas or polars DataFrame (or Series of targets) of numbers is taken as its values.
        ``index``: which of a graph model's inputs x is. ``check_finite=False`` leaves the NaN/inf
        test of float input to the caller (predict runs it batch by batch)."""
        x = _values_of(x, what)
        if x.ndim == 0 or x.shape[0] == 0:
            raise DataError(f"{what} is empty")
        if not self.built:
            self.build(x.shape[1:])
        input_shape = tuple(self._input_shapes()[index or 0])
        input_dtype = self._input_dtypes()[index or 0]
        if tuple(x.shape[1:]) != input_shape:
            raise ShapeError(f"{what} has samples of shape {tuple(x.shape[1:])} but the model expects "
                             f"{input_shape}")
        if x.dtype.kind not in "fiub":
            raise DataError(f"{what} must be numeric, got dtype {x.dtype}")
        if ondisk.is_paged(x):  # a memmap stays on disk: batches are read from it (numdl.data.ondisk)
            if x.dtype != input_dtype or not x.flags.c_contiguous:
                raise DataError(f"{what} is a memory-mapped array of {x.dtype}; the model reads {input_dtype} "
                                f"C-ordered rows from disk: write it so (it is not converted in memory)")
            if x.dtype.kind == "f" and check_finite:
                bad, row = ondisk.count_non_finite_blocks(x, get_ops("cpu").count_non_finite)
                if bad:
                    raise DataError(f"{what} contains NaN or Inf (first at sample {row})")
        else:
            if input_dtype.kind in "iu":  # token ids for an embedding: kept as integers
                if x.dtype.kind not in "iu":
                    raise DataError(f"{what} must be integer token ids for layer '{self.layers[0].name}', "
                                    f"got {x.dtype}")
                x = np.ascontiguousarray(x, dtype=input_dtype)
            else:
                x = np.ascontiguousarray(x, dtype=self.dtype)
            if check_finite:
                _refuse_non_finite(x, what)
        if y is not None:
            y = self._prepare_targets(y, x.shape[0], what, self.loss, self.output_shape)
        return x, y

    def _prepare_targets(self, y, n, what, loss, output_shape):
        """Targets checked against the samples and the loss: class labels in range, or finite values."""
        y = _values_of(y, f"{what} targets")
        if y.ndim == 0 or y.shape[0] != n:
            raise ShapeError(f"{what} has {n} samples but {y.shape[0] if y.ndim else 'no'} targets")
        check = getattr(loss, "validate_targets", None)  # a loss with targets of its own kind checks them
        if check is not None:
            return check(y, output_shape)
        if _is_class_output(loss):
            from numdl.losses import validate_labels

            return validate_labels(y, y.shape[0], output_shape[len(output_shape) - 1])
        y = np.ascontiguousarray(y, dtype=self.dtype)
        if not np.isfinite(y).all():
            raise DataError(f"{what} targets contain NaN or Inf")
        return y

    def _check_batch(self, x):
        if not self.built:
            raise ConfigError("the model is not built: call build(input_shape) or fit first")
        if tuple(x.shape[1:]) != self.input_shape:
            raise ShapeError(f"model.layers.0 ({self.layers[0].name}) expects input of shape "
                             f"(batch, {', '.join(map(str, self.input_shape))}) but got {tuple(x.shape)}")
        if x.dtype != self._input_dtype:
            raise DataError(f"input dtype {x.dtype} does not match the model's {self._input_dtype}; convert it "
                            f"first (x.astype('{self._input_dtype}')) rather than compile a second version")
        if x.shape[0] == 0:
            raise DataError("empty batch")

    def _require_compiled(self):
        if self.loss is None or self.optimizer is None:
            raise ConfigError("call compile(loss, optimizer) before training or evaluating")

    def summary(self):
        lines = [f"Sequential(input={self.input_shape}, dtype={self.dtype}, device={self.device})"]
        for i, layer in enumerate(self.layers):
            count = sum(int(np.prod(p.value.shape)) for p in layer.parameters())
            lines.append(f"  {i:>2} {layer!r:<50} -> {layer.output_shape}  params={count}")
        lines.append(f"  total parameters: {self.parameter_count()}")
        return "\n".join(lines)


def _values_of(data, what):
    """NumPy values of an array, or of a pandas/polars DataFrame or Series of numbers; a frame with
    text columns is refused with the way to encode them."""
    if isinstance(data, np.ndarray):
        return data  # a memmap stays one (np.asarray would strip the subclass and page it all in)
    if not hasattr(data, "to_numpy"):
        return np.asarray(data)
    values = data.to_numpy()
    if values.dtype.kind not in "fiub":
        raise DataError(f"{what} is a table with non-numeric columns; encode them first, e.g. with "
                        f"numdl.data.table.TablePreprocessor (or train from the file with data.name = 'table')")
    return values


def _is_class_output(loss):
    return getattr(loss, "target_kind", "values") == "labels"


def _example_target(loss, batch_size, output_shape, dtype):
    """A batch of targets of the right kind and shape for a warm-up step."""
    example = getattr(loss, "example_target", None)
    if example is not None:
        return example(batch_size, output_shape)
    if _is_class_output(loss):
        labels_shape = getattr(loss, "label_shape", None)
        shape = labels_shape(output_shape) if labels_shape else output_shape[:-1]
        return np.zeros((batch_size,) + tuple(shape), np.int64)
    return np.zeros((batch_size,) + tuple(output_shape), dtype)


def _class_axis(loss):
    """The axis of the outputs that holds the classes: the last, or 1 for (N, C, H, W) logits."""
    return getattr(loss, "class_axis", -1)


def _hard_labels(y, ndim, axis):
    """Class labels of ``y``: itself, or the most probable class of probability targets (a float
    array with the scores' ``ndim``)."""
    if isinstance(y, list):
        return y
    y = np.asarray(y)
    return y.argmax(axis=axis) if y.dtype.kind == "f" and y.ndim == ndim else y


def _valid_labels(y, loss):
    """The labels that count (not the loss's ignore_index)."""
    ignore = getattr(loss, "ignore_index", None)
    return np.ones(np.shape(y), bool) if ignore is None else np.asarray(y) != ignore


def _label_count(y, loss):
    if isinstance(y, list):
        return 0
    return int(_valid_labels(y, loss).sum()) if getattr(loss, "ignore_index", None) is not None else int(np.size(y))


def _count_correct(ops, logits, y, axis=-1, loss=None):
    """Correct class predictions (per sample, per step for (N, T) labels, per pixel for (N, H, W)
    labels of (N, C, H, W) logits), or None."""
    if isinstance(logits, list) or isinstance(y, list):
        return None
    y = None if y is None else np.asarray(y)
    if y is None or y.dtype.kind not in "iu" or len(logits.shape) != y.ndim + 1:
        return None
    if axis == 1 and len(logits.shape) >= 3:  # per pixel: a kernel (NumPy's strided argmax is slow)
        flat = logits.reshape((logits.shape[0], logits.shape[1], -1))
        pred = ops.empty((flat.shape[0], flat.shape[2]), logits.dtype)
        ops.pixel_argmax(pred, flat)
        right = ops.to_numpy(pred).reshape(y.shape) == y
    else:
        right = ops.to_numpy(logits).argmax(axis=axis) == y
    if loss is not None and getattr(loss, "ignore_index", None) is not None:
        right &= y != loss.ignore_index
    return int(right.sum())


def _refuse_non_finite(x, what, first_sample=0):
    """DataError naming the first sample of float array ``x`` (numbered from ``first_sample``) that
    holds NaN or inf; one pass without a boolean copy when there is none."""
    if x.dtype.kind == "f" and x.size and get_ops("cpu").count_non_finite(x) > 0:
        bad = np.argwhere(~np.isfinite(x))[0]
        raise DataError(f"{what} contains NaN or Inf (first at sample {first_sample + bad[0]})")


# Batches of one input are arrays; of a graph model with several inputs (or outputs), lists of them.
def _parts(data):
    return data if isinstance(data, list) else [data]


def _count(data):
    return _parts(data)[0].shape[0]


def _index(data, rows):
    if data is None:
        return None
    return [a[rows] for a in data] if isinstance(data, list) else data[rows]


def _take(x, rows, shuffled, gather):
    if not shuffled:
        return _index(x, rows)
    taken = [np.take(a, rows, axis=0, out=g[:len(rows)]) for a, g in zip(_parts(x), gather)]
    return taken if isinstance(x, list) else taken[0]


def _on_device(ops, data):
    return [ops.asarray(a) for a in data] if isinstance(data, list) else ops.asarray(data)


def _call(callbacks, method, *args):
    for callback in callbacks:
        handler = getattr(callback, method, None)
        if handler is not None:
            handler(*args)
