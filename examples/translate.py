"""Sequence to sequence: an encoder-decoder Transformer that rewrites dates written in English in
ISO form ("tuesday, march 5, 1997", "5th of mar 1997", "05.03.97" -> "1997-03-05"), trained with
teacher forcing and decoded greedily and with beam search.

    python examples/translate.py [--train 20000] [--epochs 8] [--beam 4]

Prints the exact-match accuracy (every character right) on held-out dates: dates of the test set
never occur in training, in any format.
"""

import argparse
import datetime
import time

import numpy as np

import numdl
from numdl.decoding import beam_search, greedy_decode

MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december"]
DAYS = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
PAD, START, END = 0, 1, 2  # token ids shared by both vocabularies
SOURCE_CHARS = sorted(set("abcdefghijklmnopqrstuvwxyz0123456789 ,./-"))
TARGET_CHARS = sorted(set("0123456789-"))
SOURCE_LENGTH, TARGET_LENGTH = 32, 11  # the longest written date; "yyyy-mm-dd" and the end token


def _ordinal(day):
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def written(date, style):
    """One of ten English ways to write ``date``."""
    month, short = MONTHS[date.month - 1], MONTHS[date.month - 1][:3]
    return [f"{month} {date.day}, {date.year}", f"{date.day} {month} {date.year}", f"{short} {date.day} {date.year}",
            f"{date.day:02d}.{date.month:02d}.{date.year}", f"{date.day:02d}.{date.month:02d}.{date.year % 100:02d}",
            f"{DAYS[date.weekday()]}, {month} {date.day}, {date.year}", f"{_ordinal(date.day)} of {short} {date.year}",
            f"{date.year} {month} {date.day}", f"{date.month}/{date.day}/{date.year}",
            f"the {_ordinal(date.day)} of {month}, {date.year}"][style]


STYLES = 10


def make_pairs(count, rng, dates):
    """``count`` (written, iso) pairs drawn from ``dates`` in random styles."""
    picks = rng.integers(0, len(dates), count)
    styles = rng.integers(0, STYLES, count)
    return [(written(dates[i], s), dates[i].isoformat()) for i, s in zip(picks, styles)]


def split_dates(rng, test_fraction=0.1):
    """Every day from 1950 to 2049 (the two-digit style reads yy as 19yy or 20yy by that range),
    split into training and held-out dates."""
    first = datetime.date(1950, 1, 1)
    days = [first + datetime.timedelta(days=int(d)) for d in rng.permutation(36524)]
    cut = int(len(days) * test_fraction)
    return days[cut:], days[:cut]


def encode(pairs):
    """(source ids (N, S), target prefix ids (N, T): start + target, labels (N, T): target + end)."""
    src_index = {c: i + 3 for i, c in enumerate(SOURCE_CHARS)}
    tgt_index = {c: i + 3 for i, c in enumerate(TARGET_CHARS)}
    source = np.full((len(pairs), SOURCE_LENGTH), PAD, np.int64)
    prefix = np.full((len(pairs), TARGET_LENGTH), PAD, np.int64)
    labels = np.full((len(pairs), TARGET_LENGTH), PAD, np.int64)
    for row, (text, iso) in enumerate(pairs):
        source[row, :len(text)] = [src_index[c] for c in text]
        target = [tgt_index[c] for c in iso]
        prefix[row, :len(target) + 1] = [START] + target
        labels[row, :len(target) + 1] = target + [END]
    return source, prefix, labels


def decode_text(ids):
    chars = []
    for token in ids:
        if token == END:
            break
        chars.append(TARGET_CHARS[token - 3] if token >= 3 else "?")
    return "".join(chars)


def build_model(embed=64, heads=4, feedforward=128, layers=2, seed=0):
    """Encoder: embedding + positions + Transformer encoder layers over the written date; decoder:
    embedding + positions + Transformer decoder layers (causal self-attention, cross-attention to
    the encoder's output) over the target prefix; a Linear to the target vocabulary."""
    source = numdl.Input((SOURCE_LENGTH,), name="source", dtype="int64")
    prefix = numdl.Input((TARGET_LENGTH,), name="prefix", dtype="int64")
    memory = numdl.PositionalEncoding()(numdl.Embedding(len(SOURCE_CHARS) + 3, embed)(source))
    for _ in range(layers):
        memory = numdl.TransformerEncoderLayer(heads, feedforward, dropout=0.0)(memory)
    x = numdl.PositionalEncoding()(numdl.Embedding(len(TARGET_CHARS) + 3, embed)(prefix))
    for _ in range(layers):
        x = numdl.TransformerDecoderLayer(heads, feedforward, dropout=0.0)([x, memory])
    logits = numdl.Linear(len(TARGET_CHARS) + 3)(x)
    model = numdl.Model([source, prefix], logits, seed=seed)
    return model.compile(numdl.CrossEntropy(), numdl.Adam(lr=2e-3))


def exact_match(decoded, pairs):
    return float(np.mean([decode_text(ids) == iso for ids, (_, iso) in zip(decoded, pairs)]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=20000, help="training pairs")
    parser.add_argument("--test", type=int, default=2000, help="held-out pairs")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--beam", type=int, default=4, help="beam width (1: skip beam search)")
    parser.add_argument("--embed", type=int, default=64)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(0)
    train_dates, test_dates = split_dates(rng)
    train_pairs, test_pairs = make_pairs(args.train, rng, train_dates), make_pairs(args.test, rng, test_dates)
    source, prefix, labels = encode(train_pairs)
    test_source, test_prefix, test_labels = encode(test_pairs)
    model = build_model(embed=args.embed)
    start = time.perf_counter()
    model.fit([source, prefix], labels, epochs=args.epochs, batch_size=args.batch_size,
              validation_data=([test_source, test_prefix], test_labels), verbose=1)
    trained = time.perf_counter() - start
    greedy = exact_match(greedy_decode(model, test_source, START), test_pairs)
    print(f"trained {args.epochs} epochs in {trained:.0f}s; held-out exact match, greedy: {greedy:.4f}")
    results = {"greedy": greedy}
    if args.beam > 1:
        decoded, _ = beam_search(model, test_source, START, END, beam_width=args.beam)
        results["beam"] = exact_match(decoded, test_pairs)
        print(f"held-out exact match, beam search (width {args.beam}): {results['beam']:.4f}")
    for text, iso in test_pairs[:5]:
        ids = greedy_decode(model, encode([(text, iso)])[0], START)[0]
        print(f"  {text!r:>36} -> {decode_text(ids)}  (true {iso})")
    return results


if __name__ == "__main__":
    main()
