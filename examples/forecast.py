"""A time-series forecaster: an LSTM reads a window of past values of one CSV column and predicts
the next value. Reports the test RMSE next to the naive forecast (tomorrow = today).

    python examples/forecast.py [--csv FILE --column NAME] [--window 24] [--epochs 20]

Without --csv it writes and uses a synthetic daily series (trend, weekly season, noise) so that the
example runs anywhere. Values are standardised with statistics of the training part only.
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np

import numdl
from numdl.data import read_csv_column, sliding_windows


def synthetic_csv(path, days=1200, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(days)
    values = 10 + 0.01 * t + 3 * np.sin(2 * np.pi * t / 7) + rng.normal(0, 0.5, days)
    rows = ["day,value"] + [f"{d},{v:.4f}" for d, v in zip(t, values)]
    Path(path).write_text("\n".join(rows) + "\n")
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv")
    parser.add_argument("--column", default="value")
    parser.add_argument("--window", type=int, default=24)
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args(argv)
    csv_path = args.csv or synthetic_csv(Path(tempfile.mkdtemp()) / "series.csv")

    series = read_csv_column(csv_path, args.column)
    split = int(len(series) * 0.8)
    mean, std = series[:split].mean(), series[:split].std() or 1.0
    scaled = (series - mean) / std
    x_train, y_train = sliding_windows(scaled[:split], args.window)
    x_test, y_test = sliding_windows(scaled[split - args.window:], args.window)

    model = numdl.Sequential([numdl.LSTM(32), numdl.Linear(1)], input_shape=(args.window, 1), seed=0)
    model.compile(numdl.MSE(), numdl.Adam(lr=3e-3))
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=32)
    predicted = model.predict(x_test)[:, 0] * std + mean
    actual = y_test[:, 0] * std + mean
    naive = x_test[:, -1, 0] * std + mean
    rmse = float(np.sqrt(np.mean((predicted - actual) ** 2)))
    naive_rmse = float(np.sqrt(np.mean((naive - actual) ** 2)))
    print(f"test RMSE {rmse:.3f} (naive last-value forecast {naive_rmse:.3f}) over {len(actual)} steps")
    return rmse, naive_rmse


if __name__ == "__main__":
    main()
