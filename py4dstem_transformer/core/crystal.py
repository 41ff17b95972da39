"""A crystal's identity, the one conversion between py4DSTEM ``Crystal`` objects and stored data.

:class:`CrystalIdentity` holds what defines a py4DSTEM ``Crystal`` (fractional positions, atomic
numbers, lattice vectors, site occupancies). It is what model files (``metadata["crystal"]``) and
training-set files (the ``TrainingSetConfig`` fields of the same names) store, and every private
``Crystal`` the package builds (for simulation, structure factors, symmetry checks) is rebuilt from
it, so the user's object is never modified.

Stored form (:meth:`CrystalIdentity.to_dict`), unchanged since the first model files::

    {"lat_real": [[ax, ay, az], [bx, by, bz], [cx, cy, cz]],   # rows a, b, c; A, Cartesian
     "positions": [[u, v, w], ...],                            # (A, 3) fractional
     "numbers": [Z, ...],                                      # (A,) atomic numbers
     "occupancy": [o, ...] or None}                            # (A,); None = fully occupied
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

__all__ = ["CrystalIdentity", "nested_tuples", "private_copy", "cell_parameters", "phase_metadata",
           "crystals_from_metadata", "crystal_from_metadata", "crystal_from_cif"]

_FIX = "train a model for this crystal (crystal.generate_training_set(...), then py4dstem_transformer.train)"


def _exact(value, dtype) -> tuple:
    """Array-like -> nested tuples of Python numbers of ``dtype`` (exact, hashable)."""
    flat = np.asarray(value, dtype=dtype).tolist()
    return nested_tuples(flat)


def nested_tuples(x):
    """Nested lists (e.g. ``ndarray.tolist()``) -> nested tuples (hashable); anything else as is."""
    return tuple(nested_tuples(v) for v in x) if isinstance(x, list) else x


@dataclass(frozen=True)
class CrystalIdentity:
    """What defines a py4DSTEM ``Crystal``, as exact nested tuples (hashable, comparable with ``==``).

    Attributes
    ----------
    positions : (A, 3) tuple of float
        Fractional atomic coordinates.
    numbers : (A,) tuple of int
        Atomic numbers.
    lat_real : (3, 3) tuple of float
        Lattice vectors a, b, c as rows (A, Cartesian; the frame orientations are expressed in).
    occupancy : (A,) tuple of float, or None
        Site occupancies; None means py4DSTEM's default (every site fully occupied).

    Examples
    --------
    >>> from py4dstem_transformer.simulation.simulator import example_crystal
    >>> identity = CrystalIdentity.from_crystal(example_crystal("Cu"))
    >>> CrystalIdentity.from_dict(identity.to_dict()) == identity
    True
    >>> identity.to_crystal().numbers.tolist()
    [29, 29, 29, 29]
    """

    positions: tuple
    numbers: tuple
    lat_real: tuple
    occupancy: Optional[tuple] = None

    def __post_init__(self):
        object.__setattr__(self, "positions", _exact(np.reshape(self.positions, (-1, 3)), np.float64))
        object.__setattr__(self, "numbers", _exact(np.ravel(self.numbers), np.int64))
        object.__setattr__(self, "lat_real", _exact(np.reshape(self.lat_real, (3, 3)), np.float64))
        if self.occupancy is not None:
            object.__setattr__(self, "occupancy", _exact(np.ravel(self.occupancy), np.float64))
        n = len(self.positions)
        if len(self.numbers) != n or (self.occupancy is not None and len(self.occupancy) != n):
            raise ValueError(f"{n} positions but {len(self.numbers)} atomic numbers"
                             + ("" if self.occupancy is None else f" and {len(self.occupancy)} occupancies"))

    @classmethod
    def from_crystal(cls, crystal) -> "CrystalIdentity":
        """The identity of a py4DSTEM ``Crystal`` (read only; ``occupancy`` None if it has none)."""
        return cls(crystal.positions, crystal.numbers, crystal.lat_real, getattr(crystal, "occupancy", None))

    def to_crystal(self):
        """A new py4DSTEM ``Crystal`` with this identity (float64 arrays; no occupancy given if None)."""
        from py4DSTEM.process.diffraction import Crystal

        occupancy = None if self.occupancy is None else np.array(self.occupancy, dtype=np.float64)
        return Crystal(np.array(self.positions, dtype=np.float64), np.array(self.numbers, dtype=np.int64),
                       np.array(self.lat_real, dtype=np.float64), occupancy=occupancy)

    def to_dict(self) -> dict:
        """The stored form: nested lists of Python numbers (see the module docstring)."""
        as_lists = lambda t: None if t is None else np.asarray(t).tolist()  # noqa: E731
        return {"lat_real": as_lists(self.lat_real), "positions": as_lists(self.positions),
                "numbers": list(self.numbers), "occupancy": as_lists(self.occupancy)}

    @classmethod
    def from_dict(cls, d: dict) -> "CrystalIdentity":
        """Read :meth:`to_dict`'s form (other keys, e.g. a training-set config's, are ignored)."""
        return cls(d["positions"], d["numbers"], d["lat_real"], d.get("occupancy"))

    def filled(self) -> "CrystalIdentity":
        """The same identity with explicit occupancies (ones where ``occupancy`` is None)."""
        occupancy = np.ones(len(self.positions)) if self.occupancy is None else self.occupancy
        return CrystalIdentity(self.positions, self.numbers, self.lat_real, occupancy)

    def check(self, crystal, lattice_rtol: float = 0.02) -> None:
        """Raise ``ValueError`` if ``crystal`` is not this (a model's) crystal.

        Compared: lattice parameters (within ``lattice_rtol``; a lattice refined against the data is
        fine), the Cartesian frame of the lattice vectors (orientations are expressed in it) and the
        composition. Positions and occupancies are not compared.
        """
        ours, theirs = cell_parameters(crystal.lat_real), cell_parameters(self.lat_real)
        if not np.allclose(ours[:3], theirs[:3], rtol=lattice_rtol) or not np.allclose(ours[3:], theirs[3:], atol=0.5):
            raise ValueError(
                f"this crystal's cell {np.round(ours, 4).tolist()} does not match the cell the model was trained "
                f"for {np.round(theirs, 4).tolist()} (a, b, c in A; angles in deg); {_FIX}"
            )
        frame_ours = np.asarray(crystal.lat_real) / ours[:3, None]
        frame_theirs = np.asarray(self.lat_real) / theirs[:3, None]
        if not np.allclose(frame_ours, frame_theirs, atol=0.02):
            raise ValueError(
                "this crystal's lattice vectors point along other Cartesian axes than the model's, so orientations "
                f"would be expressed in another frame; build the crystal with lat_real = {np.round(self.lat_real, 4).tolist()}"
            )
        if sorted(np.asarray(crystal.numbers).tolist()) != sorted(self.numbers):
            raise ValueError(
                f"this crystal's atoms (Z = {sorted(set(np.asarray(crystal.numbers).tolist()))}) differ from the model's "
                f"(Z = {sorted(set(self.numbers))}); {_FIX}"
            )


def private_copy(crystal):
    """A new ``Crystal`` with the same positions, numbers, lattice and occupancy (the user's stays untouched)."""
    return CrystalIdentity.from_crystal(crystal).to_crystal()


def cell_parameters(lat_real) -> np.ndarray:
    """(a, b, c [A], alpha, beta, gamma [deg]) of row lattice vectors ``lat_real`` (3, 3)."""
    lat = np.asarray(lat_real, dtype=float)
    a, b, c = np.linalg.norm(lat, axis=1)
    angle = lambda u, v: np.degrees(np.arccos(np.clip(u @ v / np.linalg.norm(u) / np.linalg.norm(v), -1, 1)))  # noqa: E731
    return np.array([a, b, c, angle(lat[1], lat[2]), angle(lat[0], lat[2]), angle(lat[0], lat[1])])


def phase_metadata(metadata: dict) -> list:
    """Per-phase entries of a model's metadata (one for a single-phase model)."""
    return list(metadata["phases"]) if "phases" in metadata else [metadata]


def crystals_from_metadata(metadata: dict) -> list:
    """The py4DSTEM Crystals a model was trained for (one per phase), rebuilt from its metadata."""
    return [crystal_from_metadata(p) for p in phase_metadata(metadata)]


def crystal_from_metadata(metadata: dict):
    """The py4DSTEM Crystal a model (or one phase of it) was trained for, rebuilt from its metadata."""
    return CrystalIdentity.from_dict(metadata["crystal"]).to_crystal()


def crystal_from_cif(path, conventional_standard_structure: bool = True):
    """py4DSTEM's ``Crystal.from_CIF(path)`` (needs pymatgen), with a clear error for a missing or unreadable file
    and without pymatgen's deprecation chatter. The conventional standard cell is py4DSTEM's default."""
    import contextlib
    import io
    import os
    import warnings

    if not os.path.isfile(path):
        raise FileNotFoundError(f"no CIF file {os.fspath(path)!r}")
    from py4DSTEM.process.diffraction import Crystal

    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            return Crystal.from_CIF(os.fspath(path), conventional_standard_structure=conventional_standard_structure)
    except ImportError as err:
        raise ImportError(f"reading a CIF needs pymatgen: pip install 'pymatgen<2024.8.9' ({err})") from err
    except Exception as err:  # pymatgen's parser errors name no file
        raise ValueError(f"could not read a crystal structure from {os.fspath(path)!r}: {err}") from err
