"""Polish: a pattern search on the rotation that maximizes the correlation score itself.

Gauss-Newton (:mod:`.refine`) fits the disks each candidate has been assigned to; it never sees the
reflections a candidate predicts but the pattern lacks, nor the disks it leaves unexplained. The
correlation (:mod:`.score`) sees both, and it is what chooses between candidates (the beam flip).
Polishing every candidate on that same score makes the choice fair: each competes at its best, not
where the fit happened to stop. On jittery disks it is also the more precise estimate.

The search, vectorized over the batch: at step sizes ``steps_deg`` (coarse to fine), try the six
rotations by +-step about the lab x, y and z axes, keep the best if it beats the current score, and
repeat ``repeats`` times per step size. Each trial is cheap because what can change is fixed first:

- the reflections: those a candidate excites in a window widened by ``window_margin`` (1/A, how far
  disks move over the whole search), at most ``reflections`` of them;
- the pairing: each observed disk with its nearest of those reflections. Disks of a crystal lie
  much further apart than the kernel, so the closed-form correlation reduces to these pairs:
  ``<obs, sim> = sum_i wa_i wb_j(i) exp(-|q_i - x_j(i)|^2 / 4 kernel^2)``, ``<sim, sim> = sum_j wb_j^2``
  and ``<obs, obs> = sum_i wa_i^2``.

The mapper re-scores the result with the full :func:`~.score.correlation`, which does not rely on
the pairing.
"""

from __future__ import annotations


import dataclasses

import numpy as np
import torch

from ..core.kinematics import Reflections, excited_log_intensity, simulate_disks
from ..core.rotations import exp_so3
from .batch import MapBatch
from .config import MapConfig, PolishConfig, ScoreConfig
from .phase import Phase
from .rank import rank_distinct
from .score import disk_limit, score as score_stage, tokens_to_xy

__all__ = ["polish_orientations", "near_ties", "polish"]

_AXES = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [-1, 0, 0], [0, -1, 0], [0, 0, -1]])  # trial order


def polish_orientations(matrix: torch.Tensor, observed: torch.Tensor, observed_mask: torch.Tensor,
                        reflections: Reflections, score: ScoreConfig, max_disks, k_max: float = None, r_min: float = 0.0,
                        config: PolishConfig = PolishConfig()):
    """Maximize the correlation of (B, 3, 3) orientations with their observed disks.

    Parameters
    ----------
    matrix : (B, 3, 3) tensor, starting orientations (lab -> crystal).
    observed : (B, N, 3) tensor of ``(qx, qy, I)`` in 1/A, lab frame.
    observed_mask : (B, N) bool tensor.
    reflections : Reflections of the crystal.
    score : ScoreConfig
        The score's settings (excitation-error width, kernel, power).
    max_disks, k_max, r_min
        The disks scored, as in :func:`~.kinematics.simulate_disks` (``max_disks``: an int, or each
        pattern's own (B,) limit) and the window (1/A) they are read in.

    Returns
    -------
    ``(matrix (B, 3, 3) float32, score (B,) float32)``: polished proper rotations and their score
    (paired form). An orientation moves only where that raises its score.
    """
    margin = config.window_margin
    limit = torch.as_tensor(max_disks, device=matrix.device).expand(len(matrix))  # (B,)
    kept = min(config.reflections, int(limit.max()) + config.extra_reflections)
    _, sim_mask, index = simulate_disks(matrix, reflections, score.sigma_excitation_error + margin / 3, kept,
                                        None if k_max is None else k_max + margin, max(r_min - margin, 0.0),
                                        return_index=True)
    g = reflections.g.to(matrix.device)[index]  # (B, K, 3) crystal frame
    term = _Score(g, torch.log(reflections.intensity.to(matrix.device)[index]), sim_mask, observed.float(),
                  observed_mask, reflections.wavelength, score.sigma_excitation_error, score.kernel, score.power, limit,
                  k_max, r_min, reflections.precession)
    rot = matrix.float().transpose(-1, -2)  # (B, 3, 3) crystal -> lab
    g_lab = g @ matrix.float()  # (B, K, 3) rows of R g
    term.pair = torch.cdist(term.q, g_lab[..., :2]).masked_fill(~sim_mask[:, None, :], torch.inf).argmin(-1)  # (B, N)
    g_pair = torch.gather(g, 1, term.pair[..., None].expand(-1, -1, 3))  # (B, N, 3) crystal frame
    rot, best = rot.clone(), None
    axes = _AXES.to(rot.device)
    for step in config.steps_deg:
        c, s = float(np.cos(np.radians(step))), float(np.sin(np.radians(step)))
        active = torch.arange(len(rot), device=rot.device)  # a row that did not move would try the same turns again
        for _ in range(config.repeats):
            if len(active) == 0:
                break
            g_lab, paired = g[active] @ rot[active].transpose(-1, -2), g_pair[active] @ rot[active].transpose(-1, -2)
            center, value = term.trials(g_lab, paired, c, s, active)  # (A,), (A, 6)
            best = center if best is None else best  # the first round has every row
            value, which = value.max(1)
            better = value > best[active]
            active, which = active[better], which[better]
            best[active] = value[better]
            rot[active] = exp_so3(axes[which] * float(np.radians(step))) @ rot[active]
    if best is None:
        rows = torch.arange(len(rot), device=rot.device)
        best = term.trials(g @ rot.transpose(-1, -2), g_pair @ rot.transpose(-1, -2), 1.0, 0.0, rows)[0]
    return rot.transpose(-1, -2), best


class _Score:
    """The paired correlation of an orientation and of its six turns, from its lab-frame reflections."""

    def __init__(self, g, log_f2, sim_mask, observed, observed_mask, wavelength, sigma, kernel, power, limit,
                 k_max, r_min, precession=0.0):
        self.g2 = (g * g).sum(-1)  # (B, K)
        self.log_f2, self.sim_mask, self.wavelength = log_f2, sim_mask, wavelength
        self.precession = precession
        self.q = observed[..., :2]  # (B, N, 2)
        self.wa = observed[..., 2].clamp_min(0).pow(power) * observed_mask  # (B, N)
        self.aa = (self.wa * self.wa).sum(-1)  # (B,)
        self.sigma, self.kernel, self.power, self.limit = sigma, kernel, power, limit  # limit: (B,) disks scored
        self.k_max, self.r_min = k_max, r_min
        self.pair = None  # (B, N) index of each observed disk's reflection

    def trials(self, g_lab: torch.Tensor, paired: torch.Tensor, c: float, s: float, rows: torch.Tensor):
        """Scores ``(center (A,), turns (A, 6))`` of orientations and their turns by +-(cos c, sin s) about
        x, y, z (``_AXES`` order), given their (A, K, 3) reflections and (A, N, 3) paired reflections,
        for the (A,) ``rows`` of the batch."""
        g2, log_f2, sim_mask = self.g2[rows], self.log_f2[rows], self.sim_mask[rows]
        q, wa, aa, pair = self.q[rows], self.wa[rows], self.aa[rows], self.pair[rows]
        x, y, z = g_lab.unbind(-1)  # (B, K)
        gz = torch.stack([z, y * s + z * c, z * c - x * s, z * c - y * s, z * c + x * s], 1)  # center, +x, +y, -x, -y
        log_w = self._log_weights(gz, g2, log_f2, sim_mask)  # (B, 5, K); a turn about z keeps every excitation error
        limit = self.limit[rows, None, None]  # (A, 1, 1)
        if bool((torch.isfinite(log_w).sum(-1, keepdim=True) > limit).any()):  # the score keeps the brightest `limit`
            ranked = log_w.sort(-1, descending=True).values
            cut = torch.gather(ranked, -1, (limit - 1).clamp_max(log_w.shape[-1] - 1).expand(-1, log_w.shape[1], 1))
            log_w = log_w.masked_fill(log_w < cut, -torch.inf)
        log_w = log_w[:, [0, 1, 2, 0, 3, 4, 0]]  # (B, 7, K): center, then _AXES order
        wb = torch.exp(log_w.clamp_min(-80.0)) * torch.isfinite(log_w)
        bb = (wb * wb).sum(-1)  # (B, 7)
        wb_pair = torch.gather(wb, 2, pair[:, None].expand(-1, 7, -1))  # (B, 7, N)
        px, py, pz = paired.unbind(-1)  # (B, N)
        xs = torch.stack([px, px, px * c + pz * s, px * c - py * s, px, px * c - pz * s, px * c + py * s], 1)
        ys = torch.stack([py, py * c - pz * s, py, px * s + py * c, py * c + pz * s, py, py * c - px * s], 1)
        d2 = (q[:, None, :, 0] - xs) ** 2 + (q[:, None, :, 1] - ys) ** 2  # (B, 7, N)
        k = torch.exp((-d2 / (4 * self.kernel**2)).clamp_min(-30.0))
        ab = (wa[:, None] * wb_pair * k).sum(-1)
        score = ab / torch.sqrt(aa[:, None] * bb).clamp_min(1e-30)
        return score[:, 0], score[:, 1:]

    def _log_weights(self, gz: torch.Tensor, g2: torch.Tensor, log_f2: torch.Tensor, sim_mask: torch.Tensor) -> torch.Tensor:
        """(A, S, K) lab z of the reflections (``g2`` their |g|^2, ``log_f2`` their ln |F|^2, (A, K)) ->
        ``power * ln`` of their kinematic intensities, -inf where not scored."""
        g2 = g2[:, None]  # turns keep |g|, so the in-plane radius^2 is g2 - gz^2
        log_i = excited_log_intensity(gz, g2, g2 - gz**2, log_f2[:, None], self.wavelength, self.sigma, self.k_max,
                                      self.r_min, self.precession)
        return (self.power * log_i).masked_fill(~(sim_mask[:, None] & torch.isfinite(log_i)), -torch.inf)


def near_ties(batch: MapBatch, phase: Phase, config: MapConfig) -> torch.Tensor:
    """(b,) bool: patterns whose best two distinct candidates (more than ``config.margin_deg`` apart after crystal
    symmetry) score within ``config.polish.tie_margin`` of each other, as refined."""
    corr = rank_distinct(batch.candidates.cpu(), score_stage(batch, phase, config).score, 2, phase.symmetry,
                         config.margin_deg, config.margin_deg)[1]  # (b, 2); 0 where nothing distinct is left
    return (corr[:, 0] - corr[:, 1]) < config.polish.tie_margin


@torch.inference_mode()
def polish(batch: MapBatch, phase: Phase, config: MapConfig) -> MapBatch:
    """Stage: where the refinement found a pattern's disks too noisy to pin its candidates by their
    positions (every fresh candidate's noise above ``config.polish.min_position_noise``), where the pattern has at
    most ``config.polish.sparse_disks`` disks (when > 0), or where its best two
    distinct candidates are a near tie (:func:`near_ties`, with ``config.polish.tie_margin > 0``), its fresh
    candidates are polished on their score (:func:`polish_orientations`); all of a pattern's or none, so
    that they compete on equal terms. A no-op with ``config.polish = None`` or nothing refined."""
    if config.polish is None or batch.noise is None:
        return batch
    noisy = batch.noise.min(1).values > config.polish.min_position_noise  # (b,)
    if config.polish.sparse_disks:  # and the sparse patterns, whose noise estimate the refinement can fit away
        noisy = noisy | (batch.tokens.counts.cpu() <= config.polish.sparse_disks)
    if config.polish.tie_margin > 0 and not bool(noisy.all()):
        noisy = noisy | near_ties(batch, phase, config)
    chosen = batch.fresh.cpu() & noisy[:, None]  # (b, C)
    if not bool(chosen.any()):
        return batch
    device, (b, C) = batch.device, chosen.shape
    rows = torch.arange(b).repeat_interleave(C)[chosen.flatten()]
    obs, mask = tokens_to_xy(batch.tokens.tokens)[rows].to(device), batch.tokens.mask[rows].to(device)
    if batch.shift is not None:  # each candidate's disks about its own fitted origin
        obs = torch.cat([obs[..., :2] - batch.shift.reshape(b * C, 2)[chosen.flatten()][:, None].to(obs), obs[..., 2:]], -1)
    flat = batch.candidates.reshape(b * C, 3, 3)
    at = chosen.flatten().to(flat.device)
    polished, _ = polish_orientations(flat[at], obs, mask, phase.reflections.to(device), config.score,
                                      disk_limit(batch.tokens.counts, config)[rows].to(device),
                                      config=config.polish, **phase.window)
    out = flat.clone()
    out[at] = polished.to(out)
    return dataclasses.replace(batch, candidates=out.view(b, C, 3, 3))
