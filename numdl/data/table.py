"""Tables: CSV and Parquet files read with pyarrow (typed columns, null masks, multi-threaded), and
the per-column preprocessing that is fitted on the training split and travels with the model.

``TablePreprocessor`` turns raw rows into the model's input: numeric columns imputed (mean, median,
most frequent or a constant; optionally with a 0/1 missing-indicator column) and scaled
(standardised or min-max, with training statistics), categorical columns one-hot encoded with a
reserved last slot for a category never seen in training (and for a missing value). ``TargetEncoder``
maps the target column(s) to class indices, 0/1 label columns or (optionally standardised) values.
Both keep a JSON state that checkpoints carry (no pickle), so ``numdl predict`` applies exactly the
training run's steps to new raw rows.
"""

import math

import numpy as np

from numdl.errors import ConfigError, DataError

SCALINGS = ("standardize", "minmax", "none")
IMPUTATIONS = ("mean", "median", "most_frequent", "constant")
TASKS = ("classification", "multilabel", "regression")
#: What numdl.train.TaskReport adds to every epoch's logs, per evaluation set, by task.
TASK_METRICS = {"classification": ("macro_f1", "recall"),
                "multilabel": ("subset_accuracy", "hamming_loss", "micro_f1", "macro_f1"),
                "regression": ("mae", "rmse", "r2")}
FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


def _pyarrow():
    try:
        import pyarrow  # noqa: F401
        import pyarrow.compute  # noqa: F401
    except ImportError:
        raise ConfigError("tables need pyarrow: pip install 'numdl[table]'") from None
    return pyarrow


# ------------------------------------------------------------------------------------ reading
def _table_file(path, what):
    """(path, "csv" or "parquet") of a non-empty regular file named by its suffix, else DataError."""
    from numdl.fileio import regular_file

    path, size = regular_file(path, what)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{what} {path}: not a CSV or Parquet file (expected .csv, .parquet or .pq)")
    if size == 0:
        raise DataError(f"{what} {path}: the file is empty")
    return path, kind


def read_table(path, what="table"):
    """A pyarrow Table from a CSV or Parquet file (by suffix), with one clear DataError for a file
    that is missing, not a regular file, of another format, unreadable or empty."""
    pa = _pyarrow()
    path, kind = _table_file(path, what)
    try:
        if kind == "csv":
            import pyarrow.csv as pacsv

            table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError, ValueError) as error:
        message = " ".join(str(error).split())[:300]
        raise DataError(f"{what} {path}: cannot read it as {kind.upper()} ({message})") from None
    if table.num_rows == 0:
        raise DataError(f"{what} {path}: no data rows")
    return table


def as_arrow(table):
    """A pyarrow Table from a pyarrow Table, a pandas or polars DataFrame, or a dict of columns."""
    pa = _pyarrow()
    if isinstance(table, pa.Table):
        return table
    if hasattr(table, "to_arrow"):  # polars
        return table.to_arrow()
    if hasattr(table, "columns") and hasattr(table, "dtypes") and hasattr(table, "iloc"):  # pandas
        return pa.Table.from_pandas(table, preserve_index=False)
    if isinstance(table, dict):
        return pa.table(table)
    raise DataError(f"expected a table (pyarrow, pandas or polars DataFrame, or a dict of columns), "
                    f"got {type(table).__name__}")


def _is_numeric(column_type):
    import pyarrow.types as t

    return t.is_integer(column_type) or t.is_floating(column_type) or t.is_boolean(column_type) or t.is_decimal(
        column_type)


def numeric_values(table, name, source):
    """A column as float64 with NaN for missing values; a text value in a column that is otherwise
    numbers is refused naming its row and the column (a typo, not a category)."""
    _pyarrow()
    column = table.column(name)
    if _is_numeric(column.type):
        return column.cast("float64").to_numpy(zero_copy_only=False)
    values = column.cast("string").to_pylist()
    out = np.full(len(values), np.nan)
    for row, value in enumerate(values):
        if value is None or value == "":
            continue
        try:
            out[row] = float(value)
        except ValueError:
            raise DataError(f"{source}: row {row + 2}, column {name!r}: {value[:40]!r} is not a number") from None
    return out


def looks_numeric(table, name):
    """Whether a text column holds numbers but for a few stray values (then it is numeric with a
    typo, refused by numeric_values, rather than a category)."""
    pc = _pyarrow().compute
    column = table.column(name)
    if _is_numeric(column.type):
        return True
    values = pc.drop_null(column.cast("string"))
    if len(values) == 0:
        return False
    numeric = pc.sum(pc.cast(pc.match_substring_regex(values, r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"),
                             "int64")).as_py() or 0
    return numeric >= 0.9 * len(values)


def category_values(table, name):
    """A column as a list of strings, None for missing values."""
    return table.column(name).cast("string").to_pylist()


def category_codes(table, name, categories):
    """Each row's index in ``categories``, or len(categories) (the unknown slot) for a value not
    among them or missing; vectorised in pyarrow (a million rows in milliseconds)."""
    pa = _pyarrow()
    codes = pa.compute.index_in(table.column(name).cast("string"), value_set=pa.array(categories, pa.string()))
    return pa.compute.fill_null(codes, len(categories)).to_numpy(zero_copy_only=False).astype(np.int64)


def distinct_categories(table, name):
    """The sorted distinct non-empty values of a column, as strings."""
    pa = _pyarrow()
    values = pa.compute.unique(pa.compute.drop_null(table.column(name).cast("string"))).to_pylist()
    return sorted(v for v in values if v != "")


# ------------------------------------------------------------------------------ preprocessing
class TablePreprocessor:
    """Raw feature columns -> a float matrix, fitted on training rows only (see the module doc)."""

    def __init__(self, features, categorical, scale="standardize", impute="mean", fill_value=0.0,
                 missing_indicator=False):
        if scale not in SCALINGS:
            raise ConfigError(f"data.scale: must be one of {', '.join(SCALINGS)}, got {scale!r}")
        if impute not in IMPUTATIONS:
            raise ConfigError(f"data.impute: must be one of {', '.join(IMPUTATIONS)}, got {impute!r}")
        self.features, self.categorical = list(features), set(categorical)
        self.scale, self.impute, self.fill_value = scale, impute, float(fill_value)
        self.missing_indicator = missing_indicator
        self.columns = {}  # name -> fitted statistics

    def fit(self, table, source="training data"):
        """Fit on training rows: a pyarrow Table, a pandas or polars DataFrame or a dict of columns."""
        table = as_arrow(table)
        for name in self.features:
            if name in self.categorical:
                self.columns[name] = {"kind": "categorical", "categories": distinct_categories(table, name)}
                continue
            values = numeric_values(table, name, source)
            present = values[~np.isnan(values)]
            if present.size == 0:
                raise DataError(f"{source}: column {name!r} has no values")
            fill = {"mean": lambda: float(present.mean()), "median": lambda: float(np.median(present)),
                    "most_frequent": lambda: float(_most_frequent(present)),
                    "constant": lambda: self.fill_value}[self.impute]()
            filled = np.where(np.isnan(values), fill, values)
            if self.scale == "standardize":
                shift, divisor = float(filled.mean()), float(filled.std()) or 1.0
            elif self.scale == "minmax":
                shift, divisor = float(filled.min()), float(filled.max() - filled.min()) or 1.0
            else:
                shift, divisor = 0.0, 1.0
            self.columns[name] = {"kind": "numeric", "fill": fill, "shift": shift, "divisor": divisor,
                                  "indicator": bool(self.missing_indicator and np.isnan(values).any())}
        return self

    @property
    def width(self):
        return sum(len(c["categories"]) + 1 if c["kind"] == "categorical" else 1 + c["indicator"]
                   for c in self.columns.values())

    def output_names(self):
        names = []
        for name, column in self.columns.items():
            if column["kind"] == "categorical":
                names += [f"{name}={c}" for c in column["categories"]] + [f"{name}=<unknown>"]
            else:
                names += [name] + ([f"{name}<missing>"] if column["indicator"] else [])
        return names

    def check_columns(self, table, source):
        """Raise DataError naming a missing feature column; return the extra columns (ignored)."""
        present = set(table.column_names)
        missing = [name for name in self.features if name not in present]
        if missing:
            raise DataError(f"{source}: missing column{'s' if len(missing) > 1 else ''} "
                            f"{', '.join(map(repr, missing))} that the model was trained with")
        return [name for name in table.column_names if name not in self.features]

    def transform(self, table, dtype="float32", source="data"):
        table = as_arrow(table)
        self.check_columns(table, source)
        out = np.zeros((table.num_rows, self.width), dtype)
        at = 0
        for name, column in self.columns.items():
            if column["kind"] == "categorical":
                unknown = len(column["categories"])
                codes = category_codes(table, name, column["categories"])
                out[np.arange(table.num_rows), at + codes] = 1
                at += unknown + 1
                continue
            values = numeric_values(table, name, source)
            missing = np.isnan(values)
            out[:, at] = (np.where(missing, column["fill"], values) - column["shift"]) / column["divisor"]
            at += 1
            if column["indicator"]:
                out[:, at] = missing
                at += 1
        return out

    def state(self):
        return {"features": self.features, "scale": self.scale, "impute": self.impute, "fill_value": self.fill_value,
                "missing_indicator": self.missing_indicator, "columns": self.columns}

    @classmethod
    def from_state(cls, state):
        try:
            columns = state["columns"]
            categorical = [name for name, c in columns.items() if c["kind"] == "categorical"]
            made = cls(state["features"], categorical, state["scale"], state["impute"], state["fill_value"],
                       state["missing_indicator"])
            for name in made.features:
                column = columns[name]
                if column["kind"] == "numeric" and not all(
                        isinstance(column[k], (int, float)) and math.isfinite(column[k]) and not isinstance(column[k], bool)
                        for k in ("fill", "shift", "divisor")):
                    raise TypeError(name)
            made.columns = {name: columns[name] for name in made.features}
        except (KeyError, TypeError, AttributeError, ConfigError) as error:
            raise DataError(f"the checkpoint's table preprocessing is malformed ({error})") from None
        return made


def _most_frequent(values):
    unique, counts = np.unique(values, return_counts=True)
    return unique[np.argmax(counts)]


class TargetEncoder:
    """The target column(s) -> what the loss expects: class indices (classification; the classes'
    original values kept to name them), 0/1 columns (multilabel) or values (regression; standardised
    when ``scale_target``, mapped back by ``decode``)."""

    def __init__(self, task, targets, scale_target=False):
        if task not in TASKS:
            raise ConfigError(f"data.task: must be one of {', '.join(TASKS)}, got {task!r}")
        self.task, self.targets, self.scale_target = task, list(targets), scale_target
        self.classes, self.shift, self.divisor = None, 0.0, 1.0

    def fit(self, table, source="training data"):
        table = as_arrow(table)
        if self.task == "classification":
            if len(self.targets) != 1:
                raise ConfigError("data.target: a classification target is one column")
            values = self.classes_of(table, source)
            self.classes = sorted(set(values), key=_class_order)
            if len(self.classes) < 2:
                raise DataError(f"{source}: the target {self.targets[0]!r} has a single class "
                                f"({self.classes[0]!r}); there is nothing to learn")
        elif self.task == "regression" and self.scale_target:
            values = self.values_of(table, source)
            self.shift, self.divisor = float(values.mean()), float(values.std()) or 1.0
        else:
            self.values_of(table, source)
        return self

    def classes_of(self, table, source):
        """The target's class of every row, as normalised text ('1' and '1.0' are one class)."""
        values = category_values(table, self.targets[0])
        if any(v is None or v == "" for v in values):
            row = next(i for i, v in enumerate(values) if v is None or v == "")
            raise DataError(f"{source}: row {row + 2}: the target {self.targets[0]!r} is missing")
        return [_normalise_class(v) for v in values]

    def values_of(self, table, source):
        """The target column(s) as a float (rows, targets) array, checked (present; 0/1 for multi-label)."""
        columns = [numeric_values(table, name, source) for name in self.targets]
        values = np.stack(columns, axis=1)
        if np.isnan(values).any():
            row, col = np.argwhere(np.isnan(values))[0]
            raise DataError(f"{source}: row {row + 2}: the target {self.targets[col]!r} is missing")
        if self.task == "multilabel" and not np.isin(values, (0.0, 1.0)).all():
            row, col = np.argwhere(~np.isin(values, (0.0, 1.0)))[0]
            raise DataError(f"{source}: row {row + 2}: the multi-label target {self.targets[col]!r} is "
                            f"{values[row, col]:g}; multi-label targets are 0 or 1")
        return values

    def encode(self, table, dtype="float32", source="data"):
        table = as_arrow(table)
        if self.task == "classification":
            index = {c: i for i, c in enumerate(self.classes)}
            raw = self.classes_of(table, source)
            unknown = [v for v in raw if v not in index]
            if unknown:
                raise DataError(f"{source}: the target has class {unknown[0]!r}, which the training split lacks")
            return np.array([index[v] for v in raw], np.int64)
        values = self.values_of(table, source)
        if self.task == "regression":
            values = (values - self.shift) / self.divisor
        return values.astype(dtype)

    def decode(self, outputs):
        """Model outputs of the regression task in the target's own units."""
        return outputs * self.divisor + self.shift

    def state(self):
        return {"task": self.task, "targets": self.targets, "scale_target": self.scale_target,
                "classes": self.classes, "shift": self.shift, "divisor": self.divisor}

    @classmethod
    def from_state(cls, state):
        try:
            made = cls(state["task"], state["targets"], state["scale_target"])
            made.classes, made.shift, made.divisor = state["classes"], float(state["shift"]), float(state["divisor"])
        except (KeyError, TypeError, ValueError, ConfigError) as error:
            raise DataError(f"the checkpoint's target encoding is malformed ({error})") from None
        return made


def _normalise_class(value):
    """'1', '1.0' and 1 are one class; other text stays text."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(int(number)) if number.is_integer() else str(number)


def _class_order(value):
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


def stratified_split(n, labels, fractions, seed):
    """Row indices of ``n`` rows in parts with the given fractions (the rest is the first part),
    drawn per class when ``labels`` is given, so each part keeps the class proportions."""
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(labels == c) for c in np.unique(labels)] if labels is not None else None
    parts = [[] for _ in range(len(fractions) + 1)]
    for group in (groups if groups is not None else [np.arange(n)]):
        group = rng.permutation(group)
        begin = len(group)
        for k, fraction in reversed(list(enumerate(fractions, 1))):
            take = int(round(fraction * len(group)))
            parts[k].append(group[begin - take:begin])
            begin -= take
        parts[0].append(group[:begin])
    return [np.sort(np.concatenate(p)) if p else np.array([], np.int64) for p in parts]


# ------------------------------------------------------------------------------- the dataset
def task_for(config):
    """classification, multilabel or regression: data.task, or what the configured loss implies."""
    from numdl.plugins import registry

    task = config["data"].get("task", "auto")
    if task != "auto":
        return task
    loss = registry().get("loss", config["loss"]["type"])
    if getattr(loss, "target_kind", "values") == "labels":
        return "classification"
    return "multilabel" if loss.name == "bce_with_logits" else "regression"


def _targets(data):
    target = data.get("target")
    if not target:
        raise ConfigError("data.target: a table dataset needs the target column (or a list of columns)")
    return [target] if isinstance(target, str) else list(target)


def infer_features(table, data, targets):
    """(features, categorical) from the config, or every other column, categorical when it holds
    text (a text column of numbers but for a few values is numeric: its stray values are refused)."""
    id_column = data.get("id_column") or None
    names = table.column_names
    for name in targets + ([id_column] if id_column else []):
        if name not in names:
            key = "data.id_column" if name == id_column else "data.target"
            raise ConfigError(f"{key}: the table has no column {name!r}; columns: {', '.join(names)}")
    features = list(data.get("features") or [n for n in names if n not in targets and n != id_column])
    unknown = [n for n in features if n not in names]
    if unknown:
        raise ConfigError(f"data.features: the table has no column {unknown[0]!r}; columns: {', '.join(names)}")
    if not features:
        raise ConfigError("data.features: no feature columns are left")
    declared = data.get("categorical")
    if declared is None:
        categorical = [n for n in features if not looks_numeric(table, n)]
    else:
        categorical = list(declared)
        unknown = [n for n in categorical if n not in features]
        if unknown:
            raise ConfigError(f"data.categorical: {unknown[0]!r} is not a feature column")
    return features, categorical


def load_table_splits(config):
    """({"train": (x, y), "validation": ..., "test": ...}, preprocessing state) of a table config:
    one file split (stratified for classification, seeded) into train/validation/test, or separate
    files; the preprocessing is fitted on the training rows only. With data.out_of_core the files
    are streamed into memory-mapped splits instead (load_table_out_of_core)."""
    if config["data"].get("out_of_core"):
        import atexit
        import shutil
        import tempfile

        folder = tempfile.mkdtemp(prefix="numdl-table-")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        return load_table_out_of_core(config, folder)
    data, seed = config["data"], config.get("seed", 0)
    dtype = config["model"]["dtype"]
    targets, task = _targets(data), task_for(config)
    if data.get("train_path"):
        train = read_table(data["train_path"], "data.train_path")
        given = {name: read_table(data[f"{name}_path"], f"data.{name}_path")
                 for name in ("validation", "test") if data.get(f"{name}_path")}
    elif data.get("path"):
        train, given = read_table(data["path"], "data.path"), {}
    else:
        raise ConfigError("data.path: a table dataset needs a CSV or Parquet file (data.path or data.train_path)")
    features, categorical = infer_features(train, data, targets)
    encoder = TargetEncoder(task, targets, data.get("scale_target", False))
    source = data.get("train_path") or data["path"]
    # Checked on whole files first, so that an error names the row of the file, not of a split.
    training_classes = None
    for name, table in {"training": train, **given}.items():
        where = source if name == "training" else data[f"{name}_path"]
        for column in features:
            if column not in categorical and column in table.column_names:
                numeric_values(table, column, where)
        if task == "classification":
            classes = encoder.classes_of(table, where)
            training_classes = classes if name == "training" else training_classes
        else:
            encoder.values_of(table, where)
    fractions = {"validation": data.get("validation_split", 0.0), "test": data.get("test_split", 0.0)}
    wanted = [name for name in ("validation", "test") if name not in given and fractions[name] > 0]
    if "test" not in given and "test" not in wanted:
        raise ConfigError("data.test_split: must be > 0, or give data.test_path")
    if wanted:
        strata = np.array(training_classes) if task == "classification" else None  # stratified by class
        parts = stratified_split(train.num_rows, strata, [fractions[name] for name in wanted], seed)
        splits = {"train": train.take(parts[0]), **{name: train.take(p) for name, p in zip(wanted, parts[1:])}}
    else:
        splits = {"train": train}
    splits.update(given)
    for name, table in splits.items():
        if table.num_rows == 0:
            raise DataError(f"the {name} split of the table has no rows (fewer rows than its fraction needs)")
    encoder.fit(splits["train"], f"{source} (training rows)")
    preprocessor = TablePreprocessor(features, categorical, data.get("scale", "standardize"),
                                     data.get("impute", "mean"), data.get("fill_value", 0.0),
                                     data.get("missing_indicator", False)).fit(splits["train"], source)
    prepared = {}
    for name, table in splits.items():
        where = data.get(f"{name}_path") or f"{source} ({name} rows)"
        prepared[name] = (preprocessor.transform(table, dtype, where), encoder.encode(table, dtype, where))
    state = {"table": preprocessor.state(), "target": encoder.state(), "id_column": data.get("id_column") or None}
    return prepared, state


# ------------------------------------------------------------------------- larger than memory
#: Rows per record batch when a table is streamed (data.out_of_core).
STREAM_ROWS = 65536


def record_batches(path, what, columns=None):
    """Record batches of a CSV or Parquet file as pyarrow Tables, read a block at a time (only
    ``columns`` when given), never the whole file."""
    pa = _pyarrow()
    path, kind = _table_file(path, what)
    try:
        if kind == "parquet":
            import pyarrow.parquet as pq

            # no pre-buffering: it reads the whole file's column chunks into memory up front
            reader = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 20).iter_batches(
                batch_size=STREAM_ROWS, columns=columns, use_threads=False)
        else:
            import pyarrow.csv as pacsv

            reader = pacsv.open_csv(path, read_options=pacsv.ReadOptions(block_size=8 << 20),
                                    convert_options=pacsv.ConvertOptions(strings_can_be_null=True,
                                                                         include_columns=columns or []))
        pool = pa.default_memory_pool()
        for batch in reader:
            yield pa.Table.from_batches([batch])
            pool.release_unused()  # give freed buffers back, or the pool keeps its peak
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError, ValueError) as error:
        message = " ".join(str(error).split())[:300]
        raise DataError(f"{what} {path}: cannot read it as {kind.upper()} ({message})") from None


class _StreamedStatistics:
    """Per-column sums, extremes and categories of the training rows, a batch at a time: what
    TablePreprocessor.fit computes on a whole table (mean or constant imputation only)."""

    def __init__(self, features, categorical, impute, fill_value):
        self.features, self.categorical = features, set(categorical)
        self.impute, self.fill_value = impute, fill_value
        self.numeric = {n: [0, 0.0, 0.0, np.inf, -np.inf, 0] for n in features if n not in self.categorical}
        self.categories = {n: set() for n in features if n in self.categorical}

    def add(self, table, source):
        for name, stats in self.numeric.items():
            values = numeric_values(table, name, source)
            present = values[~np.isnan(values)]
            stats[0] += present.size
            stats[1] += float(present.sum())
            stats[2] += float((present * present).sum())
            if present.size:
                stats[3], stats[4] = min(stats[3], float(present.min())), max(stats[4], float(present.max()))
            stats[5] += values.size - present.size
        for name, seen in self.categories.items():
            seen.update(distinct_categories(table, name))

    def columns(self, scale, missing_indicator, source):
        columns = {}
        for name in self.features:
            if name in self.categorical:
                columns[name] = {"kind": "categorical", "categories": sorted(self.categories[name])}
                continue
            count, total, squares, low, high, missing = self.numeric[name]
            if count == 0:
                raise DataError(f"{source}: column {name!r} has no values")
            fill = total / count if self.impute == "mean" else float(self.fill_value)
            n = count + missing
            mean = (total + fill * missing) / n
            variance = max((squares + fill * fill * missing) / n - mean * mean, 0.0)
            if missing:
                low, high = min(low, fill), max(high, fill)
            shift, divisor = {"standardize": (mean, np.sqrt(variance) or 1.0),
                              "minmax": (low, (high - low) or 1.0), "none": (0.0, 1.0)}[scale]
            columns[name] = {"kind": "numeric", "fill": float(fill), "shift": float(shift), "divisor": float(divisor),
                             "indicator": bool(missing_indicator and missing > 0)}
        return columns


def load_table_out_of_core(config, folder):
    """load_table_splits for tables larger than memory: the files are read in record batches
    (a pass for the split, one for the training statistics, one that writes each split's
    preprocessed rows into a float .npy file in ``folder``), and the splits come back as memmaps of
    those files, which training reads a batch at a time (numdl.data.ondisk)."""
    import os
    from pathlib import Path

    data, seed, dtype = config["data"], config.get("seed", 0), np.dtype(config["model"]["dtype"])
    targets, task = _targets(data), task_for(config)
    if data.get("impute", "mean") not in ("mean", "constant"):
        raise ConfigError("data.impute: out of core, only mean or constant (a median needs every value at once)")
    files = ({"train": data["train_path"], **{name: data[f"{name}_path"] for name in ("validation", "test")
                                              if data.get(f"{name}_path")}}
             if data.get("train_path") else {"train": data.get("path")})
    if not files["train"]:
        raise ConfigError("data.path: a table dataset needs a CSV or Parquet file (data.path or data.train_path)")
    first = next(record_batches(files["train"], "data.path"))
    features, categorical = infer_features(first, data, targets)
    encoder = TargetEncoder(task, targets, data.get("scale_target", False))

    # pass 1: the target of every row (for the split, stratified by class, and the class list), as
    # compact arrays: class codes into ``seen``, not a Python string per row
    seen = {}

    def target_rows(path):
        parts = []
        for table in record_batches(path, path, targets):
            if task == "classification":
                column = table.column(targets[0])
                if column.null_count:
                    encoder.classes_of(table, path)  # names the row of the missing target
                encoded = column.cast("string").dictionary_encode().combine_chunks()
                names = [_normalise_class(v) for v in encoded.dictionary.to_pylist()]
                lookup = np.array([seen.setdefault(v, len(seen)) for v in names], np.int32)
                parts.append(lookup[encoded.indices.to_numpy(zero_copy_only=False)])
            else:
                parts.append(encoder.values_of(table, path))
        return np.concatenate(parts)

    rows = {name: target_rows(path) for name, path in files.items()}
    fractions = {"validation": data.get("validation_split", 0.0), "test": data.get("test_split", 0.0)}
    wanted = [name for name in ("validation", "test") if name not in files and fractions[name] > 0]
    if "test" not in files and "test" not in wanted:
        raise ConfigError("data.test_split: must be > 0, or give data.test_path")
    n = len(rows["train"])
    part = np.zeros(n, np.int8)  # which split each row of the training file goes to
    if wanted:
        labels = None
        if task == "classification":  # codes ranked as the in-memory split ranks the class names
            rank = np.argsort(np.argsort(np.array(list(seen), dtype=object).astype(str)))
            labels = rank[rows["train"]]
        for k, indices in enumerate(stratified_split(n, labels, [fractions[w] for w in wanted], seed)[1:], 1):
            part[indices] = k
    splits = ["train", *wanted]  # the parts of the training file, in the order of ``part``'s codes

    # pass 2: statistics of the training rows only
    statistics = _StreamedStatistics(features, categorical, data.get("impute", "mean"), data.get("fill_value", 0.0))
    at = 0
    for table in record_batches(files["train"], files["train"]):
        mask = part[at:at + table.num_rows] == 0
        statistics.add(table.filter(_pyarrow().array(mask)), files["train"])
        at += table.num_rows
    preprocessor = TablePreprocessor(features, categorical, data.get("scale", "standardize"),
                                     data.get("impute", "mean"), data.get("fill_value", 0.0),
                                     data.get("missing_indicator", False))
    preprocessor.columns = statistics.columns(data.get("scale", "standardize"), data.get("missing_indicator", False),
                                              files["train"])
    if task == "classification":
        class_names = {code: name for name, code in seen.items()}
        encoder.classes = sorted((class_names[c] for c in np.unique(rows["train"][part == 0])), key=_class_order)
        if len(encoder.classes) < 2:
            raise DataError(f"{files['train']}: the target {targets[0]!r} has a single class")
    elif task == "regression" and encoder.scale_target:
        train_values = rows["train"][part == 0]
        encoder.shift, encoder.divisor = float(train_values.mean()), float(train_values.std()) or 1.0

    # pass 3: preprocessed rows appended to one .npy file per split
    width = preprocessor.width
    sizes = {name: int((part == k).sum()) for k, name in enumerate(splits)}
    sizes.update({name: len(rows[name]) for name in files if name != "train"})
    handles, targets_out = {}, {name: [] for name in sizes}
    for name, size in sizes.items():
        if size == 0:
            raise DataError(f"the {name} split of the table has no rows (fewer rows than its fraction needs)")
        handle = open(Path(folder) / f"{name}.npy", "wb")
        np.lib.format.write_array_header_1_0(handle, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                      "fortran_order": False, "shape": (size, width)})
        handles[name] = handle
    try:
        for source_name, path in files.items():
            at = 0
            for table in record_batches(path, path):
                x = preprocessor.transform(table, dtype, path)
                y = encoder.encode(table, dtype, path)
                where = part[at:at + table.num_rows] if source_name == "train" else None
                at += table.num_rows
                for k, name in (enumerate(splits) if source_name == "train" else [(None, source_name)]):
                    keep = slice(None) if where is None else where == k
                    handles[name].write(np.ascontiguousarray(x[keep]).tobytes())
                    targets_out[name].append(y[keep])
    finally:
        for handle in handles.values():
            handle.close()
    prepared = {name: (np.load(os.path.join(folder, f"{name}.npy"), mmap_mode="r"), np.concatenate(targets_out[name]))
                for name in sizes}
    state = {"table": preprocessor.state(), "target": encoder.state(), "id_column": data.get("id_column") or None}
    return prepared, state
