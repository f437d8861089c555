"""report.html: one self-contained page an inspector can open, mail or archive (no server, no internet).

Summary per photo and per defect type, a sortable table of every defect with its measurements, and each photo
beside its overlay. Previews are JPEG files in ``previews/`` (written as each photo is done, so a resumed run has
them too) embedded as data URIs; CSS and the sorting script are inline. Written at the end of a run, and when a
signal stops it (then it says which photos are still missing).
"""

from __future__ import annotations

import base64
import html
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from defectseg.utils.io import atomic_write_text, atomic_writer

if TYPE_CHECKING:
    from defectseg.inference.summary import PredictionSummary

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1b1f24;background:#fff}
h1{margin:0 0 4px}h2{margin-top:32px;border-bottom:1px solid #d0d7de;padding-bottom:4px}
.meta{color:#57606a;font-size:14px}.warn{background:#fff4ce;border:1px solid #d4a72c;padding:8px 12px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:right}
th{background:#f6f8fa;cursor:pointer;user-select:none}th[data-order=asc]::after{content:" \\25B2"}
th[data-order=desc]::after{content:" \\25BC"}td.text,th.text{text-align:left}
.pair{display:flex;gap:12px;flex-wrap:wrap}.pair figure{margin:0;flex:1 1 420px;max-width:49%}
.pair img{width:100%;height:auto;border:1px solid #d0d7de}figcaption{font-size:13px;color:#57606a}
.failed td{color:#cf222e}
.swatch{display:inline-block;width:12px;height:12px;margin-right:6px;vertical-align:middle;border:1px solid #57606a}
"""
SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function (th) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0], ascending = th.dataset.order !== 'asc';
    var column = th.cellIndex;
    table.querySelectorAll('th').forEach(function (h) { delete h.dataset.order; });
    th.dataset.order = ascending ? 'asc' : 'desc';
    function key(row) {
      var cell = row.cells[column], text = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent;
      var number = parseFloat(text);
      return isNaN(number) ? [1, text.toLowerCase()] : [0, number];
    }
    Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x[0] !== y[0]) return x[0] - y[0];
      return (x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : 0) * (ascending ? 1 : -1);
    }).forEach(function (row) { body.appendChild(row); });
  });
});
window.addEventListener('load', function () {
  var images = Array.from(document.images);
  document.body.dataset.imagesTotal = images.length;
  document.body.dataset.imagesLoaded = images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
});
"""


def write_preview(path: Path, picture: np.ndarray, longest_side: int) -> None:
    """A JPEG of ``picture`` whose longest side is at most ``longest_side`` px (what report.html embeds)."""
    image = Image.fromarray(picture)
    image.thumbnail((longest_side, longest_side), Image.Resampling.LANCZOS)
    with atomic_writer(path, binary=True) as handle:
        image.save(handle, format="JPEG", quality=85)


def _data_uri(path: Path) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _number(value: Any, digits: int = 1) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float) and not value.is_integer():
        return f"{value:,.{digits}f}"
    return f"{int(value):,}" if isinstance(value, (int, float)) else html.escape(str(value))


def _cell(value: Any, digits: int = 1) -> str:
    raw = "" if value is None else str(value)
    return f'<td data-value="{html.escape(raw)}">{_number(value, digits)}</td>'


def _text(value: Any) -> str:
    return f'<td class="text">{html.escape(str(value))}</td>'


def _table(headers: list[tuple[str, bool]], rows: list[str], css: str = "sortable") -> str:
    head = "".join(
        f'<th class="text">{html.escape(h)}</th>' if text else f"<th>{html.escape(h)}</th>" for h, text in headers
    )
    return f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _anchor(record: dict[str, Any]) -> str:
    return "photo-" + "".join(c if c.isalnum() else "-" for c in str(record.get("name", record["image"])))


def type_summary(
    records: list[dict[str, Any]], classes: list[str] | None = None, linear: list[str] | None = None
) -> list[dict[str, Any]]:
    """Per defect type: photos it is in, count, total area and crack length (in mm only if every photo has a scale).

    A model with ``classes``: every class in the model's order, found or not; length only for its ``linear`` ones."""
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    photos: dict[str, set[str]] = defaultdict(set)
    for record in records:
        for defect in record.get("components") or []:
            by_type[str(defect.get("type", "defect"))].append(defect)
            photos[str(defect.get("type", "defect"))].add(record["image"])
    rows = []
    names = sorted(by_type) if classes is None else list(classes)
    for name in names:
        defects = by_type.get(name, [])
        thin = [d for d in defects if d.get("length_px") is not None]
        rows.append(
            {
                "type": name,
                "photos": len(photos[name]),
                "defects": len(defects),
                "area_px": sum(d["area_px"] for d in defects),
                "area_mm2": None
                if any(d.get("area_mm2") is None for d in defects)
                else round(sum(d["area_mm2"] for d in defects), 4),
                "length_px": round(sum(d["length_px"] for d in thin), 1),
                "length_mm": None
                if any(d.get("length_mm") is None for d in thin)
                else round(sum(d["length_mm"] for d in thin), 3),
            }
        )
        if classes is not None and name not in (linear or []):  # an area-only class has no length
            rows[-1]["length_px"] = rows[-1]["length_mm"] = None
    return rows


def _type_cell(name: str, colors: dict[str, list[int]]) -> str:
    """The type's name, after a swatch of its overlay colour when it has one (models with classes)."""
    color = colors.get(name)
    if not color:
        return _text(name)
    hex_color = "#" + "".join(f"{int(c):02x}" for c in color)
    return f'<td class="text"><span class="swatch" style="background:{hex_color}"></span>{html.escape(name)}</td>'


def _model_line(model: dict[str, Any]) -> str:
    """How pixels became defects: the threshold (binary), or the classes and how they are picked."""
    if not model.get("classes"):
        return f"threshold {model.get('threshold')} ({model.get('threshold_source')})"
    how = f"multilabel, thresholds {model.get('class_thresholds')}" if model.get("multilabel") else "softmax"
    return f"classes {', '.join(model['classes'])} ({how})"


def render(summary: PredictionSummary, title: str) -> str:
    records, failed = summary.ordered_records(), summary.ordered_failures()
    model, settings = summary.model, summary.settings
    with_mm = any(r.get("mm_per_px") for r in records)
    missing = len(summary.order) - len(records) - len(failed)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        '<p class="meta">'
        + " &middot; ".join(
            html.escape(str(x))
            for x in (
                f"{len(records)} of {len(summary.order)} photo(s) predicted",
                f"written {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
                f"model {model.get('source')} ({model.get('runtime')})",
                _model_line(model),
                f"scale {settings.get('scale')}",
                f"min defect area {settings.get('min_defect_area_px')}",
            )
        )
        + "</p>",
    ]
    if not summary.complete:
        parts.append(
            f'<p class="warn">Incomplete: the run was stopped; {missing} photo(s) are not in this report yet. '
            "Run the same predict command again to finish it.</p>"
        )
    if failed:
        parts.append(f'<p class="warn">{len(failed)} photo(s) could not be read (listed at the end).</p>')

    parts.append("<h2>Defect types</h2>")
    colors = model.get("class_colors") or {}
    type_rows = [
        "<tr>"
        + _type_cell(t["type"], colors)
        + "".join(_cell(t[k]) for k in ("photos", "defects", "area_px"))
        + (_cell(t["area_mm2"], 2) if with_mm else "")
        + _cell(t["length_px"])
        + (_cell(t["length_mm"], 2) if with_mm else "")
        + "</tr>"
        for t in type_summary(records, model.get("classes"), model.get("linear_classes"))
    ]
    type_headers = [("class" if colors else "type", True), ("photos", False), ("defects", False), ("area (px)", False)]
    type_headers += [("area (mm²)", False)] if with_mm else []
    length = "length" if colors else "crack length"
    type_headers += [(f"{length} (px)", False)] + ([(f"{length} (mm)", False)] if with_mm else [])
    parts.append(_table(type_headers, type_rows) if type_rows else "<p>No defect found.</p>")

    parts.append("<h2>Photos</h2>")
    photo_headers = [("photo", True), ("width", False), ("height", False), ("defects", False), ("area (%)", False)]
    photo_headers += [("largest (px)", False), ("crack length (px)", False), ("max width (px)", False)]
    photo_headers += [("mm per px", False), ("area (mm²)", False), ("crack length (mm)", False)] if with_mm else []
    photo_headers += [("seconds", False)]
    photo_rows = []
    for r in records:
        cells = f'<td class="text"><a href="#{_anchor(r)}">{html.escape(str(r.get("name", r["image"])))}</a></td>'
        cells += "".join(_cell(r.get(k)) for k in ("width", "height", "defects"))
        cells += _cell(r.get("defect_area_percent"), 3)
        cells += "".join(_cell(r.get(k)) for k in ("largest_defect_px", "total_length_px", "max_width_px"))
        if with_mm:
            cells += (
                _cell(r.get("mm_per_px"), 4) + _cell(r.get("defect_area_mm2"), 2) + _cell(r.get("total_length_mm"), 2)
            )
        cells += _cell(r.get("seconds"), 2)
        photo_rows.append(f"<tr>{cells}</tr>")
    photo_rows += [
        f'<tr class="failed"><td class="text">{html.escape(f["image"])}</td>'
        f'<td class="text" colspan="{len(photo_headers) - 1}">{html.escape(f["error"])}</td></tr>'
        for f in failed
    ]
    parts.append(_table(photo_headers, photo_rows))

    parts.append("<h2>Defects</h2>")
    defect_headers = [("photo", True), ("no.", False), ("type", True), ("area (px)", False), ("area (%)", False)]
    defect_headers += [("length (px)", False), ("mean width (px)", False), ("max width (px)", False)]
    defect_headers += (
        [("area (mm²)", False), ("length (mm)", False), ("mean width (mm)", False), ("max width (mm)", False)]
        if with_mm
        else []
    )
    defect_headers += [("box x, y, w, h", True)]
    defect_rows = []
    for r in records:
        for d in r.get("components") or []:
            cells = f'<td class="text"><a href="#{_anchor(r)}">{html.escape(str(r.get("name", r["image"])))}</a></td>'
            cells += _cell(d["id"]) + _text(d.get("type", "defect")) + _cell(d["area_px"]) + _cell(d["area_percent"], 3)
            cells += "".join(_cell(d.get(k)) for k in ("length_px", "mean_width_px", "max_width_px"))
            if with_mm:
                cells += "".join(_cell(d.get(k), 2) for k in ("area_mm2", "length_mm", "mean_width_mm", "max_width_mm"))
            cells += _text(", ".join(str(v) for v in d["bbox"]))
            defect_rows.append(f'<tr class="defect-row">{cells}</tr>')
    parts.append(_table(defect_headers, defect_rows) if defect_rows else "<p>No defect found.</p>")

    parts.append("<h2>Photos and overlays</h2>")
    for r in records:
        name = html.escape(str(r.get("name", r["image"])))
        scale = f"mm per px {r['mm_per_px']:g}" if r.get("mm_per_px") else "no mm scale"
        parts.append(
            f'<section id="{_anchor(r)}"><h3>{name}</h3><p class="meta">{html.escape(r["image"])} &middot; '
            f"{r['width']}x{r['height']} px &middot; {r['defects']} defect(s) &middot; {scale} &middot; "
            f"seen at scale {r.get('scale_x', 1):g} x {r.get('scale_y', 1):g} &middot; {r.get('seconds', '')} s</p>"
        )
        figures = []
        for kind, label, full in (("photo", "photo", None), ("overlay", "overlay", r.get("overlay"))):
            preview = r.get(f"preview_{kind}")
            if preview and (summary.output_dir / preview).is_file():
                link = f' &middot; <a href="{html.escape(full)}">full size</a>' if full else ""
                figures.append(
                    f'<figure><img alt="{label} of {name}" src="{_data_uri(summary.output_dir / preview)}">'
                    f"<figcaption>{label}{link}</figcaption></figure>"
                )
        parts.append(f'<div class="pair">{"".join(figures)}</div></section>')
    if failed:
        parts.append("<h2>Photos that could not be read</h2><ul>")
        parts += [f"<li>{html.escape(f['image'])}: {html.escape(f['error'])}</li>" for f in failed]
        parts.append("</ul>")
    parts.append(f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(parts)


def write_report(summary: PredictionSummary, title: str = "Defect inspection") -> Path:
    """OUTPUT/report.html, atomically."""
    path = summary.output_dir / "report.html"
    atomic_write_text(path, render(summary, title))
    return path
