"""Refuse to map with a model trained for another crystal or voltage (silent garbage otherwise)."""

from __future__ import annotations

from ..core.crystal import CrystalIdentity, cell_parameters

__all__ = ["check_crystal_matches_model", "cell_parameters"]


def check_crystal_matches_model(crystal, metadata: dict, lattice_rtol: float = 0.02) -> None:
    """Raise ``ValueError`` if ``crystal`` is not the one the model was trained for.

    Compared: the crystal identity (:meth:`.CrystalIdentity.check`: lattice parameters within
    ``lattice_rtol``, Cartesian frame, composition), and the voltage when the crystal has one
    (``crystal.setup_diffraction``).
    """
    trained = metadata.get("crystal")
    if trained is None:
        return  # a bare model (e.g. built in a test) carries no identity to check
    CrystalIdentity.from_dict(trained).check(crystal, lattice_rtol)
    voltage = getattr(crystal, "accel_voltage", None)
    trained_voltage = metadata.get("accel_voltage")
    if voltage is not None and trained_voltage is not None and abs(float(voltage) - trained_voltage) > 0.01 * trained_voltage:
        raise ValueError(
            f"the crystal is set up for {float(voltage) / 1e3:g} kV but the model was trained at "
            f"{trained_voltage / 1e3:g} kV; train a model at this voltage "
            "(crystal.generate_training_set(accel_voltage=...))"
        )
