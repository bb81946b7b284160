"""How often `dfx scan` rows agree with the Keras model's own decisions (issue 4's done check).

    dfx scan BUNDLE DATA --out rows.jsonl --precision int8
    python benchmarks/scan_agreement.py BUNDLE rows.jsonl [more-rows.jsonl ...] [--json report.json]

For every scored row it decodes the image through the same pixel path (dfx.images), runs the
bundle's Keras model (KerasRunner, needs tensorflow), and compares decisions at the threshold
the rows were scored with (the bundle's, or --threshold when the scan overrode it) using
dfx.parity.compare. Labels come from the path (a `real`/`fake` folder component) when present,
so the report also gives AUC for both. Exit status 0 when agreement >= --min (default 0.98).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np


def _label(path: str) -> int | None:
    parts = {p.lower() for p in Path(path).parts}
    if "fake" in parts and "real" not in parts:
        return 1
    if "real" in parts and "fake" not in parts:
        return 0
    return None


def agreement(bundle_dir: str, rows_path: str, threshold: float | None = None, batch_size: int = 32,
              cache: dict[str, float] | None = None) -> dict:
    """Parity report of one rows file against Keras; `cache` (path -> Keras logit) is shared
    between rows files so Keras runs once per image."""
    from dfx import parity
    from dfx.bundle import Bundle
    from dfx.images import load_image
    from dfx.runtime.runners.keras import KerasRunner
    from dfx.runtime.scan.results import read_results

    bundle = Bundle.open(bundle_dir)
    rows = read_results(rows_path)
    scored = [r for r in rows if r.error is None]
    if not scored:
        raise SystemExit(f"{rows_path} has no scored rows")
    threshold = bundle.threshold if threshold is None else threshold
    logits = np.array([r.logit for r in scored], np.float64)
    # The rows' decisions must be the ones this threshold gives, or the comparison is moot.
    decided = np.array([r.decision == "fake" for r in scored])
    if not np.array_equal(decided, logits >= threshold):
        raise SystemExit("the rows were scored at another threshold: pass the scan's --threshold")
    cache = {} if cache is None else cache
    missing = [r.path for r in scored if r.path not in cache]
    if missing:
        with KerasRunner(str(bundle.file("model.keras")), input_size=bundle.input_size, batch_size=batch_size) as keras:
            for start in range(0, len(missing), batch_size):
                chunk = missing[start : start + batch_size]
                pixels = np.stack([load_image(path, bundle.input_size, bundle.fit) for path in chunk])
                cache.update(zip(chunk, keras.infer(pixels).tolist()))
    keras_logits = np.array([cache[r.path] for r in scored], np.float64)
    labels = [_label(r.path) for r in scored]
    label_array = np.array(labels) if all(v is not None for v in labels) else None
    form = f"{scored[0].backend}-{scored[0].precision}"
    report = parity.compare(form, keras_logits, logits, label_array, threshold)
    report.update(rows=len(rows), scored=len(scored), errors=len(rows) - len(scored), rows_file=str(rows_path))
    report["disagreements"] = [r.path for r, k in zip(scored, keras_logits) if (r.logit >= threshold) != (k >= threshold)][:50]  # first 50
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle", help="the bundle the rows were scanned with")
    parser.add_argument("rows", nargs="+", help="the scan's --out file(s) (.jsonl or .csv)")
    parser.add_argument("--threshold", type=float, help="the --threshold the scan used, if it overrode the bundle's")
    parser.add_argument("--min", type=float, default=0.98, help="agreement needed for exit status 0 (default 0.98)")
    parser.add_argument("--json", metavar="FILE", help="also write the full report here")
    args = parser.parse_args(argv)
    cache: dict[str, float] = {}
    reports = [agreement(args.bundle, rows, args.threshold, cache=cache) for rows in args.rows]
    if args.json:
        Path(args.json).write_text(json.dumps(reports if len(reports) > 1 else reports[0], indent=2) + "\n")
    for report in reports:
        summary = {k: report[k] for k in ("rows_file", "form", "rows", "scored", "errors", "agreement", "max_abs_diff", "threshold") if k in report}
        for key in ("auc", "auc_keras"):
            if key in report:
                summary[key] = round(report[key], 4)
        print(json.dumps(summary))
        disagree = int(round((1 - report["agreement"]) * report["images"]))
        print(f"{report['form']}: agreement {report['agreement']:.2%} on {report['images']} images ({disagree} disagree)", file=sys.stderr)
    return 0 if all(r["agreement"] >= args.min for r in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
