"""A simulated training set: disks of many patterns in flat arrays, their labels and their recipe.

Every pattern is stored once, at in-plane angle 0 of its beam direction. The in-plane rotation and
the mirror are free augmentations (exact identities, see :mod:`py4dstem_transformer.core.zone_axes`):

* rotating the disks counter-clockwise by ``angle`` in (qx, qy) gives the pattern of
  ``M @ in_plane_rotation(angle)``, with ``in_plane_rotation(t) = [[c, s, 0], [-s, c, 0], [0, 0, 1]]``
  (note: that is ``rotations.rotation_about_z(-t)``);
* mirroring ``qx -> -qx`` gives the pattern of ``S @ M @ diag(-1, 1, 1)`` with
  ``S = config.mirror_operation`` (``-1`` for centrosymmetric crystals, i.e. ``M @ diag(1, -1, -1)``),
  valid only when ``config.mirror_operation`` is not None.

File layout (HDF5 through emdfile): a root ``training_set`` holding Arrays ``qx``, ``qy``,
``intensity`` (float32, all disks), ``offsets`` (N + 1), ``orientation_matrices`` (N, 3, 3),
``thickness`` (N,), ``zone_axis_index`` (N,), ``zone_axes`` (Z, 3), and root Metadata
``training_set_config`` (every :class:`TrainingSetConfig` field) and ``training_set_info``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
import torch

from .._version import __version__
from ..io.checkpoint import DamagedFileError, ForeignFileError, NewerFormatError, content_checksum
from ..core.defaults import ACCEL_VOLTAGE, K_MAX
from ..core.crystal import CrystalIdentity, nested_tuples

__all__ = [
    "TrainingSetConfig",
    "TrainingSet",
    "in_plane_rotation",
    "rotate_pattern",
    "mirror_orientation",
    "frozen",
]

_ROOT = "training_set"
_CONFIG = "training_set_config"
_INFO = "training_set_info"
_ARRAYS = ("qx", "qy", "intensity", "offsets", "orientation_matrices", "thickness", "zone_axis_index", "zone_axes")
#: 2: with a content checksum of the arrays and the config (format-1 files still load, unverified)
FORMAT_VERSION = 2


def frozen(value):
    """Arrays and sequences as nested tuples of Python numbers (hashable, exact); others as is."""
    if isinstance(value, (np.ndarray, list, tuple)):
        return nested_tuples(np.asarray(value).tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass(frozen=True)
class TrainingSetConfig:
    """Everything needed to reproduce a training set; stored inside the file.

    Attributes
    ----------
    lat_real, positions, numbers, occupancy :
        Crystal identity: lattice vectors as rows (A, Cartesian, a along x), fractional positions,
        atomic numbers and site occupancies, as py4DSTEM's ``Crystal`` holds them.
    accel_voltage : float
        Volts.
    k_max : float
        Reflections with 3-D ``|g| <= k_max`` (1/A) are simulated and stored.
    dynamical : bool
        Bloch-wave intensities (True) or kinematic ones.
    thickness : tuple of float
        Requested foil thicknesses (A); every beam direction is simulated at all of them
        (dynamical only; kinematic patterns do not depend on thickness).
    num_thicknesses : int or None
        If set, each beam direction instead gets this many thicknesses drawn log-uniformly in
        ``[min(thickness), max(thickness)]``.
    zone_axis_range : 'auto', 'explicit' or (3, 3) tuple
        Region of beam directions ('explicit': the directions were given).
    angle_step_zone_axis : float
        Grid step (deg) when ``num_zone_axes`` is None.
    num_zone_axes : int or None
        If set, that many beam directions drawn uniformly in the region instead of the grid.
    sigma_excitation_error, tol_excitation_error_mult :
        py4DSTEM's excitation-error envelope (1/A) and cut-off (in sigmas). Dynamical: only
        selects the beams of the Bloch calculation.
    precession_angle_degrees : float or None
        Kinematic precession.
    min_relative_intensity : float
        Disks fainter than this fraction of the pattern's brightest disk are not stored.
    dynamical_method, thermal_sigma, tol_structure_factor :
        Passed to ``calculate_dynamical_structure_factors`` (thermal sigma in A).
    dedup_tolerance : float
        Patterns of one beam direction with the same disks and intensities equal within this are
        stored once.
    seed : int
        Seed of every random draw.
    centrosymmetric : bool
        The crystal has inversion symmetry, so the mirror label ``M @ diag(1, -1, -1)`` is valid.
    symmetry : (K, 3, 3) tuple
        Proper rotations ``S`` with ``pattern(S @ M) == pattern(M)`` for this set (crystal
        Cartesian; use them in a symmetry-aware loss).
    mirror_operation : (3, 3) tuple or None
        ``S`` such that the mirrored pattern ``qx -> -qx`` has label ``S @ M @ diag(-1, 1, 1)``;
        None if no such relation holds (chiral crystals, dynamical). When not None, the stored
        beam directions cover only half the orientations and the loader must add mirror copies.
    version : str
        Package version that wrote the set.
    """

    lat_real: tuple
    positions: tuple
    numbers: tuple
    occupancy: tuple
    accel_voltage: float = ACCEL_VOLTAGE
    k_max: float = K_MAX
    dynamical: bool = True
    thickness: tuple = ()
    num_thicknesses: Optional[int] = None
    zone_axis_range: Union[str, tuple] = "auto"
    angle_step_zone_axis: float = 2.0
    num_zone_axes: Optional[int] = None
    sigma_excitation_error: float = 0.04
    tol_excitation_error_mult: float = 3.0
    precession_angle_degrees: Optional[float] = None
    min_relative_intensity: float = 1e-3
    dynamical_method: str = "WK-CP"
    thermal_sigma: float = 0.08
    tol_structure_factor: float = 1e-4
    dedup_tolerance: float = 1e-6
    seed: int = 0
    centrosymmetric: bool = True
    symmetry: tuple = ()
    mirror_operation: Optional[tuple] = None
    version: str = __version__

    def __post_init__(self):
        for f in dataclasses.fields(self):  # normalise arrays / numpy scalars to exact tuples
            object.__setattr__(self, f.name, frozen(getattr(self, f.name)))

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @property
    def crystal_identity(self) -> CrystalIdentity:
        """The crystal these patterns were simulated for (``lat_real``, ``positions``, ``numbers``, ``occupancy``)."""
        return CrystalIdentity(self.positions, self.numbers, self.lat_real, self.occupancy)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainingSetConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def in_plane_rotation(angle) -> np.ndarray:
    """``(..., 3, 3)``: ``M @ in_plane_rotation(angle)`` is the orientation whose pattern is the
    pattern of ``M`` rotated counter-clockwise by ``angle`` (radians) in (qx, qy)."""
    from ..core.rotations import rotation_about_z

    return rotation_about_z(torch.as_tensor(-np.asarray(angle, dtype=np.float64))).numpy()


def rotate_pattern(qx, qy, angle) -> Tuple[np.ndarray, np.ndarray]:
    """Rotate disk positions counter-clockwise by ``angle`` (radians); float64 arithmetic."""
    from ..core.rotations import rotate_xy

    return rotate_xy(np.asarray(qx, dtype=np.float64), np.asarray(qy, dtype=np.float64), angle)


def mirror_orientation(m, mirror_operation) -> np.ndarray:
    """``S @ M @ diag(-1, 1, 1)``: the label of the pattern of ``M`` mirrored ``qx -> -qx``."""
    if mirror_operation is None:
        raise ValueError("no mirror relation holds for this crystal and simulation (config.mirror_operation is None)")
    return np.asarray(mirror_operation, dtype=np.float64) @ np.asarray(m) * np.array([-1.0, 1.0, 1.0])


class TrainingSet:
    """Simulated patterns with labels; build with :func:`generate_training_set` or :meth:`load`.

    Attributes
    ----------
    config : TrainingSetConfig
    orientation_matrices : (N, 3, 3) float64
        Labels, py4DSTEM convention (lab -> crystal, ``M[:, 2]`` = beam), in-plane angle 0.
    thickness : (N,) float64
        Foil thickness (A); NaN for kinematic patterns.
    zone_axis_index : (N,) int64
        Row of ``zone_axes`` each pattern was simulated for (split train/validation by it).
    zone_axes : (Z, 3) float64
        The simulated beam directions (crystal Cartesian, unit).
    qx, qy, intensity : (P,) float32
        All disks, pattern after pattern: lab-frame positions (1/A) and intensities relative to
        the pattern's brightest disk (max 1). Direct beam excluded, ``hypot(qx, qy) <= k_max``,
        intensities ``>= config.min_relative_intensity``.
    offsets : (N + 1,) int64
        Pattern ``i`` is ``[offsets[i]:offsets[i + 1]]``.
    info : dict
        What the generation did (counts of dropped patterns, time).
    """

    def __init__(self, config, orientation_matrices, thickness, zone_axis_index, zone_axes, offsets, qx, qy,
                 intensity, info: Optional[dict] = None):
        self.config = config
        self.orientation_matrices = np.asarray(orientation_matrices, dtype=np.float64).reshape(-1, 3, 3)
        self.thickness = np.asarray(thickness, dtype=np.float64)
        self.zone_axis_index = np.asarray(zone_axis_index, dtype=np.int64)
        self.zone_axes = np.asarray(zone_axes, dtype=np.float64).reshape(-1, 3)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.qx, self.qy, self.intensity = (np.asarray(a, dtype=np.float32) for a in (qx, qy, intensity))
        self.info = dict(info or {})
        self._check()

    def _check(self) -> None:
        n = len(self.orientation_matrices)
        if not (len(self.thickness) == len(self.zone_axis_index) == n and len(self.offsets) == n + 1):
            raise ValueError("orientation_matrices, thickness, zone_axis_index and offsets disagree on N")
        if self.offsets[0] != 0 or self.offsets[-1] != len(self.qx) or np.any(np.diff(self.offsets) < 0):
            raise ValueError("offsets must rise from 0 to the number of disks")
        if not len(self.qx) == len(self.qy) == len(self.intensity):
            raise ValueError("qx, qy and intensity must have the same length")

    def __len__(self) -> int:
        return len(self.orientation_matrices)

    def __repr__(self) -> str:
        kind = "dynamical" if self.config.dynamical else "kinematic"
        return (f"TrainingSet({len(self)} {kind} patterns, {len(self.qx)} disks, {len(self.zone_axes)} beam "
                f"directions, k_max={self.config.k_max} 1/A, {self.config.accel_voltage / 1e3:g} kV)")

    @property
    def counts(self) -> np.ndarray:
        """(N,) disks per pattern."""
        return np.diff(self.offsets)

    def pattern(self, i: int, angle: float = 0.0, mirror: bool = False):
        """Disks of pattern ``i`` as float64 ``(qx, qy, intensity)``, lab frame, 1/A.

        ``angle`` (radians) rotates them counter-clockwise, then ``mirror`` flips ``qx``; the
        matching label is :meth:`orientation` ``(i, angle, mirror)``.
        """
        a, b = self.offsets[i], self.offsets[i + 1]
        qx, qy = rotate_pattern(self.qx[a:b], self.qy[a:b], angle)
        return (-qx if mirror else qx), qy, self.intensity[a:b].astype(np.float64)

    def orientation(self, i: int, angle: float = 0.0, mirror: bool = False) -> np.ndarray:
        """(3, 3) label of :meth:`pattern` ``(i, angle, mirror)``."""
        m = self.orientation_matrices[i] @ in_plane_rotation(angle)
        return mirror_orientation(m, self.config.mirror_operation) if mirror else m

    def crystal(self):
        """A new py4DSTEM ``Crystal`` with the stored identity."""
        return self.config.crystal_identity.to_crystal()

    def save(self, path, overwrite: bool = False) -> None:
        """Write to an HDF5 file (emdfile tree). Refuses to replace a file unless ``overwrite``."""
        import emdfile

        path = Path(path)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
        emdfile.save(str(path), self._to_tree(), mode="o")

    def _to_tree(self):
        from emdfile import Array, Metadata, Root

        root = Root(name=_ROOT)
        for name in _ARRAYS:
            root.add_to_tree(Array(data=getattr(self, name), name=name))
        config = Metadata(name=_CONFIG)
        for key, value in self.config.to_dict().items():
            config[key] = np.asarray(value) if isinstance(value, tuple) else value
        info = Metadata(name=_INFO)
        for key, value in {**self.info, "format_version": FORMAT_VERSION, "checksum": self.checksum()}.items():
            info[key] = value
        root.metadata = config
        root.metadata = info
        return root

    def checksum(self) -> str:
        """SHA-256 of the arrays and the config (:func:`~..io.checkpoint.content_checksum`), stored on save and
        verified on load."""
        return content_checksum({"arrays": {name: getattr(self, name) for name in _ARRAYS},
                                 "config": self.config.to_dict()})

    @classmethod
    def load(cls, path) -> "TrainingSet":
        """Read a file written by :meth:`save`, verifying its checksum.

        Raises ``FileNotFoundError``, or a ``ValueError`` naming the file and what is wrong with it:
        :class:`~..io.checkpoint.DamagedFileError` (unreadable, truncated, or arrays that do not match the
        checksum), :class:`~..io.checkpoint.ForeignFileError` (no training set),
        :class:`~..io.checkpoint.NewerFormatError`.
        """
        import emdfile
        import h5py

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no training-set file at {path}")
        again = "simulate it again (crystal.generate_training_set / py4dstem-transformer simulate) or copy it again"
        if not h5py.is_hdf5(path):
            raise DamagedFileError(f"{path} is damaged or not an HDF5 file (truncated, overwritten or another kind "
                                   f"of file); {again}")
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # emdfile prints as it guesses a file's version
                root = emdfile.read(str(path))
        except Exception as err:  # h5py: OSError for truncated files, KeyError for broken trees
            if "not recognized as an EMD file" in str(err):
                root = None
            else:
                raise DamagedFileError(f"{path} is damaged: its HDF5 tree cannot be read ({err}); {again}") from err
        if not hasattr(root, "metadata") or _CONFIG not in getattr(root, "metadata", {}):
            raise ForeignFileError(f"{path} does not hold a py4dstem-transformer training set (an HDF5 file of "
                                   f"another kind); pass a file written by TrainingSet.save or py4dstem-transformer simulate")
        info = dict(root.metadata[_INFO]._params) if _INFO in root.metadata else {}
        version = int(info.get("format_version", 1))
        if version > FORMAT_VERSION:
            raise NewerFormatError(f"{path} was written by a newer py4dstem-transformer ({info.get('version')}, file "
                                   f"format {version}); upgrade this one (format {FORMAT_VERSION})")
        params = root.metadata[_CONFIG]._params
        try:
            config = TrainingSetConfig.from_dict({k: frozen(v) for k, v in params.items()})
            arrays = {name: root.tree(name).data for name in _ARRAYS}
            training_set = cls(config, info=info, **arrays)
        except Exception as err:
            raise DamagedFileError(f"{path} is damaged: its arrays or settings cannot be read ({err}); {again}") from err
        if version >= 2 and info.get("checksum") != training_set.checksum():
            raise DamagedFileError(f"{path} is damaged: its arrays or settings do not match the checksum written when "
                                   f"it was saved; {again}")
        return training_set
