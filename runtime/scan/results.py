"""Scan results: one row per input, written as .jsonl or .csv and flushed row by row.

A row is either a score (logit, probability, decision) or an error; never both, never
missing. Beside the core columns a row carries the columns that row hooks add (the rooms around
the scan register them with `register_columns`; today the provenance room: c2pa, c2pa_failures,
claim_generator, ai_declared, verdict, provenance_error), null when not read. Rows written before
those columns existed read back with them null. `--resume` reads back what an earlier (possibly
killed) run wrote: a half-written last line is cut off, so the resumed run appends whole rows
only and nothing is duplicated.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Mapping

from dfx.errors import DfxError
from dfx.faces import NO_FACE  # the decision of a whole photo with no face (never "real")

FORMATS = (".jsonl", ".csv")


@dataclass(frozen=True)
class Column:
    """A column a row hook adds to every row; `kind` says how a CSV cell reads back."""

    name: str
    kind: str  # "text" | "flag" (true/false) | "number" | "count" (an integer) | "json" (a list; JSON text in CSV)


# Hook columns, in the order rows carry them after the core columns (see register_columns).
_HOOK_COLUMNS: list[Column] = []


def register_columns(*columns: Column) -> None:
    """Add hook columns to the row schema (idempotent). The rooms around the scan call it when
    `dfx.runtime` is imported, so every writer and reader knows the same columns."""
    for column in columns:
        if column.name in CORE_COLUMNS:
            raise ValueError(f"{column.name!r} is a core column")
        if all(c.name != column.name for c in _HOOK_COLUMNS):
            _HOOK_COLUMNS.append(column)


# The scan's own columns for whole photos (dfx.faces): how many faces were found, and per face
# its box, the finder's score and the detector's logit/probability/decision. Null for an image
# scored whole (a face crop), so face-crop folders write the rows they always did. In CSV the
# list is one cell of JSON text (the documented flattening: one row per input in both formats).
FACE_COLUMNS = (Column("faces", "count"), Column("face_boxes", "json"))  # registered below, first of all


def hook_columns() -> tuple[str, ...]:
    return tuple(c.name for c in _HOOK_COLUMNS)


def column_kinds() -> list[Column]:
    """Every column of a row, in order, with its kind ("number" | "text" | "flag"), for writers
    with a typed schema (Ray's Parquet shards)."""
    numbers = ("logit", "probability")
    return [Column(name, "number" if name in numbers else "text") for name in CORE_COLUMNS] + list(_HOOK_COLUMNS)


def csv_cell(value: Any) -> Any:
    """A row value as a CSV cell: null is empty, a list (face_boxes) is its JSON text."""
    if value is None:
        return ""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")) if isinstance(value, (list, dict)) else value


@dataclass(frozen=True, init=False)
class Result:
    """The verdict on one input. `error` is set (and the scores are None) when it failed."""

    path: str  # the input as given (a path), or a short description for bytes/arrays/PIL images
    logit: float | None  # raw model score; >= threshold means "fake"
    probability: float | None  # calibrated P(fake): the bundle's Platt fit of the logit (plain sigmoid without one)
    decision: str | None  # "fake" | "real"
    backend: str  # e.g. "ort-cpu", "trt"
    precision: str  # "fp32" | "fp16" | "int8"
    model_sha256: str  # hash of the model file that produced the score
    error: str | None = None  # why this input has no score
    extra: Mapping[str, Any] = field(default_factory=dict)  # the hook columns that are not null (read as attributes too)

    def __init__(self, path: str, logit: float | None, probability: float | None, decision: str | None, backend: str,
                 precision: str, model_sha256: str, error: str | None = None, extra: Mapping[str, Any] | None = None,
                 **columns: Any):
        # Null columns are left out, so a row equals itself read back whichever columns it had.
        values = {k: v for k, v in {**(extra or {}), **columns}.items() if v is not None}
        unknown = set(values) - set(hook_columns())
        if unknown:
            raise TypeError(f"Result has no column {', '.join(sorted(unknown))}")
        for name, value in (("path", path), ("logit", logit), ("probability", probability), ("decision", decision),
                            ("backend", backend), ("precision", precision), ("model_sha256", model_sha256),
                            ("error", error), ("extra", values)):
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str) -> Any:  # a hook column: result.c2pa, result.verdict, ...
        if name in hook_columns():
            return self.__dict__.get("extra", {}).get(name)
        raise AttributeError(f"'Result' object has no attribute {name!r}")

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def is_fake(self) -> bool:
        return self.decision == "fake"

    def to_dict(self) -> dict[str, Any]:
        """The flat row, in COLUMNS order (hook columns null when not set)."""
        row = {name: getattr(self, name) for name in CORE_COLUMNS}
        row.update((name, self.extra.get(name)) for name in hook_columns())
        return row


CORE_COLUMNS = ("path", "logit", "probability", "decision", "backend", "precision", "model_sha256", "error")
register_columns(*FACE_COLUMNS)


def __getattr__(name: str) -> Any:
    if name == "COLUMNS":  # the row schema: the core columns, then the registered hook columns
        return CORE_COLUMNS + hook_columns()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class RowCounts(dict):
    """The counts a scan summary reports: images, scored, fake, real, errors."""

    def __init__(self) -> None:
        super().__init__(images=0, scored=0, fake=0, real=0, no_face=0, errors=0)

    def add(self, decision: str | None, error: str | None) -> None:
        self["images"] += 1
        if error:
            self["errors"] += 1
        elif decision == NO_FACE:
            self["no_face"] += 1
        else:
            self["scored"] += 1
            self[decision if decision == "fake" else "real"] += 1


def output_format(path: str | os.PathLike) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise DfxError(f"cannot write results to {os.fspath(path)!r}: unknown format", hint="name the output *.jsonl or *.csv")
    return suffix


class ResultWriter:
    """Appends rows to a .jsonl or .csv file, flushing each, so a killed scan keeps every row it
    reported. Use as a context manager."""

    def __init__(self, path: str | os.PathLike, *, append: bool = False):
        self.path = Path(path)
        self.format = output_format(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        has_rows = append and self.path.exists() and self.path.stat().st_size > 0
        self._handle: IO[str] = open(self.path, "a" if append else "w", newline="", encoding="utf-8")
        self.rows = 0
        if self.format == ".csv":
            if has_rows:
                _upgrade_csv_header(self.path, self._handle)
            self._csv = csv.DictWriter(self._handle, fieldnames=CORE_COLUMNS + hook_columns(), lineterminator="\n")
            if not has_rows:
                self._csv.writeheader()
                self._handle.flush()

    def write(self, result: Result) -> None:
        row = result.to_dict()
        if self.format == ".jsonl":
            self._handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            self._csv.writerow({k: csv_cell(v) for k, v in row.items()})
        self._handle.flush()
        self.rows += 1

    def write_all(self, results: Iterable[Result]) -> None:
        for result in results:
            self.write(result)

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "ResultWriter":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _upgrade_csv_header(path: Path, handle: IO[str]) -> None:
    """A CSV written before today's columns gets them (empty) before rows are appended, so a
    resumed scan never writes rows under a header that does not match them."""
    try:  # the header line as read_results reads it: undecodable bytes replaced, not fatal
        with open(path, newline="", encoding="utf-8", errors="replace") as existing:
            header = next(csv.reader(existing), None)
    except csv.Error as exc:
        raise DfxError(f"{path} is not a dfx results CSV ({_short(exc)})", hint="write to a new --out file") from exc
    if header is None or tuple(header) == CORE_COLUMNS + hook_columns():
        return
    rows = read_results(path)
    handle.seek(0)
    handle.truncate()
    writer = csv.DictWriter(handle, fieldnames=CORE_COLUMNS + hook_columns(), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: csv_cell(v) for k, v in row.to_dict().items()})
    handle.flush()


def read_results(path: str | os.PathLike, *, repair: bool = False) -> list[Result]:
    """Rows in an output file. A last line without its newline (a run killed mid-write) is
    ignored; with `repair=True` it is also cut from the file so appending stays clean."""
    path = Path(path)
    fmt = output_format(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    end = _last_row_end(data, fmt)  # everything after it is a partial row
    if repair and end < len(data):
        with open(path, "r+b") as handle:
            handle.truncate(end)
    text = data[:end].decode("utf-8", errors="replace")
    rows: list[Result] = []
    if fmt == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(_from_dict(json.loads(line)))
            # RecursionError: absurdly nested JSON; OverflowError: a number no float holds.
            except (ValueError, TypeError, KeyError, OverflowError, RecursionError) as exc:
                raise DfxError(f"{path}:{number} is not a dfx result row ({_short(exc)})", hint="write to a new --out file") from exc
    else:
        # strict: a quote inside an unquoted field is an error, not text, so the row ends found by
        # _last_row_end (quote parity) are the reader's own and appended rows stay rows.
        reader = csv.DictReader(io.StringIO(text), strict=True)
        try:
            if reader.fieldnames and "path" not in reader.fieldnames:
                raise DfxError(f"{path} is not a dfx results CSV (no 'path' column)", hint="write to a new --out file")
            for row in reader:
                rows.append(_from_dict(row))
        except (csv.Error, ValueError, TypeError, KeyError, OverflowError) as exc:
            raise DfxError(f"{path}:{reader.line_num} is not a dfx result row ({_short(exc)})", hint="write to a new --out file") from exc
    return rows


def _last_row_end(data: bytes, fmt: str) -> int:
    """Where the last complete row ends. JSONL: after the last newline. CSV: after the last
    newline outside quotes, since an error text may hold a quoted newline and a scan killed just
    after it leaves a line break mid-row (cutting there would leave an open quote that swallows
    every row appended later). Outside quotes = an even number of '"' before it ("" escapes)."""
    end = data.rfind(b"\n") + 1
    if fmt != ".csv":
        return end
    quotes = data.count(b'"', 0, end)
    while end and quotes % 2:
        previous = data.rfind(b"\n", 0, end - 1) + 1
        quotes -= data.count(b'"', previous, end)
        end = previous
    return end


def _short(exc: BaseException) -> str:
    return (" ".join(str(exc).split()) or type(exc).__name__)[:200]


def done_paths(path: str | os.PathLike) -> set[str]:
    """Inputs an earlier run already answered (scored or errored); repairs a cut-off last row."""
    return {r.path for r in read_results(path, repair=True)}


def _from_dict(row: Any) -> Result:
    # A row is a flat object of strings and numbers; anything else is not ours (TypeError).
    def num(value: Any) -> float | None:
        if value is None or value == "":
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError(f"expected a number, got {type(value).__name__}")
        number = float(value)
        if not math.isfinite(number):  # a runner's logit is finite; inf/nan is not a row of ours
            raise ValueError(f"expected a finite number, got {value!r}")
        return number

    def text(value: Any) -> str | None:
        if value is None or value == "":
            return None
        if not isinstance(value, (str, int, float)):
            raise TypeError(f"expected text, got {type(value).__name__}")
        return str(value)

    def flag(value: Any) -> bool | None:  # JSON true/false, CSV "True"/"False"
        if value is None or value == "":
            return None
        if isinstance(value, bool):
            return value
        if str(value).lower() not in ("true", "false"):
            raise TypeError(f"expected true or false, got {value!r}")
        return str(value).lower() == "true"

    if not isinstance(row, dict):
        raise TypeError(f"expected an object, got {type(row).__name__}")
    path = row["path"]
    if not isinstance(path, str) or not path:
        raise TypeError("the row has no path")
    if "\x00" in path:  # no file system names a file so
        raise ValueError("the path holds a NUL character")
    def count(value: Any) -> int | None:
        number = num(value)
        if number is None:
            return None
        if number != int(number) or number < 0:
            raise ValueError(f"expected a count, got {value!r}")
        return int(number)

    def faces(value: Any) -> list[dict[str, Any]] | None:  # JSONL: a list; CSV: its JSON text
        if value is None or value == "":
            return None
        if isinstance(value, str):
            value = json.loads(value)
        if not isinstance(value, list) or not all(isinstance(face, dict) for face in value):
            raise TypeError("face_boxes must be a list of objects")
        for face in value:
            box = face.get("box")
            if not (isinstance(box, list) and len(box) == 4 and all(num(v) is not None for v in box)):
                raise TypeError("a face needs a box [x0, y0, x1, y1]")
            for key in ("face_score", "logit", "probability"):
                num(face.get(key))
            text(face.get("decision"))
        return value

    kinds = {"text": text, "flag": flag, "number": num, "count": count, "json": faces}
    return Result(
        path=path,
        logit=num(row.get("logit")),
        probability=num(row.get("probability")),
        decision=text(row.get("decision")),
        backend=str(row.get("backend") or ""),
        precision=str(row.get("precision") or ""),
        model_sha256=str(row.get("model_sha256") or ""),
        error=text(row.get("error")),
        extra={c.name: kinds[c.kind](row.get(c.name)) for c in _HOOK_COLUMNS},
    )
