"""tfds array_record sources whose errors name the dataset, the split and the file, and the checks behind them.

tfds reads array_record files lazily, so a damaged shard used to surface mid-training as a bare Riegeli error
("Invalid Riegeli/records file: ... Failed to read RiegeliPostscript") with no file name, and a version folder
without `dataset_info.json` as "Unknown split 'train'; allowed values: []". `checked_source` opens every shard of
the split when it is loaded (a footer read per file) and wraps the source so a read that fails later still names
its record and file.
"""
from __future__ import annotations

import bisect
import os
from typing import Any


class DatasetError(ValueError):
  """A prepared dataset folder is incomplete or damaged; the message names dataset, split, file and the fix."""


def rebuild_hint(folder) -> str:
  return f"delete the folder {os.fspath(folder)} and run again to rebuild it (it is built or downloaded anew)"


def check_info(name: str, folder) -> None:
  """A version folder that exists without `dataset_info.json` (an interrupted copy, a deleted file) is incomplete:
  tfds would read it as a dataset with no splits."""
  folder = os.fspath(folder)
  if os.path.isdir(folder) and not os.path.exists(os.path.join(folder, "dataset_info.json")):
    raise DatasetError(f"{name} in {folder} is incomplete: it has no dataset_info.json, so tfds sees no splits; "
                       + rebuild_hint(folder) + ".")


def checked_source(source, name: str, split: str, folder) -> "NamedSource":
  """`source` (a tfds ArrayRecordDataSource of `split`) after checking that each of its files exists and holds the
  number of records `dataset_info.json` says; raises DatasetError naming the file otherwise."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  instructions = source.dataset_info.splits[split].file_instructions
  for instruction in instructions:
    path = os.fspath(instruction.filename)
    where = f"{name}, split {split!r}, file {path}"
    if not os.path.exists(path):
      raise DatasetError(f"{where} is missing; " + rebuild_hint(folder) + ".")
    try:
      reader = array_record_module.ArrayRecordReader(path)
      try:
        count = reader.num_records()
      finally:
        reader.close()
    except RuntimeError as e:  # Riegeli: a truncated or overwritten file
      raise DatasetError(f"{where} is damaged ({e}); " + rebuild_hint(folder) + ".") from None
    if count != instruction.examples_in_shard:
      raise DatasetError(f"{where} holds {count} records where dataset_info.json says "
                         f"{instruction.examples_in_shard} (truncated or replaced); " + rebuild_hint(folder) + ".")
  return NamedSource(source, f"{name}, split {split!r}", instructions, folder)


class NamedSource:
  """A random-access source (len, [index]) whose read errors name the record, its file and the fix. The only cost
  on a good read is a method call and a try block."""

  def __init__(self, source, where: str, instructions, folder):
    self.source, self.where, self.folder = source, where, os.fspath(folder)
    self._files = [os.fspath(i.filename) for i in instructions]
    self._starts = [0]
    for instruction in instructions[:-1]:
      self._starts.append(self._starts[-1] + instruction.take)

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index) -> Any:
    try:
      return self.source[index]
    except (RuntimeError, OSError, ValueError) as e:  # Riegeli, file system and record decoding errors
      file = self._files[bisect.bisect_right(self._starts, int(index)) - 1] if self._files else "?"
      raise DatasetError(f"cannot read record {index} of {self.where} from file {file}: {type(e).__name__}: {e}; "
                         + rebuild_hint(self.folder) + ".") from None

  def __getattr__(self, name):
    if name == "source":  # not set yet (unpickling): no recursion through __getattr__
      raise AttributeError(name)
    return getattr(self.source, name)

  def __repr__(self) -> str:
    return f"NamedSource({self.where}, {len(self)} records)"
