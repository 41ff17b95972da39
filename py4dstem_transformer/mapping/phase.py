"""The per-phase physics the stages read, built once per mapper: :class:`Phase`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Sequence, Tuple

import numpy as np
import torch

from ..core.kinematics import Reflections
from ..core.symmetry import point_group_rotations
from ..simulation.phases import formula
from .config import ScoreConfig

if TYPE_CHECKING:
    from .confidence import Calibration

__all__ = ["Phase", "build_phases"]


@dataclass(frozen=True)
class Phase:
    """One crystal's physics, as every mapping stage needs it.

    Attributes
    ----------
    name : str
    crystal : py4DSTEM Crystal (the user's; read, never changed by the stages)
    reflections : Reflections within ``k_max`` at the data's voltage and precession (CPU tensors)
    rotations : (S, 3, 3) float64 array, the proper rotations of the point group (crystal frame)
    separation : float, a lower bound (1/A) on the distance between two scored disks of one candidate
    k_max, r_min : float, the window (1/A) the model reads disks in (outside: not observed)
    calibration : the model's confidence calibration, or None
    """

    name: str
    crystal: object
    reflections: Reflections
    rotations: np.ndarray
    separation: float
    k_max: float
    r_min: float
    calibration: Optional[Calibration] = None
    # built on first use; shared by the copies ``dataclasses.replace`` makes (keyed by the window, too)
    _libraries: dict = field(default_factory=dict, compare=False, repr=False)

    def library(self, search, score):
        """The orientation library (:func:`~.library.build_library`) for these settings and this window, built
        once."""
        from .library import build_library

        key = (search, score, self.k_max, self.r_min)
        if key not in self._libraries:
            self._libraries[key] = build_library(self, search, score)
        return self._libraries[key]

    @property
    def symmetry(self) -> torch.Tensor:
        """(S, 3, 3) float32 tensor of :attr:`rotations`, for :func:`~..core.rotations.symmetry_min_angle`."""
        return torch.as_tensor(self.rotations, dtype=torch.float32)

    @property
    def window(self) -> dict:
        """``dict(k_max=..., r_min=...)``: the keywords of the simulation and refinement functions."""
        return dict(k_max=self.k_max, r_min=self.r_min)


def build_phases(crystals: Sequence, phase_metadata: Sequence[dict], k_max: float, r_min: float,
                 accel_voltage: float, score: ScoreConfig, calibration: Optional[Calibration],
                 precession_angle_degrees: float = 0.0) -> Tuple[Phase, ...]:
    """One :class:`Phase` per crystal; ``phase_metadata``: the model's per-phase entries (name, symmetry);
    ``accel_voltage`` (V) and ``precession_angle_degrees``: the data's."""
    phases = []
    for crystal, meta in zip(crystals, phase_metadata):
        reflections = Reflections.from_crystal(crystal, k_max, accel_voltage,
                                               precession_angle_degrees=precession_angle_degrees)
        rotations = (np.asarray(meta["symmetry"]) if "symmetry" in meta
                     else point_group_rotations(crystal).numpy())
        phases.append(Phase(meta.get("name") or formula(crystal.numbers), crystal, reflections, rotations,
                            reflections.min_disk_separation(score.sigma_excitation_error), k_max, r_min, calibration))
    return tuple(phases)
