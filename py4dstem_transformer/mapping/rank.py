"""Stage ``rank``: each pattern's best-scoring distinct candidates become its matches."""

from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import numpy as np
import torch

from ..core.rotations import symmetry_min_angle
from .batch import MapBatch
from .config import MapConfig
from .phase import Phase

__all__ = ["rank_distinct", "rank"]


def rank_distinct(candidates: torch.Tensor, score: torch.Tensor, num_matches: int, symmetry: torch.Tensor,
                  min_angle_deg: float, margin_deg: float, order: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, ...]:
    """The ``num_matches`` best-scoring candidates per pattern that are distinct orientations.

    Candidates within ``min_angle_deg`` (after crystal symmetry) of a better match are skipped, so
    hypotheses that converged to the same orientation are reported once.

    Parameters
    ----------
    candidates : (b, C, 3, 3); score : (b, C); symmetry : (S, 3, 3) proper rotations.
    order : (b, C), optional: what the candidates are ranked by where it is not their score (the ``arbitrate``
        stage's decided ties); the matches still report their own score.

    Returns
    -------
    ``(matrix (b, K, 3, 3), score (b, K), alternative (b, K), pick (b, K))``: ``alternative`` is the best
    score of a candidate further than ``margin_deg`` from that match (0 if none), the reference of the
    confidence's margin (:mod:`.confidence`); ``pick`` the index of each match among the candidates. A
    slot with nothing distinct left gets score 0.
    """
    b, C = score.shape
    available = torch.ones(b, C, dtype=torch.bool)
    matrix, corr, alternative = torch.zeros(b, num_matches, 3, 3), torch.zeros(b, num_matches), torch.zeros(b, num_matches)
    picks = torch.zeros(b, num_matches, dtype=torch.long)
    rows = torch.arange(b)
    for k in range(num_matches):
        masked = score.masked_fill(~available, -1.0)
        pick = picks[:, k] = (masked if order is None else order.masked_fill(~available, -1.0)).argmax(1)
        matrix[:, k], corr[:, k] = candidates[rows, pick], masked[rows, pick].clamp_min(0.0)
        angle = symmetry_min_angle(matrix[:, k, None], candidates, symmetry, allow_beam_flip=False)  # (b, C)
        near = angle < np.radians(min_angle_deg)
        margin = near if margin_deg == min_angle_deg else angle < np.radians(margin_deg)
        alternative[:, k] = score.masked_fill(margin, -1.0).max(1).values.clamp_min(0.0)
        available &= ~near
    return matrix, corr, alternative, picks


def rank(batch: MapBatch, phase: Phase, config: MapConfig) -> MapBatch:
    """Stage: ``matrix``, ``corr``, ``alternative`` and ``pick`` of the ``query.num_matches`` matches."""
    matrix, corr, alternative, pick = rank_distinct(batch.candidates.cpu(), batch.score, batch.query.num_matches,
                                                    phase.symmetry, batch.query.min_angle_deg, config.margin_deg,
                                                    batch.order)
    return dataclasses.replace(batch, matrix=matrix, corr=corr, alternative=alternative, pick=pick)
