"""Continuous refinement of orientations against the observed disks, vectorized over a batch.

The network is fast but ~1-3 deg off; the physics is precise. For each candidate orientation ``M``
(py4DSTEM convention, ``g_lab = M.T @ g``), a few robust Gauss-Newton steps on a small rotation
``omega`` of the lab frame (``M.T -> exp([omega]x) M.T``):

1. simulate the reflections the candidate excites (a wide excitation window, so reflections that a
   slightly different tilt would excite are available), keeping their crystal-frame ``g``;
2. assign every observed disk to the nearest simulated disk within a radius that shrinks as the
   fit converges (unassigned disks are ignored, so spurious disks do no harm);
3. residuals: the in-plane position ``(g_lab,x - qx, g_lab,y - qy)`` (1/A), and the kinematic
   intensity law ``ln I = ln c + ln |F|^2 - s_g^2 / 2 sigma^2`` with the excitation error
   ``s_g ~ g_lab,z - lambda |g|^2 / 2`` and an unknown scale ``c`` fitted alongside;
4. solve the normal equations for ``(omega, ln c, tau)`` (Marquardt-damped) and update; repeat.

With ``fit_origin`` the fit also moves the pattern's origin: ``t`` (1/A), a shift of every observed disk
(the direct beam is rarely placed to better than a pixel), with a Gaussian prior of width
``sigma_origin``; positions are compared as ``q - t``. A shift and the in-plane angle are told apart
because a turn moves disks in proportion to their radius and a shift moves all alike.

How much the positions count against the intensities follows the data: each pattern's position
noise is estimated from its own assigned residuals (their RMS, between ``sigma_position_floor`` and
``sigma_position``). Precisely measured disks then pin the orientation by their positions, which
hold for any thickness, while jittery ones lean on the intensities as before.

The position residuals fix the in-plane angle; the intensities fix the tilt (which moves projected
positions only to second order) through how strongly each reflection is excited. At the truth the
residuals of noise-free kinematic disks vanish, so the fit has no bias there; on Bloch-wave data
the intensity law is approximate, hence its generous ``sigma_log_intensity``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..core.kinematics import Reflections, brightest_excited
from ..core.rotations import exp_so3
from .batch import MapBatch
from .config import MapConfig, RefineConfig
from .phase import Phase
from .score import square_distances, tokens_to_xy

__all__ = ["refine_orientations", "refine"]


_FAR = 1e4  # 1/A: where a reflection that is not excited is put, so that no disk is assigned to it


def refine_orientations(matrix: torch.Tensor, observed: torch.Tensor, observed_mask: torch.Tensor,
                        reflections: Reflections, config: RefineConfig = RefineConfig(), k_max: float = None,
                        r_min: float = 0.0, return_noise: bool = False, return_shift: bool = False):
    """Refine (B, 3, 3) orientations against observed disks.

    Parameters
    ----------
    matrix : (B, 3, 3) tensor, starting orientations (lab -> crystal).
    observed : (B, N, 3) tensor of ``(qx, qy, I)`` in 1/A, lab frame, I relative to the brightest disk.
    observed_mask : (B, N) bool tensor.
    reflections : Reflections of the crystal.
    k_max, r_min : float, optional
        Radial window of the observed disks (simulated candidates are cut to it as well).

    Returns
    -------
    (B, 3, 3) float32 tensor of refined proper rotations. Patterns with fewer than two assigned
    disks stay where they started. With ``return_noise`` also the (B,) position noise (1/A) estimated
    at the last step, within ``[sigma_position_floor, sigma_position]``; with ``return_shift`` also the
    (B, 2) fitted origin error ``t`` (1/A; zeros unless ``config.fit_origin``): observed = simulated + t.
    """
    rot = matrix.float().transpose(-1, -2)  # (B, 3, 3): crystal -> lab
    q = observed[..., :2].float()  # (B, N, 2)
    log_i = torch.log(observed[..., 2].float().clamp_min(1e-6))  # (B, N)
    g_all, log_f2_all = reflections.g.to(matrix.device), torch.log(reflections.intensity.to(matrix.device))
    g2_all = (g_all * g_all).sum(-1)  # (G,)
    subset, subset_mask = _subset(matrix, g_all, g2_all, log_f2_all, reflections.wavelength, config, k_max, r_min,
                                  reflections.precession)
    if subset is None:  # every reflection, every iteration
        table_g, table_g2, table_log_f2 = g_all, g2_all, log_f2_all.expand(len(rot), -1)  # (G, 3), (G,), (B, G)
        selectable = table_log_f2
    else:  # (B, S, 3), (B, S), (B, S)
        table_g, table_g2, table_log_f2 = g_all[subset], g2_all[subset], log_f2_all[subset]
        selectable = table_log_f2.masked_fill(~subset_mask, -torch.inf)  # slots the subset did not fill: never
    law = torch.zeros(len(rot), 2, device=matrix.device)  # (ln c, tau): I = c |F|^2 exp(-tau s^2)
    law[:, 1] = 1 / (2 * config.sigma_excitation**2)
    shift = torch.zeros(len(rot), 2, device=matrix.device)  # (B, 2) origin error t: observed = simulated + t
    max_step = torch.deg2rad(torch.tensor(config.max_step_deg))
    for it in range(config.iterations):
        radius = config.radii[min(it, len(config.radii) - 1)]
        beam = rot[:, 2]  # (B, 3): lab z in the crystal frame; the excitations depend on it alone
        table_z = beam @ table_g.T if subset is None else (table_g @ beam[:, :, None])[..., 0]  # (B, T)
        # the max_reflections brightest within the candidate window, in no order (the assignment needs none)
        top, local = brightest_excited(table_z, table_g2, selectable, reflections.wavelength, config.candidate_sigma,
                                       config.max_reflections, k_max, r_min, False, reflections.precession)  # (B, K)
        sim_mask = torch.isfinite(top)
        index = local if subset is None else torch.gather(subset, 1, local)  # (B, K) into all reflections
        g_lab = g_all[index] @ rot.transpose(-1, -2)  # (B, K, 3): rows of (R g)
        log_f2 = torch.gather(table_log_f2, 1, local)  # (B, K)
        far = g_lab[..., :2].masked_fill(~sim_mask[..., None], _FAR)  # reflections not excited: out of reach
        q_t = q - shift[:, None]  # (B, N, 2) observed disks about the fitted origin
        d2 = square_distances(q_t, far)  # (B, N, K)
        best, j = d2.min(-1)  # nearest candidate reflection of every observed disk
        w = (observed_mask & (best < radius**2)).float()  # (B, N) assigned disks
        pair = _Pairs(torch.gather(g_lab, 1, j[..., None].expand(-1, -1, 3)), q_t,
                      log_i - torch.gather(log_f2, 1, j), w,
                      w * torch.exp(config.intensity_weight_power * log_i))
        sigma_xy = _position_noise(pair, config)  # (B,)
        step = _gauss_newton_step(pair, law, reflections.wavelength, config, sigma_xy,
                                  shift if config.fit_origin else None, reflections.precession)  # (B, 5) or (B, 7)
        omega = step[:, :3] * (max_step / step[:, :3].norm(dim=-1, keepdim=True).clamp_min(max_step))
        enough = (w.sum(-1) >= 2)[:, None]
        rot = exp_so3(omega * enough) @ rot
        law = law + step[:, 3:5] * enough
        law[:, 1].clamp_(min=0.0)
        if config.fit_origin:
            shift = shift + step[:, 5:] * enough
    out = (rot.transpose(-1, -2),) + ((sigma_xy,) if return_noise else ()) + ((shift,) if return_shift else ())
    return out[0] if len(out) == 1 else out


def _subset(matrix: torch.Tensor, g: torch.Tensor, g2: torch.Tensor, log_f2: torch.Tensor, wavelength: float,
            config: RefineConfig, k_max, r_min, precession: float = 0.0):
    """``(index (B, S), mask (B, S))`` of the reflections (``g`` (G, 3), ``|g|^2`` and ``ln |F|^2`` (G,)) each
    of (B, 3, 3) orientations can be assigned to over the whole fit: the brightest ``subset_reflections`` it
    excites in a window widened by ``subset_margin`` (how far excitation errors move while it converges).
    ``(None, None)`` when the subset would not be smaller than all reflections."""
    S = config.subset_reflections
    if not S or S >= len(g):
        return None, None
    margin = config.subset_margin
    top, index = brightest_excited(matrix[:, :, 2].float() @ g.T, g2, log_f2, wavelength,
                                   config.candidate_sigma + margin / 3, S, None if k_max is None else k_max + margin,
                                   max(r_min - margin, 0.0), False, precession)
    return index, torch.isfinite(top)


def _position_noise(p: "_Pairs", config: RefineConfig) -> torch.Tensor:
    """(B,) position noise (1/A) estimated from the assigned disks' residuals, clamped to the config's range."""
    e2 = ((p.g_lab[..., :2] - p.q) ** 2).sum(-1)  # (B, N)
    n = p.weight.sum(-1)
    rms = torch.sqrt((p.weight * e2).sum(-1) / (2 * n).clamp_min(1))  # per coordinate
    return rms.clamp(config.sigma_position_floor, config.sigma_position)


@dataclass
class _Pairs:
    """Observed disks and their assigned reflections, (B, N, ...)."""

    g_lab: torch.Tensor  # (B, N, 3) assigned reflection, lab frame
    q: torch.Tensor  # (B, N, 2) observed position
    log_ratio: torch.Tensor  # (B, N) ln(I_observed / |F|^2)
    weight: torch.Tensor  # (B, N) 1 where assigned
    intensity_weight: torch.Tensor  # (B, N) weight of the intensity residual


def _gauss_newton_step(p: _Pairs, law: torch.Tensor, lam: float, config: RefineConfig,
                       sigma_xy: torch.Tensor, shift: torch.Tensor = None, precession: float = 0.0) -> torch.Tensor:
    """One damped Gauss-Newton step (B, 5) in (omega, ln c, tau), or (B, 7) in (omega, ln c, tau, t) where the
    current (B, 2) origin error ``shift`` is given (``p.q`` is then already ``q - t``; prior width
    ``config.sigma_origin``).

    Residuals: in-plane position ``g_lab,xy - q`` (``sigma_xy`` (B,), 1/A) and the kinematic intensity law
    ``ln(I / |F|^2) - ln c + tau s^2`` (sigma_log_intensity in ln I), with ``tau = 1 / 2 sigma^2``
    and ``s ~ g_lab,z - lambda |g|^2 / 2`` the excitation error. ``law`` (B, 2) holds the current
    ``(ln c, tau)``; tau is pulled towards ``1 / 2 sigma_excitation^2`` by a weak prior, so the
    effective excitation width can follow the foil thickness. With a ``precession`` angle (rad) the law is the
    cycle-averaged one of :mod:`~..core.kinematics`: ``s^2`` becomes ``s^2 / k`` and ``ln I`` loses ``ln k / 2``,
    ``k = 1 + (phi r)^2 / 2 sigma_excitation^2`` at in-plane radius ``r`` (held fixed within a step).
    """
    x, y, z = p.g_lab.unbind(-1)  # (B, N) each
    zero = torch.zeros_like(x)
    # d g_lab / d omega = -[g_lab]x, row by row; |g| does not change, so d s / d omega = d g_z / d omega
    d_x, d_y, d_z = torch.stack([zero, z, -y], -1), torch.stack([-z, zero, x], -1), torch.stack([y, -x, zero], -1)
    s = z - 0.5 * lam * (p.g_lab * p.g_lab).sum(-1)  # (B, N) excitation error
    log_c, tau = law[:, :1], law[:, 1:]
    k = 1 + precession**2 * (x * x + y * y) / (2 * config.sigma_excitation**2)  # (B, N); 1 without precession
    e_i = p.log_ratio - log_c + 0.5 * torch.log(k) + tau * s**2 / k  # (B, N)
    # the three residuals of every disk (x, y, intensity) as rows of one (B, 3N, 5) Jacobian
    j_i = torch.cat([(2 * tau * s / k)[..., None] * d_z, -torch.ones_like(s)[..., None], (s**2 / k)[..., None]],
                    -1)  # (B, N, 5)
    pad = torch.zeros_like(d_x[..., :2])
    one = torch.ones_like(x)[..., None]
    if shift is None:
        jac = torch.stack([torch.cat([d_x, pad], -1), torch.cat([d_y, pad], -1), j_i], 2).flatten(1, 2)  # (B, 3N, 5)
    else:  # d (g - (q - t)) / d t = identity
        rows = [torch.cat([d_x, pad, one, 0 * one], -1), torch.cat([d_y, pad, 0 * one, one], -1),
                torch.cat([j_i, pad], -1)]
        jac = torch.stack(rows, 2).flatten(1, 2)  # (B, 3N, 7)
    e = torch.stack([x - p.q[..., 0], y - p.q[..., 1], e_i], 2).flatten(1, 2)  # (B, 3N)
    wx = p.weight / sigma_xy[:, None] ** 2
    wi = p.intensity_weight / config.sigma_log_intensity**2  # (B, N)
    if config.intensity_noise_power:  # the intensities count less where the positions are precise ...
        factor = (sigma_xy / config.sigma_position)[:, None] ** (2 * config.intensity_noise_power)  # (B, 1)
        if config.intensity_noise_max_disks:  # ... on sparse patterns only (few disks assigned)
            sparse = p.weight.sum(-1, keepdim=True) <= config.intensity_noise_max_disks  # (B, 1)
            factor = torch.where(sparse, factor, torch.ones_like(factor))
        wi = wi * factor
    w = torch.stack([wx, wx, wi], 2).flatten(1, 2)  # (B, 3N)
    weighted = (jac * w[..., None]).transpose(1, 2)  # (B, 5, 3N)
    a = weighted @ jac  # (B, 5, 5)
    b = (weighted @ e[..., None])[..., 0]  # (B, 5)
    tau0 = 1 / (2 * config.sigma_excitation**2)
    prior = config.tau_prior_weight / tau0**2  # weak prior on tau, in units of one disk's residual
    a[:, 4, 4] += prior
    b[:, 4] += prior * (tau[:, 0] - tau0)
    if shift is not None:  # Gaussian prior on the origin error, in the units of the position residuals
        origin_prior = 1 / config.sigma_origin**2
        a[:, 5, 5] += origin_prior
        a[:, 6, 6] += origin_prior
        b[:, 5:] += origin_prior * shift
    diag = a.diagonal(dim1=-2, dim2=-1)  # Marquardt: damp each parameter on its own scale
    a = a + torch.diag_embed(config.damping * diag + 1e-12)
    return -torch.linalg.solve(a, b[..., None])[..., 0]


@torch.inference_mode()
def refine(batch: MapBatch, phase: Phase, config: MapConfig) -> MapBatch:
    """Stage: the ``fresh`` candidates refined against their pattern's disks (:func:`refine_orientations`);
    ``noise`` gets their position noise (1/A), inf elsewhere. A no-op unless ``query.refine``."""
    if not batch.query.refine or not bool(batch.fresh.any()):
        return batch
    device, (b, C) = batch.device, batch.fresh.shape
    fresh = batch.fresh.cpu().flatten()
    rows = torch.arange(b).repeat_interleave(C)[fresh]  # pattern of every refined candidate
    obs, mask = tokens_to_xy(batch.tokens.tokens)[rows].to(device), batch.tokens.mask[rows].to(device)
    start = batch.candidates.reshape(b * C, 3, 3)[fresh.to(batch.candidates.device)].to(device)
    refined, noise, fitted = refine_orientations(start, obs, mask, phase.reflections.to(device), config.refine,
                                                 return_noise=True, return_shift=True, **phase.window)
    out = batch.candidates.reshape(b * C, 3, 3).to(device=device, dtype=torch.float32).clone()
    out[fresh.to(device)] = refined
    noise = torch.full((b * C,), torch.inf).masked_scatter_(fresh, noise.cpu()).view(b, C)
    shift = (batch.shift if batch.shift is not None else torch.zeros(b, C, 2)).reshape(b * C, 2).clone()
    shift[fresh] = fitted.cpu().to(shift.dtype)
    return dataclasses.replace(batch, candidates=out.view(b, C, 3, 3), noise=noise, shift=shift.view(b, C, 2))
