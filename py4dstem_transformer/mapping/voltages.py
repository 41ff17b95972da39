"""Measuring the voltages a model maps as well as its own: :func:`validate_voltages`.

A model is trained at one voltage, but the disks it reads change slowly with the wavelength (the Ewald
sphere's curvature; the scoring and refinement use the data's own wavelength). So whether a 300 kV model
maps 200 kV or 80 kV data is a measurement, not an assumption: the same random orientations are simulated
at every voltage (Bloch wave, this package's simulator), mapped with that voltage's physics, and the
voltages whose strict accuracy (within 5 deg, no beam flip) stays within ``tolerance`` of the training
voltage's, in one run without a gap around it, become the model's accepted range
(``metadata["voltage_validation"]``, read by :func:`~..io.compatibility.check_voltage`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..core.rotations import symmetry_min_angle
from ..io.compatibility import VALIDATION_KEY
from ..model.tokens import braggvectors_to_tokens
from ..simulation.scan import simulate_random_orientations

__all__ = ["validate_voltages", "accepted_range", "attach_validation"]


def validate_voltages(mapper, voltages_kv: Sequence[float], n: int = 300, seed: int = 3000,
                      thickness=(100.0, 400.0), tolerance: float = 0.02, progress_bar: bool = True) -> dict:
    """Strict accuracy of ``mapper``'s model at each voltage, and the range it holds in.

    Parameters
    ----------
    mapper : TransformerOrientationMap (its model, crystals, settings and calibration are used, not changed)
    voltages_kv : voltages (kV); the model's training voltage is added if missing
    n : random orientations per phase (the same ones at every voltage), seed ``seed`` (keep it apart from the
        benchmarks' seeds 0-199 and the calibration's 1000+)
    thickness : (min, max) foil thickness (A), uniform per pattern
    tolerance : a voltage is accepted where every phase's strict accuracy is at most this much below its
        accuracy at the training voltage

    Returns
    -------
    dict: ``kv`` (sorted), ``strict`` (mean over phases, per voltage), ``strict_per_phase`` (per voltage, per
    phase), ``range`` ([low, high] in V), ``n``, ``seed``, ``thickness_A``, ``tolerance``.
    """
    trained_kv = float(mapper.model.metadata.get("accel_voltage", mapper.accel_voltage)) / 1e3
    kv = sorted({round(float(v), 6) for v in voltages_kv} | {round(trained_kv, 6)})
    if kv[0] <= 0:
        raise ValueError(f"voltages must be positive kV, got {voltages_kv}")
    per_phase = []
    for v in kv:
        phases = mapper.phases_for(v * 1e3)
        row = []
        for p, crystal in enumerate(mapper.crystals):
            bragg, truth = simulate_random_orientations(crystal, n, seed + 100 * p, False, thickness, progress_bar,
                                                        accel_voltage=v * 1e3, k_max=mapper.token_config.k_max)
            mapped = mapper.map_tokens(braggvectors_to_tokens(bragg, mapper.token_config), 1, phases=phases)
            err = symmetry_min_angle(torch.as_tensor(mapped.matrix[:, p, 0]),
                                     torch.as_tensor(truth.orientation_matrices[0]),
                                     torch.as_tensor(phases[p].rotations))
            row.append(float((torch.rad2deg(err) < 5).float().mean()))
        per_phase.append(row)
    low, high = accepted_range(kv, per_phase, trained_kv, tolerance)
    return {"kv": kv, "strict": [float(np.mean(r)) for r in per_phase], "strict_per_phase": per_phase,
            "range": [low * 1e3, high * 1e3], "n": int(n), "seed": int(seed), "thickness_A": list(thickness),
            "tolerance": float(tolerance), "simulator": "Bloch wave (simulation.scan.simulate_random_orientations)"}


def accepted_range(kv: Sequence[float], strict_per_phase: Sequence[Sequence[float]], trained_kv: float,
                   tolerance: float) -> tuple:
    """``(low, high)`` kV: the run of sorted voltages ``kv`` around ``trained_kv`` where every phase's strict
    accuracy is at least its accuracy at ``trained_kv`` minus ``tolerance``."""
    at = int(np.argmin(np.abs(np.asarray(kv) - trained_kv)))
    base = np.asarray(strict_per_phase[at])
    ok = [bool(np.all(np.asarray(r) >= base - tolerance)) for r in strict_per_phase]
    low = high = at
    while low > 0 and ok[low - 1]:
        low -= 1
    while high < len(kv) - 1 and ok[high + 1]:
        high += 1
    return float(kv[low]), float(kv[high])


def attach_validation(model, validation: dict) -> None:
    """Store ``validation`` (:func:`validate_voltages`) in ``model.metadata`` (saved with the model)."""
    model.metadata[VALIDATION_KEY] = dict(validation)
