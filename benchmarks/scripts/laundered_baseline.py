"""The shortcut baseline alone, on every protocol-v2 row and its laundered copy (no CNN trained):
does laundering leave any size, format or colour cue for a detector to win on?

    python benchmarks/scripts/laundered_baseline.py ../shared/data/faces ../shared/data/faces-more \
        ../shared/data/faces-aaf --out OUT [--seed 0]

The rows, folds and baseline are those of `dfx protocol` (trainer/protocol.py: holdable_units,
the fold's exclusions, _shortcut_features, _baseline); the baseline is fitted on the fold's
unlaundered training files and scored on the evaluated files as they are and laundered.
Writes OUT/laundered_baseline.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from functools import partial
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    args = parser.parse_args(argv)

    from dfx import datasets
    from dfx.runtime.runners.base import cpu_model
    from dfx.trainer.alterations import LAUNDER_LONG_SIDE, LAUNDER_QUALITY, launder
    from dfx.trainer.protocol import IN_DISTRIBUTION, LAUNDERED, _baseline, _shortcut_features, holdable_units

    out = Path(args.out)
    (out / "cache").mkdir(parents=True, exist_ok=True)
    started = time.time()
    samples = datasets.discover(args.data)
    train_s, val_s = datasets.split(samples, args.val_fraction, args.seed)
    units = holdable_units(samples)
    group_of = {s.path: s.group for s in samples}
    path_index = {s.path: i for i, s in enumerate(samples)}
    plain = _shortcut_features(samples, out / "cache")
    laundered = _shortcut_features(samples, out / "cache", partial(launder, seed=args.seed), f"cues-{LAUNDERED}-s{args.seed}")
    rows = {}
    for name in [IN_DISTRIBUTION] + list(units):
        held_label, held = units[name] if name != IN_DISTRIBUTION else (None, frozenset())

        def excluded(s, held=held):
            return s.group in held or (s.source is not None and group_of.get(s.source) in held)

        fold_train = [s for s in train_s if not excluded(s)]
        fold_val = [s for s in val_s if not excluded(s)]
        if held_label is None:
            evaluated = fold_val
        else:
            evaluated = [s for s in samples if s.group in held] + [s for s in val_s if s.label != held_label and not excluded(s)]
        rows[name] = {"images": len(evaluated), "baseline_auc": round(_baseline(plain, plain, path_index, fold_train, fold_val, evaluated), 4),
                      "laundered_baseline_auc": round(_baseline(plain, laundered, path_index, fold_train, fold_val, evaluated), 4)}
        print(name, rows[name], file=sys.stderr, flush=True)
    # Which cues survive laundering: the in-distribution row per feature group, fitted on the plain
    # files (as above) and fitted on the laundered files themselves.
    groups = {"size_format_tables": slice(0, 7), "colour": slice(7, 13)}
    by_group = {}
    for group, cols in groups.items():
        by_group[group] = {
            "fit_plain_score_laundered": round(_baseline(plain[:, cols], laundered[:, cols], path_index, train_s, val_s, val_s), 4),
            "fit_and_score_laundered": round(_baseline(laundered[:, cols], laundered[:, cols], path_index, train_s, val_s, val_s), 4)}
        print(group, by_group[group], file=sys.stderr, flush=True)
    report = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
              "data": datasets.summary(samples), "launder": {"long_side": LAUNDER_LONG_SIDE, "quality": LAUNDER_QUALITY, "seed": args.seed},
              "seconds": round(time.time() - started, 1), "rows": rows,
              "in_distribution_by_feature_group": by_group}
    (out / "laundered_baseline.json").write_text(json.dumps(report, indent=1))
    print("| row | images | shortcut baseline AUC | laundered |\n|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['images']} | {r['baseline_auc']:.3f} | {r['laundered_baseline_auc']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
