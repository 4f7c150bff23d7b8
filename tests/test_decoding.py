"""Greedy and beam-search decoding (numdl.decoding) on a model whose probabilities are written out,
and the translation example's encoder-decoder Transformer learning its task."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from numdl.decoding import beam_search, greedy_decode
from numdl.errors import ConfigError

START, END, A, B, C = 0, 1, 2, 3, 4


class WrittenOut:
    """A stand-in seq2seq model over 5 tokens and 3 steps: after the start, A (0.6) or B (0.4); after
    A four tokens at 0.25 each, after B the end token at 0.9. Greedy takes A (0.6 x 0.25 = 0.15),
    the best sequence is B, end (0.4 x 0.9 = 0.36)."""

    input_shape = [(2,), (3,)]

    def __init__(self):
        self.calls = 0

    def predict(self, inputs, batch_size=256):
        self.calls += 1
        source, prefix = inputs
        probs = np.full((len(prefix), 3, 5), 1e-6)
        for row, tokens in enumerate(prefix):
            probs[row, 0] = [0, 0, 0.6, 0.4, 0]
            after = tokens[1] if len(tokens) > 1 else START
            probs[row, 1] = [0, 0.9, 0, 0.05, 0.05] if after == B else [0, 0.25, 0.25, 0.25, 0.25]
            probs[row, 2] = [0, 1.0, 0, 0, 0]
        return np.log(probs + 1e-12)


def test_greedy_takes_the_locally_best_token_and_beam_search_the_best_sequence():
    model = WrittenOut()
    source = np.zeros((2, 2), np.int64)
    greedy = greedy_decode(model, source, START)
    assert greedy[:, 0].tolist() == [A, A]
    tokens, scores = beam_search(model, source, START, END, beam_width=2)
    assert tokens.tolist() == [[B, END, END], [B, END, END]]
    np.testing.assert_allclose(scores, np.log(0.4 * 0.9), rtol=1e-6)
    width_one, _ = beam_search(model, source, START, END, beam_width=1)
    np.testing.assert_array_equal(width_one, greedy)


def test_decoding_refuses_a_one_input_model_and_bad_widths():
    class OneInput:
        input_shape = (5,)

    with pytest.raises(ConfigError, match="two inputs"):
        greedy_decode(OneInput(), np.zeros((1, 5)), START)
    with pytest.raises(ConfigError, match="beam_width"):
        beam_search(WrittenOut(), np.zeros((1, 2)), START, beam_width=0)
    with pytest.raises(ConfigError, match=r"steps must be in \[1, 3\]"):
        greedy_decode(WrittenOut(), np.zeros((1, 2)), START, steps=4)


def _translate():
    path = Path(__file__).parent.parent / "examples" / "translate.py"
    spec = importlib.util.spec_from_file_location("translate_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_date_task_is_well_formed():
    translate = _translate()
    rng = np.random.default_rng(1)
    train, test = translate.split_dates(rng)
    assert not set(train) & set(test)
    pairs = translate.make_pairs(500, rng, test)
    assert max(len(text) for text, _ in pairs) <= translate.SOURCE_LENGTH
    source, prefix, labels = translate.encode(pairs)
    assert (prefix[:, 0] == translate.START).all() and (labels[:, 10] == translate.END).all()
    np.testing.assert_array_equal(prefix[:, 1:], labels[:, :-1])  # teacher forcing: targets shifted right
    assert [translate.decode_text(row) for row in labels[:3]] == [iso for _, iso in pairs[:3]]
    assert translate.written(translate.datetime.date(1997, 3, 5), 5) == "wednesday, march 5, 1997"


def test_translation_example_learns_the_dates():
    """A short run (4000 pairs, 4 epochs, ~15 s) already gets most held-out dates exactly right (0.68
    here); the full run's figure (0.995) is in benchmarks/RESULTS.md."""
    results = _translate().main(["--train", "4000", "--test", "300", "--epochs", "4", "--beam", "2"])
    assert results["greedy"] > 0.5
    assert results["beam"] >= results["greedy"] - 0.02
