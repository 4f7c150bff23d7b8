"""Input for ``numdl predict``: read a file of samples safely, shape it for the model, and check
that its values lie where the model's training input did."""

import math

import numpy as np

from numdl.errors import DataError, ShapeError
from numdl.fileio import regular_file


def load_samples(path):
    """The samples in an .npy or IDX file as a NumPy array (an .npy is memory-mapped: its header is
    checked against the file's size before anything is read)."""
    from numdl.data import read_idx

    path, _ = regular_file(path, "input")
    if path.suffix == ".npy":
        try:
            x = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise DataError(f"{path}: not a plain .npy array of numbers ({error})") from None
    else:
        x = read_idx(path)
    if x.dtype.kind not in "fiub":
        raise DataError(f"{path}: holds {x.dtype} values; the model needs numbers (integers or floats)")
    return x


def shape_for(model, x, source):
    """``x`` as a batch of the model's input shape: a flattened batch is accepted when the model
    starts with ``flatten``; a single sample without its batch axis is named as such."""
    shape = tuple(model.input_shape)
    if x.ndim == 0 or x.shape[0] == 0:
        raise DataError(f"{source}: no samples")
    if tuple(x.shape) == shape:
        raise ShapeError(f"{source}: one sample of shape {shape} without a batch axis; add one (x[None] in "
                         f"NumPy) to predict a batch of one")
    if tuple(x.shape[1:]) != shape:
        flat = getattr(model.layers[0], "name", None) == "flatten"
        if flat and math.prod(x.shape[1:]) == math.prod(shape):
            return x.reshape((x.shape[0],) + shape)
        if len(shape) == 3 and shape[0] == 1 and tuple(x.shape[1:]) == shape[1:]:  # one-channel images
            return x.reshape((x.shape[0],) + shape)
        raise ShapeError(f"{source}: samples of shape {tuple(x.shape[1:])}, but the model expects {shape}")
    return x


def parse_range(text):
    """``"0,1"`` -> (0.0, 1.0); click calls this for ``--input-range``."""
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise DataError(f"--input-range {text!r}: expected LOW,HIGH (two numbers, e.g. 0,1)") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise DataError(f"--input-range {text!r}: expected finite LOW < HIGH")
    return low, high


def match_training_range(x, trained, stated, source):
    """``x`` checked against (or mapped onto) the range ``trained`` of the training input.

    With ``stated`` (the range the user says ``x`` lies in) ``x`` is mapped linearly from it onto
    ``trained``. Without, ``x`` is refused when it lies clearly elsewhere: beyond half the training
    span on either side, or all within its lowest tenth (0-1 scaled images for a model that saw
    0-255 pixels)."""
    if trained is None:
        return x
    low, high = float(trained[0]), float(trained[1])
    span = high - low
    if stated is not None:
        (a, b) = stated
        if (a, b) == (low, high):
            return x
        return (np.asarray(x, np.float64) - a) * (span / (b - a)) + low
    if span <= 0:
        return x
    x_low, x_high = float(np.min(x)), float(np.max(x))
    if x_low < low - span / 2 or x_high > high + span / 2 or x_high < low + span / 10:
        raise DataError(f"{source}: values lie in [{x_low:g}, {x_high:g}] but the model was trained on input in "
                        f"[{low:g}, {high:g}]; rescale them, or pass --input-range {x_low:g},{x_high:g} to map "
                        f"that range onto the training one (--input-range {low:g},{high:g} to use them as they are)")
    return x


def softmax(outputs):
    shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def image_predictions(model, outputs):
    """(header, rows) of predict's CSV for array input: index, class and class probabilities, or the
    raw outputs of a model that does not classify."""
    classes = getattr(model.loss, "target_kind", "") == "labels"
    if classes:
        outputs = softmax(outputs)
        header = ["index", "class"] + [f"p{i}" for i in range(outputs.shape[1])]
        rows = [[i, int(row.argmax()), *(f"{v:.6g}" for v in row)] for i, row in enumerate(outputs)]
    else:
        header = ["index"] + [f"y{i}" for i in range(outputs.shape[1])]
        rows = [[i, *(f"{v:.6g}" for v in row)] for i, row in enumerate(outputs)]
    return header, rows


def mask_predictions(model, outputs, names, folder=None):
    """(header, rows) of predict's CSV for a segmentation model: each sample's pixel count per class;
    with ``folder``, each sample's class mask as mask-NNNNN.png there."""
    masks = outputs.argmax(axis=1)
    classes = outputs.shape[1]
    labels = names if names and len(names) == classes else [f"class{k}" for k in range(classes)]
    header = ["index"] + [f"pixels_{name}" for name in labels]
    rows = [[i, *np.bincount(mask.reshape(-1), minlength=classes)] for i, mask in enumerate(masks)]
    if folder is not None:
        from numdl.images import save_mask

        for i, mask in enumerate(masks):
            save_mask(folder / f"mask-{i:05d}.png", mask)
    return header, rows


def box_predictions(model, outputs, names, samples=None, folder=None, min_score=0.3):
    """(header, rows) of predict's CSV for a detection model: one row per detected box scoring at
    least ``min_score`` (index, class, its name, score, x1, y1, x2, y2 in input pixels); with
    ``folder``, each sample with those boxes drawn as boxes-NNNNN.png there."""
    from numdl import detection

    found = [(boxes[scores >= min_score], scores[scores >= min_score], labels[scores >= min_score])
             for boxes, scores, labels in detection.decode(outputs, model.loss.stride)]
    header = ["index", "class", "name", "score", "x1", "y1", "x2", "y2"]
    rows = []
    for i, (boxes, scores, labels) in enumerate(found):
        for box, score, label in zip(boxes, scores, labels):
            name = names[int(label)] if names and int(label) < len(names) else str(int(label))
            rows.append([i, int(label), name, f"{score:.4f}", *(f"{v:.2f}" for v in box)])
    if folder is not None:
        from numdl.images import save_boxes

        for i, (boxes, scores, labels) in enumerate(found):
            save_boxes(folder / f"boxes-{i:05d}.png", samples[i], boxes, labels, scores, names)
    return header, rows


def table_predictions(model, meta, path, threshold=None):
    """(header, rows, ignored columns) of predict's CSV for a table file: the training run's
    preprocessing applied to the raw rows, then per task the class (its own name) and a
    probability per class, each label's 0/1 and probability, or each target in its own units; the
    run's id column first when it had one."""
    from numdl.data.table import TablePreprocessor, TargetEncoder, read_table

    state = meta["preprocessing"]
    preprocessor = TablePreprocessor.from_state(state.get("table", {}))
    target = TargetEncoder.from_state(state.get("target", {}))
    table = read_table(path, "input")
    id_column = state.get("id_column")
    ignored = [name for name in preprocessor.check_columns(table, path) if name not in target.targets + [id_column]]
    x = preprocessor.transform(table, str(model.dtype), path)
    outputs = model.predict(x)
    ids = table.column(id_column).to_pylist() if id_column and id_column in table.column_names else \
        list(range(table.num_rows))
    first = id_column if id_column and id_column in table.column_names else "index"
    if target.task == "classification":
        probabilities = softmax(outputs)
        header = [first, target.targets[0]] + [f"p_{c}" for c in target.classes]
        rows = [[ident, target.classes[int(p.argmax())], *(f"{v:.6g}" for v in p)]
                for ident, p in zip(ids, probabilities)]
    elif target.task == "multilabel":
        probabilities = 1.0 / (1.0 + np.exp(-outputs))
        cut = 0.5 if threshold is None else threshold
        header = [first] + target.targets + [f"p_{name}" for name in target.targets]
        rows = [[ident, *(int(v >= cut) for v in p), *(f"{v:.6g}" for v in p)] for ident, p in zip(ids, probabilities)]
    else:
        values = target.decode(outputs)
        header = [first] + target.targets
        rows = [[ident, *(f"{v:.6g}" for v in row)] for ident, row in zip(ids, values)]
    return header, rows, ignored


def csv_text(header, rows):
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()
