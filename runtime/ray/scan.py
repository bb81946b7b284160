"""Scale-out on Ray Data: the rows of `dfx scan`, computed on a Ray cluster (or one machine).

    inputs (paths, folders, globs, @manifest; local or s3:// gs:// ...)
      │  expanded on the driver, anti-joined against the rows already in --out (resume)
      ▼
    read_binary_files(include_paths=True) ─► decode (tasks: dfx.images.load_image, bundle size/fit)
      ─► infer (actor pool: one Runner per actor from choose_runner; num_cpus = its threads,
         or one GPU each) ─► Parquet / JSONL shards in --out (a folder or bucket prefix)
      ▼
    completeness pass: every input without a row (missing file) gets its error row

Decoding happens in dfx's pixel path on the bytes Ray read, so a corrupt file becomes that
row's `error`, never a failed job. Rows carry `dfx.runtime.scan.results.Result`'s fields, whatever
they are at the time. A driver killed midway leaves whole shards (and at worst one cut-off
shard, which --resume drops); --resume skips every input that has a row, so a resumed job ends
with exactly one row per input.

Inputs and shards live in dfx.runtime.ray.files; the Ray Serve deployment in
dfx.runtime.ray.deployment; `dfx scan --engine ray` in dfx.runtime.ray.commands. `import ray`
inside this package is an absolute import and gets the real package. Ray, pyarrow and the
runners are imported inside functions only.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from dfx.errors import DfxError, require
from dfx.runtime.ray.files import (
    SHARD_SUFFIXES,
    expand_inputs,
    filesystem_of,
    list_shards,
    read_shards,
    rows_to_table,
    split_uri,
    write_table,
)

FORMATS = tuple(SHARD_SUFFIXES)
CPU_BATCH = 32  # `dfx scan --batch` default: the CPU runners' measured sweet spot at 256 px
GPU_BATCH = 64  # TrtRunner's buffer cap (select.py); ORT CUDA is as happy with it
DECODE_MEMORY = 256 * 1024 * 1024  # bytes reserved per decode task (see _run_pipeline)
NO_ROW = "no such file (or Ray could not read it)"  # a listed input that produced no row


@dataclass(frozen=True)
class RayScanConfig:
    """What a Ray scan runs with. None means "derive it from the bundle, backend and cluster"."""

    backend: str = "auto"  # as `dfx scan --backend`; resolved inside each actor, on its node
    precision: str | None = None
    threshold: float | None = None  # on the logit; None: the bundle's
    batch_size: int | None = None  # images per inference call; None: CPU_BATCH or GPU_BATCH
    actors: int | None = None  # inference actors; None: one per GPU, or CPUs left after decode / threads
    threads: int | None = None  # CPU runner threads per actor (= the actor's num_cpus); None: 1
    decode_cpus: float = 1.0  # CPUs reserved per decode task
    format: str = "parquet"
    resume: bool = False
    overwrite: bool = False
    address: str | None = None  # ray.init(address=...): None = RAY_ADDRESS or a local instance
    progress: bool = False  # Ray Data's progress bars
    provenance: bool = True  # read C2PA manifests in the decode stage (when the c2pa extra is there)
    trust_anchors: str | None = None  # PEM of trusted roots; a path every node can read
    public_key: str | None = None  # refuse a bundle not signed by it (as dfx scan --public-key)
    faces: str = "auto"  # whole photos, as dfx scan --faces: off | auto | all
    no_face: str = "no_face"  # as dfx scan --no-face: no_face | score
    min_face: int | None = None  # as dfx scan --min-face (None: from the model window)


# ---- the two stages ----------------------------------------------------------------------------


def decode_batch(batch: dict[str, np.ndarray], *, size: tuple[int, int], fit: str, scheme: str,
                 provenance: bool = False, trust_anchors: str | None = None, faces: str = "off",
                 no_face: str = "no_face", finder: bytes | None = None, min_face: int = 40) -> dict[str, np.ndarray]:
    """Ray task: file bytes -> the model windows through dfx.images (one, or one per face with
    `faces`, as `dfx scan --faces`), or the row's error text; with `provenance`, the C2PA
    columns read from the same bytes (as `dfx scan`'s decode pool does).

    In: {"bytes", "path"}. Out: {"path", "windows" (the uint8 (K, H, W, 3) windows' bytes; K = 0
    for an error or a photo with no face), "boxes" (JSON [[x0, y0, x1, y1, score], ...] of the
    faces; "" for an image scored whole), "error" ("" when decoded), "provenance" (JSON of the
    provenance columns, "" when not read)}."""
    from dfx.images import MAX_FILE_BYTES
    from dfx.runtime.scan.pipeline import FaceOptions, decode  # the very function `dfx scan`'s decode pool runs

    hook = _provenance_hook(trust_anchors) if provenance else None
    options = None if faces == "off" else FaceOptions(_face_finder(finder, min_face), faces, no_face)
    height, width = size
    paths = [f"{scheme}://{p}" if scheme else str(p) for p in batch["path"]]
    windows = np.full(len(paths), b"", dtype=object)
    boxes = np.full(len(paths), "", dtype=object)
    errors = np.full(len(paths), "", dtype=object)
    columns = np.full(len(paths), "", dtype=object)
    for i, data in enumerate(batch["bytes"]):
        if len(data) > MAX_FILE_BYTES:  # as dfx.images checks a path before reading it
            errors[i] = f"file too large ({len(data)} bytes > {MAX_FILE_BYTES})"
            continue
        decoded, read = decode(bytes(data), (height, width), fit, hook, options)
        if hook is not None:
            columns[i] = json.dumps(read)
        if isinstance(decoded, str):
            errors[i] = decoded
        else:
            windows[i] = np.ascontiguousarray(decoded.pixels).tobytes()
            if decoded.boxes is not None:
                boxes[i] = json.dumps([[b.x0, b.y0, b.x1, b.y1, b.score] for b in decoded.boxes])
    return {"path": np.array(paths, dtype=object), "windows": windows, "boxes": boxes, "error": errors, "provenance": columns}


_FINDERS: dict[tuple[bytes, int], Any] = {}  # one face finder per worker process, model and min_face


def _face_finder(model: bytes | None, min_face: int) -> Any:
    """The bundle's face finder, from its bytes (shipped by the driver, verified there); None
    without one (then `auto` scores every image whole, as dfx scan does)."""
    if model is None:
        return None
    import hashlib
    import tempfile

    from dfx.faces import FaceFinder, FinderConfig

    key = (hashlib.sha256(model).digest(), int(min_face))
    if key not in _FINDERS:
        path = os.path.join(tempfile.mkdtemp(prefix="dfx-finder-"), "face_finder.onnx")
        with open(path, "wb") as handle:
            handle.write(model)
        _FINDERS[key] = FaceFinder(path, config=FinderConfig(min_face=int(min_face)))
    return _FINDERS[key]


_HOOKS: dict[str | None, Any] = {}  # one provenance hook (C2PA reader) per worker process and trust-anchor file


def _provenance_hook(trust_anchors: str | None) -> Any:
    """The provenance room's row hook that reads (its reader None without the c2pa extra)."""
    if trust_anchors not in _HOOKS:
        from dfx.runtime.provenance.hook import ProvenanceHook

        _HOOKS[trust_anchors] = ProvenanceHook.maybe(True, trust_anchors)
    return _HOOKS[trust_anchors]


class InferActor:
    """Ray actor: one loaded model for its lifetime. The bundle arrives through the object store
    (the driver's files), so a cluster node needs no copy of it on disk."""

    def __init__(self, bundle_files: Any, backend: str, precision: str | None, threads: int | None,
                 threshold: float | None):
        import tempfile

        import ray

        from dfx.bundle import Bundle
        from dfx.runtime.provenance.hook import ProvenanceHook
        from dfx.runtime.scan.model import load_model

        if isinstance(bundle_files, (tuple, list)):  # (ObjectRef,): a borrowed reference, see _run_pipeline
            bundle_files = bundle_files[0]
        files = ray.get(bundle_files) if isinstance(bundle_files, ray.ObjectRef) else bundle_files
        self._dir = tempfile.TemporaryDirectory(prefix="dfx-bundle-")
        for name, data in files.items():
            path = os.path.join(self._dir.name, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as handle:
                handle.write(data)
        # Only the shipped files exist here; choose_runner verifies the one it loads (sha256).
        # The driver checked the signature already.
        bundle = Bundle.open(self._dir.name, verify=False)
        self.model = load_model(bundle, backend, precision, threads=threads, threshold=threshold, public_key=False, check=False)
        # The decode stage read the C2PA columns; this hook only finishes them (the verdict).
        self.rows = self.model.rows(ProvenanceHook())

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        from dfx.faces import FaceBox
        from dfx.runtime.scan.rows import per_input

        height, width = self.model.input_size
        errors = [str(e) for e in batch["error"]]
        windows = [np.frombuffer(w, np.uint8).reshape(-1, height, width, 3) if not errors[i] else None
                   for i, w in enumerate(batch["windows"])]
        boxes = [[FaceBox(*b) for b in json.loads(text)] if text else None for text in batch["boxes"]]
        good = [i for i, w in enumerate(windows) if w is not None and len(w)]
        logits: dict[int, list[float]] = {}
        failure = ""
        if good:
            try:
                stacks = [w for i in good if (w := windows[i]) is not None]
                scores = self.model.runner.infer(np.concatenate(stacks)).tolist()
                logits = dict(zip(good, per_input(scores, [len(w) for w in stacks])))  # one logit, or one per face
            except Exception as exc:  # as in dfx scan: a failed batch costs its rows, not the job
                failure = f"inference failed: {type(exc).__name__}: {exc}"
        provenance = batch.get("provenance")
        rows = []
        for i, path in enumerate(batch["path"]):
            columns = json.loads(provenance[i]) if provenance is not None and provenance[i] else None
            if errors[i]:
                result = self.rows.error(str(path), errors[i], columns)
            elif boxes[i] == []:  # a photo with no face: nothing was inferred
                result = self.rows.windowed(str(path), [], [], columns)
            elif i not in logits:
                result = self.rows.error(str(path), failure, columns)
            else:
                result = self.rows.windowed(str(path), boxes[i], logits[i], columns)
            rows.append(result.to_dict())
        return rows_to_table(rows)

    def __del__(self) -> None:
        try:
            self.model.close()
        except Exception:
            pass


def bundle_payload(bundle: Any) -> dict[str, bytes]:
    """The files of an opened (verified) Bundle that an actor needs: the manifest and every ONNX
    form and engine (not the Keras model, calibration or reports), or everything when there is
    no ONNX form yet."""
    from dfx.bundle import MANIFEST, ONNX_ROLES

    wanted = set(ONNX_ROLES.values())
    names = [n for n, e in bundle.manifest["files"].items() if e.get("role") in wanted or n.startswith("engines/")]
    if not names:
        names = list(bundle.manifest["files"])
    payload = {name: (bundle.root / name).read_bytes() for name in names}
    manifest = dict(bundle.manifest)
    manifest["files"] = {n: bundle.manifest["files"][n] for n in names}
    payload[MANIFEST] = json.dumps(manifest).encode("utf-8")
    return payload


# ---- the job -----------------------------------------------------------------------------------


def start_ray(address: str | None = None, **init_kwargs: Any) -> float:
    """Connect to (or start) Ray; returns the seconds it took. Already connected: 0."""
    ray = require("ray", "ray", "--engine ray")
    if ray.is_initialized():
        return 0.0
    began = time.perf_counter()
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "WARNING"}
    kwargs.update(init_kwargs)
    ray.init(address=address, **kwargs)
    return time.perf_counter() - began


def _plan_actors(config: RayScanConfig, gpu_backend: bool) -> tuple[int, float, float, int | None]:
    """(actors, num_cpus, num_gpus per actor, runner threads) from the cluster's resources."""
    import ray

    total = ray.cluster_resources()
    gpus = int(total.get("GPU", 0))
    if gpu_backend and gpus:
        return config.actors or gpus, 1.0, 1.0, config.threads  # one actor per GPU
    threads = config.threads or 1
    cpus = float(total.get("CPU", 1))
    # Leave a decode task's CPUs free; the rest goes to actors of `threads` CPUs each.
    actors = config.actors or max(1, int((cpus - config.decode_cpus) // threads))
    if actors * threads + config.decode_cpus > cpus:
        # Ray would start the actors and then wait forever for a CPU to decode on.
        raise DfxError(f"{actors} actor(s) x {threads} thread(s) + {config.decode_cpus:g} CPU for decoding exceed the "
                       f"cluster's {cpus:g} CPUs", hint="lower --actors or --threads (each actor reserves --threads CPUs)")
    return actors, float(threads), 0.0, threads


def scan(bundle_dir: str | os.PathLike, inputs: Iterable[str], out: str, config: RayScanConfig = RayScanConfig(),
         *, extensions: tuple[str, ...] | None = None, say: Any = None) -> dict[str, Any]:
    """Score `inputs` on Ray, writing shards of rows to `out`. Returns the summary (as `dfx
    scan`'s, plus ray_startup_s, actors, shards). Connects to Ray first if not connected."""
    say = say or (lambda *a: None)
    require("pyarrow", "ray", "--engine ray")
    if config.format not in FORMATS:
        raise DfxError(f"unknown format {config.format!r}", hint=f"choose one of {', '.join(FORMATS)}")
    from dfx.bundle import Bundle
    from dfx.runtime.scan.select import normalize_backend, plan

    bundle = Bundle.open(bundle_dir, public_key=config.public_key)
    normalize_backend(config.backend)  # a typo fails here, not in every actor
    existing = list_shards(out)
    if existing and not (config.resume or config.overwrite):
        raise DfxError(f"{out} already holds {len(existing)} result shards",
                       hint="pass --resume to finish that scan, or --overwrite to start over")
    if existing and config.overwrite and not config.resume:
        fs, _ = filesystem_of(out)
        for path, _ in existing:
            fs.delete_file(path)
    found = expand_inputs(inputs, extensions)
    if not found.files:
        raise DfxError(f"no image files in {' '.join(map(str, inputs))}", hint="dfx reads .jpg .jpeg .png .webp .bmp .tif .tiff .gif")
    done = {r["path"] for r in read_shards(out, repair=True, columns=["path"])} if config.resume else set()
    todo = [f for f in found.files if f not in done]  # the anti-join on path
    if done:
        say(f"dfx scan: resuming: {len(found.files) - len(todo)} of {len(found.files)} inputs already in {out}")

    startup = start_ray(config.address)
    import ray

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = config.progress
    ctx.print_on_execution_start = config.progress
    if not config.progress:  # Ray Data's per-job INFO lines would bury dfx's summary line
        import logging

        logging.getLogger("ray.data").setLevel(logging.WARNING)
    try:
        choice, why = plan(bundle, config.backend, config.precision)  # what a node like this one picks
        local_choice = f"{choice.backend} {why}"
    except DfxError as exc:  # the driver may lack the backend its workers have (e.g. a GPU)
        choice, local_choice = None, f"(not runnable on the driver: {exc})"
    gpu_backend = config.backend in ("trt", "ort-cuda") or (config.backend == "auto" and choice is not None and choice.backend in ("trt", "ort-cuda"))
    if config.backend == "auto" and int(ray.cluster_resources().get("GPU", 0)) > 0:
        gpu_backend = True  # auto on a GPU cluster: each actor picks TensorRT/CUDA on its GPU
    actors, num_cpus, num_gpus, threads = _plan_actors(config, gpu_backend)
    batch = config.batch_size or (GPU_BATCH if gpu_backend else CPU_BATCH)
    say(f"dfx scan: engine ray, {actors} inference actor(s) x {num_gpus and '1 GPU' or f'{threads} thread(s)'}, batch {batch}; "
        f"backend here: {local_choice}")

    provenance = config.provenance and _provenance_hook(config.trust_anchors).reading  # the c2pa extra, here
    if config.provenance and not provenance:
        say("dfx scan: C2PA provenance not read (pip install 'dfx[c2pa]' to read it)")
    began = time.perf_counter()
    before = {p for p, _ in list_shards(out)}
    if todo:
        payload = ray.put(bundle_payload(bundle))
        _run_pipeline(ray, todo, found.scheme, out, bundle, config, payload, batch, actors, num_cpus, num_gpus, threads, provenance)
    new = [p for p, _ in list_shards(out) if p not in before]
    written = read_shards(out, columns=["path", "decision", "error", "backend", "precision", "model_sha256", "verdict"], only=new)
    seen = {r["path"] for r in written}
    missing = [f for f in todo if f not in seen]  # ignored by the reader: missing or unreadable
    if missing:
        # Error rows name the model like the others (as `dfx scan`'s do), when any row ran one.
        like = next((r for r in written if r.get("model_sha256")), None)
        like = like or ({"backend": choice.backend, "precision": choice.precision, "model_sha256": choice.sha256} if choice else {})
        rows = [_missing_row(f, like) for f in missing]
        new.append(write_table(out, rows_to_table(rows), config.format))
        written.extend(rows)
    seconds = time.perf_counter() - began
    twice = len(written) - len(seen) + len(seen & done)
    if twice:  # e.g. a killed job's last writes landed after --resume had listed the shards
        say(f"dfx scan: warning: {twice} inputs have more than one row in {out} (same input, same model: "
            "keep one row per path when reading)")

    from dfx.runtime.scan.results import RowCounts

    counts = RowCounts()
    verdicts: dict[str, int] = {}  # the combined verdicts beyond fake/real, as dfx scan counts them
    for row in written:
        if row.get("verdict") not in (None, "fake", "real"):
            verdicts[row["verdict"]] = verdicts.get(row["verdict"], 0) + 1
        counts.add(row.get("decision"), row.get("error"))
    backends = sorted({f"{r['backend']} {r['precision']}" for r in written if r.get("backend")})
    return {
        **counts,
        "seconds": round(seconds, 3),
        "images_per_s": round(counts["images"] / seconds, 1) if seconds > 0 else 0.0,
        "out": os.fspath(out),
        "skipped_done": len(found.files) - len(todo),
        "skipped_non_image": found.skipped_non_image,
        "backend": ", ".join(b.split()[0] for b in backends),
        "precision": ", ".join(b.split()[1] for b in backends),
        "provenance": provenance,
        "verdicts": verdicts,
        "engine": "ray",
        "ray_startup_s": round(startup, 3),
        "actors": actors,
        "threads": threads,
        "batch": batch,
        "shards": len(new),
    }


def _finder_for_tasks(bundle: Any, config: RayScanConfig) -> dict[str, Any]:
    """The decode tasks' face finder: the bundle's file (read through the manifest's hash check;
    None for faces off or a bundle without one) and its min_face. dfx scan's checks and refusals apply."""
    from dfx.runtime.scan.pipeline import face_options

    options, _ = face_options(bundle, config.faces, config.no_face, config.min_face)
    if options is None or options.finder is None:
        return {"finder": None}
    return {"finder": options.finder.model.read_bytes(), "min_face": options.finder.config.min_face}


def _missing_row(path: str, like: dict[str, Any]) -> dict[str, Any]:
    from dfx.runtime.provenance.hook import ProvenanceHook
    from dfx.runtime.scan.rows import RowFactory

    local = not split_uri(path)[0]
    if local and os.path.isdir(path):
        error = "is a directory"
    elif local:
        error = "cannot read file" if os.path.exists(path) else "no such file"
    else:
        error = NO_ROW
    rows = RowFactory(str(like.get("backend") or ""), str(like.get("precision") or ""), str(like.get("model_sha256") or ""),
                      threshold=0.0, hook=ProvenanceHook())  # error rows only: no threshold applies
    return rows.error(path, error).to_dict()


def _run_pipeline(ray: Any, todo: list[str], scheme: str, out: str, bundle: Any, config: RayScanConfig, payload: Any,
                  batch: int, actors: int, num_cpus: float, num_gpus: float, threads: int | None, provenance: bool) -> None:
    from ray.data import ActorPoolStrategy
    from ray.data.datasource import FilenameProvider

    paths = [split_uri(f)[1] for f in todo] if scheme else todo
    filesystem = filesystem_of(todo[0])[0] if scheme else None
    try:
        ds = ray.data.read_binary_files(paths, include_paths=True, filesystem=filesystem, ignore_missing_paths=True)
    except (ValueError, FileNotFoundError):  # none of them exists: the completeness pass rows them
        return
    ds = ds.map_batches(
        decode_batch,
        batch_size=batch,
        batch_format="numpy",
        fn_kwargs={"size": bundle.input_size, "fit": bundle.fit, "scheme": scheme, "provenance": provenance,
                   "trust_anchors": config.trust_anchors, "faces": config.faces, "no_face": config.no_face,
                   **_finder_for_tasks(bundle, config)},
        num_cpus=config.decode_cpus,
        # A decode task holds a batch of encoded and decoded images (32 x 196 KB at 256 px plus
        # Pillow's buffers). Reserving it also makes the stage's resources differ from the
        # actors', which keeps Ray from fusing decode into the actor: decode then runs beside
        # inference (and on CPU nodes while actors hold GPUs) instead of before it, in turn.
        memory=DECODE_MEMORY,
        udf_modifying_row_count=False,
    )
    ds = ds.map_batches(
        InferActor,
        batch_size=batch,
        batch_format="numpy",
        # The bundle's ObjectRef goes in a tuple: passed bare, Ray counts it as a constructor
        # argument held in the object store and warns that a restarted actor may not find it;
        # nested, the actor borrows it and the driver keeps it alive for the whole job.
        fn_constructor_kwargs={"bundle_files": (payload,), "backend": config.backend, "precision": config.precision,
                               "threads": threads, "threshold": config.threshold},
        compute=ActorPoolStrategy(size=actors),
        num_cpus=num_cpus,
        num_gpus=num_gpus or None,
        udf_modifying_row_count=False,
    )
    names = FilenameProvider(file_format=SHARD_SUFFIXES[config.format][1:])
    target = out if split_uri(out)[0] else os.path.abspath(split_uri(out)[1])  # workers' cwd is not ours
    if config.format == "parquet":
        ds.write_parquet(target, filename_provider=names)
    else:
        ds.write_json(target, filename_provider=names, force_ascii=False, double_precision=15)  # pandas keeps 10 decimals by default
