"""Checkpoint files that can never run code, and that say so when they are damaged.

A checkpoint is a ``torch.save`` of a dict holding only tensors and plain Python values (dicts,
lists, str, int, float, bool, None), so ``torch.load(weights_only=True)`` reads it. Configs are
stored as dicts of their frozen dataclasses and rebuilt on load. Since format 2 every checkpoint also
holds a SHA-256 :func:`content_checksum` of everything else in it, written on save and verified on
load, so that changed bytes (a bad disk, an interrupted copy) are found instead of mapped with.

Every way a file can be wrong gets its own error (all ``ValueError``), naming the file, what is wrong
with it and what to do: :class:`DamagedFileError` (truncated, unreadable, or contents that do not
match the checksum), :class:`UnsafeFileError` (loading it would run code from the file),
:class:`ForeignFileError` (a file of another program, or another kind of checkpoint) and
:class:`NewerFormatError` (written by a newer py4dstem-transformer).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import pickletools
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .._version import __version__

__all__ = ["FORMAT", "FORMAT_VERSION", "needed_version", "save_checkpoint", "load_checkpoint", "content_checksum", "DamagedFileError",
           "UnsafeFileError", "ForeignFileError", "NewerFormatError", "pack_history", "unpack_history"]

FORMAT = "py4dstem-transformer"
#: The newest format this version reads and writes. 2: with a content checksum (format-1 files, without one, still
#: load, unverified); 3: a model holding experts (``expert_configs``), which versions before it could not rebuild.
#: Each file is written with the oldest format that holds it (:func:`needed_version`), so that older versions of
#: the package still read what they can and refuse the rest with :class:`NewerFormatError`.
FORMAT_VERSION = 3
_AGAIN = "copy or download it again, or write it again (model.save / TrainingSet.save)"


class DamagedFileError(ValueError):
    """The file is truncated, unreadable or its contents do not match the checksum written with it."""


class UnsafeFileError(ValueError):
    """Loading the file would run code from it."""


class ForeignFileError(ValueError):
    """The file was not written by py4dstem-transformer, or holds another kind of its files."""


class NewerFormatError(ValueError):
    """The file was written by a newer py4dstem-transformer."""


def content_checksum(payload: dict) -> str:
    """SHA-256 (hex) of a dict of tensors, arrays and plain values, independent of key order and of how
    tuples, lists and numpy/Python scalars happen to be typed; the key ``"checksum"`` is left out."""
    h = hashlib.sha256()
    _digest({k: v for k, v in payload.items() if k != "checksum"}, h)
    return h.hexdigest()


def _digest(value, h) -> None:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:  # numpy has no bf16: hash its bits
            value = value.view(torch.int16)
        value = value.numpy()
    if isinstance(value, np.ndarray):
        a = np.ascontiguousarray(value)
        h.update(f"A{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    elif isinstance(value, dict):
        h.update(b"D")
        for key in sorted(value, key=str):
            h.update(json.dumps(str(key)).encode())
            _digest(value[key], h)
        h.update(b"E")
    elif isinstance(value, (list, tuple)):
        h.update(b"L")
        for v in value:
            _digest(v, h)
        h.update(b"E")
    else:  # plain scalars, numpy scalars, None
        v = value.item() if isinstance(value, np.generic) else value
        h.update(("S" + json.dumps(v)).encode())


def pack_history(history: Optional[dict]) -> Optional[dict]:
    """A training history as it is written: each column of plain Python ints (or of plain floats) as a 1-D int64
    (float64) tensor, every other value as it is. A model trained 26,605 steps holds ~80,000 numbers there;
    unpickled and hashed one by one they took ~0.2 s of every model load, as three tensors ~1 ms.
    :func:`unpack_history` gives back the same lists (float64 holds a Python float exactly)."""
    if history is None:
        return None
    return {key: _column(value) for key, value in history.items()}


def _column(value):
    if isinstance(value, list) and value:
        kinds = {type(v) for v in value}
        if kinds == {int}:
            return torch.tensor(value, dtype=torch.int64)
        if kinds == {float}:
            return torch.tensor(value, dtype=torch.float64)
    return value


def unpack_history(history: Optional[dict]) -> Optional[dict]:
    """The inverse of :func:`pack_history`: 1-D tensors back to lists of Python numbers (files written before it
    hold lists already)."""
    if history is None:
        return None
    return {key: value.tolist() if isinstance(value, torch.Tensor) and value.ndim == 1 else value
            for key, value in history.items()}


def needed_version(payload: dict) -> int:
    """The oldest format that holds ``payload``: 3 for a model with experts, else 2."""
    return 3 if payload.get("expert_configs") else 2


def save_checkpoint(path, kind: str, **payload) -> None:
    """Atomically write ``payload`` (tensors and plain values only) as a ``kind`` checkpoint, with its checksum."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"format": FORMAT, "format_version": needed_version(payload), "kind": kind, "package_version": __version__}
    data.update(payload)
    data["checksum"] = content_checksum(data)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(data, tmp)
    os.replace(tmp, path)  # a run killed mid-write never leaves a truncated checkpoint


def load_checkpoint(path, kind: str, map_location="cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` with ``weights_only=True`` and verify it.

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    DamagedFileError, UnsafeFileError, ForeignFileError, NewerFormatError (all ``ValueError``)
        As their names say; each message names the file and what to do.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no model or checkpoint file at {path}")
    data = _read(path, map_location)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ForeignFileError(f"{path} is not a py4dstem-transformer checkpoint (a torch file of another program); "
                               f"pass a model file written by OrientationModel.save or train()")
    if data.get("format_version", 0) > FORMAT_VERSION:
        raise NewerFormatError(f"{path} was written by a newer py4dstem-transformer ({data.get('package_version')}, "
                               f"file format {data.get('format_version')}); upgrade this one ({__version__}, format "
                               f"{FORMAT_VERSION}): pip install -U py4dstem-transformer")
    if data.get("format_version", 0) >= 2 and data.get("checksum") != content_checksum(data):
        raise DamagedFileError(f"{path} is damaged: its contents do not match the checksum written when it was "
                               f"saved (some bytes changed since); {_AGAIN}")
    if data.get("kind") != kind:
        raise ForeignFileError(f"{path} holds a {data.get('kind')!r} checkpoint, expected {kind!r}")
    return data


def _read(path: Path, map_location):
    """``torch.load(weights_only=True)``, with torch's errors turned into ours. A torch archive's records are
    checked against their CRC-32 first (torch does not check them)."""
    archive = zipfile.is_zipfile(path)
    if archive:
        try:
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
        except Exception as err:  # a damaged directory: BadZipFile, OSError, ...
            raise DamagedFileError(f"{path} is damaged: its archive cannot be read ({err}); {_AGAIN}") from err
        if bad is not None:
            raise DamagedFileError(f"{path} is damaged: its record {bad!r} fails its CRC check; {_AGAIN}")
    elif _runs_code(path):
        raise UnsafeFileError(_unsafe(path))
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for damaged files
        if isinstance(err, pickle.UnpicklingError) and "unsupported global" in str(err).lower():
            raise UnsafeFileError(_unsafe(path)) from err
        raise DamagedFileError(f"{path} is damaged: torch could not read its contents ({err}); {_AGAIN}") from err


def _runs_code(path: Path) -> bool:
    """Whether a file that is no torch archive is a pickle that imports or calls something (read, never run);
    anything else that is no archive is damaged."""
    try:
        with open(path, "rb") as f:
            if f.read(1) != b"\x80":  # every pickle since protocol 2 starts with PROTO
                raise ValueError("no pickle")
            f.seek(0)
            ops = {op.name for op, _, _ in pickletools.genops(f)}
    except Exception as err:
        raise DamagedFileError(f"{path} is damaged or not a model file: it is not a complete torch archive "
                               f"(truncated, overwritten or another kind of file); {_AGAIN}") from err
    return bool(ops & {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX"})


def _unsafe(path) -> str:
    return (f"refusing to load {path}: it is not a plain-weights file and loading it would run code from the file. "
            f"Only files written by py4dstem-transformer are accepted; never load this one with weights_only=False "
            f"unless you wrote it yourself")
