"""The one table of model forms: which file holds which form, its manifest role, the precision it
runs at, its parity tolerance and which runners read it.

Export writes the files this table names, the bundle reads roles from it, backend choice picks
files by it, and `dfx export` checks its flags against it; parity tolerances are looked up by
precision in dfx.parity, never copied here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dfx.parity import Tolerance


@dataclass(frozen=True)
class ModelForm:
    name: str  # the form's key; also its ONNX Runtime entry in parity.json
    file: str  # bundle-relative file name
    role: str  # manifest role of that file
    precision: str  # what it computes in; bf16 is not a file: OpenVINO runs the fp32 file in bfloat16
    runners: tuple[str, ...]  # backends that read this file, in dfx.runtime.scan.select's names
    export_flag: str | None = None  # the `dfx export` flag that writes it; None: always written (or by `dfx train`)
    activations: str | None = None  # Q/DQ forms: the activation type (TensorRT's int8, the CPU's uint8)

    @property
    def tolerance(self) -> "Tolerance":
        """The parity bar this form must clear against Keras (dfx.parity, by precision)."""
        from dfx import parity

        return parity.TOLERANCES[self.precision]


FORMS: dict[str, ModelForm] = {
    form.name: form
    for form in (
        ModelForm("keras", "model.keras", "keras", "fp32", ("keras",)),  # written by `dfx train`: the reference
        ModelForm("fp32", "model.onnx", "onnx-fp32", "fp32", ("ort-cpu", "ort-cuda", "openvino")),  # openvino bf16 too
        ModelForm("fp16", "model.fp16.onnx", "onnx-fp16", "fp16", ("ort-cuda", "ort-cpu", "openvino", "trt"), "--fp16"),
        # Symmetric int8 for TensorRT; CPU backends read it only when the bundle has no uint8 twin.
        ModelForm("int8", "model.int8.onnx", "onnx-int8", "int8", ("trt", "ort-cpu", "openvino"), "--int8", "int8"),
        ModelForm("cpu-int8", "model.int8.cpu.onnx", "onnx-cpu-int8", "int8", ("ort-cpu", "openvino"), "--int8", "uint8"),
    )
}
ONNX_FORMS = tuple(name for name, form in FORMS.items() if form.file.endswith(".onnx"))
