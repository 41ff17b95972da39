"""Fitting the confidence calibration (:class:`~.confidence.Calibration`) on simulated patterns."""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
import torch

from ..core.rotations import symmetry_min_angle
from ..model.tokens import braggvectors_to_tokens
from ..simulation.scan import simulate_random_orientations
from .confidence import METADATA_KEY, Calibration, fit_calibration

__all__ = ["calibrate", "attach_calibration", "roc_auc"]


#: Other experiments the confidence is fitted on (``varied_fraction`` of the patterns, in equal parts): sparse
#: patterns (a detector edge, only the brighter disks), other beam selections and kinematic intensities. The
#: values differ on purpose from the robustness benchmark's conditions (edge 1.4 1/A, 3%, sigma 0.02), which
#: stay a test of settings the fit never saw.
VARIED = (
    {"k_max": 1.2},
    {"k_max": 1.7},
    {"min_relative_intensity": 0.05},
    {"sigma_excitation_error": 0.03},
    {"dynamical": False, "sigma_excitation_error": 0.03},
)


def calibrate(mapper, n: int = 4000, seed: int = 1000, damaged_fraction: float = 0.5,
              thickness=(20.0, 500.0), progress_bar: bool = True, passes: int = 2,
              varied_fraction: float = 0.0) -> Calibration:
    """Fit ``mapper``'s confidence on ``n`` simulated patterns (per phase) and return the calibration.

    The calibration also decides which sparse patterns are turned (``config.turns.confidence``), so the
    features depend on it: each of the ``passes`` maps the patterns under the calibration of the pass
    before (the mapper's own in the first) and fits anew. ``mapper`` is not changed. The result records
    the mapper's settings (``fitted_on["map_config"]``): a mapper with other settings warns that its
    ``corr`` is not calibrated.

    The patterns: orientations uniform on SO(3), Bloch-wave, thickness uniform in ``thickness`` (A),
    the model's voltage and k_max, raw detector pixels + calibration; a ``damaged_fraction`` of them
    damaged as in the accuracy benchmark (0.01 1/A jitter, 20% intensity noise, weakest 20% dropped,
    a spurious disk); a ``varied_fraction`` of them (taken from the clean ones) from :data:`VARIED` experiments,
    half of those damaged too. Use other seeds than the benchmarks' (0-199) so they stay a fair test.
    Attach the result with :func:`attach_calibration`.
    """
    sets = []  # (phase, tokens, true matrices) per simulated set
    for p, crystal in enumerate(mapper.crystals):
        n_damaged, n_varied = int(n * damaged_fraction), int(n * varied_fraction)
        parts = [(n - n_damaged - n_varied, False, {}), (n_damaged, True, {})]
        each = n_varied // (2 * len(VARIED))
        parts += [(each, damaged, v) for v in VARIED for damaged in (False, True)]
        for part, (count, damaged, setting) in enumerate(parts):
            if count <= 0:
                continue
            kw = {"accel_voltage": mapper.accel_voltage, "k_max": mapper.token_config.k_max, **setting}
            bragg, truth = simulate_random_orientations(crystal, count, seed + 100 * p + part, damaged, thickness,
                                                        progress_bar, **kw)
            sets.append((p, braggvectors_to_tokens(bragg, mapper.token_config), truth.orientation_matrices[0]))
    cal = mapper.calibration
    for _ in range(max(1, passes)):
        cal = _fit_on(mapper, sets, cal)
    cal.fitted_on.update({"patterns": int(sum(len(t) for _, t, _ in sets)), "seed": seed,
                          "damaged_fraction": damaged_fraction, "thickness_A": list(thickness), "passes": passes,
                          "varied_fraction": varied_fraction, "varied": [dict(v) for v in VARIED],
                          "map_config": mapper.config.to_dict()})
    return cal



def _fit_on(mapper, sets, calibration: Optional[Calibration]) -> Calibration:
    """A calibration fitted to the mapper's answers on ``sets`` ((phase, tokens, true matrices) each), mapped
    under ``calibration`` (which decides the turns)."""
    phases = tuple(dataclasses.replace(p, calibration=calibration) for p in mapper.phases)
    feats, right = [], []
    for p, tokens, true in sets:
        mapped = mapper.map_tokens(tokens, 1, phases=phases)
        err = symmetry_min_angle(torch.as_tensor(mapped.matrix[:, p, 0]), torch.as_tensor(true),
                                 torch.as_tensor(phases[p].rotations))
        feats.append({k: torch.as_tensor(v[:, p, 0]) for k, v in mapped.features.items()})
        right.append(torch.rad2deg(err) < 5)
    x, y = {k: torch.cat([f[k] for f in feats]) for k in feats[0]}, torch.cat(right)
    cal = fit_calibration(x, y, fitted_on={"fraction_right": float(y.float().mean())})
    cal.fitted_on["auc_on_fit_set"] = float(roc_auc(cal.probability(x).numpy(), y.numpy()))
    return cal


def attach_calibration(model, calibration: Calibration) -> None:
    """Store ``calibration`` in ``model.metadata`` (saved with the model)."""
    model.metadata[METADATA_KEY] = calibration.to_dict()


def roc_auc(score: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``score`` for separating ``positive`` from the rest (ties count half).

    0.5 is chance; 1 means every positive scores above every negative. NaN if a class is empty.
    """
    from scipy.stats import rankdata

    score, positive = np.asarray(score, dtype=float).ravel(), np.asarray(positive, dtype=bool).ravel()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))
