"""Parity of every shipped form, row by row: each source of the validation split, plain and laundered.

`dfx export` judges each form on the validation split as a whole. A form can still lose one
source while the others carry the average (a generator whose traces sit in the bits int8 or
bf16 rounds away), and screening meets laundered copies (re-encoded, resized) more often than
clean ones. This script runs the Keras model and every form the bundle ships on up to
--per-group validation images of each source, plain and laundered the way the protocol launders
(dfx.trainer.alterations.launder: long side 256-512 px, JPEG q70-90; here applied to the model's
window), and judges each (source, view) row with dfx.parity.compare at the bundle threshold.
Logits only: the block-token bar is export's, on the whole split.

    python benchmarks/scripts/form_parity_rows.py BUNDLE [--per-group 50] [--json OUT]

Exit status 0 when no row failed.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections import defaultdict

import numpy as np


def run(runner, images: np.ndarray) -> np.ndarray:
    from dfx.runtime.runners.base import run_batches

    with runner:
        return run_batches(runner, images, 16)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--per-group", type=int, default=50, help="validation images per source (default 50)")
    parser.add_argument("--json", help="write the rows to this file")
    args = parser.parse_args()

    from dfx import datasets, parity
    from dfx.bundle import Bundle
    from dfx.export import data as export_data
    from dfx.export.pipeline import ExportConfig, parity_forms
    from dfx.images import load_image
    from dfx.photo_data import bundle_policy
    from dfx.runtime.runners.keras import KerasRunner
    from dfx.trainer.alterations import launder

    bundle = Bundle.open(args.bundle)
    samples, source = export_data.resolve(bundle, None, "val")

    def row_of(sample) -> str:  # "fake/sd21", "real/ffhq": a source is a class's group
        return f"{datasets.LABELS[sample.label]}/{sample.group}"

    by_group = defaultdict(list)
    for sample in samples:
        by_group[row_of(sample)].append(sample)
    chosen = [s for group in sorted(by_group) for s in random.Random(0).sample(by_group[group], min(args.per_group, len(by_group[group])))]
    plain = export_data.load(chosen, bundle.input_size, bundle.fit, source, progress="decoding", faces=bundle_policy(bundle))
    laundered = np.stack([load_image(launder(s.path, image=window), bundle.input_size, bundle.fit)
                          for s, window in zip(plain.samples, plain.images)])
    views = {"plain": plain.images, "laundered": laundered}
    groups = np.array([row_of(s) for s in plain.samples])
    keras = KerasRunner(str(bundle.file(bundle.files_with_role("keras")[0])), input_size=bundle.input_size)
    reference = {view: run(keras, images) for view, images in views.items()}
    rows, failed = [], False
    for name, make in parity_forms(bundle, ExportConfig(), log=lambda _: None).items():  # what `dfx export` judges
        runner = make()
        logits = {view: run(runner, images) for view, images in views.items()}
        for view in views:
            for group in sorted(set(groups)):
                keep = groups == group
                report = parity.compare(name, reference[view][keep], logits[view][keep], None, bundle.threshold)
                failed = failed or not report["passed"]
                rows.append({"form": name, "view": view, "source": group, "images": int(keep.sum()),
                             "agreement": report["agreement"], "decided_flips": report["decided_flips"],
                             "near_threshold_flips": report["near_threshold_flips"], "max_abs_diff": report["max_abs_diff"],
                             "passed": report["passed"], "failures": report["failures"]})
        print(f"{name}: " + "; ".join(f"{r['view']} {r['source']} {r['agreement']:.0%}{'' if r['passed'] else ' FAILED'}"
                                      for r in rows if r["form"] == name), flush=True)
    result = {"bundle": args.bundle, "threshold": bundle.threshold, "per_group": args.per_group, "rows": rows,
              "passed": not failed}
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)
    print("every row within its form's parity tolerance" if not failed else "some rows failed (see above)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
