"""Refuse to map with a model trained for another crystal, or at a voltage where it was not shown to work.

The voltage is an input of the mapping, not a constant: :func:`resolve_voltage` takes it from where
py4DSTEM keeps it (``crystal.accel_voltage``, set by ``crystal.setup_diffraction``), else from the
caller's ``accel_voltage=``, else from the model, and says which. :func:`check_voltage` refuses only
voltages outside the range a measurement (:mod:`~..mapping.voltages`, stored in the model as
``metadata["voltage_validation"]``) showed the model to map as well as its training voltage; a model
without that measurement maps its training voltage (within 1%) only.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

from ..core.crystal import CrystalIdentity, cell_parameters

__all__ = ["check_crystal_matches_model", "cell_parameters", "resolve_voltage", "check_voltage",
           "resolve_precession", "VALIDATION_KEY"]

#: Key of the voltage measurement in a model's metadata.
VALIDATION_KEY = "voltage_validation"
_RTOL = 0.01  # voltages within 1% are the same voltage


def check_crystal_matches_model(crystal, metadata: dict, lattice_rtol: float = 0.02) -> None:
    """Raise ``ValueError`` if ``crystal`` is not the one the model was trained for.

    Compared: the crystal identity (:meth:`.CrystalIdentity.check`: lattice parameters within
    ``lattice_rtol``, Cartesian frame, composition). The voltage is checked apart
    (:func:`resolve_voltage`, :func:`check_voltage`).
    """
    trained = metadata.get("crystal")
    if trained is None:
        return  # a bare model (e.g. built in a test) carries no identity to check
    CrystalIdentity.from_dict(trained).check(crystal, lattice_rtol)


def resolve_voltage(crystals: Sequence, accel_voltage: Optional[float], trained: Optional[float],
                    default: float) -> Tuple[float, str]:
    """``(voltage in V, where it came from)``: the crystals' own (py4DSTEM's ``crystal.accel_voltage``), else
    ``accel_voltage``, else ``trained`` (the model's), else ``default``.

    Raises ``ValueError`` where the crystals disagree among themselves or with ``accel_voltage``.
    """
    if accel_voltage is not None:
        accel_voltage = _positive("accel_voltage", accel_voltage, "V, e.g. accel_voltage=200e3")
    own = [float(c.accel_voltage) for c in crystals if getattr(c, "accel_voltage", None) is not None]
    if own:
        if any(not _same(v, own[0]) for v in own):
            raise ValueError(f"the crystals are set up for different voltages ({', '.join(f'{v / 1e3:g} kV' for v in own)}); "
                             f"call crystal.setup_diffraction(accel_voltage) on each with the microscope's voltage")
        if accel_voltage is not None and not _same(accel_voltage, own[0]):
            raise ValueError(f"accel_voltage={accel_voltage:g} ({accel_voltage / 1e3:g} kV) was passed but the crystal is "
                             f"set up for {own[0] / 1e3:g} kV (crystal.accel_voltage, set by setup_diffraction or "
                             f"orientation_plan); call crystal.setup_diffraction({accel_voltage:g}) or drop accel_voltage")
        return own[0], "the crystal (crystal.accel_voltage)"
    if accel_voltage is not None:
        return accel_voltage, "accel_voltage="
    if trained is not None:
        return float(trained), "the model (its training voltage)"
    return float(default), "the default"


def check_voltage(voltage: float, metadata: dict) -> str:
    """Raise ``ValueError`` where the model was not shown to map ``voltage`` (V) as well as its training voltage;
    else return a short note of the range it was shown for (``""`` for a bare model)."""
    trained = metadata.get("accel_voltage")
    if trained is None:
        return ""
    trained = float(trained)
    validation = metadata.get(VALIDATION_KEY)
    lo, hi = validation["range"] if validation else (trained, trained)
    shown = (f"measured to map {lo / 1e3:g}-{hi / 1e3:g} kV as well as {trained / 1e3:g} kV" if validation
             else f"trained at {trained / 1e3:g} kV, not measured at other voltages")
    if lo * (1 - _RTOL) <= voltage <= hi * (1 + _RTOL):
        return f"the model was {shown}"
    measured = ""
    if validation:
        figures = dict(zip(validation["kv"], validation["strict"]))
        near, own = (min(figures, key=lambda kv: abs(kv * 1e3 - v)) for v in (voltage, trained))
        measured = f"; strict <= 5 deg: {figures[own]:.0%} at {own:g} kV, {figures[near]:.0%} at {near:g} kV"
    raise ValueError(
        f"the data are at {voltage / 1e3:g} kV but the model was {shown}{measured}. Train a model at this voltage: "
        f"crystal.generate_training_set(accel_voltage={voltage:g}), then train (see the README), or measure this "
        f"model there: py4dstem-transformer validate-voltages MODEL --kv {voltage / 1e3:g},{trained / 1e3:g} --out FILE")


def resolve_precession(precession_angle_degrees: Optional[float]) -> float:
    """The precession angle in degrees (0 for None), checked."""
    if precession_angle_degrees is None:
        return 0.0
    value = float(precession_angle_degrees)
    if not math.isfinite(value) or not 0.0 <= value <= 10.0:
        raise ValueError(f"precession_angle_degrees must be between 0 and 10 (degrees, the cone's semi-angle; "
                         f"None without precession), got {precession_angle_degrees!r}")
    return value


def _positive(name: str, value, hint: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number ({hint}), got {value!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be positive ({hint}), got {value!r}")
    if value < 1e3:
        raise ValueError(f"{name}={value:g} looks like kV; give volts ({hint})")
    return value


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= _RTOL * max(abs(a), abs(b))
