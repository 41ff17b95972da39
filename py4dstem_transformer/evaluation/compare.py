"""Accuracy against ground truth and confidence quality, the figures every comparison reports.

Errors are symmetry-reduced misorientation angles (degrees) with py4DSTEM's convention (symmetry on
the left), reported "strict" and with the 180 deg rotation about the beam allowed ("flip").
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Optional

import numpy as np
import torch

from ..core.defaults import ACCEL_VOLTAGE
from ..core.rotations import symmetry_min_angle
from ..mapping.calibrate import roc_auc  # noqa: F401 (one of this module's metrics; defined where the fit needs it)

__all__ = ["misorientation_deg", "summarize_errors", "paired_accuracy", "roc_auc", "evaluate_orientation_map",
           "acom_default", "acom_plan", "acom_match"]


def misorientation_deg(pred, true, symmetry, allow_beam_flip: bool = False) -> np.ndarray:
    """Symmetry-reduced angle (degrees) between (..., 3, 3) orientation matrices."""
    pred = torch.as_tensor(np.asarray(pred), dtype=torch.float64)
    true = torch.as_tensor(np.asarray(true), dtype=torch.float64)
    sym = torch.as_tensor(np.asarray(symmetry), dtype=torch.float64)
    return torch.rad2deg(symmetry_min_angle(pred, true, sym, allow_beam_flip)).numpy()


def summarize_errors(errors_deg: np.ndarray) -> dict:
    """Median, 90th percentile and the fractions within 1, 2 and 5 degrees."""
    e = np.asarray(errors_deg, dtype=float).ravel()
    if e.size == 0:
        return {"n": 0, "median": float("nan"), "p90": float("nan"), "within_1": float("nan"),
                "within_2": float("nan"), "within_5": float("nan")}
    return {"n": int(e.size), "median": float(np.median(e)), "p90": float(np.percentile(e, 90)),
            "within_1": float((e <= 1).mean()), "within_2": float((e <= 2).mean()), "within_5": float((e <= 5).mean())}


def paired_accuracy(errors_a, errors_b, threshold_deg: float = 5.0) -> dict:
    """Two methods' errors (degrees) on the same patterns, compared pattern by pattern.

    Returns ``n``; ``difference``: A's fraction within ``threshold_deg`` minus B's; ``a_only`` / ``b_only``: the
    patterns only A / only B gets within it (the rest agree, right or wrong, and do not move the difference);
    ``standard_error``: of ``difference`` for patterns drawn at random, from the paired counts
    (``sqrt(a_only + b_only - (a_only - b_only)^2 / n) / n``). Two methods that miss the same hard patterns
    differ by less noise than two independent samples would suggest, and by more where they miss different ones.
    """
    a, b = np.asarray(errors_a, dtype=float).ravel(), np.asarray(errors_b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired_accuracy needs the same patterns: {a.size} errors against {b.size}")
    n = a.size
    if n == 0:
        return {"n": 0, "difference": float("nan"), "a_only": 0, "b_only": 0, "standard_error": float("nan")}
    right_a, right_b = a <= threshold_deg, b <= threshold_deg
    a_only, b_only = int(np.sum(right_a & ~right_b)), int(np.sum(right_b & ~right_a))
    variance = max(a_only + b_only - (a_only - b_only) ** 2 / n, 0.0)
    return {"n": int(n), "difference": (a_only - b_only) / n, "a_only": a_only, "b_only": b_only,
            "standard_error": float(np.sqrt(variance) / n)}


def evaluate_orientation_map(orientation_map, true_matrices: np.ndarray, symmetry, mask: Optional[np.ndarray] = None,
                             match: int = 0, threshold_deg: float = 5.0) -> dict:
    """Accuracy of an ``OrientationMap`` against (Rx, Ry, 3, 3) true orientations.

    Parameters
    ----------
    mask : (Rx, Ry) bool, optional
        Positions to evaluate (e.g. crystalline pixels); default all.

    Returns
    -------
    dict with ``strict`` and ``flip`` error summaries, ``corr_auc`` (ROC AUC of ``corr`` for
    strict error < ``threshold_deg`` vs above), and the raw per-position ``errors_strict`` and ``corr``.
    """
    pred = orientation_map.matrix[:, :, match]
    mask = np.ones(pred.shape[:2], bool) if mask is None else np.asarray(mask, bool)
    strict = misorientation_deg(pred[mask], true_matrices[mask], symmetry)
    flip = misorientation_deg(pred[mask], true_matrices[mask], symmetry, allow_beam_flip=True)
    corr = orientation_map.corr[:, :, match][mask]
    return {"strict": summarize_errors(strict), "flip": summarize_errors(flip),
            "corr_auc": roc_auc(corr, strict < threshold_deg), "errors_strict": strict, "errors_flip": flip,
            "corr": corr}


def acom_default(crystal, bragg_peaks, accel_voltage: float = ACCEL_VOLTAGE, k_max: float = 2.0,
                 progress_bar: bool = False):
    """py4DSTEM's ACOM as the baselines run it: default plan (2 deg / 2 deg, 'auto'), k_max 2.0 1/A.

    Prepares ``crystal`` (:func:`acom_plan`) and returns ``crystal.match_orientations(bragg_peaks)``
    (:func:`acom_match`); py4DSTEM's prints and its calibration warnings are silenced.
    """
    acom_plan(crystal, accel_voltage, k_max)
    return acom_match(crystal, bragg_peaks, progress_bar)


def acom_plan(crystal, accel_voltage: float = ACCEL_VOLTAGE, k_max: float = 2.0,
              precession_angle_degrees: Optional[float] = None, tol_structure_factor: float = 0.0,
              angle_step_zone_axis: float = 2.0, angle_step_in_plane: float = 2.0) -> None:
    """Structure factors to ``k_max`` (1/A) and py4DSTEM's default orientation plan on ``crystal`` at
    ``accel_voltage`` (V), with ``precession_angle_degrees`` where the data were precessed. The other
    keywords are py4DSTEM's (its defaults here); py4DSTEM's own tests of its LiCoO2 data use
    ``k_max=1.7, tol_structure_factor=0.1, angle_step_zone_axis=1.0, angle_step_in_plane=5.0``."""
    with _quiet():
        crystal.setup_diffraction(accel_voltage)
        crystal.calculate_structure_factors(k_max, tol_structure_factor=tol_structure_factor)
        crystal.orientation_plan(zone_axis_range="auto", accel_voltage=accel_voltage, progress_bar=False,
                                 precession_angle_degrees=precession_angle_degrees,
                                 angle_step_zone_axis=angle_step_zone_axis, angle_step_in_plane=angle_step_in_plane)


def acom_match(crystal, bragg_peaks, progress_bar: bool = False):
    """``crystal.match_orientations(bragg_peaks)`` with its defaults (needs :func:`acom_plan` first)."""
    with _quiet():
        return crystal.match_orientations(bragg_peaks, progress_bar=progress_bar)


@contextlib.contextmanager
def _quiet():
    """No py4DSTEM prints on stdout, no warnings."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
