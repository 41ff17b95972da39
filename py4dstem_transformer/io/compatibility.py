"""Refuse to map with a model trained for another crystal or voltage (silent garbage otherwise)."""

from __future__ import annotations

import numpy as np

__all__ = ["check_crystal_matches_model", "cell_parameters"]

_FIX = "train a model for this crystal (crystal.generate_training_set(...), then py4dstem_transformer.train)"


def cell_parameters(lat_real) -> np.ndarray:
    """(a, b, c [A], alpha, beta, gamma [deg]) of row lattice vectors."""
    lat = np.asarray(lat_real, dtype=float)
    a, b, c = np.linalg.norm(lat, axis=1)
    angle = lambda u, v: np.degrees(np.arccos(np.clip(u @ v / np.linalg.norm(u) / np.linalg.norm(v), -1, 1)))  # noqa: E731
    return np.array([a, b, c, angle(lat[1], lat[2]), angle(lat[0], lat[2]), angle(lat[0], lat[1])])


def check_crystal_matches_model(crystal, metadata: dict, lattice_rtol: float = 0.02) -> None:
    """Raise ``ValueError`` if ``crystal`` is not the one the model was trained for.

    Compared: lattice parameters (within ``lattice_rtol``; a lattice refined against the data is
    fine), the Cartesian frame of the lattice vectors (orientations are expressed in it), the
    composition, and the voltage when the crystal has one (``crystal.setup_diffraction``).
    """
    trained = metadata.get("crystal")
    if trained is None:
        return  # a bare model (e.g. built in a test) carries no identity to check
    ours, theirs = cell_parameters(crystal.lat_real), cell_parameters(trained["lat_real"])
    if not np.allclose(ours[:3], theirs[:3], rtol=lattice_rtol) or not np.allclose(ours[3:], theirs[3:], atol=0.5):
        raise ValueError(
            f"this crystal's cell {np.round(ours, 4).tolist()} does not match the cell the model was trained "
            f"for {np.round(theirs, 4).tolist()} (a, b, c in A; angles in deg); {_FIX}"
        )
    frame_ours = np.asarray(crystal.lat_real) / ours[:3, None]
    frame_theirs = np.asarray(trained["lat_real"]) / theirs[:3, None]
    if not np.allclose(frame_ours, frame_theirs, atol=0.02):
        raise ValueError(
            "this crystal's lattice vectors point along other Cartesian axes than the model's, so orientations "
            f"would be expressed in another frame; build the crystal with lat_real = {np.round(trained['lat_real'], 4).tolist()}"
        )
    if sorted(np.asarray(crystal.numbers).tolist()) != sorted(trained["numbers"]):
        raise ValueError(
            f"this crystal's atoms (Z = {sorted(set(np.asarray(crystal.numbers).tolist()))}) differ from the model's "
            f"(Z = {sorted(set(trained['numbers']))}); {_FIX}"
        )
    voltage = getattr(crystal, "accel_voltage", None)
    trained_voltage = metadata.get("accel_voltage")
    if voltage is not None and trained_voltage is not None and abs(float(voltage) - trained_voltage) > 0.01 * trained_voltage:
        raise ValueError(
            f"the crystal is set up for {float(voltage) / 1e3:g} kV but the model was trained at "
            f"{trained_voltage / 1e3:g} kV; train a model at this voltage "
            "(crystal.generate_training_set(accel_voltage=...))"
        )
