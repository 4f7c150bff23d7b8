import numpy as np
import pytest

import numdl
from numdl.data import Vocabulary, next_token_windows, read_csv_column, sliding_windows, unigram_entropy
from numdl.errors import DataError


def test_character_and_word_vocabularies_round_trip():
    chars = Vocabulary.characters("abca")
    assert chars.tokens == ["a", "b", "c"] and chars.decode(chars.encode("cab")) == "cab"
    words = Vocabulary.words("the cat, the dog.")
    assert words.encode("the dog") .tolist() == [words.index["the"], words.index["dog"]]
    assert words.decode(words.encode("the cat ,")) == "the cat ,"
    with pytest.raises(DataError, match="'z' is not in the vocabulary"):
        chars.encode("z")


def test_next_token_windows_shift_by_one():
    x, y = next_token_windows(np.arange(10), window=4, stride=3)
    assert x.tolist() == [[0, 1, 2, 3], [3, 4, 5, 6]] and y.tolist() == [[1, 2, 3, 4], [4, 5, 6, 7]]
    with pytest.raises(DataError, match="too short"):
        next_token_windows(np.arange(3), window=4)


def test_unigram_entropy():
    assert unigram_entropy([0, 1, 0, 1]) == pytest.approx(np.log(2))


def test_csv_column_with_missing_values(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("day,value\n0,1\n1,\n2,3\n3,abc\n4,5\n")
    np.testing.assert_allclose(read_csv_column(path, "value"), [1, 2, 3, 4, 5])
    np.testing.assert_allclose(read_csv_column(path, "value", missing="drop"), [1, 3, 5])
    with pytest.raises(DataError, match=r"row 3, column 'value': '' is not a number"):
        read_csv_column(path, "value", missing="error")
    with pytest.raises(DataError, match="no column 'price'; columns: day, value"):
        read_csv_column(path, "price")


def test_sliding_windows():
    x, y = sliding_windows(np.arange(6.0), window=3, horizon=2)
    assert x.shape == (2, 3, 1) and x[:, :, 0].tolist() == [[0, 1, 2], [1, 2, 3]] and y.tolist() == [[3, 4], [4, 5]]


def test_cross_entropy_over_steps_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((2, 3, 4)), rng.integers(0, 4, (2, 3))
    loss = numdl.CrossEntropy()
    value = loss.forward(logits, labels)
    t_logits = torch.tensor(logits, requires_grad=True)
    t_loss = torch.nn.functional.cross_entropy(t_logits.permute(0, 2, 1), torch.tensor(labels))
    t_loss.backward()
    assert value == pytest.approx(t_loss.item(), rel=1e-12)
    np.testing.assert_allclose(loss.backward(), t_logits.grad.numpy(), rtol=1e-10)
