"""`dfx report RESULTS --html OUT`: one page a moderator opens from disk, no server.

The page shows every row of a `dfx scan` results file (.jsonl or .csv): a small thumbnail of
the image with its face boxes drawn (red: the face was called fake, green: real), flagged rows
first and then by probability, filters by decision and by source folder (plain JavaScript in
the page), the rate of each decision per folder, which bundle, backend and precision ran, and
the C2PA status where it was read.

Thumbnails are made once: embedded in the page as data: URIs (default: the page is one file
that can be mailed), or with `--thumbs folder` written to OUT_files/ beside the page and kept
there; a later report reuses a thumbnail whose source file has not changed (name from a hash
of path, size and mtime).

Row fields read (the `dfx scan` row, runtime/scan/results.py, with the per-face fields faces and face_boxes):

    path, logit, probability, decision, backend, precision, model_sha256, error,
    c2pa, c2pa_failures, claim_generator, ai_declared, verdict, provenance_error,
    faces        int | null     faces found (null: face finding off, or the image scored whole)
    face_boxes   list | null    one object per face: {"box": [x0, y0, x1, y1] (full-resolution
                                px of the upright image), "face_score", "logit", "probability",
                                "decision"}; in CSV the same list as JSON text in one cell

Rows without the face fields (every file written today) read as faces = null. Unknown fields
are ignored. A row whose image cannot be read any more still appears, without a thumbnail.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dfx.errors import DfxError

THUMB_SIDE = 256  # px, longest side
THUMB_QUALITY = 80
FLAG_VERDICTS = ("fake", "ai-declared", "conflict", "invalid-manifest")  # a moderator looks at these first
DECISIONS = ("fake", "real", "no_face", "error")
FLAG_COLOUR = "#d00000"  # the flagged card border: the test looks for this red in a screenshot


@dataclass
class Row:
    """One result row as the report needs it."""

    path: str
    decision: str  # fake | real | no_face | error
    probability: float | None
    verdict: str | None
    error: str | None
    faces: int | None
    face_boxes: list[dict[str, Any]] = field(default_factory=list)
    c2pa: str | None = None
    claim_generator: str | None = None
    backend: str = ""
    precision: str = ""
    model_sha256: str = ""

    @property
    def flagged(self) -> bool:
        return (self.verdict or self.decision) in FLAG_VERDICTS or self.decision == "fake"

    @property
    def folder(self) -> str:
        return os.path.dirname(self.path) or "."


def read_rows(path: str | os.PathLike) -> list[Row]:
    """The rows of a .jsonl or .csv results file (a half-written last line is ignored)."""
    path = Path(path)
    if not path.is_file():
        raise DfxError(f"no results file at {path}", hint="write one with `dfx scan BUNDLE PATH --out results.jsonl`")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.endswith("\n"):  # a killed scan's partial row
        text = text[: text.rfind("\n") + 1]
    raw: list[dict[str, Any]] = []
    if path.suffix.lower() == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    item = json.loads(line)
                except ValueError as exc:
                    raise DfxError(f"{path}:{number} is not a JSON row ({exc})") from exc
                if isinstance(item, dict):
                    raw.append(item)
    elif path.suffix.lower() == ".csv":
        raw = list(csv.DictReader(io.StringIO(text)))
    else:
        raise DfxError(f"cannot read {path}: unknown format", hint="give the .jsonl or .csv that dfx scan wrote")
    rows = []
    for item in raw:
        if not item.get("path"):
            continue
        rows.append(_row(item))
    return rows


def _row(item: dict[str, Any]) -> Row:
    def num(value: Any) -> float | None:
        try:
            return None if value in (None, "") else float(value)
        except (TypeError, ValueError):
            return None

    def text(value: Any) -> str | None:
        return None if value in (None, "") else str(value)

    boxes = item.get("face_boxes")
    if isinstance(boxes, str):  # CSV: the list as JSON text
        try:
            boxes = json.loads(boxes) if boxes.strip() else None
        except ValueError:
            boxes = None
    boxes = [b for b in boxes if isinstance(b, dict) and _box(b) is not None] if isinstance(boxes, list) else []
    faces = num(item.get("faces"))
    error = text(item.get("error"))
    decision = "error" if error else (text(item.get("decision")) or "error")
    return Row(
        path=str(item["path"]), decision=decision, probability=num(item.get("probability")),
        verdict=text(item.get("verdict")), error=error, faces=None if faces is None else int(faces),
        face_boxes=boxes, c2pa=text(item.get("c2pa")), claim_generator=text(item.get("claim_generator")),
        backend=str(item.get("backend") or ""), precision=str(item.get("precision") or ""),
        model_sha256=str(item.get("model_sha256") or ""),
    )


def _box(face: dict[str, Any]) -> list[float] | None:
    box = face.get("box")
    if isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box):
        return [float(v) for v in box]
    return None


def sort_key(row: Row) -> tuple:
    """Flagged first, then most probably fake first; errors last; ties by path."""
    return (not row.flagged, row.decision == "error", -(row.probability if row.probability is not None else -1.0), row.path)


# --- thumbnails ------------------------------------------------------------------------------------


def thumbnail(path: str) -> tuple[bytes, int, int] | None:
    """(JPEG bytes of a ≤ THUMB_SIDE px thumbnail, upright full width, upright full height), or
    None when the image cannot be read. JPEGs decode at reduced DCT scale (fast)."""
    from PIL import Image, ImageOps

    from dfx.images import open_formats, pixel_limit

    try:
        with Image.open(path, formats=open_formats()) as image:  # the decoders scans use, no others
            if image.size[0] * image.size[1] > pixel_limit():
                return None
            try:
                orientation = int(image.getexif().get(0x0112, 1) or 1)
            except Exception:
                orientation = 1
            width, height = image.size
            if orientation in (5, 6, 7, 8):
                width, height = height, width
            image.draft("RGB", (THUMB_SIDE, THUMB_SIDE))
            image.load()
            try:
                image = ImageOps.exif_transpose(image)
            except Exception:
                pass
            image = image.convert("RGB")
            image.thumbnail((THUMB_SIDE, THUMB_SIDE))
            out = io.BytesIO()
            image.save(out, "JPEG", quality=THUMB_QUALITY)
            return out.getvalue(), width, height
    except Exception:  # gone, unreadable, not an image: the card says so
        return None


def _thumb_name(path: str) -> str:
    try:
        info = os.stat(path)
        key = f"{os.path.abspath(path)}|{info.st_size}|{info.st_mtime_ns}"
    except OSError:
        key = os.path.abspath(path)
    return hashlib.sha256(key.encode()).hexdigest()[:24] + ".jpg"


# --- the page --------------------------------------------------------------------------------------


def write_report(results: str | os.PathLike, out: str | os.PathLike, *, thumbs: str = "embed",
                 bundle: str | os.PathLike | None = None, title: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Write the HTML page; returns a summary {"rows", "flagged", "by_decision", "out"}."""
    from tqdm import tqdm

    if thumbs not in ("embed", "folder"):
        raise ValueError(f"thumbs must be 'embed' or 'folder', not {thumbs!r}")
    rows = sorted(read_rows(results), key=sort_key)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    files_dir = out.with_name(out.stem + "_files")
    if thumbs == "folder":
        files_dir.mkdir(exist_ok=True)
    cards = []
    for row in tqdm(rows, desc="thumbnails", unit="img", disable=None if progress else True):
        src, size = None, None
        if thumbs == "folder":
            name = _thumb_name(row.path)
            meta = files_dir / (name + ".json")
            if meta.exists() and (files_dir / name).exists():  # made by an earlier report
                size = tuple(json.loads(meta.read_text()))
            else:
                made = thumbnail(row.path)
                if made:
                    (files_dir / name).write_bytes(made[0])
                    meta.write_text(json.dumps(made[1:]))
                    size = made[1:]
            if size:
                src = f"{files_dir.name}/{name}"
        else:
            made = thumbnail(row.path)
            if made:
                src = "data:image/jpeg;base64," + base64.b64encode(made[0]).decode()
                size = made[1:]
        cards.append(_card(row, src, size))
    page = _page(rows, cards, results, bundle, title)
    out.write_text(page, encoding="utf-8")
    counts = Counter(r.decision for r in rows)
    return {"rows": len(rows), "flagged": sum(r.flagged for r in rows), "by_decision": dict(counts), "out": str(out)}


def _card(row: Row, src: str | None, size: tuple | None) -> str:
    e = html.escape
    boxes = []
    if src and size and row.face_boxes:
        width, height = size
        for face in row.face_boxes:
            x0, y0, x1, y1 = _box(face)  # type: ignore[misc]
            kind = face.get("decision") if face.get("decision") == "fake" else "real"
            p = face.get("probability")
            label = f"{p:.2f}" if isinstance(p, (int, float)) else ""
            boxes.append(
                f'<div class="box {kind}" style="left:{100 * x0 / width:.2f}%;top:{100 * y0 / height:.2f}%;'
                f'width:{100 * (x1 - x0) / width:.2f}%;height:{100 * (y1 - y0) / height:.2f}%"><span>{e(label)}</span></div>')
    image = (f'<div class="thumb"><img src="{e(src)}" alt="">{"".join(boxes)}</div>' if src
             else '<div class="thumb missing">no preview</div>')
    prob = f"{row.probability:.3f}" if row.probability is not None else "–"
    facts = [f'<b class="d-{e(row.decision)}">{e(row.decision)}</b> p(fake) {prob}']
    if row.faces is not None:
        facts.append(f"{row.faces} face{'s' if row.faces != 1 else ''}")
    if row.verdict and row.verdict != row.decision:
        facts.append(f"verdict {e(row.verdict)}")
    if row.c2pa:
        facts.append(f"C2PA {e(row.c2pa)}" + (f" ({e(row.claim_generator)})" if row.claim_generator else ""))
    if row.error:
        facts.append(f'<span class="err">{e(row.error)}</span>')
    return (f'<div class="card{" flagged" if row.flagged else ""}" data-decision="{e(row.decision)}" data-folder="{e(row.folder)}">'
            f'{image}<div class="name" title="{e(row.path)}">{e(os.path.basename(row.path))}</div>'
            f'<div class="facts">{" · ".join(facts)}</div></div>')


def _page(rows: list[Row], cards: list[str], results: Any, bundle: Any, title: str | None) -> str:
    e = html.escape
    per_folder: dict[str, Counter] = defaultdict(Counter)
    for row in rows:
        per_folder[row.folder][row.decision] += 1
    table = ["<tr><th>folder</th><th>images</th>" + "".join(f"<th>{d}</th>" for d in DECISIONS) + "<th>fake rate</th></tr>"]
    for folder in sorted(per_folder):
        c = per_folder[folder]
        n = sum(c.values())
        scored = c["fake"] + c["real"]
        rate = f"{100 * c['fake'] / scored:.1f}%" if scored else "–"
        table.append(f"<tr><td>{e(folder)}</td><td>{n}</td>" + "".join(f"<td>{c[d]}</td>" for d in DECISIONS) + f"<td>{rate}</td></tr>")
    ran = Counter((r.backend, r.precision, r.model_sha256[:12]) for r in rows if r.backend)
    ran_text = "; ".join(f"{e(b)} {e(p)}, model {e(h)}… ({n} rows)" for (b, p, h), n in ran.most_common()) or "not recorded"
    bundle_text = _bundle_text(bundle, {r.model_sha256 for r in rows if r.model_sha256})
    c2pa = Counter(r.c2pa for r in rows if r.c2pa)
    c2pa_text = ", ".join(f"{e(k)}: {v}" for k, v in sorted(c2pa.items())) if c2pa else "not read"
    counts = Counter(r.decision for r in rows)
    filters = "".join(f'<label><input type="checkbox" class="fd" value="{d}" checked> {d} ({counts[d]})</label>' for d in DECISIONS)
    folders = "".join(f'<option value="{e(f)}">{e(f)}</option>' for f in sorted(per_folder))
    heading = title or f"dfx report: {os.path.basename(str(results))}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{e(heading)}</title>
<style>
body{{font:14px system-ui,sans-serif;margin:16px;color:#222;background:#fafafa}}
h1{{font-size:20px;margin:0 0 8px}} .meta{{color:#555;margin:2px 0}}
table{{border-collapse:collapse;margin:10px 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} td:first-child,th:first-child{{text-align:left}}
.filters{{margin:10px 0;display:flex;gap:14px;align-items:center;flex-wrap:wrap}}
.grid{{display:flex;flex-wrap:wrap;gap:10px}}
.card{{width:264px;border:4px solid #9a9;border-radius:6px;background:#fff;padding:4px;box-sizing:border-box}}
.card.flagged{{border-color:{FLAG_COLOUR}}}
.thumb{{position:relative;width:100%;line-height:0}} .thumb img{{width:100%;height:auto}}
.thumb.missing{{height:120px;line-height:120px;text-align:center;color:#888;background:#eee}}
.box{{position:absolute;border:3px solid;box-sizing:border-box}} .box.fake{{border-color:{FLAG_COLOUR}}} .box.real{{border-color:#0a0}}
.box span{{position:absolute;top:-16px;left:0;font:11px/14px sans-serif;background:#fff;padding:0 2px}}
.name{{font-weight:600;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;margin-top:4px}}
.facts{{font-size:12px;color:#444}} .d-fake{{color:{FLAG_COLOUR}}} .d-real{{color:#070}} .d-no_face{{color:#666}} .err{{color:#a40}}
</style></head><body>
<h1>{e(heading)}</h1>
<p class="meta">{len(rows)} images · {sum(r.flagged for r in rows)} flagged · results {e(str(results))}</p>
<p class="meta">Bundle: {bundle_text}</p>
<p class="meta">Ran: {ran_text}</p>
<p class="meta">C2PA: {c2pa_text}</p>
<table id="folders">{"".join(table)}</table>
<div class="filters">{filters}<label>folder <select id="folder"><option value="">all</option>{folders}</select></label>
<span id="shown"></span></div>
<div class="grid" id="grid">{"".join(cards)}</div>
<script>
function apply(){{
  const on=new Set([...document.querySelectorAll('.fd:checked')].map(x=>x.value));
  const folder=document.getElementById('folder').value; let n=0;
  for(const c of document.querySelectorAll('.card')){{
    const show=on.has(c.dataset.decision)&&(!folder||c.dataset.folder===folder);
    c.style.display=show?'':'none'; n+=show;
  }}
  document.getElementById('shown').textContent=n+' shown';
}}
document.querySelectorAll('.fd').forEach(x=>x.addEventListener('change',apply));
document.getElementById('folder').addEventListener('change',apply); apply();
</script></body></html>
"""


def _bundle_text(bundle: Any, hashes: set[str]) -> str:
    e = html.escape
    if not bundle:
        return "not given (pass --bundle to name it)"
    try:
        from dfx.bundle import Bundle

        opened = Bundle.open(bundle)
    except Exception as exc:  # the page is still useful without it
        return f"{e(str(bundle))} (cannot open: {e(str(exc))[:200]})"
    manifest = opened.manifest
    files = manifest.get("files", {})
    known = {entry.get("sha256") for entry in files.values() if isinstance(entry, dict)}
    match = "its model produced these rows" if hashes and hashes <= known else ("these rows came from another model" if hashes else "")
    arch = (manifest.get("training") or {}).get("architecture") or manifest.get("architecture") or ""
    return f"{e(str(bundle))}" + (f" ({e(str(arch))})" if arch else "") + (f": {match}" if match else "")


def register(sub) -> None:
    parser = sub.add_parser(
        "report", help="one self-contained HTML page of a scan's results, for a moderator",
        description="Write an HTML page from a `dfx scan` results file (.jsonl or .csv): thumbnails with the face boxes "
        "drawn (red: fake, green: real), flagged images first then by probability, filters by decision and source "
        "folder, per-folder rates, the backend and model that ran, and C2PA status. Opens from disk, no server.")
    parser.add_argument("results", metavar="RESULTS", help="results file written by `dfx scan --out`")
    parser.add_argument("--html", required=True, metavar="OUT", help="the page to write (e.g. report.html)")
    parser.add_argument("--thumbs", choices=("embed", "folder"), default="embed",
                        help="embed thumbnails in the page (default; one file) or write them once to OUT_files/ and reuse them")
    parser.add_argument("--bundle", metavar="BUNDLE", help="the bundle that ran, to name it on the page and check the rows' model hash")
    parser.add_argument("--title", help="page title (default: the results file name)")
    parser.set_defaults(handler=_run)


def _run(args) -> int:
    summary = write_report(args.results, args.html, thumbs=args.thumbs, bundle=args.bundle, title=args.title)
    print(f"{summary['out']}: {summary['rows']} images, {summary['flagged']} flagged, "
          + ", ".join(f"{k} {v}" for k, v in sorted(summary["by_decision"].items())))
    return 0
