"""Proper point-group rotations of a py4DSTEM ``Crystal`` in its Cartesian crystal frame.

The crystal frame is py4DSTEM's: ``crystal.lat_real`` holds the lattice vectors a, b, c as rows
(Angstrom, Cartesian, a along x), and reciprocal vectors are ``g = hkl @ crystal.lat_inv`` (1/A).
The rotations returned here act on those Cartesian vectors and multiply orientation matrices on
the left (``S @ M``, see :mod:`py4dstem_transformer.core.rotations`).

The space group is found with spglib (installed with pymatgen, which py4DSTEM needs for its own
symmetry features). Every rotation is then checked to map the crystal's kinematic structure-factor
set onto itself (same |F|^2 at ``S @ g``), so a wrong frame or a mis-specified cell fails loudly
instead of silently producing a wrong loss. Kinematic |F|^2 obeys Friedel's law, so this check sees
the Laue group; telling e.g. -43m from m-3m is spglib's job (tested on zinc blende).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

__all__ = ["point_group_operations", "point_group_rotations", "check_structure_factor_invariance"]


def point_group_operations(crystal, symprec: float = 1e-3) -> np.ndarray:
    """All point-group operations of ``crystal``, proper and improper, Cartesian crystal frame.

    Found with spglib; a fractional operation ``W`` acts on Cartesian vectors as
    ``L.T @ W @ inv(L.T)`` with ``L = crystal.lat_real`` (rows a, b, c in A).

    Returns
    -------
    (K, 3, 3) float64 array of orthogonal matrices, identity first (48 for m-3m).
    """
    lattice = np.asarray(crystal.lat_real, dtype=np.float64)  # rows = a, b, c (A)
    fractional = _space_group_rotations(crystal, symprec)  # (K, 3, 3) integer, acting on fractions
    cart = lattice.T @ fractional @ np.linalg.inv(lattice.T)
    cart = _unique(cart)
    order = np.argsort(np.abs(cart - np.eye(3)).sum(axis=(1, 2)), kind="stable")
    cart = cart[order]  # identity first
    cart[np.abs(cart) < 1e-12] = 0.0
    return cart


def point_group_rotations(crystal, symprec: float = 1e-3, check: bool = True) -> torch.Tensor:
    """Proper rotations of the crystal's point group, Cartesian crystal frame.

    Parameters
    ----------
    crystal : py4DSTEM.process.diffraction.Crystal
        Any crystal; it is read, never modified.
    symprec : float
        spglib tolerance on fractional positions.
    check : bool
        Verify that each rotation leaves the structure-factor set invariant.

    Returns
    -------
    (K, 3, 3) float64 tensor; the identity first. K = 24 for m-3m, 12 for -43m, 1 for P1.

    Examples
    --------
    >>> import numpy as np
    >>> from py4DSTEM.process.diffraction import Crystal
    >>> cu = Crystal(np.array([[0, 0, 0], [0, .5, .5], [.5, 0, .5], [.5, .5, 0]]), 29, 3.615)
    >>> point_group_rotations(cu).shape
    torch.Size([24, 3, 3])
    """
    ops = point_group_operations(crystal, symprec)
    proper = ops[np.linalg.det(ops) > 0]
    if check:
        check_structure_factor_invariance(crystal, proper)
    return torch.from_numpy(proper)


def _space_group_rotations(crystal, symprec: float) -> np.ndarray:
    try:
        import spglib
    except ImportError as err:  # pragma: no cover - spglib comes with pymatgen
        raise ImportError(
            "Crystal symmetry needs spglib (installed with pymatgen): pip install 'pymatgen<2024.8.9'"
        ) from err
    cell = (np.asarray(crystal.lat_real), np.asarray(crystal.positions), np.asarray(crystal.numbers))
    with warnings.catch_warnings():  # spglib 2.5+ deprecates its old error handling on every call
        warnings.simplefilter("ignore", DeprecationWarning)
        sym = spglib.get_symmetry(cell, symprec=symprec)
    if sym is None:
        raise ValueError("spglib could not determine the space group of this crystal")
    return np.asarray(sym["rotations"], dtype=np.float64)


def _unique(mats: np.ndarray, decimals: int = 8) -> np.ndarray:
    _, index = np.unique(np.round(mats, decimals).reshape(len(mats), 9), axis=0, return_index=True)
    return mats[np.sort(index)]


def check_structure_factor_invariance(crystal, rotations, k_max: float = 2.0, rtol: float = 1e-6) -> None:
    """Raise ``ValueError`` unless every rotation maps the |F|^2 set of ``crystal`` onto itself.

    Structure factors are computed by py4DSTEM on a fresh copy of the crystal (the user's object
    is not touched), out to ``k_max`` (1/A).
    """
    from .crystal import private_copy

    fresh = private_copy(crystal)
    fresh.calculate_structure_factors(k_max)
    g = fresh.g_vec_all.T  # (G, 3) crystal Cartesian, 1/A
    intensity = fresh.struct_factors_int  # (G,)
    scale = intensity.max()
    tree = _kdtree(g)
    for i, s in enumerate(np.asarray(rotations, dtype=np.float64)):
        dist, idx = tree.query(g @ s.T)
        moved = np.linalg.norm(g, axis=1) < 0.98 * k_max  # stay clear of the k_max cut-off
        bad_pos = moved & (dist > 1e-6)
        bad_int = moved & (np.abs(intensity[idx] - intensity) > rtol * scale)
        if bad_pos.any() or bad_int.any():
            raise ValueError(
                f"rotation {i} of the point group does not leave the structure factors invariant "
                f"({int(bad_pos.sum())} reflections move off the lattice, {int(bad_int.sum())} change "
                "|F|^2); check the crystal's positions, numbers and cell"
            )


def _kdtree(points):
    from scipy.spatial import cKDTree

    return cKDTree(points)
