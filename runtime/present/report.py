"""maskclip-run --report: one self-contained HTML page for a run, made from its records.

Everything is inline (CSS, a few lines of JS, thumbnails as JPEG data URIs), so the page opens from
a mail attachment or a USB stick with no network. It is built from the records alone (the JSON
lines), so a --resume run reports the earlier answers too. A thumbnail is the photo part of the
image's overlay PNG (heat map and outline, without the legend) when one was written, else the image
itself; a file that cannot be read gets none.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections import Counter
from datetime import datetime, timezone

from PIL import Image

from ..contract.verdict_calibration import VERDICTS
from ..kernel.atomic import atomic_path
from ..kernel.preprocess import ImageLoadError, decode_image
from .outputs import RECORD_FIELDS, overlay_photo_size

THUMBNAIL_SIDE = 160  # px, long side: about 5 kB a JPEG, so 1000 images stay a 5 MB page
IDENTITY_FIELDS = ("model_id", "precision", "backend", "self_check", "operating_point", "threshold")
# Per image: every record field but the run-wide identity (shown once) and the error (its own table).
DETAIL_FIELDS = tuple(
    f for f in RECORD_FIELDS if f not in ("backend", "model_id", "precision", "self_check", "mask_computed", "error")
)

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #222; }
h1 { font-size: 1.4rem; margin: 0 0 .5rem; }
#identity { color: #555; margin-bottom: 1rem; }
#identity b { color: #222; }
#counts { display: flex; gap: .75rem; margin-bottom: 1rem; }
.count { border-radius: 6px; padding: .4rem .9rem; background: #eee; }
.count b { display: block; font-size: 1.4rem; }
.count.real { background: #e3f1e4; } .count.uncertain { background: #fcefd2; }
.count.fake { background: #f8dcdc; } .count.failed { background: #ddd; }
table { border-collapse: collapse; width: 100%; }
th, td { border-bottom: 1px solid #ddd; padding: .3rem .5rem; text-align: left; vertical-align: top; }
th.sortable { cursor: pointer; color: #1565c0; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td img { max-width: 160px; max-height: 160px; }
.verdict { font-weight: bold; }
.verdict.real { color: #2e7d32; } .verdict.uncertain { color: #a06d00; } .verdict.fake { color: #b71c1c; }
details dl { display: grid; grid-template-columns: max-content auto; gap: 0 .8rem; margin: .3rem 0; }
details dt { color: #666; } details dd { margin: 0; word-break: break-all; }
#failures td { color: #b71c1c; }
#demo-banner { background: #fcefd2; border: 1px solid #a06d00; border-radius: 6px; padding: .5rem .9rem;
  margin-bottom: 1rem; font-weight: bold; }
"""

# Sort by probability: the first click on the header sorts most suspicious first, each next one reverses.
_SCRIPT = """
const header = document.getElementById("sort-prob");
header.addEventListener("click", () => {
  const body = document.querySelector("#results tbody");
  const descending = header.dataset.order !== "desc";
  const rows = [...body.rows].sort((a, b) => (a.dataset.prob - b.dataset.prob) * (descending ? -1 : 1));
  rows.forEach(row => body.appendChild(row));
  header.dataset.order = descending ? "desc" : "asc";
  header.textContent = "P(generated) " + (descending ? "\\u25bc" : "\\u25b2");
});
"""


def write_report(records: list[dict], path: str | os.PathLike) -> None:
    """Write the HTML report of these records to path, atomically (temp file + rename)."""
    page = report_html(records)
    with atomic_path(path) as temp:
        temp.write_bytes(page.encode("utf-8", "backslashreplace"))


def report_html(records: list[dict]) -> str:
    answered = [r for r in records if "error" not in r]
    failed = [r for r in records if "error" in r]
    verdicts = Counter(r.get("verdict") for r in answered)
    counts = [("images", len(records)), *((v, verdicts[v]) for v in VERDICTS), ("failed", len(failed))]
    count_cards = "".join(
        f'<div class="count {name}" id="count-{name}" data-count="{n}"><b>{n}</b>{name}</div>' for name, n in counts
    )
    rows = "".join(_result_row(r) for r in answered)
    failures = "".join(f"<tr><td>{_text(r['path'])}</td><td>{_text(r['error'])}</td></tr>" for r in failed)
    failure_table = (
        f'<h2>Failed</h2><table id="failures"><thead><tr><th>file</th><th>error</th></tr></thead>'
        f"<tbody>{failures}</tbody></table>"
        if failed
        else ""
    )
    written = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>maskclip report</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{_STYLE}</style></head>
<body>
<h1>maskclip report</h1>
{_demo_banner(answered)}
<div id="identity">{_identity(answered)} &middot; written {written}</div>
<div id="counts">{count_cards}</div>
<table id="results"><thead><tr><th>overlay</th><th>file</th><th>verdict</th>
<th class="sortable" id="sort-prob" title="sort by probability">P(generated)</th><th>calibrated</th>
<th>mask area</th><th>ms</th></tr></thead>
<tbody>{rows}</tbody></table>
{failure_table}
<script>{_SCRIPT}</script>
</body></html>
"""


def _demo_banner(answered: list[dict]) -> str:
    """Answers of a demonstration model say so above everything else."""
    demo = sum(1 for r in answered if r.get("demo") is True)
    if not demo:
        return ""
    return (
        f'<div id="demo-banner" data-count="{demo}">{demo} of these answers come from a demonstration model '
        "trained on synthetic edits: they show how the tool works and are not evidence about these images.</div>"
    )


def _identity(answered: list[dict]) -> str:
    """The model and artifact that made the answers (every distinct value, should a table mix them)."""
    parts = []
    for field in IDENTITY_FIELDS:
        values = sorted({str(r.get(field)) for r in answered if r.get(field) is not None})
        if values:
            parts.append(f'{field} <b id="identity-{field}">{_text(", ".join(values))}</b>')
    return " &middot; ".join(parts) or "no answered images"


def _result_row(record: dict) -> str:
    """One answered image; every value comes from a file that may have been edited, so each is escaped."""
    verdict = record.get("verdict")
    details = "".join(
        f"<dt>{field}</dt><dd>{_text(record[field])}</dd>" for field in DETAIL_FIELDS if record.get(field) is not None
    )
    thumbnail = _thumbnail_uri(str(record.get("path")), record.get("overlay"))
    image = f'<img alt="overlay" src="{thumbnail}">' if thumbnail else "no preview"
    fraction = record.get("mask_fraction")  # None: no mask computed (--masks-for fake, judged real)
    area = f"{100 * fraction:.1f} %" if _is_number(fraction) else "no mask"
    prob = record.get("fake_prob")
    return (
        f'<tr data-prob="{prob if _is_number(prob) else 0}"><td>{image}</td>'
        f"<td><details><summary>{_text(os.path.basename(str(record.get('path'))))}</summary><dl>{details}</dl>"
        f"</details></td>"
        f'<td class="verdict {verdict if verdict in VERDICTS else ""}">{_text(verdict)}</td>'
        f'<td class="num prob">{_number(prob)}</td>'
        f'<td class="num">{_number(record.get("calibrated_prob"))}</td>'
        f'<td class="num">{area}</td>'
        f'<td class="num">{_text(record.get("ms", ""))}</td></tr>'
    )


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(value) -> str:
    """A probability to 3 decimals; anything else (None, an edited record's text) as escaped text."""
    if _is_number(value):
        return f"{value:.3f}"
    return "" if value is None else _text(value)


def _thumbnail_uri(path: str, overlay: str | None) -> str | None:
    """A small JPEG data URI: the photo block of the image's overlay when there is one, else the image."""
    try:
        if overlay and os.path.isfile(overlay):
            with Image.open(overlay) as png:
                image = png.convert("RGB").crop((0, 0, *overlay_photo_size(png)))
        else:
            image = decode_image(path, reduce_to=THUMBNAIL_SIDE).image
    except (ImageLoadError, OSError, ValueError):
        return None
    image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _text(value) -> str:
    return html.escape(str(value))
