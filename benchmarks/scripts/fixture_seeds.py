"""The test fixtures' metrics over seeds, to size the margins of the tests that assert them.

Usage (repository root): python benchmarks/scripts/fixture_seeds.py seed|npr 0,1,2,3
Trains the fixture recipe (tests/_fixtures_train.py for `seed`, test_generalize.py's npr_bundle
for `npr`) on synthetic data made with each seed, and prints one JSON line per seed: validation
AUC and AUC per group. Issue #19 measured (Intel Xeon with AMX, 2 vCPU): seed_cnn 0.976, 0.973,
0.989, 0.986 (seeds 0-3; 0.957 for seed 0 on a Zen 4 EPYC); npr_cnn 0.971, 1.000, 0.994.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path


def main(which: str, seeds: list[int]) -> None:
    sys.path.insert(0, "tests")
    import tensorflow as tf
    from _fixtures_train import fixture_train_config

    from dfx.bundle import Bundle
    from dfx.synth import generate
    from dfx.trainer.train import TrainConfig, train

    tf.config.experimental.enable_op_determinism()
    tmp = Path(tempfile.mkdtemp())
    for seed in seeds:
        data = tmp / f"synth{seed}"
        generate(data, n=400, size=64, seed=seed, progress=False)
        if which == "seed":
            bundle = train(fixture_train_config(data, tmp / f"seed{seed}", seed=seed))
        else:
            roots = [tmp / f"r{seed}a", tmp / f"r{seed}b"]
            for root, groups in zip(roots, (("real/camera", "fake/tconv"), ("real/scan", "fake/upconv"))):
                for group in groups:
                    shutil.copytree(data / group, root / group)
            bundle = train(TrainConfig(data=tuple(str(r) for r in roots), out=str(tmp / f"npr{seed}"), size=32,
                                       train_canvas=48, epochs=6, batch_size=32, epoch_size=640, warmup_epochs=1,
                                       patience=6, progress=False, seed=seed))
        metrics = Bundle.open(bundle.root).manifest["metrics"]
        groups = {k: round(v["auc"], 4) for k, v in metrics["per_generator"].items() if v.get("auc") is not None}
        print(which, seed, json.dumps({"val": round(metrics["val"]["auc"], 4), **groups}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], [int(s) for s in sys.argv[2].split(",")])
