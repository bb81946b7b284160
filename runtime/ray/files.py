"""Inputs and outputs of `dfx scan --engine ray` (dfx.runtime.ray.scan): expanding paths, globs,
manifests and object-store prefixes into the files to scan, and the Parquet / JSONL shards of
result rows (a fixed schema: every row column, dfx.runtime.scan.results.column_kinds; reading them back for --resume, dropping
what a killed writer cut off). pyarrow is imported inside the functions.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import uuid
from dataclasses import dataclass
from typing import Any, Iterable

from dfx.errors import DfxError

SHARD_SUFFIXES = {"parquet": ".parquet", "jsonl": ".jsonl"}


# ---- inputs ---------------------------------------------------------------------------------------


@dataclass
class Inputs:
    files: list[str]  # as rows will name them (local paths as given, URIs with their scheme)
    scheme: str  # "" for local paths, else e.g. "s3": Ray drops it from the paths it reports
    skipped_non_image: int = 0


def split_uri(entry: str) -> tuple[str, str]:
    """("s3", "bucket/key") for a URI, ("", path) for a local path (file:// becomes local)."""
    if "://" in entry:
        scheme, rest = entry.split("://", 1)
        if scheme == "file":
            return "", rest
        return scheme, rest
    return "", entry


def _manifest_lines(entry: str) -> list[str]:
    """`@FILE`: one path or URI per line; blank lines and # comments ignored."""
    try:
        text = _read_text(entry[1:])
    except OSError as exc:
        raise DfxError(f"cannot read the manifest {entry[1:]} ({exc})") from exc
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _read_text(uri: str) -> str:
    scheme, _ = split_uri(uri)
    if not scheme:
        with open(split_uri(uri)[1], encoding="utf-8") as handle:
            return handle.read()
    fs, path = filesystem_of(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read().decode("utf-8")


def filesystem_of(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path on it) for a local path or an object-store URI."""
    from pyarrow import fs as pafs

    scheme, rest = split_uri(uri)
    if not scheme:
        return pafs.LocalFileSystem(), os.path.abspath(rest)
    return pafs.FileSystem.from_uri(uri)


def expand_inputs(entries: Iterable[str], extensions: tuple[str, ...] | None = None) -> Inputs:
    """Files to scan, in order, each once. Local folders are walked exactly as `dfx scan` walks
    them (named files always, folders by suffix or content, `extensions` restricting them);
    globs expand (sorted); `@FILE` reads a manifest of paths/URIs. In an object store a
    "folder" is a prefix, listed recursively and filtered by suffix (reading every object's
    first bytes from the driver would cost a request each)."""
    flat: list[str] = []
    for entry in entries:
        entry = os.fspath(entry)
        flat.extend(_manifest_lines(entry) if entry.startswith("@") else [entry])
    schemes = {split_uri(e)[0] for e in flat}
    if len(schemes) > 1:
        raise DfxError(f"inputs mix filesystems ({', '.join(sorted(s or 'local' for s in schemes))})",
                       hint="run one scan per filesystem (Ray reads one filesystem per job)")
    scheme = schemes.pop() if schemes else ""
    files: list[str] = []
    skipped = 0
    for entry in flat:
        if not scheme:
            path = split_uri(entry)[1]
            matches = sorted(glob.glob(path)) if glob.has_magic(path) else [path]
            found, skip = _walk_local(matches or [path], extensions)  # a glob matching nothing: an error row
        else:
            found, skip = _expand_remote(entry, extensions)
        files.extend(found)
        skipped += skip
    return Inputs(list(dict.fromkeys(files)), scheme, skipped)


def _walk_local(paths: list[str], extensions: tuple[str, ...] | None) -> tuple[list[str], int]:
    from dfx.images import walk_images  # the walk `dfx scan` uses: suffix or content, --extensions

    found, skipped = walk_images(paths, extensions)
    return list(found), len(skipped)


def _expand_remote(uri: str, extensions: tuple[str, ...] | None = None) -> tuple[list[str], int]:
    """Objects under a URI: a prefix ("folder") lists recursively; `*` matches within the listing."""
    import fnmatch

    from pyarrow import fs as pafs

    from dfx.images import IMAGE_SUFFIXES

    scheme = split_uri(uri)[0]
    pattern = uri if glob.has_magic(uri) else None
    base = uri.split("*", 1)[0].rsplit("/", 1)[0] if pattern else uri
    fs, path = filesystem_of(base)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File and not pattern:
        return [uri], 0
    if info.type != pafs.FileType.Directory:
        return ([] if pattern else [uri]), 0  # a missing object: it gets an error row later
    listed = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(path, recursive=True)) if i.type == pafs.FileType.File)
    uris = [f"{scheme}://{p}" for p in listed]
    if pattern:
        uris = [u for u in uris if fnmatch.fnmatchcase(u, pattern)]
    suffixes = extensions or IMAGE_SUFFIXES
    images = [u for u in uris if u.lower().endswith(suffixes)]
    return images, len(uris) - len(images)


# ---- rows and shards ------------------------------------------------------------------------------


def _columns() -> list[tuple[str, str]]:
    """(name, arrow type name) of every row column, read now: other rooms add columns."""
    from dfx.runtime.scan.results import column_kinds

    arrow = {"number": "float64", "flag": "bool_", "text": "string", "count": "int64", "json": "string"}  # json: its text
    return [(column.name, arrow[column.kind]) for column in column_kinds()]


def rows_to_table(rows: list[dict[str, Any]]) -> Any:
    """A pyarrow Table with a fixed schema (an all-null column keeps its type, so every shard
    has the same schema and they read back as one table)."""
    import pyarrow as pa

    columns = _columns()
    schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in columns])
    data = {}
    for name, kind in columns:
        values = [row.get(name) for row in rows]
        if kind == "string":  # a structured value (e.g. provenance) travels as JSON text
            values = [v if v is None or isinstance(v, str) else json.dumps(v, default=str) for v in values]
        data[name] = values
    return pa.table(data, schema=schema)


def list_shards(out: str) -> list[tuple[str, str]]:
    """(path on the filesystem, format) of every result shard under `out`."""
    from pyarrow import fs as pafs

    fs, root = filesystem_of(out)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        return []
    if info.type != pafs.FileType.Directory:
        raise DfxError(f"{out} is a file; --engine ray writes shards into a folder or bucket prefix",
                       hint="name a folder for --out, e.g. --out results/")
    found = []
    for item in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        for fmt, suffix in SHARD_SUFFIXES.items():
            if item.type == pafs.FileType.File and item.path.endswith(suffix):
                found.append((item.path, fmt))
    return sorted(found)


def read_shards(out: str, *, repair: bool = False, columns: list[str] | None = None,
                only: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Rows in the shards under `out` (or only the shard paths in `only`). A shard cut off by a
    killed job is skipped: a Parquet file without its footer is unreadable as a whole, a JSONL
    shard loses its partial last line. With `repair=True` such a Parquet shard is deleted and
    the JSONL one rewritten without the partial line, so the folder reads cleanly afterwards."""
    import pyarrow.parquet as pq

    fs, _ = filesystem_of(out)
    wanted = set(only) if only is not None else None
    rows: list[dict[str, Any]] = []
    for path, fmt in list_shards(out):
        if wanted is not None and path not in wanted:
            continue
        if fmt == "parquet":
            try:
                with fs.open_input_file(path) as handle:
                    table = pq.read_table(handle, columns=columns)
            except Exception as exc:  # ArrowInvalid / OSError: a shard a killed writer left
                if repair:
                    fs.delete_file(path)
                    print(f"dfx scan: removed the unreadable shard {path} ({exc})", file=sys.stderr)
                continue
            rows.extend(table.to_pylist())
        else:
            with fs.open_input_stream(path) as stream:
                data = stream.read()
            end = data.rfind(b"\n") + 1
            if repair and end < len(data):
                with fs.open_output_stream(path) as stream:
                    stream.write(data[:end])
            for line in data[:end].decode("utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    rows.append({k: row.get(k) for k in columns} if columns else row)
    return rows


def write_table(out: str, table: Any, fmt: str) -> str:
    """One shard written by the driver (the completeness pass), in the job's format."""
    import pyarrow.parquet as pq

    fs, root = filesystem_of(out)
    fs.create_dir(root, recursive=True)
    path = f"{root}/dfx-driver-{uuid.uuid4().hex[:12]}{SHARD_SUFFIXES[fmt]}"
    if fmt == "parquet":
        with fs.open_output_stream(path) as stream:
            pq.write_table(table, stream)
    else:
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in table.to_pylist())
        with fs.open_output_stream(path) as stream:
            stream.write(text.encode("utf-8"))
    return path
