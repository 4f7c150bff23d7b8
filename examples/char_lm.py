"""A character-level language model: Embedding -> 2-layer LSTM -> Linear over the vocabulary,
trained on next-character prediction over windows of a text file, then sampled.

    python examples/char_lm.py [--text FILE] [--steps 1500] [--sample 300]

Without --text it trains on numdl's own README. Prints the text's unigram entropy (the loss of a
model that ignores context) next to the model's loss, then generated text.
"""

import argparse
from pathlib import Path

import numpy as np

import numdl
from numdl.data import Vocabulary, load_text, next_token_windows, unigram_entropy


def build_model(vocab_size, window, hidden, seed=0):
    layers = [numdl.Embedding(vocab_size, 32), numdl.LSTM(hidden, num_layers=2, return_sequences=True),
              numdl.Linear(vocab_size)]
    model = numdl.Sequential(layers, input_shape=(window,), seed=seed)
    return model.compile(numdl.CrossEntropy(), numdl.Adam(lr=3e-3))


def sample(model, vocab, prompt, length, window, temperature=0.8, seed=0):
    """Generate ``length`` characters after ``prompt``, feeding back the last ``window`` ones."""
    rng = np.random.default_rng(seed)
    ids = list(vocab.encode(prompt))
    for _ in range(length):
        context = ids[-window:]
        x = np.zeros((1, window), np.int64)
        x[0, :len(context)] = context
        logits = model.forward(x, training=False, lengths=np.array([len(context)]))[0, len(context) - 1]
        p = np.exp((logits - logits.max()) / temperature)
        ids.append(int(rng.choice(len(p), p=p / p.sum())))
    return vocab.decode(ids)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text", default=str(Path(__file__).parent.parent / "README.md"))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sample", type=int, default=300)
    args = parser.parse_args(argv)

    text = load_text(args.text)
    vocab = Vocabulary.characters(text)
    ids = vocab.encode(text)
    x, y = next_token_windows(ids, args.window, stride=args.window // 2)
    model = build_model(len(vocab), args.window, args.hidden)
    rng = np.random.default_rng(0)
    losses = []
    for step in range(args.steps):
        batch = rng.integers(0, len(x), args.batch_size)
        losses.append(model.train_step(x[batch], y[batch])[0])
        if (step + 1) % max(1, args.steps // 10) == 0:
            print(f"step {step + 1}: loss {np.mean(losses[-50:]):.3f} nats/char")
    entropy = unigram_entropy(ids)
    final = float(np.mean(losses[-50:]))
    print(f"unigram entropy {entropy:.3f} nats/char; model loss {final:.3f} nats/char ({len(vocab)} characters)")
    if args.sample:
        print(sample(model, vocab, text[:20], args.sample, args.window))
    return entropy, final


if __name__ == "__main__":
    main()
