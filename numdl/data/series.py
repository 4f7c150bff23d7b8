"""Numeric time series: a CSV column, missing values, and sliding windows for forecasting."""

import csv
from pathlib import Path

import numpy as np

from numdl.errors import DataError


def read_csv_column(path, column, missing="interpolate"):
    """One column of a CSV file (with a header row) as float64. Empty or non-numeric cells are
    missing values: ``interpolate`` fills them linearly between neighbours, ``drop`` removes them,
    ``error`` refuses the file naming the first bad row."""
    try:
        with Path(path).open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"cannot read CSV file {path} ({error})") from None
    if not rows:
        raise DataError(f"CSV file {path} has no data rows")
    if column not in rows[0]:
        raise DataError(f"CSV file {path} has no column {column!r}; columns: {', '.join(rows[0])}")
    values = np.full(len(rows), np.nan)
    for i, row in enumerate(rows):
        try:
            values[i] = float(row[column])
        except (TypeError, ValueError):
            if missing == "error":
                raise DataError(f"{path}: row {i + 2}, column {column!r}: {row[column]!r} is not a number") from None
    values[~np.isfinite(values)] = np.nan
    bad = np.isnan(values)
    if bad.all():
        raise DataError(f"{path}: column {column!r} has no numeric values")
    if missing == "drop":
        return values[~bad]
    if bad.any():
        positions = np.arange(len(values))
        values[bad] = np.interp(positions[bad], positions[~bad], values[~bad])
    return values


def sliding_windows(series, window, horizon=1):
    """Inputs (n, window, 1) of consecutive values and targets (n, horizon) of the values after them."""
    series = np.asarray(series, dtype=np.float64)
    n = len(series) - window - horizon + 1
    if n < 1:
        raise DataError(f"a series of {len(series)} values is too short for window {window} + horizon {horizon}")
    inputs = np.stack([series[i:i + window] for i in range(n)])[:, :, None]
    targets = np.stack([series[i + window:i + window + horizon] for i in range(n)])
    return inputs, targets
