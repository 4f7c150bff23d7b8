"""Text for language models: character or word vocabularies and next-token training windows."""

import re
from pathlib import Path

import numpy as np

from numdl.errors import DataError


def load_text(path):
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read text file {path} ({error})") from None
    if not text:
        raise DataError(f"text file {path} is empty")
    return text


class Vocabulary:
    """Token <-> id maps, built from a corpus; ids follow sorted token order (reproducible)."""

    def __init__(self, tokens, level):
        self.tokens, self.level = list(tokens), level
        self.index = {token: i for i, token in enumerate(self.tokens)}

    @classmethod
    def characters(cls, text):
        return cls(sorted(set(text)), "char")

    @classmethod
    def words(cls, text):
        return cls(sorted(set(split_words(text))), "word")

    def __len__(self):
        return len(self.tokens)

    def encode(self, text):
        pieces = text if self.level == "char" else split_words(text)
        try:
            return np.array([self.index[p] for p in pieces], dtype=np.int64)
        except KeyError as error:
            raise DataError(f"token {error.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids):
        glue = "" if self.level == "char" else " "
        return glue.join(self.tokens[int(i)] for i in ids)


def split_words(text):
    """Words and punctuation marks as separate tokens."""
    return re.findall(r"\w+|[^\w\s]", text)


def next_token_windows(ids, window, stride=None):
    """(inputs, targets), each (n, window): targets are the inputs shifted by one token."""
    ids = np.asarray(ids, dtype=np.int64)
    stride = stride or window
    if len(ids) < window + 1:
        raise DataError(f"a text of {len(ids)} tokens is too short for windows of {window}")
    starts = np.arange(0, len(ids) - window, stride)
    inputs = np.stack([ids[s:s + window] for s in starts])
    targets = np.stack([ids[s + 1:s + window + 1] for s in starts])
    return inputs, targets


def unigram_entropy(ids):
    """Entropy (nats per token) of the token frequencies: the loss of a model that ignores context."""
    counts = np.bincount(np.asarray(ids))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
