"""Stage ``expand``: every hypothesis with its near-ambiguous partners, the candidates to refine and score."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..core.rotations import BEAM_FLIP, MIRROR, symmetry_min_angle
from .batch import MapBatch
from .config import MapConfig
from .phase import Phase

__all__ = ["PARTNERS", "partners", "distinct_hypotheses", "expand"]

#: Right factors of a hypothesis' candidates: identity, beam flip, mirror, both. The beam flip
#: ``M @ diag(-1, -1, 1)`` is what a network cannot tell apart off a zone axis.
PARTNERS = np.array([(1.0, 1.0, 1.0), BEAM_FLIP, MIRROR, tuple(np.multiply(BEAM_FLIP, MIRROR))])


def partners(num_matches: int, inversion_symmetry: bool) -> torch.Tensor:
    """(R, 3) diagonals of the partners scored: the mirror ones only compete for a 3rd and 4th match (the
    network does not confuse them)."""
    return torch.as_tensor(PARTNERS if (inversion_symmetry and num_matches > 2) else PARTNERS[:2], dtype=torch.float32)


def distinct_hypotheses(hypotheses: torch.Tensor, symmetry: torch.Tensor, min_angle_deg: float) -> torch.Tensor:
    """(b, H) bool: hypotheses not within ``min_angle_deg`` (after symmetry and the beam flip, which the
    partners add anyway) of an earlier one. Refining the same start twice would give the same answer."""
    b, H = hypotheses.shape[:2]
    keep = torch.ones(b, H, dtype=torch.bool)
    for k in range(1, H):
        angle = symmetry_min_angle(hypotheses[:, k, None], hypotheses[:, :k], symmetry, allow_beam_flip=True)
        keep[:, k] = ~((angle < np.radians(min_angle_deg)) & keep[:, :k]).any(1)
    return keep


def expand(batch: MapBatch, phase: Phase, config: MapConfig) -> MapBatch:
    """Candidates ``(b, H * R, 3, 3)`` = hypotheses x partners. With ``query.refine``, repeated hypotheses
    are marked (``distinct``) and only distinct, not yet refined ones are ``fresh``; ``earlier`` refined
    candidates take the first places."""
    right = partners(batch.query.num_matches, batch.query.inversion_symmetry)
    b, H = batch.hypotheses.shape[:2]
    candidates = batch.hypotheses[:, :, None] * right.to(batch.hypotheses.device)[None, None, :, None, :]
    candidates = candidates.reshape(b, H * len(right), 3, 3)
    if not batch.query.refine:
        return dataclasses.replace(batch, candidates=candidates, fresh=torch.zeros(b, H * len(right), dtype=torch.bool))
    distinct = distinct_hypotheses(batch.hypotheses.cpu(), phase.symmetry, config.repeat_deg).repeat_interleave(len(right), 1)
    fresh = distinct.clone()
    shift = torch.zeros(b, candidates.shape[1], 2)
    if batch.earlier is not None:
        C0 = batch.earlier.shape[1]
        candidates = torch.cat([batch.earlier.to(candidates), candidates[:, C0:]], 1)
        fresh[:, :C0] = False
        if batch.earlier_shift is not None:
            shift[:, :C0] = batch.earlier_shift.cpu()
    return dataclasses.replace(batch, candidates=candidates, distinct=distinct, fresh=fresh, shift=shift)
