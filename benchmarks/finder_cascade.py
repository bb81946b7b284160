"""Would a coarse-to-fine cascade make the face finder cheap enough? Measures what one pass of
the finder's network at half the finest level's scale can propose.

    python benchmarks/finder_cascade.py FINDER.onnx [--photos 40 --out OUT]

At the default min_face (58 px on a 12 MP photo) the finest pyramid level is 1.4 MP and costs
most of a photo's time (docs/whole-photos.md, section 5). A cascade would run the level at half
that scale (0.36 MP, a quarter of the cost), where the smallest faces measure 9-20 px, and look
at the finest level only around its proposals. That pays only if a low score threshold there
keeps nearly every small face while proposing little of a faceless image. Per threshold this
prints the share of pasted 9-20 px faces with a proposal on them, and the anchor cells (of the
level's stride-4 grid) that fire on faceless backgrounds of the same size.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import whole_photo_data as wp  # noqa: E402
from faces_compare import reference_boxes  # noqa: E402

THRESHOLDS = (0.02, 0.05, 0.1, 0.2, 0.5)
LEVEL = (520, 690)  # a 4000x3000 photo at half the finest level of min_face 58 (20/58/2)


def main(argv=None) -> int:
    from dfx.faces import FaceFinder, FinderConfig
    from dfx.runtime.runners.base import cpu_model

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("finder", help="face_finder.onnx or face_finder.int8.onnx (from dfx export)")
    parser.add_argument("--photos", type=int, default=40, help="canvases with three pasted faces each, and as many faceless ones")
    parser.add_argument("--out", help="folder for finder_cascade.json")
    args = parser.parse_args(argv)

    finders = {t: FaceFinder(args.finder, config=FinderConfig(score_threshold=t)) for t in THRESHOLDS}
    files = wp.face_files(per_folder=10, seed=3)
    faces = reference_boxes(finders[0.5], files)
    rng = np.random.default_rng(1)
    hits = {t: 0 for t in THRESHOLDS}
    fired = {t: [] for t in THRESHOLDS}
    total = 0
    h, w = LEVEL
    cells = (-(-h // 32) * 8) * (-(-w // 32) * 8)
    for i in range(args.photos):
        pixels, pasted = wp.make_photo(rng, h, w, faces, list(rng.uniform(9, 20, 3)), corners=files)
        empty = wp.background(rng, h, w, wp.BACKGROUND_KINDS[i % len(wp.BACKGROUND_KINDS)], files).astype(np.uint8)
        total += len(pasted)
        for t, finder in finders.items():
            boxes = finder._detect(pixels)  # one pass of the network: raw proposals above t
            for p in pasted:
                x0, y0, x1, y1 = p.box
                hits[t] += any(x0 - 4 <= (b[0] + b[2]) / 2 <= x1 + 4 and y0 - 4 <= (b[1] + b[3]) / 2 <= y1 + 4 for b in boxes)
            fired[t].append(len(finder._detect(empty)))
    rows = {str(t): {"proposal_recall": hits[t] / total, "faceless_cells_mean": float(np.mean(fired[t])),
                     "faceless_cells_share": float(np.mean(fired[t])) / cells, "faceless_cells_max": int(max(fired[t]))}
            for t in THRESHOLDS}
    result = {"cpu": cpu_model(), "finder": str(args.finder), "level": LEVEL, "faces": total, "faceless": args.photos, "rows": rows}
    for t, r in rows.items():
        print(f"threshold {t}: {r['proposal_recall']:.1%} of {total} faces of 9-20 px proposed; faceless level: "
              f"{r['faceless_cells_mean']:.0f} cells fire ({r['faceless_cells_share']:.1%}), at most {r['faceless_cells_max']}")
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "finder_cascade.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
