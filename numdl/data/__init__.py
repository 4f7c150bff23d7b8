"""Data: IDX files, Fashion-MNIST, normalisation, splitting and batching."""

from numdl.data.augment import Augmenter
from numdl.data.fashion_mnist import CLASS_NAMES, load_fashion_mnist
from numdl.data.idx import read_idx, write_idx
from numdl.data.loader import batches, train_validation_split
from numdl.data.series import read_csv_column, sliding_windows
from numdl.data.text import Vocabulary, load_text, next_token_windows, unigram_entropy
from numdl.data.transforms import Normalizer

__all__ = ["Augmenter", "load_fashion_mnist", "CLASS_NAMES", "read_idx", "write_idx", "batches",
           "train_validation_split", "Normalizer", "read_csv_column", "sliding_windows", "Vocabulary", "load_text",
           "next_token_windows", "unigram_entropy"]
