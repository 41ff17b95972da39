"""Training loss: symmetry-aware geodesic distance (+ cross-entropy on phases).

For a prediction ``P`` and a label ``M`` of a crystal with proper point-group rotations ``{S}``,
every ``S @ M`` is the same physical orientation, so the orientation loss is
``min_S angle(P, S @ M)`` (radians). With ``beam_flip=True`` the minimum also runs over
``P @ diag(-1, -1, 1)``: off a zone axis the two give nearly the same disks and a network cannot
tell them apart (a loss without the flip stalls near 22 deg median, ../docs); the flip is resolved
afterwards against the physics.

With several phases, each sample uses its own phase's group: ``symmetry`` is then a
(n_phases, K, 3, 3) tensor, the groups padded to a common K with the identity
(:func:`~py4dstem_transformer.simulation.phases.padded_symmetry`). Every group holds the identity,
so the padding never changes the minimum and no mask is needed.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ..core.rotations import beam_flip, geodesic_angle

__all__ = ["orientation_loss", "total_loss", "PHASE_WEIGHT"]

#: Weight of the phase cross-entropy (nats) against the orientation loss (radians). 0.1 balances a
#: well-trained orientation loss (~0.02-0.05 rad) against a phase loss that should fall below 0.1.
PHASE_WEIGHT = 0.1


def orientation_loss(
    pred: torch.Tensor,
    true: torch.Tensor,
    symmetry: torch.Tensor,
    beam_flip_ambiguity: bool = True,
    phase: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Per-sample symmetry-reduced angle (radians), shape (B,).

    Parameters
    ----------
    pred, true : (B, 3, 3) tensors
    symmetry : (K, 3, 3) or (n_phases, K, 3, 3) tensor
        Proper rotations, crystal Cartesian frame; per phase, each group padded with the identity.
    beam_flip_ambiguity : bool
        Also minimise over the 180 deg rotation about the beam.
    phase : (B,) int64 tensor, optional
        Phase of each sample, selecting its group when ``symmetry`` is per phase.
    """
    pred, true = pred.float(), true.float()
    symmetry = symmetry.to(dtype=true.dtype, device=true.device)
    groups = symmetry[phase] if symmetry.dim() == 4 else symmetry[None]  # (B, K, 3, 3) or (1, K, 3, 3)
    candidates = groups @ true[:, None]  # (B, K, 3, 3)
    angles = geodesic_angle(pred[:, None], candidates)  # (B, K)
    if beam_flip_ambiguity:
        angles = torch.minimum(angles, geodesic_angle(beam_flip(pred)[:, None], candidates))
    return angles.min(dim=1).values


def total_loss(
    output: dict,
    true: torch.Tensor,
    symmetry: torch.Tensor,
    beam_flip_ambiguity: bool = True,
    phase: Optional[torch.Tensor] = None,
    phase_weight: float = PHASE_WEIGHT,
):
    """Mean orientation loss, plus ``phase_weight`` x cross-entropy when the model has a phase head.

    Returns ``(loss, per_sample_angle)``.
    """
    angle = orientation_loss(output["matrix"], true, symmetry, beam_flip_ambiguity, phase)
    loss = angle.mean()
    if "phase_logits" in output and phase is not None:
        loss = loss + phase_weight * F.cross_entropy(output["phase_logits"], phase)
    return loss, angle
