"""A PyTorch view of a :class:`~fer_core.data.datasets.FaceDataset` that survives bad files.

An unreadable image yields ``None`` instead of raising; :func:`collate_skip_bad` drops those
items from the batch, and :class:`BadFileLog` gathers the skipped files so that ONE warning
lists them at the end of a pass (:meth:`TorchFaceDataset.warn_skipped`). The log is a small
append-only file, so files skipped inside DataLoader worker processes are reported too.
"""

from __future__ import annotations

import os
import tempfile
import uuid
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from fer_core.data.datasets import FaceDataset, warn_skipped
from fer_core.errors import ImageDecodeError
from fer_core.labels import NUM_CLASSES


def _remove_log(path: Path, owner_pid: int) -> None:
    if os.getpid() == owner_pid:
        path.unlink(missing_ok=True)


class BadFileLog:
    """Files skipped because they could not be read, shared by the process that made the log
    and its DataLoader workers (appends to a temporary file, created on the first entry)."""

    def __init__(self) -> None:
        self.path = Path(tempfile.gettempdir()) / f"fer_core-skipped-{uuid.uuid4().hex}.log"
        weakref.finalize(self, _remove_log, self.path, os.getpid())

    def add(self, source: str, reason: str) -> None:
        """Record that ``source`` was skipped, and why (one line, safe from several processes)."""
        line = f"{source}\t{' '.join(reason.split())}\n"
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line)

    def entries(self) -> list[str]:
        """``"source: reason"`` for each distinct skipped file, in the order first seen."""
        if not self.path.exists():
            return []
        seen: dict[str, str] = {}
        for line in self.path.read_text(encoding="utf-8").splitlines():
            source, _, reason = line.partition("\t")
            seen.setdefault(source, reason)
        return [f"{source}: {reason}" for source, reason in seen.items()]

    def warn_skipped(self) -> list[str]:
        """Issue one warning listing the skipped files (if any), clear the log, return the list."""
        entries = self.entries()
        warn_skipped("unreadable images", entries)
        self.path.unlink(missing_ok=True)
        return entries


class TorchFaceDataset(Dataset):
    """Items ``{"image": transform(rgb), "label": int, "soft_label": float tensor (8),
    "index": int}``; ``None`` for an image that cannot be read (logged in ``bad_files``).

    ``soft_label`` is the sample's vote distribution when it has one, else the one-hot of its
    label, or all zeros when the label is unknown (-1).
    """

    def __init__(self, dataset: FaceDataset, transform: Callable[[np.ndarray], torch.Tensor]) -> None:
        self.dataset = dataset
        self.transform = transform
        self.bad_files = BadFileLog()

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        sample = self.dataset[index]
        try:
            pixels = self.dataset.read(sample)
        except ImageDecodeError as exc:
            self.bad_files.add(sample.source, str(exc))
            return None
        if sample.soft_label is not None:
            soft = torch.tensor(sample.soft_label, dtype=torch.float32)
        else:
            soft = torch.zeros(NUM_CLASSES, dtype=torch.float32)
            if sample.label >= 0:
                soft[sample.label] = 1.0
        return {"image": self.transform(pixels), "label": sample.label, "soft_label": soft, "index": int(index)}

    def warn_skipped(self) -> list[str]:
        """At the end of a pass: one warning listing the files skipped in it; returns them."""
        return self.bad_files.warn_skipped()


def collate_skip_bad(batch: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """``default_collate`` over the items that are not ``None``; ``None`` if every item was bad."""
    items = [item for item in batch if item is not None]
    return default_collate(items) if items else None
