"""Decoding for sequence-to-sequence models: greedy and beam search.

The model is any graph model with inputs [source (N, S), target prefix (N, T)] (token ids) whose
output is (N, T, vocabulary) logits, position t predicting the token after prefix position t, with a
causal decoder (position t sees prefix positions <= t only): the encoder-decoder Transformer of
``examples/translate.py``. Training feeds the true targets shifted right (teacher forcing);
decoding feeds the model its own tokens, one position per pass. Prefix positions not yet decoded
hold the start id; the causal mask hides them.
"""

import numpy as np

from numdl.errors import ConfigError


def _prefixes(start, emitted, steps):
    """(rows, steps) prefixes: start, then the tokens emitted so far."""
    prefix = np.full((emitted.shape[0], steps), start, np.int64)
    prefix[:, 1:emitted.shape[1] + 1] = emitted[:, :steps - 1]
    return prefix


def _log_softmax(logits):
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def greedy_decode(model, source, start, steps=None, batch_size=256):
    """(N, steps) token ids: at each position the most probable token given the tokens before it.
    ``steps`` defaults to the model's target length."""
    source = np.asarray(source)
    steps = _steps(model, steps)
    emitted = np.empty((len(source), 0), np.int64)
    for t in range(steps):
        logits = model.predict([source, _prefixes(start, emitted, _steps(model, None))], batch_size=batch_size)
        emitted = np.concatenate([emitted, logits[:, t].argmax(axis=-1)[:, None]], axis=1)
    return emitted


def beam_search(model, source, start, end=None, steps=None, beam_width=4, batch_size=256):
    """(N, steps) token ids of the most probable sequence found keeping the ``beam_width`` best
    prefixes (by summed log-probability) at every position, and their (N,) log-probabilities. A
    beam that emits ``end`` is finished: it keeps its score and repeats ``end``. Width 1 is
    greedy decoding."""
    if beam_width < 1:
        raise ConfigError(f"beam_width must be >= 1, got {beam_width}")
    source = np.asarray(source)
    steps, length = _steps(model, steps), _steps(model, None)
    n, width = len(source), beam_width
    scores = np.full((n, width), -np.inf)
    scores[:, 0] = 0.0  # one live beam to start; the others join from its expansions
    tokens = np.empty((n, width, 0), np.int64)
    done = np.zeros((n, width), bool)
    repeated = np.repeat(source, width, axis=0)
    rows = np.arange(n)[:, None]
    for t in range(steps):
        prefix = _prefixes(start, tokens.reshape(n * width, t), length)
        log_probs = _log_softmax(model.predict([repeated, prefix], batch_size=batch_size)[:, t].astype(np.float64))
        vocabulary = log_probs.shape[-1]
        log_probs = log_probs.reshape(n, width, vocabulary)
        if end is not None and done.any():
            log_probs[done] = -np.inf
            log_probs[done, end] = 0.0
        total = (scores[:, :, None] + log_probs).reshape(n, width * vocabulary)
        best = np.argsort(-total, axis=1, kind="stable")[:, :width]
        beam, token = best // vocabulary, best % vocabulary
        scores = np.take_along_axis(total, best, axis=1)
        tokens = np.concatenate([tokens[rows, beam], token[:, :, None]], axis=2)
        done = done[rows, beam] | ((token == end) if end is not None else False)
    return tokens[:, 0], scores[:, 0]


def _steps(model, steps):
    shapes = model.input_shape if isinstance(model.input_shape, list) else None
    if shapes is None or len(shapes) != 2:
        raise ConfigError("decoding needs a model with two inputs: [source ids, target prefix ids]")
    length = shapes[1][0]
    if steps is None:
        return length
    if not 1 <= steps <= length:
        raise ConfigError(f"steps must be in [1, {length}] (the model's target length), got {steps}")
    return int(steps)
