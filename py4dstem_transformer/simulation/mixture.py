"""One crystal under several experiments, in one training set: :func:`mix_training_sets`.

Real data differ from any one simulation setting: the beams a thick or thin foil excites, Bloch-wave or
nearly kinematic intensities, precession. A network trained on one setting reads the others less well
(issue 18, docs/benchmarks.md "Robustness"). So simulate the crystal under several settings (each a
:class:`~.training_set.TrainingSet` from ``generate_training_set``), then mix them into one set that the
trainer reads like any other:

>>> bloch = generate_training_set(cu, num_zone_axes=30000, num_thicknesses=8)                  # doctest: +SKIP
>>> kinematic = generate_training_set(cu, num_zone_axes=20000, dynamical=False,
...                                   precession_angle_degrees=1.5, seed=1)                      # doctest: +SKIP
>>> model = train(mix_training_sets([bloch, kinematic]), max_minutes=30)                      # doctest: +SKIP

The patterns are concatenated; each part keeps its own beam directions (the indices are shifted, so a
validation split holds out whole directions of every part). The parts must be of the same crystal at the
same voltage and radial range, with the same symmetry and mirror rule (one label convention). The mixed
set's ``config`` is the first part's; ``info["parts"]`` records every part's config, size and checksum, and
is saved with the set.

For a joint phase model trained on several experiments per phase, :func:`group_by_crystal` sorts the sets by
crystal, and each group is mixed into one phase (``py4dstem-transformer train ... --mix`` does this).
"""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np

from .training_set import TrainingSet

__all__ = ["mix_training_sets", "mixture_parts", "group_by_crystal"]

#: Config fields that name the crystal (cell, atoms, occupancy).
_CRYSTAL = ("lat_real", "positions", "numbers", "occupancy")

#: Config fields every part must share: they fix what a label means and what the tokens read.
_SHARED = _CRYSTAL + ("accel_voltage", "k_max", "centrosymmetric", "symmetry", "mirror_operation")


def mix_training_sets(sets: Sequence[TrainingSet]) -> TrainingSet:
    """One :class:`TrainingSet` holding the patterns of every set in ``sets`` (same crystal, several experiments).

    Raises ``ValueError`` naming the first setting two parts disagree on (crystal, voltage, k_max, symmetry,
    mirror rule), or where a part holds no patterns. The inputs are not changed.
    """
    sets = list(sets)
    if not sets:
        raise ValueError("mix_training_sets needs at least one training set")
    for i, ts in enumerate(sets):
        _require_training_set(i, ts)
        if len(ts) == 0:
            raise ValueError(f"part {i} holds no patterns; simulate some first")
    first = sets[0].config
    for i, ts in enumerate(sets[1:], 1):
        for name in _SHARED:
            a, b = getattr(first, name), getattr(ts.config, name)
            if not _same(a, b):
                raise ValueError(f"part {i} differs from part 0 in {name} ({_short(b)} vs {_short(a)}): mix only sets "
                                 "of the same crystal, voltage and k_max (simulate every part with the same crystal, "
                                 "accel_voltage and k_max)")
    disk_starts = np.cumsum([0] + [len(ts.qx) for ts in sets])
    zone_starts = np.cumsum([0] + [len(ts.zone_axes) for ts in sets])
    offsets = np.concatenate([[0]] + [ts.offsets[1:] + s for ts, s in zip(sets, disk_starts)])
    parts = [{"patterns": len(ts), "checksum": ts.checksum(),
              "config": {k: v for k, v in ts.config.to_dict().items() if k not in _SHARED}} for ts in sets]
    info = {"parts": json.dumps(parts, default=_plain), "seconds": float(sum(ts.info.get("seconds", 0.0) for ts in sets))}
    return TrainingSet(
        first,
        np.concatenate([ts.orientation_matrices for ts in sets]),
        np.concatenate([ts.thickness for ts in sets]),
        np.concatenate([ts.zone_axis_index + s for ts, s in zip(sets, zone_starts)]),
        np.concatenate([ts.zone_axes for ts in sets]),
        offsets,
        *(np.concatenate([getattr(ts, k) for ts in sets]) for k in ("qx", "qy", "intensity")),
        info=info,
    )


def mixture_parts(training_set: TrainingSet) -> list:
    """The parts a mixed set was made of (``[{"patterns", "checksum", "config"}, ...]``); ``[]`` for a set
    simulated in one go."""
    parts = training_set.info.get("parts")
    return json.loads(parts) if isinstance(parts, str) else []


def group_by_crystal(sets: Sequence[TrainingSet]) -> list:
    """Indices of ``sets`` grouped by crystal (same cell, atoms and occupancy), groups in order of first appearance.

    >>> group_by_crystal([cu_bloch, cu2o_bloch, cu_kinematic, cu2o_kinematic])   # doctest: +SKIP
    [[0, 2], [1, 3]]

    Each group is one phase; :func:`mix_training_sets` then checks that a group's sets agree on the rest
    (voltage, k_max, symmetry, mirror rule).
    """
    groups: list = []
    for i, ts in enumerate(sets):
        _require_training_set(i, ts)
        for group in groups:
            if all(_same(getattr(sets[group[0]].config, k), getattr(ts.config, k)) for k in _CRYSTAL):
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


def _require_training_set(i: int, ts) -> None:
    if not isinstance(ts, TrainingSet):
        raise TypeError(f"part {i} is a {type(ts).__name__}, not a TrainingSet (TrainingSet.load(path) reads a file)")


def _same(a, b) -> bool:
    if isinstance(a, tuple) or isinstance(b, tuple):
        if a is None or b is None:
            return a is b
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-9, atol=1e-9))
    if isinstance(a, float) or isinstance(b, float):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)))
    return a == b


def _short(value) -> str:
    text = str(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot record {type(value).__name__} in a training set's parts")
