"""Class imbalance, both ways: train the imbalanced example plainly, with class weights and with a
balanced sampler, and print each run's per-class report (recall of the 5% class "faulty" first).

    python examples/make_tables.py && python examples/imbalanced.py
"""

import argparse
import tempfile
from pathlib import Path

from numdl import config, train

EXAMPLE = Path(__file__).parent / "table_imbalanced.toml"
REMEDIES = {"plain": ["loss.type='cross_entropy'"],  # a new loss table: no class_weight
            "class weights": [],
            "balanced sampler": ["loss.type='cross_entropy'", "data.sampler='balanced'"]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(__file__).parent / "data" / "imbalanced.csv")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args(argv)
    reports = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, settings in REMEDIES.items():
            resolved = config.resolve(EXAMPLE, [f"data.path='{args.data}'", f"train.epochs={args.epochs}", *settings])
            if name == "plain":
                resolved["loss"].pop("class_weight", None)
            summary = train.run(resolved, Path(folder) / name.replace(" ", "_"), on_line=lambda line: None)
            reports[name] = summary["report"]
    classes = list(reports["plain"]["per_class"])
    print(f"{'':<18}" + "".join(f"{c + ' recall':>16}" for c in classes) + f"{'macro F1':>10}{'accuracy':>10}")
    for name, report in reports.items():
        print(f"{name:<18}" + "".join(f"{report['per_class'][c]['recall']:>16.3f}" for c in classes)
              + f"{report['macro_f1']:>10.3f}{report['accuracy']:>10.3f}")
    return reports


if __name__ == "__main__":
    main()
