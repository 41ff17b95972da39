"""Several crystals in one training set: :class:`PhaseTrainingSet`.

A joint phase + orientation model is trained on the patterns of every phase at once, each pattern
labelled with its phase index. Each phase keeps its own point group (the loss takes each sample's
own group) and its own mirror rule (the mirror augmentation is applied only to centrosymmetric
phases). The phases must share the voltage and the stored radial range, since one model reads them
all through the same tokens.

>>> both = PhaseTrainingSet([cu_set, cu2o_set], names=["Cu", "Cu2O"])   # doctest: +SKIP
>>> model = train(both, max_minutes=30)                                  # doctest: +SKIP
"""

from __future__ import annotations

from math import gcd
from typing import Optional, Sequence

import numpy as np
import torch

__all__ = ["PhaseTrainingSet", "as_phase_sets", "phase_symmetries", "formula"]


class PhaseTrainingSet:
    """Training sets of n crystals, concatenated, with a phase label per pattern.

    Parameters
    ----------
    training_sets : sequence of TrainingSet
        One per phase, in the order of the phase indices (the model's phase ``i`` is
        ``training_sets[i]``). Same ``accel_voltage`` and ``k_max``.
    names : sequence of str, optional
        Phase names (default: the chemical formula of each crystal, e.g. ``"Cu2O"``).

    Attributes
    ----------
    sets : list of TrainingSet
    names : list of str
    phase : (N,) int64
        Phase of every pattern.
    qx, qy, intensity : (P,) float32; offsets : (N + 1,) int64
        All disks of all phases, pattern after pattern (as in ``TrainingSet``).
    orientation_matrices : (N, 3, 3) float64; thickness : (N,) float64
    zone_axis_index : (N,) int64
        Unique across phases (phase ``i``'s indices are shifted), so splitting by zone axis never
        mixes phases' beam directions.
    """

    def __init__(self, training_sets: Sequence, names: Optional[Sequence[str]] = None):
        self.sets = list(training_sets)
        if len(self.sets) < 2:
            raise ValueError("a PhaseTrainingSet needs at least two training sets (one per phase)")
        _check_compatible(self.sets)
        self.names = list(names) if names is not None else [formula(ts.crystal().numbers) for ts in self.sets]
        if len(self.names) != len(self.sets) or len(set(self.names)) != len(self.names):
            raise ValueError(f"need one distinct name per training set, got {self.names}")
        empty = [name for ts, name in zip(self.sets, self.names) if len(ts) == 0]
        if empty:
            raise ValueError(f"the training set of phase(s) {empty} holds no patterns; simulate some first "
                             "(generate_training_set with more zone axes, or a larger k_max)")
        self.phase = np.concatenate([np.full(len(ts), i, dtype=np.int64) for i, ts in enumerate(self.sets)])
        self.qx, self.qy, self.intensity = (np.concatenate([getattr(ts, k) for ts in self.sets]) for k in ("qx", "qy", "intensity"))
        starts = np.cumsum([0] + [ts.offsets[-1] for ts in self.sets])
        self.offsets = np.concatenate([[0]] + [ts.offsets[1:] + s for ts, s in zip(self.sets, starts)])
        self.orientation_matrices = np.concatenate([ts.orientation_matrices for ts in self.sets])
        self.thickness = np.concatenate([ts.thickness for ts in self.sets])
        shift = np.cumsum([0] + [int(ts.zone_axis_index.max()) + 1 for ts in self.sets])
        self.zone_axis_index = np.concatenate([ts.zone_axis_index + s for ts, s in zip(self.sets, shift)])

    def __len__(self) -> int:
        return len(self.phase)

    def __repr__(self) -> str:
        parts = ", ".join(f"{name}: {len(ts)}" for name, ts in zip(self.names, self.sets))
        return f"PhaseTrainingSet({len(self)} patterns; {parts})"

    @property
    def n_phases(self) -> int:
        return len(self.sets)

    @property
    def counts(self) -> np.ndarray:
        """(N,) disks per pattern."""
        return np.diff(self.offsets)

    @property
    def config(self):
        """The first phase's config (voltage and k_max are shared by all phases)."""
        return self.sets[0].config

    def crystals(self) -> list:
        """New py4DSTEM ``Crystal`` objects, one per phase."""
        return [ts.crystal() for ts in self.sets]


def as_phase_sets(training_set) -> list:
    """The per-phase training sets of a ``TrainingSet`` (one) or :class:`PhaseTrainingSet` (n)."""
    return list(training_set.sets) if isinstance(training_set, PhaseTrainingSet) else [training_set]


def phase_symmetries(training_sets: Sequence) -> list:
    """Per phase, the (K_i, 3, 3) float64 proper rotations that leave its patterns unchanged."""
    from ..core.symmetry import point_group_rotations

    out = []
    for ts in training_sets:
        stored = getattr(ts.config, "symmetry", None)
        out.append(torch.as_tensor(np.asarray(stored), dtype=torch.float64) if stored is not None and len(stored)
                   else point_group_rotations(ts.crystal()).double())
    return out


def padded_symmetry(groups: Sequence[torch.Tensor]) -> torch.Tensor:
    """(n_phases, K_max, 3, 3): the groups stacked, shorter ones padded with the identity (harmless
    in a minimum over the group, so no mask is needed)."""
    k = max(len(g) for g in groups)
    eye = torch.eye(3, dtype=groups[0].dtype)
    return torch.stack([torch.cat([g, eye.expand(k - len(g), 3, 3)]) for g in groups])


def formula(numbers) -> str:
    """Reduced chemical formula of a list of atomic numbers, e.g. ``[29]*4 + [8]*2`` -> ``"Cu2O"``
    (elements by increasing electronegativity, as in pymatgen's formulas)."""
    z, n = np.unique(np.asarray(numbers, dtype=int), return_counts=True)
    divisor = 0
    for count in n:
        divisor = gcd(divisor, int(count))
    elements = sorted(zip(z, n // divisor), key=lambda e: (_element(e[0])[1], e[0]))
    return "".join(_element(a)[0] + (str(b) if b > 1 else "") for a, b in elements)


def _element(z: int):
    """(symbol, electronegativity) of atomic number ``z``; without pymatgen ``(f"Z{z}_", z)``, e.g. ``("Z29_", 29.0)``
    (the underscore ends the number, so a count after it stays readable: ``Z29_2``)."""
    try:
        from pymatgen.core.periodic_table import Element

        e = Element.from_Z(int(z))
        return e.symbol, float(e.X)
    except Exception:
        return f"Z{int(z)}_", float(z)


def _check_compatible(sets: Sequence) -> None:
    first = sets[0].config
    for ts in sets[1:]:
        c = ts.config
        if abs(c.accel_voltage - first.accel_voltage) > 1e-6 * first.accel_voltage:
            raise ValueError(f"training sets at different voltages ({first.accel_voltage / 1e3:g} and "
                             f"{c.accel_voltage / 1e3:g} kV); simulate all phases at the voltage of your data")
        if abs(c.k_max - first.k_max) > 1e-9:
            raise ValueError(f"training sets with different k_max ({first.k_max} and {c.k_max} 1/A); simulate all "
                             "phases with the same k_max so one model reads them through the same tokens")
