"""A smaller input for the ViT default, quality and speed together: 160 px against 224 px.

CLIP ViT-B/16 at 160 px sees 10 x 10 patches instead of 14 x 14 (101 tokens instead of 197, about
half the work); its learned 14 x 14 position embeddings are resized to 10 x 10 (bicubic, as
timm and open_clip do). This script takes the default bundle's own train/validation split, cuts
every window at both sizes (the bundle's pixel and faces policy), extracts the CLS tokens
(224: the feature cache / ONNX Runtime float tower; 160: the Keras tower), fits the default
linear head on each, and reports

- in distribution: AUC on the validation split;
- each generator held out: the head refitted without any of that generator's images, its
  AUC on them against the validation reals (zero-shot, as the protocol's held-out rows);
- speed: the 160 px detector exported to ONNX (tf2onnx) and timed beside the bundle's 224 px
  model.onnx, interleaved, on ONNX Runtime fp32 and OpenVINO bf16 (weighted layers) at batch 8.

    python benchmarks/scripts/vit_input_size.py BUNDLE [--size 160] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def positions(grid: np.ndarray, side: int) -> np.ndarray:
    """(1 + n*n, W) position embeddings -> (1 + side*side, W): the grid resized bicubically."""
    from PIL import Image

    n = int(round((grid.shape[0] - 1) ** 0.5))
    cells = grid[1:].reshape(n, n, -1)
    resized = np.stack([np.asarray(Image.fromarray(cells[:, :, c].astype(np.float32), mode="F").resize((side, side), Image.Resampling.BICUBIC))
                        for c in range(cells.shape[2])], axis=-1)
    return np.concatenate([grid[:1], resized.reshape(side * side, -1)]).astype(np.float32)


def held_out_rows(tokens, labels, groups, is_val) -> dict:
    """AUC in distribution, and per generator held out (its every image scored against the val reals)."""
    from dfx import metrics
    from dfx.trainer.probe import fit_head, head_logits

    train = ~is_val
    head = fit_head(tokens[train], labels[train], list(groups[train]))
    out = {"in_distribution": metrics.auc(labels[is_val], head_logits(head, tokens[is_val]))}
    for generator in sorted(set(groups[labels == 1])):
        keep = train & (groups != generator)
        head = fit_head(tokens[keep], labels[keep], list(groups[keep]))
        scored = (groups == generator) | (is_val & (labels == 0))
        out[f"held_out/{generator}"] = metrics.auc(labels[scored], head_logits(head, tokens[scored]))
    return {k: round(float(v), 4) for k, v in out.items()}


def speed(models: dict[str, tuple[str, int]], seconds: float = 20.0) -> dict:
    """images/s of each (onnx path, size) on ORT fp32 and OpenVINO bf16, batch 8, interleaved
    in rounds by the bench's own timing (dfx.benchmarks.harness.measure_inference)."""
    from dfx.benchmarks.harness import BenchConfig, measure_inference
    from dfx.runtime.runners import openvino
    from dfx.runtime.runners.ort import OrtRunner

    runners, batches = {}, {}
    rng = np.random.default_rng(0)
    for name, (path, size) in models.items():
        runners[f"{name} ort-fp32"] = OrtRunner(path, precision="fp32", input_size=(size, size))
        if openvino.bf16_status()[0]:
            runners[f"{name} ov-bf16"] = openvino.OpenVinoRunner(path, precision="bf16", input_size=(size, size))
        batch = rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8)
        batches.update({key: batch for key in runners if key.startswith(name + " ")})
    for runner in runners.values():
        runner.activate()
    try:
        stats = measure_inference(runners, batches, BenchConfig(duration=seconds, rounds=4, warmup=1))
    finally:
        for runner in runners.values():
            runner.deactivate()
    return {key: stat.get("images_per_s", stat.get("error")) for key, stat in stats.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", help="the default clip_vit bundle (its split, faces policy and model.onnx)")
    parser.add_argument("--size", type=int, default=160, help="the smaller input, a multiple of 16 (default 160)")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()

    from dfx import datasets
    from dfx.bundle import Bundle
    from dfx.export import data as export_data
    from dfx.photo_data import bundle_policy
    from dfx.trainer import backbone, vit
    from dfx.trainer.backbone import VIT_B16, Spec
    from dfx.trainer.probe import Backbone

    bundle = Bundle.open(args.bundle)
    train, val = datasets.splits_from_record(bundle.manifest["data"])
    samples = train + val
    policy = bundle_policy(bundle)
    started = time.time()
    result: dict = {"bundle": args.bundle, "sizes": {}}
    for size in (224, args.size):
        windows = export_data.load(samples, (size, size), bundle.fit, "split", progress=f"{size} px windows", faces=policy)
        val_paths = {s.path for s in val}
        is_val = np.array([s.path in val_paths for s in windows.samples])
        groups = np.array([s.group for s in windows.samples])
        if size == 224:
            tokens = Backbone().features(windows.images, desc="224 px tokens (cached)")
        else:
            weights = dict(backbone.weights(backbone.locate()))
            key = "vision_model.embeddings.position_embedding.weight"
            weights[key] = positions(weights[key], size // VIT_B16.patch)
            tower = vit.tower(Spec(**{**VIT_B16.__dict__, "image": size}), weights)
            tokens = np.concatenate([np.asarray(tower.predict_on_batch(windows.images[i:i + 32].astype(np.float32)))
                                     for i in range(0, len(windows.images), 32)])
        result["sizes"][size] = {"images": int(len(tokens)), **held_out_rows(tokens, windows.labels, groups, is_val),
                                 "seconds_so_far": round(time.time() - started)}
        print(size, result["sizes"][size], flush=True)
    with tempfile.TemporaryDirectory(prefix="dfx-size-") as tmp:
        import keras

        from dfx.export.onnx_export import export_onnx

        # The tower alone (the 224 px model.onnx adds a head of one dot product per image)
        pixels = keras.Input((args.size, args.size, 3), name="images")
        detector = keras.Model(pixels, keras.layers.Lambda(lambda t: t[:, -1, :1])(tower(pixels)))
        path = str(Path(tmp) / "small.onnx")
        export_onnx(detector, path, (args.size, args.size))
        result["speed_images_per_s"] = speed({"224 px": (str(bundle.file("model.onnx")), 224), f"{args.size} px": (path, args.size)})
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
