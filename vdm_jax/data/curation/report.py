"""`OUT/report.html` of a curation run: counts, rejection reasons, every score's histogram with its thresholds, and
thumbnails of kept and rejected clips, in one self-contained file (images embedded as data URLs).

    html = report_html(report, lines, thumbnails, thresholds)
"""
from __future__ import annotations

import base64
import collections
import html
import io as std_io
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from vdm_jax.data.curation import clips

SCORES = ("motion", "camera", "object", "static", "sharpness", "brightness", "contrast", "text")
MAX_THUMBNAILS = 24  # per group (kept, rejected)


def thumbnail(frame: np.ndarray, height: int = 72) -> str:
  """A uint8 [H, W, 3] frame as a base64 PNG `height` pixels high."""
  image = Image.fromarray(frame)
  image = image.resize((max(1, round(image.width * height / image.height)), height), Image.BILINEAR)
  buffer = std_io.BytesIO()
  image.save(buffer, format="PNG")
  return base64.b64encode(buffer.getvalue()).decode()


def _histograms(lines: Sequence[Mapping[str, Any]], thresholds: Mapping[str, float]) -> str:
  """One PNG (base64) with a histogram per score over the scored clips, the thresholds drawn as red lines."""
  import matplotlib  # pylint: disable=g-import-not-at-top  (only for the report)
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  scored = [line for line in lines if line.get("motion") is not None]
  fig, axes = plt.subplots(1, len(SCORES), figsize=(3 * len(SCORES), 2.6))
  for ax, name in zip(axes, SCORES):
    values = [line[name] for line in scored]
    if values:
      ax.hist(values, bins=20, color="tab:blue")
    for score, bound, _ in clips.RULES:
      if score == name:
        ax.axvline(thresholds[bound], color="tab:red")
    ax.set_title(name, fontsize=9)
  fig.tight_layout()
  buffer = std_io.BytesIO()
  fig.savefig(buffer, format="png", dpi=80)
  plt.close(fig)
  return base64.b64encode(buffer.getvalue()).decode()


def _gallery(lines, thumbnails, kept: bool) -> str:
  cells = []
  for line, thumb in zip(lines, thumbnails):
    if line["kept"] != kept or len(cells) >= MAX_THUMBNAILS:
      continue
    label = f"{line['source']} shot {line['shot']} [{line['start']}, {line['end']})"
    if line["reasons"]:
      label += ": " + ", ".join(line["reasons"])
    cells.append(f'<figure><img src="data:image/png;base64,{thumb}"><figcaption>{html.escape(label)}'
                 "</figcaption></figure>")
  return "".join(cells) or "<p>none</p>"


def report_html(report: Mapping[str, Any], lines: Sequence[Mapping[str, Any]], thumbnails: Sequence[str],
                thresholds: Mapping[str, float]) -> str:
  """The HTML page of a curation run: `report` (report.json), `lines` (clips.jsonl), one base64 thumbnail per line
  (its clip's middle frame) and the config's thresholds."""
  reasons = collections.Counter(reason for line in lines for reason in line["reasons"])
  rows = "".join(f"<tr><td>{html.escape(r)}</td><td>{n}</td></tr>" for r, n in sorted(reasons.items()))
  unreadable = "".join(f"<li>{html.escape(u['source'])}: {html.escape(u['error'])}</li>"
                       for u in report["unreadable"])
  counts = ", ".join(f"{k} {report[k]}" for k in ("files", "shots", "clips", "kept"))
  return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Curation report</title>
<style>body{{font-family:sans-serif}} figure{{display:inline-block;margin:4px;font-size:11px;max-width:220px}}
td{{padding:2px 8px}}</style></head><body>
<h1>Curation report</h1>
<p>{counts}; {len(report["unreadable"])} unreadable; {report["seconds"]:.1f} s.</p>
<h2>Rejections by reason</h2><table>{rows or "<tr><td>none</td></tr>"}</table>
<h2>Scores (red: thresholds)</h2><img src="data:image/png;base64,{_histograms(lines, thresholds)}">
<h2>Kept clips</h2>{_gallery(lines, thumbnails, True)}
<h2>Rejected clips</h2>{_gallery(lines, thumbnails, False)}
<h2>Unreadable files</h2><ul>{unreadable or "<li>none</li>"}</ul>
</body></html>
"""
