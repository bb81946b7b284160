"""Choosing a backend for a bundle on this machine, and saying why.

`auto` takes the fastest form the bundle and the machine can both run:

1. a TensorRT engine built for this GPU's compute capability and the installed TensorRT
   version (INT8 before FP16), whose sha256 the manifest vouches for;
2. ONNX Runtime CUDA (FP16 ONNX when the bundle has it, else FP32);
3. on a CPU: OpenVINO when installed (INT8 first; on an AMX CPU a bf16 form parity vouched for
   comes before FP32, and for a transformer backbone before INT8 too), else ONNX Runtime CPU
   (INT8 where the bundle has it, else FP32); both read `model.int8.cpu.onnx`, the uint8 twin of the
   TensorRT INT8 file, when the bundle has it;
4. the Keras model itself, for a bundle that was not exported yet (needs tensorflow).

An engine that was built for another GPU or TensorRT version, or whose bytes the manifest does
not vouch for, is refused with its reason and never deserialised. An explicit backend or
precision the bundle or machine cannot provide raises DfxError with a hint.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from dfx.bundle import ONNX_ROLES, Bundle, BundleError
from dfx.errors import DfxError
from dfx.forms import FORMS
from dfx.runtime.runners.base import Runner

BACKENDS = ("auto", "trt", "ort-cuda", "ort-cpu", "openvino", "keras")
ALIASES = {"ov-cpu": "openvino", "ov": "openvino", "tensorrt": "trt"}
PRECISIONS = ("fp32", "fp16", "int8", "bf16")
# Which precisions each backend runs, best (fastest) first for `precision=None`.
PREFERENCE = {
    "trt": ("int8", "fp16", "fp32"),
    "ort-cuda": ("fp16", "fp32"),  # ORT's CUDA provider runs Q/DQ INT8 mostly in fp32: no gain
    # bf16 (model.onnx's weighted layers in bfloat16) only where the CPU has it natively; `auto`
    # takes it only where parity.json vouches for openvino-bf16 (see _openvino_precisions).
    "openvino": ("int8", "fp32", "fp16", "bf16"),
    "ort-cpu": ("int8", "fp32", "fp16"),
    "keras": ("fp32",),
}
# CPU backends read the uint8-activation twin of the INT8 file when the bundle has one (bundles
# exported before it existed have only the symmetric file, which they also run).
CPU_INT8_ROLE = FORMS["cpu-int8"].role
CPU_BACKENDS = FORMS["cpu-int8"].runners  # ("ort-cpu", "openvino")


class SelectError(DfxError):
    """The requested backend/precision cannot run this bundle on this machine."""


@dataclass(frozen=True)
class Choice:
    """What choose_runner picked: the file a runner loads and the hash it carries into rows."""

    backend: str
    precision: str
    file: str  # bundle-relative name of the model file or engine
    sha256: str
    reason: str = ""  # why, for logs: "ort-cpu int8 model.int8.cpu.onnx; no GPU (...)"

    def __str__(self) -> str:
        return self.reason or f"{self.backend} {self.precision} {self.file}"


# ---- what this machine offers ----------------------------------------------------------------


def gpu_status() -> tuple[bool, str]:
    from dfx.runtime.runners import cuda

    return cuda.probe()


def ort_cuda_status() -> tuple[bool, str]:
    if importlib.util.find_spec("onnxruntime") is None:
        return False, "onnxruntime not installed"
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False, "this onnxruntime has no CUDA provider (install onnxruntime-gpu)"
    return True, "onnxruntime CUDA provider present"


def openvino_status() -> tuple[bool, str]:
    from dfx.runtime.runners import openvino  # light: openvino itself is imported inside it

    try:
        ok = bool(openvino.available())
    except Exception as exc:  # a broken install must mean "unavailable", not a crash
        return False, f"openvino unusable ({exc})"
    return (True, "openvino installed") if ok else (False, "openvino not installed")


def ort_cpu_status() -> tuple[bool, str]:
    if importlib.util.find_spec("onnxruntime") is None:
        return False, "onnxruntime not installed (pip install 'dfx[cpu]')"
    return True, "onnxruntime installed"


# ---- engines -----------------------------------------------------------------------------------


def _engine_name(entry: dict[str, Any]) -> str:
    name = str(entry.get("file", ""))
    return name if name.startswith("engines/") else f"engines/{name}"


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in str(version).split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def engine_mismatch(entry: dict[str, Any], compute_capability: str, trt_version: str | None) -> str | None:
    """Why this engine cannot run here, or None when it can.

    A normal engine runs only on the compute capability and TensorRT version (major.minor.patch)
    it was built with. A lean (version-compatible) engine also runs on a later TensorRT of the
    same major version.
    """
    name = _engine_name(entry)
    built_cc = str(entry.get("compute_capability", "?"))
    if built_cc != compute_capability:
        return f"{name} was built for compute capability {built_cc}, this GPU is {compute_capability}"
    if trt_version is None:
        return f"{name} needs TensorRT, which is not installed"
    built, here = _version_tuple(entry.get("trt_version", "0")), _version_tuple(trt_version)
    if entry.get("lean"):
        if built[:1] != here[:1] or here < built:
            return f"{name} (lean) was built with TensorRT {entry.get('trt_version')}, needs {built[0]}.x >= it; installed {trt_version}"
    elif built != here:
        return f"{name} was built with TensorRT {entry.get('trt_version')}, installed is {trt_version}"
    return None


def usable_engines(
    bundle: Bundle, precisions: tuple[str, ...], compute_capability: str, trt_version: str | None
) -> tuple[list[dict[str, Any]], list[str]]:
    """(engines that match this GPU and TensorRT, best precision first; refusal reasons for the
    rest). Every usable engine's bytes were checked against the manifest's sha256."""
    entries = list(bundle.manifest.get("engines") or [])
    if not entries:
        return [], ["the bundle has no TensorRT engines"]
    cc, version = compute_capability, trt_version
    usable, refused = [], []
    for entry in entries:
        name = _engine_name(entry)
        if entry.get("precision") not in precisions:
            continue
        reason = engine_mismatch(entry, cc, version)
        if reason is None:
            try:
                bundle.verify(name)  # an engine is executable code: only bytes the manifest vouches for
            except BundleError as exc:
                reason = f"refused {name}: {exc}"
        if reason is None:
            usable.append(entry)
        else:
            refused.append(reason)
    order = {p: i for i, p in enumerate(precisions)}
    usable.sort(key=lambda e: order.get(e.get("precision"), 99))
    return usable, refused or ([] if usable else [f"no engine for precision {'/'.join(precisions)}"])


# ---- the choice --------------------------------------------------------------------------------


def normalize_backend(backend: str) -> str:
    name = ALIASES.get(backend.lower(), backend.lower())
    if name not in BACKENDS:
        raise SelectError(f"unknown backend {backend!r}", hint=f"choose one of {', '.join(BACKENDS)} (or ov-cpu)")
    return name


def _precisions(backend: str, precision: str | None) -> tuple[str, ...]:
    if precision is None:
        return PREFERENCE[backend]
    if precision not in PRECISIONS:
        raise SelectError(f"unknown precision {precision!r}", hint=f"choose one of {', '.join(PRECISIONS)}")
    return (precision,) if precision in PREFERENCE[backend] else ()


def _onnx_file(bundle: Bundle, precision: str, backend: str) -> tuple[str, str] | None:
    """(file, role) that `backend` runs at `precision`, or None when the bundle has none."""
    roles = [ONNX_ROLES["fp32" if precision == "bf16" else precision]]  # bf16 runs the fp32 file
    if precision == "int8" and backend in CPU_BACKENDS:
        roles.insert(0, CPU_INT8_ROLE)  # the uint8 twin: the CPU's fast int8 kernels
    for role in roles:
        names = bundle.files_with_role(role)
        if names:
            return names[0], role
    return None


def _make_runner(bundle: Bundle, choice: Choice, threads: int | None) -> Runner:
    path = os.fspath(bundle.file(choice.file))  # verified against the manifest here
    size = bundle.input_size
    if choice.backend == "trt":
        from dfx.runtime.runners.trt import TrtRunner

        entry = next(e for e in bundle.manifest["engines"] if _engine_name(e) == choice.file)
        return TrtRunner(
            path,
            precision=choice.precision,
            input_size=size,
            # Pinned + device buffers are sized for max_batch per stream; 64 keeps them modest
            # (3 x 64 x 256 x 256 x 3 float32 = 150 MB) and larger batches are split anyway.
            max_batch=min(int(entry.get("max_batch", 32)), 64),
            lean=bool(entry.get("lean", False)),
            expected_sha256=choice.sha256,
        )
    if choice.backend in ("ort-cpu", "ort-cuda"):
        from dfx.runtime.runners.ort import OrtRunner

        return OrtRunner(path, device=choice.backend[4:], precision=choice.precision, input_size=size, threads=threads)
    if choice.backend == "openvino":
        from dfx.runtime.runners.openvino import OpenVinoRunner

        return OpenVinoRunner(path, precision=choice.precision, input_size=size, threads=threads)
    from dfx.runtime.runners.keras import KerasRunner

    return KerasRunner(path, input_size=size)


def plan(bundle: Bundle, backend: str = "auto", precision: str | None = None) -> tuple[Choice, str]:
    """Decide (without loading anything) which backend and file to use; returns (choice, why).

    `auto` serves only what parity.json vouches for: a form whose parity entry failed or is
    missing is skipped, and `why` says which and for what reason. An explicit backend runs
    what was asked (the user chose it; `dfx scan --check-parity` checks it on this machine).
    """
    backend = normalize_backend(backend)
    if precision is not None and precision not in PRECISIONS:
        raise SelectError(f"unknown precision {precision!r}", hint=f"choose one of {', '.join(PRECISIONS)}")
    want = _Request(bundle, precision, auto=backend == "auto")
    for name in ("trt", "ort-cuda", "openvino", "ort-cpu", "keras") if want.auto else (backend,):
        precisions = _precisions(name, precision)
        if not precisions:
            want.notes.append(f"{name} does not run {precision}")
            continue
        found = _FINDERS[name](want, precisions)
        if found is not None:
            return found, "; ".join([f"{found.precision} {found.file}"] + [n for n in want.notes if n])
    wanted = backend + (f" {precision}" if precision else "")
    if want.auto and any(n.startswith("skipped ") for n in want.notes):
        hint = "re-export the bundle (`dfx export`), or name a --backend to run a form parity did not vouch for"
    elif want.gpu is not None and not want.gpu[0]:
        hint = "this machine has no usable GPU: use --backend auto (or ort-cpu)"
    elif precision is not None:
        hint = "drop --precision to let dfx pick, or export the missing form with `dfx export`"
    else:
        hint = "use --backend auto, or install the backend's extra (see README)"
    raise SelectError(f"cannot run this bundle with {wanted}: " + "; ".join(n for n in want.notes if n), hint=hint)


@dataclass
class _Request:
    """One plan() call: the bundle, what was asked, and the notes that explain the choice."""

    bundle: Bundle
    precision: str | None
    auto: bool
    notes: list[str] = field(default_factory=list)
    gpu: tuple[bool, str] | None = None  # probed once, on the first GPU backend

    def choice(self, backend: str, file: str, precision: str) -> Choice:
        return Choice(backend, precision, file, self.bundle.sha256(file))

    def has_gpu(self, backend: str) -> bool:
        self.gpu = self.gpu or gpu_status()
        if not self.gpu[0] and (backend == "trt" or not self.auto):
            self.notes.append(f"no GPU ({self.gpu[1]})")
        return self.gpu[0]

    def refused_by_parity(self, form: str) -> bool:
        """Under `auto`, True (with a note) when parity.json does not vouch for `form`."""
        if not self.auto:
            return False
        reason = parity_refusal(self.bundle, form)
        if reason:
            self.notes.append(f"skipped {form}: {reason}")
        return reason is not None


def parity_refusal(bundle: Bundle, form: str) -> str | None:
    """Why parity.json does not vouch for `form` (e.g. "cpu-int8", "openvino-bf16"), or None."""
    forms = (bundle.manifest.get("parity") or {}).get("forms")
    if not forms:
        return "the bundle has no parity report (re-run `dfx export`)"
    if form not in forms:
        return "parity.json has no entry for it (re-run `dfx export` on a host that runs it)"
    if not forms[form]:
        return "it failed parity (see parity.json)"
    # An optimized form is served only where the sample was large enough to show it as good as
    # Keras (vouched), not merely not worse; bundles exported before the record had only "passed".
    vouched_forms = (bundle.manifest.get("parity") or {}).get("vouched")
    if vouched_forms is not None and not form.endswith("fp32") and not vouched_forms.get(form, False):
        return "it passed parity without being vouched (too few parity images to show it; see parity.json)"
    return None


def vouched(bundle: Bundle, form: str) -> bool:
    """True when the bundle's parity report has `form` and it passed."""
    return parity_refusal(bundle, form) is None


def _parity_form(backend: str, role: str, precision: str) -> str:
    """The parity.json entry that judged `backend` running a file of `role` at `precision`."""
    if backend == "openvino":
        return f"openvino-{precision}"
    return "cpu-int8" if role == CPU_INT8_ROLE else precision  # ONNX Runtime forms go by file


def _find_trt(want: _Request, precisions: tuple[str, ...]) -> Choice | None:
    if not want.has_gpu("trt"):
        return None
    from dfx.runtime.runners import trt

    if trt.installed_version() is None:
        want.notes.append("TensorRT not installed")
        return None
    from dfx.runtime.runners import cuda

    engines, refused = usable_engines(want.bundle, precisions, cuda.compute_capability(0), trt.installed_version())
    want.notes.extend(refused)
    for entry in engines:
        form = f"trt{'-lean' if entry.get('lean') else ''}-{entry['precision']}"
        if not want.refused_by_parity(form):
            want.notes.insert(0, f"{entry['precision']} engine {_engine_name(entry)} matches this GPU and TensorRT")
            return want.choice("trt", _engine_name(entry), str(entry["precision"]))
    return None


def _find_onnx(backend: str, status: Callable[[], tuple[bool, str]]) -> Callable[[_Request, tuple[str, ...]], Choice | None]:
    """A finder for an ONNX backend: installed, then the best vouched precision whose file exists."""

    def find(want: _Request, precisions: tuple[str, ...]) -> Choice | None:
        if backend == "ort-cuda" and not want.has_gpu(backend):
            return None
        ok, why = status()
        if not ok:
            want.notes.append(why)
            return None
        if backend == "openvino":
            precisions = _openvino_precisions(want.bundle, precisions, explicit=want.precision is not None, notes=want.notes)
        files = {p: _onnx_file(want.bundle, p, backend) for p in precisions}
        for precision, found in files.items():
            if found is not None and not want.refused_by_parity(_parity_form(backend, found[1], precision)):
                return want.choice(backend, found[0], precision)
        if precisions and not any(files.values()):
            want.notes.append(f"the bundle has no {'/'.join(precisions)} ONNX for {backend}")
        return None

    return find


def _find_keras(want: _Request, precisions: tuple[str, ...]) -> Choice | None:
    if importlib.util.find_spec("tensorflow") is None:
        want.notes.append("keras: tensorflow not installed")
        return None
    names = want.bundle.files_with_role("keras")
    if not names:
        want.notes.append("the bundle has no Keras model")
        return None
    if want.auto:
        exported = bool(want.bundle.files_with_role(ONNX_ROLES["fp32"]))
        want.notes.append("no ONNX form is vouched for by parity" if exported else "the bundle has no ONNX model (run `dfx export`)")
    return want.choice("keras", names[0], "fp32")  # the reference itself: nothing to vouch for


_FINDERS: dict[str, Callable[[_Request, tuple[str, ...]], Choice | None]] = {
    "trt": _find_trt,
    "ort-cuda": _find_onnx("ort-cuda", lambda: ort_cuda_status()),
    "openvino": _find_onnx("openvino", lambda: openvino_status()),
    "ort-cpu": _find_onnx("ort-cpu", lambda: ort_cpu_status()),
    "keras": _find_keras,
}


def _openvino_precisions(bundle: Bundle, precisions: tuple[str, ...], *, explicit: bool, notes: list[str]) -> tuple[str, ...]:
    """OpenVINO's precisions here: bf16 needs native CPU support; `auto` also needs the parity
    report to vouch for it and a CPU where it is faster (AMX), and then takes it before fp32,
    and for a transformer backbone (clip_vit) before int8 too: its int8 form keeps the layers
    per-tensor int8 cannot hold in float, and ran at a third of bf16's rate on an AMX Xeon
    (docs/benchmarks.md), while a CNN's int8 form is int8 throughout."""
    if "bf16" not in precisions:
        return precisions
    from dfx.runtime.runners.openvino import bf16_status, has_amx

    ok, why = bf16_status()
    if explicit:
        if not ok:
            notes.append(f"openvino bf16: {why}")
            return ()
        return precisions
    rest = tuple(p for p in precisions if p != "bf16")
    if ok and has_amx() and vouched(bundle, "openvino-bf16"):
        first = () if bundle.manifest.get("backbone") else tuple(p for p in rest if p == "int8")
        return first + ("bf16",) + tuple(p for p in rest if p not in first)
    return rest


def choose_runner(
    bundle: Bundle | str | os.PathLike,
    backend: str = "auto",
    precision: str | None = None,
    *,
    threads: int | None = None,
) -> tuple[Runner, Choice]:
    """(an inactive Runner, the Choice: backend, precision, file, sha256 and the reason, such as
    "ort-cpu int8 model.int8.cpu.onnx; no GPU (...)").

    The runner's file was verified against the manifest; activate it with `with runner:`.
    """
    if not isinstance(bundle, Bundle):
        bundle = Bundle.open(bundle)
    chosen, why = plan(bundle, backend, precision)
    return _make_runner(bundle, chosen, threads), replace(chosen, reason=f"{chosen.backend} {why}")
