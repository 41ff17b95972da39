"""Checkpoint files that can never run code.

A checkpoint is a ``torch.save`` of a dict holding only tensors and plain Python values (dicts,
lists, str, int, float, bool, None), so ``torch.load(weights_only=True)`` reads it. Configs are
stored as dicts of their frozen dataclasses and rebuilt on load. A file that would need pickled
code is refused with a clear error instead of being executed.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

from .._version import __version__

__all__ = ["FORMAT", "save_checkpoint", "load_checkpoint"]

FORMAT = "py4dstem-transformer"
FORMAT_VERSION = 1


def save_checkpoint(path, kind: str, **payload) -> None:
    """Atomically write ``payload`` (tensors and plain values only) as a ``kind`` checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": kind, "package_version": __version__}
    data.update(payload)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(data, tmp)
    os.replace(tmp, path)  # a run killed mid-write never leaves a truncated checkpoint


def load_checkpoint(path, kind: str, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` with ``weights_only=True``.

    Raises
    ------
    ValueError
        If the file needs arbitrary code to load, is not a py4dstem-transformer file, or holds
        another kind of checkpoint.
    """
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(
            f"refusing to load {path}: it is not a plain-weights file and loading it would run "
            "code from the file. Only checkpoints written by py4dstem-transformer are accepted."
        ) from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path} is not a py4dstem-transformer checkpoint")
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{path} was written by a newer py4dstem-transformer ({data.get('package_version')}); "
            f"upgrade this one ({__version__})"
        )
    if data.get("kind") != kind:
        raise ValueError(f"{path} holds a {data.get('kind')!r} checkpoint, expected {kind!r}")
    return data
