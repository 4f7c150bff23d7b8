"""Write the small tables the table_*.toml examples train on (generated here, nothing downloaded).

    python examples/make_tables.py            # writes examples/data/
    numdl train examples/table_binary.toml

- binary.csv       a loan-style binary target ("approved" yes/no) from numeric columns with missing
                   values and two categorical columns (text)
- imbalanced.csv   three classes of sensor readings, the rarest at 5% and overlapping another
- multilabel.parquet  four 0/1 tags of a product from its numeric and categorical columns (Parquet)
- regression.csv   a house-price-like value from numeric and categorical columns
"""

import argparse
from pathlib import Path

import numpy as np


def _write_csv(path, columns):
    names = list(columns)
    with open(path, "w") as f:
        f.write(",".join(names) + "\n")
        for row in zip(*(columns[n] for n in names)):
            f.write(",".join("" if isinstance(v, float) and np.isnan(v) else str(v) for v in row) + "\n")


def binary(n, rng):
    income = rng.lognormal(10.5, 0.5, n)
    debt = rng.uniform(0, 1, n) * income * 0.8
    age = rng.integers(18, 75, n).astype(float)
    region = rng.choice(["north", "south", "east", "west"], n)
    job = rng.choice(["salaried", "self-employed", "student", "retired"], n, p=[0.55, 0.2, 0.15, 0.1])
    score = (np.log(income) - 10.5) * 2 - 3 * debt / income + 0.02 * (age - 40) + (job == "salaried") * 0.8 \
        - (job == "student") * 1.0 + (region == "north") * 0.3 + rng.normal(scale=0.6, size=n)
    for values, share in ((income, 0.04), (age, 0.06)):
        values[rng.random(n) < share] = np.nan  # missing answers
    return {"applicant": np.arange(n), "income": np.round(income, 0), "debt": np.round(debt, 0), "age": age,
            "region": region, "job": job, "approved": np.where(score > 0, "yes", "no")}


def imbalanced(n, rng):
    state = rng.choice(["normal", "worn", "faulty"], n, p=[0.6, 0.35, 0.05])
    centre = {"normal": (0.0, 0.0, 0.0), "worn": (2.5, 0.5, 0.0), "faulty": (0.9, 1.0, 0.8)}
    x = np.array([centre[s] for s in state]) + rng.normal(scale=0.8, size=(n, 3))
    return {"vibration": np.round(x[:, 0], 4), "temperature": np.round(x[:, 1], 4), "noise": np.round(x[:, 2], 4),
            "state": state}


def multilabel(n, rng):
    price, weight = rng.lognormal(3, 0.8, n), rng.lognormal(0, 0.7, n)
    material = rng.choice(["wood", "metal", "plastic", "fabric"], n)
    logits = np.stack([np.log(price) - 3.5, -np.log(weight) + (material == "plastic") - 0.2,
                       (material == "wood") * 2.0 + np.log(weight) - 1.0, (material == "fabric") * 3.0 - 1.5], axis=1)
    tags = (logits + rng.normal(scale=0.5, size=logits.shape) > 0).astype(int)
    return {"price": np.round(price, 2), "weight": np.round(weight, 3), "material": material,
            "premium": tags[:, 0], "light": tags[:, 1], "natural": tags[:, 2], "washable": tags[:, 3]}


def regression(n, rng):
    area = rng.uniform(30, 250, n)
    rooms = np.clip(np.round(area / 30 + rng.normal(scale=0.7, size=n)), 1, None)
    age = rng.uniform(0, 100, n)
    district = rng.choice(["centre", "suburb", "rural"], n, p=[0.3, 0.5, 0.2])
    price = 1500 * area + 8000 * rooms - 900 * age + np.select([district == "centre", district == "suburb"],
                                                              [90000, 30000], 0) + rng.normal(scale=15000, size=n)
    age[rng.random(n) < 0.03] = np.nan
    return {"area": np.round(area, 1), "rooms": rooms, "age": np.round(age, 1), "district": district,
            "price": np.round(price, 0)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "data", help="folder to write")
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    _write_csv(args.out / "binary.csv", binary(args.rows, rng))
    _write_csv(args.out / "imbalanced.csv", imbalanced(args.rows, rng))
    _write_csv(args.out / "regression.csv", regression(args.rows, rng))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(multilabel(args.rows, rng)), args.out / "multilabel.parquet")
    print(f"wrote binary.csv, imbalanced.csv, multilabel.parquet and regression.csv ({args.rows} rows each) "
          f"to {args.out}")
    return args.out


if __name__ == "__main__":
    main()
