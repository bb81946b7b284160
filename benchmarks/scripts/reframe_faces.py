"""Re-frame labelled face folders so that every source frames its faces alike: each image is cut
to the square of MARGIN x the face finder's box of its largest face, centred on it, slid inside
the image and at most its short side, and saved losslessly (PNG). An image whose face the finder
does not see (extreme close-ups, mostly) keeps the centred square of its short side. The layout
(ROOT/label/group/file) is kept, so `dfx protocol` runs on OUT as on the originals.

    python benchmarks/scripts/reframe_faces.py ../shared/data/faces ../shared/data/faces-more \
        ../shared/data/faces-aaf --out OUT [--margin 1.0]

An experiment, not a pixel policy of dfx: it asks how much of a detector's score is the framing
(docs/pseudo-fakes.md, "Framing"). Writes OUT/<root name>/... and OUT/reframe.json (per group:
images, faces not found, median side of the cut).
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="+", type=Path, help="labelled roots (real/<source>/, fake/<generator>/)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--margin", type=float, default=1.0, help="side of the cut / the face box's side (default 1.0)")
    args = parser.parse_args(argv)

    import numpy as np
    from PIL import Image
    from tqdm import tqdm

    from dfx import datasets
    from dfx.faces import FaceFinder, FinderConfig, largest_face, square_region
    from dfx.photos import decode_photo
    from dfx.export.faces_export import _converted_once

    # Faces of 40 px and more: the smallest here are ProGAN's (~77 px in 128 px images).
    finder = FaceFinder(_converted_once(), config=FinderConfig(min_face=40))
    jobs = []
    for root in args.data:
        for s in datasets.discover([str(root)]):
            rel = Path(s.path).resolve().relative_to(root.resolve())
            jobs.append((s, args.out / root.name / rel.with_suffix(".png")))
    if not jobs:
        print(f"reframe_faces: no labelled images under {', '.join(map(str, args.data))}", file=sys.stderr)
        return 2

    def one(job):
        sample, target = job
        photo = decode_photo(sample.path, finder_scale=1)
        full = photo.full()
        h, w = full.shape[:2]
        b = largest_face(finder.find(photo.small, photo.scale))
        if b is not None:
            x0, y0, x1, y1 = square_region((b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2, args.margin * max(b.width, b.height), h, w)
        else:
            x0, y0, x1, y1 = square_region(w / 2, h / 2, min(h, w), h, w)
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(full[y0:y1, x0:x1]).save(target)
        return f"{datasets.LABELS[sample.label]}/{sample.group}", b is not None, x1 - x0

    groups: dict[str, dict] = {}
    with ThreadPoolExecutor(2) as pool:
        for group, found, side in tqdm(pool.map(one, jobs), total=len(jobs), desc="reframe", unit="img"):
            g = groups.setdefault(group, {"images": 0, "no_face": 0, "sides": []})
            g["images"] += 1
            g["no_face"] += not found
            g["sides"].append(side)
    for g in groups.values():
        g["median_side"] = float(np.median(g.pop("sides")))
    report = {"margin": args.margin, "groups": groups}
    (args.out / "reframe.json").write_text(json.dumps(report, indent=2) + "\n")
    for name, g in sorted(groups.items()):
        print(f"{name:20s} {g['images']:5d} images, {g['no_face']:4d} without a face found, median cut {g['median_side']:.0f} px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
