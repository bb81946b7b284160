"""A real, runnable bundle in milliseconds and without tensorflow (needs `onnx`): one ONNX graph
that scores an image by its mean brightness. For the harnesses and tests of the doors around a
model (the service's HTTP door, signing, content sniffing), which test those doors, not a model."""

from __future__ import annotations

from pathlib import Path

from dfx.bundle import ONNX_ROLES, Bundle

SIZE = 16


def make_onnx_bundle(root: Path, size: int = SIZE) -> Path:
    """A bundle at `root` with model.onnx: logits = (mean pixel - 127.5) / 32, shape (N, 1)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("ReduceMean", ["images"], ["mean"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Sub", ["mean", "centre"], ["centred"]),
        helper.make_node("Div", ["centred", "scale"], ["flat"]),
        helper.make_node("Unsqueeze", ["flat", "axis"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "brightness",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", size, size, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])],
        initializer=[
            helper.make_tensor("centre", TensorProto.FLOAT, [], [127.5]),
            helper.make_tensor("scale", TensorProto.FLOAT, [], [32.0]),
            helper.make_tensor("axis", TensorProto.INT64, [1], [1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime dfx supports
    bundle = Bundle.create(root, input_size=(size, size), fit="resize", architecture="brightness-test")
    onnx.save(model, str(Path(root) / "model.onnx"))
    bundle.add_file("model.onnx", role=ONNX_ROLES["fp32"])
    bundle.save()
    return Path(root)
