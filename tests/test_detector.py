"""The Detector API: mixed input kinds, order, laziness, threads, closing."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from dfx.runtime.runners.base import RunnerError

from dfx.images import load_image
from dfx.runtime.scan.detector import Detector


@pytest.fixture(scope="module")
def detector(exported_bundle):
    with Detector.load(exported_bundle, backend="ort-cpu", precision="fp32", batch_size=4) as d:
        yield d


@pytest.fixture(scope="module")
def image_paths(synth_data) -> list[str]:
    return [str(p) for p in sorted(Path(synth_data).rglob("*.jpg"))[:6]]


def test_predict_accepts_paths_bytes_pil_arrays(detector, image_paths):
    from PIL import Image

    path = image_paths[0]
    data = Path(path).read_bytes()
    pil = Image.open(path)
    pixels = load_image(path, detector.bundle.input_size, detector.bundle.fit)
    results = detector.predict([path, data, pil, pixels, b"not an image"])
    assert len(results) == 5
    assert results[0].path == path and results[1].path == f"<{len(data)} bytes>"
    logits = [r.logit for r in results[:4]]
    assert all(r.error is None for r in results[:4])
    assert max(logits) - min(logits) < 1e-5  # the same pixels whatever the source kind
    assert results[4].error and "not an image" in results[4].error
    assert detector.predict(path)[0].logit == pytest.approx(logits[0], abs=1e-6)  # a single input
    assert len(detector.predict(pixels)) == 1  # one H×W×3 array is one image, not rows


def test_decision_uses_threshold(exported_bundle, image_paths):
    with Detector.load(exported_bundle, backend="ort-cpu", precision="fp32", threshold=-1e9) as low:
        assert all(r.is_fake for r in low.predict(image_paths))
    with Detector.load(exported_bundle, backend="ort-cpu", precision="fp32", threshold=1e9) as high:
        assert not any(r.is_fake for r in high.predict(image_paths))


def test_scan_is_lazy_and_ordered(detector, image_paths):
    consumed = []

    def source():
        for i in range(200):
            consumed.append(i)
            yield image_paths[i % len(image_paths)]

    stream = detector.scan(source())
    first = next(stream)
    assert first.path == image_paths[0]
    assert len(consumed) < 200  # the bounded window did not read the whole input
    rest = list(stream)
    assert [r.path for r in [first] + rest] == [image_paths[i % len(image_paths)] for i in range(200)]


def test_shared_between_threads(detector, image_paths):
    expected = [r.logit for r in detector.predict(image_paths)]
    outputs: list[list[float]] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(3):
                outputs.append([r.logit for r in detector.predict(image_paths)])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(outputs) == 12
    for got in outputs:
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_close(exported_bundle, image_paths):
    d = Detector.load(exported_bundle, backend="ort-cpu")
    assert "ort-cpu" in d.reason and d.precision == "int8"
    with d:
        assert d.predict(image_paths[:1])[0].error is None
    assert not d.runner.is_active
    with pytest.raises(RunnerError, match="this Detector is closed"):
        d.scan(image_paths)
