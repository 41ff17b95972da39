"""A model's crystals: rebuilt from, and checked against, the identity stored in its metadata."""

from __future__ import annotations

import numpy as np

__all__ = ["phase_metadata", "crystals_from_metadata", "crystal_from_metadata"]


def phase_metadata(metadata: dict) -> list:
    """Per-phase entries of a model's metadata (one for a single-phase model)."""
    return list(metadata["phases"]) if "phases" in metadata else [metadata]


def crystals_from_metadata(metadata: dict) -> list:
    """The py4DSTEM Crystals a model was trained for (one per phase), rebuilt from its metadata."""
    return [crystal_from_metadata(p) for p in phase_metadata(metadata)]


def crystal_from_metadata(metadata: dict):
    """The py4DSTEM Crystal a model was trained for, rebuilt from its metadata."""
    from py4DSTEM.process.diffraction import Crystal

    c = metadata["crystal"]
    return Crystal(np.asarray(c["positions"]), np.asarray(c["numbers"]), np.asarray(c["lat_real"]),
                   occupancy=np.asarray(c["occupancy"]) if c.get("occupancy") is not None else None)
