"""Captions for the files of a video folder: a sidecar next to each file, or a manifest for the whole folder.

    captions = read_manifest(path)          # {relative path: caption} from a .csv (path, caption) or .jsonl
    caption = sidecar_caption(video_path)   # <stem>.txt, or <stem>.json's "caption" / "text"; None if neither
"""
from __future__ import annotations

import csv
import json
import os


def sidecar_caption(video_path: str) -> str | None:
  """The caption in `<stem>.txt` (its whole text) or `<stem>.json` (key "caption" or "text") beside the video."""
  stem = os.path.splitext(video_path)[0]
  if os.path.isfile(stem + ".txt"):
    with open(stem + ".txt", encoding="utf-8") as f:
      return f.read().strip() or None
  if os.path.isfile(stem + ".json"):
    with open(stem + ".json", encoding="utf-8") as f:
      try:
        data = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f"caption sidecar {stem + '.json'!r} is not JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("caption", data.get("text")), str):
      raise ValueError(f"caption sidecar {stem + '.json'!r}: expected an object with a string 'caption' or 'text'.")
    return data.get("caption", data.get("text"))
  return None


def read_manifest(path: str) -> dict[str, str]:
  """{path relative to the input folder: caption} from a CSV with columns `path` and `caption`, or a JSONL of
  {"path": ..., "caption": ...} lines."""
  out = {}
  with open(path, encoding="utf-8", newline="") as f:
    if path.endswith(".jsonl"):
      rows = []
      for number, line in enumerate(f, 1):
        if line.strip():
          try:
            rows.append(json.loads(line))
          except json.JSONDecodeError as e:
            raise ValueError(f"manifest {path!r} line {number} is not JSON: {e}") from None
    elif path.endswith(".csv"):
      rows = list(csv.DictReader(f))
    else:
      raise ValueError(f"manifest {path!r}: expected a .csv (columns path, caption) or a .jsonl.")
  for number, row in enumerate(rows, 1):
    if not isinstance(row, dict) or not isinstance(row.get("path"), str) or not isinstance(row.get("caption"), str):
      raise ValueError(f"manifest {path!r} row {number}: expected string 'path' and 'caption', got {row!r}.")
    out[os.path.normpath(row["path"])] = row["caption"]
  return out
