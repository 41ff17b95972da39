"""How well a set of simulated disks explains the observed ones: a normalised correlation in [0, 1].

Both disk sets are treated as sums of Gaussians of width ``kernel`` (1/A) weighted by
``intensity ** power`` (as ACOM weights intensities by a power, 0.25 by default there), and the score
is the cosine between the two smoothed images, computed in closed form from pairwise distances:

``corr = <obs, sim> / sqrt(<obs, obs> <sim, sim>)``, ``<a, b> = sum_ij a_i b_j exp(-|x_i - y_j|^2 / 4 kernel^2)``.

1 means the simulated pattern reproduces the observed disks and their relative intensities; it falls
towards 0 as disks are missing, extra or misplaced. It is the confidence reported as ``corr`` and the
arbiter between near-ambiguous candidates (the beam flip), vectorized over the batch.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

import torch

from ..core.kinematics import simulate_disks
from .batch import MapBatch
from .config import MapConfig
from .phase import Phase

__all__ = ["correlation", "tokens_to_xy", "square_distances", "SEPARATED_KERNELS", "disk_limit", "kinematic_disks",
           "score"]


def tokens_to_xy(tokens: torch.Tensor) -> torch.Tensor:
    """(B, N, 3) tokens ``(r, theta, I)`` -> (B, N, 3) disks ``(qx, qy, I)``."""
    r, theta, intensity = tokens.unbind(-1)
    return torch.stack([r * torch.cos(theta), r * torch.sin(theta), intensity], -1)


def square_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B, N, M) squared distances between (B, N, 2) and (B, M, 2) points, written out (for a few dozen
    points this beats ``cdist(a, b).square()``, and it is exact where cdist's matmul form is not)."""
    return (a[:, :, None, 0] - b[:, None, :, 0]).square_() + (a[:, :, None, 1] - b[:, None, :, 1]).square_()


def _overlap(a: torch.Tensor, wa: torch.Tensor, b: torch.Tensor, wb: torch.Tensor, kernel: float) -> torch.Tensor:
    """(B,) sum_ij wa_i wb_j exp(-|a_i - b_j|^2 / (4 kernel^2)) for (B, N, 2) and (B, M, 2) points."""
    d2 = square_distances(a, b)  # (B, N, M)
    # below e^-30 a pair adds nothing; the clamp keeps exp off its slow path for far-out arguments (~10x)
    k = torch.exp((-d2 / (4 * kernel**2)).clamp_min(-30.0))
    return torch.einsum("bn,bnm,bm->b", wa, k, wb)


#: Disks further apart than this many kernels add less than e^-16 (1e-7) of their weights to an overlap.
SEPARATED_KERNELS = 8.0


def correlation(observed: torch.Tensor, observed_mask: torch.Tensor, simulated: torch.Tensor,
                simulated_mask: torch.Tensor, kernel: float, power: float, separation: float = 0.0,
                radial_power: float = 0.0) -> torch.Tensor:
    """Normalised correlation of observed and simulated disks.

    Parameters
    ----------
    observed : (B, N, 3) tensor of ``(qx, qy, I)`` (1/A), e.g. :func:`tokens_to_xy` of the tokens.
    observed_mask : (B, N) bool tensor.
    simulated : (B, C, M, 3) or (B, M, 3) tensor of ``(qx, qy, I)``: C candidate patterns per observed
        one (from :func:`~py4dstem_transformer.core.kinematics.simulate_disks`).
    simulated_mask : (B, C, M) or (B, M) bool tensor.
    kernel : float
        Gaussian width (1/A) of each disk: the positional tolerance of the comparison.
    power : float
        Intensities enter as ``I ** power``.
    separation : float
        A lower bound (1/A) on the distance between two disks of one simulated pattern (e.g.
        :meth:`~py4dstem_transformer.core.kinematics.Reflections.min_disk_separation`). Where it exceeds
        ``SEPARATED_KERNELS`` kernels, ``<sim, sim>`` is its diagonal ``sum_j wb_j^2`` (the pairs add
        less than 1e-7 of it), which saves the (M, M) self-overlap of every candidate.
    radial_power : float
        Every disk's weight also times ``|q| ** radial_power`` (as ACOM weights its templates by radius; 0: not),
        so that the outer disks, which move most with the orientation, count more.

    Returns
    -------
    (B, C) or (B,) float32 tensor in [0, 1]; 0 where either set is empty.
    """
    single = simulated.dim() == 3
    if single:
        simulated, simulated_mask = simulated[:, None], simulated_mask[:, None]
    B, C, M, _ = simulated.shape
    observed, simulated = observed.float(), simulated.float()
    wa = observed[..., 2].clamp_min(0).pow(power) * observed_mask  # (B, N)
    wb = simulated[..., 2].clamp_min(0).pow(power) * simulated_mask  # (B, C, M)
    if radial_power:
        wa = wa * torch.linalg.vector_norm(observed[..., :2], dim=-1).pow(radial_power)
        wb = wb * torch.linalg.vector_norm(simulated[..., :2], dim=-1).pow(radial_power)
    wb = wb.reshape(B * C, M)
    a, b = observed[..., :2], simulated[..., :2].reshape(B * C, M, 2)
    aa = _overlap(a, wa, a, wa, kernel)  # (B,) once per observed pattern
    ab = _overlap(a.repeat_interleave(C, 0), wa.repeat_interleave(C, 0), b, wb, kernel)  # (B * C,)
    bb = (wb * wb).sum(-1) if separation > SEPARATED_KERNELS * kernel else _overlap(b, wb, b, wb, kernel)
    corr = (ab / torch.sqrt(aa.repeat_interleave(C, 0) * bb).clamp_min(1e-30)).clamp(0, 1).view(B, C)
    return corr[:, 0] if single else corr


def disk_limit(counts: torch.Tensor, config: MapConfig) -> torch.Tensor:
    """(B,) simulated disks scored per candidate, from each pattern's own (B,) disk count (so that its answer
    does not depend on the patterns batched with it): ``disks_extra`` more than it has (``disks_min`` to
    ``disks_max``), and all ``disks_max`` for a sparse pattern (``turns.max_disks``), where the reflections a
    candidate predicts but the pattern lacks are most of the evidence (docs/benchmarks.md)."""
    s = config.score
    return torch.where(counts <= config.turns.max_disks, s.disks_max, (counts + s.disks_extra).clamp(s.disks_min, s.disks_max))


def kinematic_disks(candidates: torch.Tensor, counts: torch.Tensor, phase: Phase, config: MapConfig,
                    device) -> Tuple[torch.Tensor, torch.Tensor]:
    """The scored kinematic disks of (b, C, 3, 3) candidates of patterns with (b,) disk ``counts``:
    ``(disks (b, C, M, 3), mask (b, C, M))`` on ``device``."""
    b, C = candidates.shape[:2]
    sim, mask = simulate_disks(candidates.reshape(-1, 3, 3).to(device), phase.reflections.to(device),
                               config.score.sigma_excitation_error,
                               max_disks=disk_limit(counts, config).repeat_interleave(C).to(device), **phase.window)
    return sim.view(b, C, *sim.shape[1:]), mask.view(b, C, -1)


@torch.inference_mode()
def score(batch: MapBatch, phase: Phase, config: MapConfig) -> MapBatch:
    """Stage: every candidate's :func:`correlation` with its pattern's disks (``score`` (b, C), -1 for a
    repeated hypothesis, which is not a candidate of its own) and its simulated ``disks`` (moved by the
    candidate's fitted origin error, ``shift``)."""
    device = batch.device
    sim, sim_mask = kinematic_disks(batch.candidates, batch.tokens.counts, phase, config, device)
    if batch.shift is not None and bool(batch.shift.any()):  # each candidate's disks where its fitted origin puts them
        sim = torch.cat([sim[..., :2] + batch.shift.to(sim)[:, :, None], sim[..., 2:]], -1)
    obs = tokens_to_xy(batch.tokens.tokens).to(device)
    corr = correlation(obs, batch.tokens.mask.to(device), sim, sim_mask, config.score.kernel, config.score.power,
                       phase.separation).cpu()
    if batch.distinct is not None:
        corr = corr.masked_fill(~batch.distinct, -1.0)
    return dataclasses.replace(batch, score=corr, disks=(sim, sim_mask))
