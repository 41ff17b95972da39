"""Stage ``tiebreak``: a near tie between two distinct candidates decided the way ACOM scores.

The score (:mod:`.score`) compares each candidate's kinematic disks with the observed ones through narrow Gaussians
(0.03 1/A) and a wide excitation window; on sparse or noisy patterns several orientations 25-60 deg apart can explain
the disks within a hundredth of each other, and which one wins is then close to chance. py4DSTEM's ACOM decides
many of those patterns rightly with its own correlation (docs/benchmarks.md, "Where ACOM is right and we are not"),
whose settings differ from the score's in every respect: disks four times as wide (``corr_kernel_size`` 0.08 1/A),
a narrower excitation window (``sigma_excitation_error`` 0.02 1/A), and weights growing with the radius
(``power_radial`` 1: the outer disks, which move most with the orientation, count most).

So where a pattern's best candidate and its best *distinct* rival (more than ``MapConfig.margin_deg`` apart, after
crystal symmetry) score within ``TieBreakConfig.tie`` of each other, both are scored again with those settings
(:func:`~.score.correlation` with ``radial_power``), and the rival that scores higher there is ranked first
(``MapBatch.order``). Every candidate keeps its own ``score``: the reported ``corr`` and the confidence's margin
stay the score's (the margin of a decided tie is at most 0), as in the ``arbitrate`` stage (:mod:`.arbiter`), which
decides near ties on intensity profiles instead and runs after this one.

The second correlation is ACOM-like, not ACOM's: it is the score's closed-form cosine of two sums of Gaussians with
ACOM's widths and weights, not py4DSTEM's polar-image correlation. Patterns with fewer than ``min_disks`` disks are
not compared.
"""

from __future__ import annotations

import torch

from ..core.kinematics import simulate_disks
from .arbiter import near_tie_pairs, rivals_first
from .batch import MapBatch
from .config import MapConfig, TieBreakConfig
from .phase import Phase
from .score import correlation, tokens_to_xy

__all__ = ["acom_like_correlation", "tiebreak"]


def acom_like_correlation(observed: torch.Tensor, observed_mask: torch.Tensor, matrix: torch.Tensor,
                          shift: torch.Tensor, phase: Phase, config: TieBreakConfig) -> torch.Tensor:
    """(B, C) correlation of (B, C, 3, 3) candidates with their pattern's disks under ACOM-like settings.

    Parameters
    ----------
    observed : (B, N, 3) disks ``(qx, qy, I)`` (1/A, lab frame); observed_mask : (B, N).
    matrix : (B, C, 3, 3) candidates (py4DSTEM convention); shift : (B, C, 2) their fitted origin errors
        (1/A: observed = simulated + shift).
    """
    B, C = matrix.shape[:2]
    sim, mask = simulate_disks(matrix.reshape(-1, 3, 3).float(), phase.reflections.to(matrix.device),
                               config.sigma_excitation_error, config.disks, **phase.window)
    sim, mask = sim.view(B, C, *sim.shape[1:]), mask.view(B, C, -1)
    sim = torch.cat([sim[..., :2] + shift.to(sim)[:, :, None], sim[..., 2:]], -1)
    return correlation(observed, observed_mask, sim, mask, config.kernel, config.power,
                       radial_power=config.radial_power)


@torch.inference_mode()
def tiebreak(batch: MapBatch, phase: Phase, config: MapConfig) -> MapBatch:
    """Stage: where a near-tied distinct rival scores higher than the best candidate under ACOM-like settings
    (:func:`acom_like_correlation`), the rival is ranked first (``order``); nothing else changes. A no-op with
    ``config.tiebreak.tie <= 0``, without the refinement (``refine=False``) and where no pattern with at least
    ``min_disks`` disks has a near tie."""
    cfg = config.tiebreak
    if cfg.tie <= 0 or not batch.query.refine:
        return batch
    ties = near_tie_pairs(batch, phase, config.margin_deg, cfg.tie, cfg.min_disks)
    if ties is None:
        return batch
    rows, best, rival, matrix, shift = ties  # matrix (t, 2, 3, 3), shift (t, 2, 2)
    alt = acom_like_correlation(tokens_to_xy(batch.tokens.tokens[rows]).to(batch.device),
                                batch.tokens.mask[rows].to(batch.device), matrix, shift, phase, cfg).cpu()  # (t, 2)
    return rivals_first(batch, rows, best, rival, alt[:, 1] > alt[:, 0])
