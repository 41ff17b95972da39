"""Checks that need no ground truth: two methods against each other, and each map against itself.

On measured data nobody knows the right orientation. Two things can still be measured:

* **agreement** between two methods at each position: the same phase, and a symmetry-reduced
  misorientation within a tolerance;
* **spatial coherence**: grains are many scan positions wide, so a right answer usually agrees with at
  least one of its four neighbours, while wrong answers are scattered at random and rarely do.

Both use py4DSTEM's convention (orientation matrices map lab to crystal, symmetry on the left) and each
phase's own proper point-group rotations. Positions with phase ``-1`` (no answer) never agree with anything.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .compare import misorientation_deg

__all__ = ["phase_misorientation", "method_agreement", "neighbour_agreement", "coherence"]


def phase_misorientation(matrix_a: np.ndarray, phase_a: np.ndarray, matrix_b: np.ndarray, phase_b: np.ndarray,
                         symmetries: Sequence[np.ndarray]) -> np.ndarray:
    """Misorientation (degrees) between two sets of answers; ``inf`` where the phases differ or either is -1.

    Parameters
    ----------
    matrix_a, matrix_b : (..., 3, 3) orientation matrices (lab -> crystal)
    phase_a, phase_b : (...) int phase indices into ``symmetries`` (-1: no answer)
    symmetries : per phase, the (S, 3, 3) proper rotations of its point group (crystal Cartesian frame)
    """
    phase_a, phase_b = np.asarray(phase_a), np.asarray(phase_b)
    if phase_a.shape != phase_b.shape or np.shape(matrix_a) != np.shape(matrix_b):
        raise ValueError(f"answers of different shapes: phases {phase_a.shape} and {phase_b.shape}, matrices "
                         f"{np.shape(matrix_a)} and {np.shape(matrix_b)}")
    out = np.full(phase_a.shape, np.inf)
    for p, symmetry in enumerate(symmetries):
        same = (phase_a == p) & (phase_b == p)
        if same.any():
            out[same] = misorientation_deg(np.asarray(matrix_a)[same], np.asarray(matrix_b)[same], symmetry)
    return out


def method_agreement(matrix_a, phase_a, matrix_b, phase_b, symmetries, tol_deg: float = 5.0,
                     mask: Optional[np.ndarray] = None) -> dict:
    """How often two methods give the same phase and orientation (within ``tol_deg``) on ``mask``.

    Returns a dict: ``n`` positions compared, ``same_phase`` and ``same_orientation`` fractions (the latter
    needs the same phase too), ``misorientation`` (the per-position angles, degrees; inf where the phases
    differ) and ``median_deg`` over positions of the same phase.
    """
    angle = phase_misorientation(matrix_a, phase_a, matrix_b, phase_b, symmetries)
    mask = np.ones(angle.shape, bool) if mask is None else np.asarray(mask, bool)
    a = angle[mask]
    same_phase = np.asarray(phase_a)[mask] == np.asarray(phase_b)[mask]
    finite = a[np.isfinite(a)]
    n = int(mask.sum())
    return {"n": n, "same_phase": float(same_phase.mean()) if n else float("nan"),
            "same_orientation": float((a <= tol_deg).mean()) if n else float("nan"),
            "median_deg": float(np.median(finite)) if finite.size else float("nan"), "misorientation": angle}


def neighbour_agreement(matrix: np.ndarray, phase: np.ndarray, symmetries: Sequence[np.ndarray],
                        tol_deg: float = 5.0) -> np.ndarray:
    """(Rx, Ry, 4) bool: whether each position agrees (same phase, within ``tol_deg``) with its neighbour at
    -x, +x, -y, +y. Neighbours outside the scan, and positions or neighbours without an answer, count as not
    agreeing.

    Parameters
    ----------
    matrix : (Rx, Ry, 3, 3); phase : (Rx, Ry) int (-1: no answer); symmetries : per phase, (S, 3, 3)
    """
    matrix, phase = np.asarray(matrix), np.asarray(phase)
    if matrix.shape[:2] != phase.shape or matrix.shape[2:] != (3, 3) or phase.ndim != 2:
        raise ValueError(f"need (Rx, Ry, 3, 3) matrices and (Rx, Ry) phases, got {matrix.shape} and {phase.shape}")
    out = np.zeros(phase.shape + (4,), bool)
    for k, (axis, step) in enumerate(((0, -1), (0, 1), (1, -1), (1, 1))):
        here = [slice(None), slice(None)]
        there = [slice(None), slice(None)]
        here[axis] = slice(1, None) if step < 0 else slice(None, -1)
        there[axis] = slice(None, -1) if step < 0 else slice(1, None)
        here, there = tuple(here), tuple(there)
        angle = phase_misorientation(matrix[here], phase[here], matrix[there], phase[there], symmetries)
        out[here + (k,)] = angle <= tol_deg
    return out


def coherence(matrix: np.ndarray, phase: np.ndarray, symmetries: Sequence[np.ndarray], tol_deg: float = 5.0,
              mask: Optional[np.ndarray] = None) -> dict:
    """Spatial coherence of a map: the fraction of positions (in ``mask``, default all with an answer) that
    agree with at least one of their four neighbours, and the fraction of neighbour pairs that agree.

    Returns a dict: ``n``, ``any_neighbour`` (fraction of positions), ``pairs`` (fraction of the neighbour
    pairs inside the scan whose both ends are in ``mask``), and ``map`` ((Rx, Ry) number of agreeing
    neighbours, 0-4).
    """
    phase = np.asarray(phase)
    agree = neighbour_agreement(matrix, phase, symmetries, tol_deg)
    mask = (phase >= 0) if mask is None else np.asarray(mask, bool)
    counts = agree.sum(-1)
    pair_agree = np.concatenate([agree[1:, :, 0][mask[1:] & mask[:-1]], agree[:, 1:, 2][mask[:, 1:] & mask[:, :-1]]])
    n = int(mask.sum())
    return {"n": n, "any_neighbour": float((counts[mask] > 0).mean()) if n else float("nan"),
            "pairs": float(pair_agree.mean()) if pair_agree.size else float("nan"), "map": counts}
