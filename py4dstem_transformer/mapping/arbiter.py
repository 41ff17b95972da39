"""Stage ``arbitrate``: a near tie between two distinct candidates decided by the disks' relative intensities.

The score (:mod:`.score`) is a cosine between smoothed images with intensities to a low power: it asks which
disks are present, and a pattern's beam-flip partner (or a twin) puts its disks in the same places. Where the
best candidate's best *distinct* rival (more than ``MapConfig.margin_deg`` away, after crystal symmetry)
scores within ``ArbiterConfig.tie`` of it, the two are compared on the intensity profile instead: each
candidate's reflections get the kinematic intensities of a foil of thickness ``t``,

``I_g(t) = |F_g|^2 sinc^2(s_g t)``  (``s_g`` the excitation error, 1/A; ``t`` in A; ``sinc(x) = sin(pi x) / (pi x)``),

and the profile fit is the best Pearson correlation, over a grid of thicknesses, of ``I ** power`` between the
observed disks and the reflections (each observed disk assigned to the nearest reflection within ``radius``;
a reflection with no disk counts as observed 0, a disk with no reflection as simulated 0). A thickness fit
reads which side of the Ewald sphere each reflection lies on, which is what tells a pattern from its beam flip
off a zone axis; the mean-subtracted correlation reads the relative intensities, where the score reads
presence. The rival whose profile fits better takes first place: it is ranked first (``MapBatch.order``)
while every candidate keeps its own ``score`` (so the reported ``corr`` and the confidence's margin stay the
score's, and the margin of a decided tie is at most 0).

Measured (docs/benchmarks.md, "Disk positions as a disk finder places them"): on py4DSTEM's exactly placed disks
the joint Cu / Cu2O model's Cu2O gained 0.5-4 points in every condition tried and the Cu model was level; with the
disks placed with a disk finder's noise (0.003-0.01 1/A) it lost 1-3 points, because the profile's excitation
errors need the tilt to a few hundredths of a degree. So it is off by default (``tie = 0``) and in both shipped
models; ``max_residual`` can limit it to candidates that place the disks that precisely.
Skipped for precession data (its cycle-averaged intensities are no single-thickness profile) and without the
refinement (``refine=False``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ..core.kinematics import excitation_error, simulate_disks
from .batch import MapBatch
from .config import ArbiterConfig, MapConfig
from .phase import Phase
from .rank import rank_distinct
from .score import square_distances, tokens_to_xy

__all__ = ["near_ties", "near_tie_pairs", "rivals_first", "profile_fit", "arbitrate"]


def near_ties(candidates: torch.Tensor, score: torch.Tensor, symmetry: torch.Tensor, margin_deg: float,
              tie: float):
    """Each pattern's best candidate and its best distinct rival (:func:`~.rank.rank_distinct`'s first two matches),
    where the rival scores within ``tie``.

    Parameters
    ----------
    candidates : (b, C, 3, 3); score : (b, C) (-1 for repeats); symmetry : (S, 3, 3).

    Returns
    -------
    ``(rows (t,), best (t,), rival (t,))`` int64: the patterns with a near tie and the two candidates' indices.
    """
    _, corr, _, pick = rank_distinct(candidates, score, 2, symmetry, margin_deg, margin_deg)  # (b, 2): 0 if none left
    rows = torch.nonzero((corr[:, 0] > 0) & (corr[:, 1] > 0) & (corr[:, 1] >= corr[:, 0] - tie)).flatten()
    best, rival = pick[rows, 0], pick[rows, 1]
    return rows, best, rival


def near_tie_pairs(batch: MapBatch, phase: Phase, margin_deg: float, tie: float, min_disks: int):
    """:func:`near_ties` of the patterns of ``batch`` with at least ``min_disks`` disks, with the two candidates of each:
    ``(rows (t,), best (t,), rival (t,), matrix (t, 2, 3, 3), shift (t, 2, 2))`` (``matrix`` and ``shift``, the
    candidates' origin errors, on ``batch.device``), or None where there is none."""
    rows, best, rival = near_ties(batch.candidates.cpu(), batch.score, phase.symmetry, margin_deg, tie)
    enough = batch.tokens.counts[rows].cpu() >= min_disks
    rows, best, rival = rows[enough], best[enough], rival[enough]
    if len(rows) == 0:
        return None
    pair = torch.stack([best, rival], 1)  # (t, 2)
    on = batch.candidates.device
    matrix = batch.candidates[rows[:, None].to(on), pair.to(on)].to(batch.device)
    shift = batch.shift[rows[:, None], pair] if batch.shift is not None else torch.zeros(len(rows), 2, 2)
    return rows, best, rival, matrix, shift.to(batch.device)


def rivals_first(batch: MapBatch, rows: torch.Tensor, best: torch.Tensor, rival: torch.Tensor,
                 swap: torch.Tensor) -> MapBatch:
    """``batch`` with each ``rival`` ranked above its ``best`` (``order``) where ``swap``; the scores stay."""
    order = (batch.order if batch.order is not None else batch.score).clone()
    r, j, i = rows[swap], rival[swap], best[swap]
    order[r, j] = batch.score[r, i] + 1e-3  # above the best and everything near it (all score at most the best)
    return dataclasses.replace(batch, order=order)


def profile_fit(observed: torch.Tensor, observed_mask: torch.Tensor, matrix: torch.Tensor, shift: torch.Tensor,
                phase: Phase, config: ArbiterConfig):
    """``(fit (B,), residual (B,))``: the profile fit (best Pearson correlation over the thickness grid, in [-1, 1];
    -1 where undefined) and the RMS distance (1/A) of the assigned disks to their reflections (inf if none).

    Parameters
    ----------
    observed : (B, N, 3) disks ``(qx, qy, I)`` (1/A, lab frame; any intensity scale); observed_mask : (B, N).
    matrix : (B, 3, 3) the candidates (py4DSTEM convention); shift : (B, 2) their origin errors (1/A:
        observed = simulated + shift).
    """
    refl = phase.reflections
    reach = torch.linalg.vector_norm(observed[..., :2], dim=-1).masked_fill(~observed_mask, 0.0).amax(1) + config.radius
    disks, mask, index = simulate_disks(matrix.float(), refl, config.sigma_excitation_error, config.max_reflections,
                                        return_index=True)  # (B, M, 3), (B, M), (B, M)
    g = refl.g.to(matrix.device)[index]  # (B, M, 3) crystal frame
    gz = (g @ matrix.float())[..., 2]  # lab z
    g2 = (g * g).sum(-1)
    sg = excitation_error(gz, g2, refl.wavelength)  # (B, M), 1/A
    mask = mask & (torch.linalg.vector_norm(disks[..., :2], dim=-1) <= reach[:, None])
    f2 = refl.intensity.to(matrix.device)[index]  # |F|^2, relative
    t = torch.as_tensor(np.geomspace(config.thickness[0], config.thickness[1], config.thicknesses),
                        dtype=torch.float32, device=matrix.device)  # (T,)
    model = f2[:, None] * torch.sinc(sg[:, None] * t[None, :, None]) ** 2  # (B, T, M)
    # observed disks -> nearest reflection within radius
    xy = disks[..., :2] + shift[:, None].float()
    d2 = square_distances(observed[..., :2].float(), xy).masked_fill(~mask[:, None], torch.inf)  # (B, N, M)
    near_d2, near = d2.min(-1)
    hit = observed_mask & (near_d2 < config.radius**2)
    intensity = observed[..., 2].float().clamp_min(0.0)
    at = torch.zeros_like(f2).scatter_add_(1, near, torch.where(hit, intensity, 0.0))  # (B, M)
    extra = torch.where(observed_mask & ~hit, intensity, 0.0)  # (B, N)
    valid = torch.cat([mask, observed_mask & ~hit], 1)  # (B, M + N)
    x = torch.cat([at, extra], 1).pow(config.power)[:, None]  # (B, 1, M + N)
    y = torch.cat([model / model.amax(-1, keepdim=True).clamp_min(1e-30), torch.zeros_like(extra)[:, None].expand(
        -1, len(t), -1)], -1).pow(config.power)  # (B, T, M + N)
    w = valid[:, None].float()
    n = w.sum(-1).clamp_min(1.0)
    xm, ym = (x * w).sum(-1, keepdim=True) / n[..., None], (y * w).sum(-1, keepdim=True) / n[..., None]
    xc, yc = (x - xm) * w, (y - ym) * w
    r = (xc * yc).sum(-1) / torch.sqrt((xc * xc).sum(-1) * (yc * yc).sum(-1)).clamp_min(1e-12)  # (B, T)
    ok = (valid.sum(-1) >= 3) & (hit.sum(-1) >= 1)
    residual = torch.sqrt(torch.where(hit, near_d2, 0.0).sum(-1) / hit.sum(-1).clamp_min(1))
    return (torch.where(ok, r.amax(-1), torch.full_like(r[:, 0], -1.0)),
            torch.where(hit.any(-1), residual, torch.full_like(residual, torch.inf)))


def arbitrate(batch: MapBatch, phase: Phase, config: MapConfig) -> MapBatch:
    """Stage: where a near-tied distinct rival's intensity profile fits the disks better than the best
    candidate's (:func:`profile_fit`), the rival is ranked first (``order``); nothing else changes. A no-op with
    ``config.arbiter.tie <= 0``, without the refinement (``refine=False``: the network's answers lie a degree or two
    off, where their disks miss the pattern's), for precession data, and where no pattern has a near tie."""
    cfg = config.arbiter
    if cfg.tie <= 0 or not batch.query.refine or phase.reflections.precession:
        return batch
    ties = near_tie_pairs(batch, phase, config.margin_deg, cfg.tie, cfg.min_disks)
    if ties is None:
        return batch
    rows, best, rival, matrix, shift = ties  # matrix (t, 2, 3, 3), shift (t, 2, 2)
    device = batch.device
    obs = tokens_to_xy(batch.tokens.tokens[rows]).to(device)
    obs_mask = batch.tokens.mask[rows].to(device)
    fit, residual = profile_fit(obs.repeat_interleave(2, 0), obs_mask.repeat_interleave(2, 0), matrix.reshape(-1, 3, 3),
                                shift.reshape(-1, 2), phase, cfg)
    fit, residual = fit.view(-1, 2).cpu(), residual.view(-1, 2).cpu()
    precise = residual.amax(1) <= cfg.max_residual  # both placed well enough for their excitation errors to mean much
    return rivals_first(batch, rows, best, rival, precise & (fit[:, 1] > fit[:, 0] + cfg.margin))
