"""On-the-fly augmentation of training patterns, vectorized over a batch (training only).

Geometric augmentations change the label exactly:

* in-plane rotation by a continuous angle phi: disks rotate counter-clockwise by phi, the label
  becomes ``M @ Rz(-phi)`` (:func:`~py4dstem_transformer.core.rotations.rotation_about_z`);
* mirror ``qx -> -qx``: label ``M @ diag(1, -1, -1)``, valid for centrosymmetric crystals only
  (dynamical intensities included; see docs/).

Damage augmentations imitate disk detection on real data and leave the label alone: weakest disks
dropped, random disks dropped, only the brighter disks kept (dose), only those inside a radius (detector size), position jitter, multiplicative intensity noise, intensity
flattening (``I -> I**gamma``), spurious disks. Calibration augmentations imitate a detector whose
calibration is slightly off, and leave the label alone too: the pattern's disks go through
``q -> A q + t``, with ``A`` a Q pixel-size error (isotropic scale) times an ellipse (a stretch along
a random axis) and ``t`` an origin error (the direct beam placed a pixel or two off). Unlike the published code there is no Friedel-pair
condition on removals (theirs kept a removal only if it *broke* pairing, which looks inverted; real
detections break pairing all the time), and angles are continuous, so nothing wraps or clamps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from .data import Batch
from ..core.defaults import K_MAX
from ..core.patterns import rank_within_pattern
from ..core.rotations import MIRROR, rotate_xy, rotation_about_z

__all__ = ["AugmentConfig", "augment", "rotate_in_plane"]


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (``p_*``, per pattern) and magnitudes of the augmentations.

    Magnitudes are maxima: each affected pattern draws its own strength uniformly below them.
    Defaults are at least as strong as the damage the benchmarks test with (0.01 1/A jitter, 20%
    intensity noise, weakest 20% dropped, one spurious disk).
    """

    in_plane_rotation: bool = True
    mirror: bool = True  # used only when the training set says the crystal is centrosymmetric
    p_drop_weak: float = 0.4
    drop_weak_max: float = 0.35  # fraction of a pattern's disks
    p_drop_random: float = 0.3
    drop_random_max: float = 0.2  # per-disk probability
    p_jitter: float = 0.6
    jitter_max: float = 0.015  # 1/A, standard deviation per coordinate
    p_intensity_noise: float = 0.7
    intensity_noise_max: float = 0.35  # relative standard deviation
    p_flatten: float = 0.15
    # dose and detector size: patterns that keep only their brighter disks (a relative-intensity cut drawn
    # log-uniformly in [1e-3, dim_cut_max]: low dose, a high detection threshold) or only the disks inside a
    # radius drawn uniformly in [edge_min, k_max] (a smaller detector or camera length). Off by default
    p_dim: float = 0.0
    dim_cut_max: float = 0.1  # relative to the pattern's brightest disk
    p_edge: float = 0.0
    edge_min: float = 1.0  # 1/A
    p_spurious: float = 0.4
    spurious_max: int = 2  # disks added to an affected pattern
    spurious_intensity_max: float = 0.5  # relative to the pattern's brightest disk
    spurious_r_min: float = 0.3  # 1/A
    # calibration errors: off by default. A 25-minute fine-tune of the Cu model with them at p = 0.5 / 0.4 / 0.5
    # lost 11-13 points of network-alone accuracy on correctly calibrated data and gained 3-10 on miscalibrated
    # data (docs/models.md); the mapper's self-calibration and origin fit handle these errors instead.
    p_scale: float = 0.0
    scale_max: float = 0.03  # relative Q pixel-size error, drawn in +-scale_max
    p_ellipse: float = 0.0
    ellipse_max: float = 0.02  # relative stretch along a random axis, drawn in +-ellipse_max
    p_origin: float = 0.0
    origin_max: float = 0.03  # 1/A, origin error (every disk shifted by it), drawn in a disk of this radius
    k_max: float = K_MAX  # 1/A, outer radius for spurious disks

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def none(cls) -> "AugmentConfig":
        """Only the label-exact geometric augmentations, no damage."""
        return cls(p_drop_weak=0, p_drop_random=0, p_jitter=0, p_intensity_noise=0, p_flatten=0, p_spurious=0,
                   p_scale=0, p_ellipse=0, p_origin=0, p_dim=0, p_edge=0)


def rotate_in_plane(batch: Batch, phi: torch.Tensor, mirror: torch.Tensor) -> Batch:
    """Rotate each pattern by ``phi`` (B,) radians, then mirror ``qx -> -qx`` where ``mirror`` (B,)."""
    pos = batch.position
    qx, qy = rotate_xy(batch.qx, batch.qy, phi, pos)
    qx = torch.where(mirror[pos], -qx, qx)
    matrix = batch.matrix @ rotation_about_z(-phi).to(batch.matrix.dtype)
    flip = torch.where(mirror[:, None], torch.tensor(MIRROR, dtype=matrix.dtype), torch.ones(3, dtype=matrix.dtype))
    return Batch(qx, qy, batch.intensity, batch.counts, matrix * flip[:, None, :], batch.phase)


def augment(batch: Batch, config: AugmentConfig, generator: torch.Generator, centrosymmetric) -> Batch:
    """Randomly augmented copy of ``batch`` (the input is not modified).

    ``centrosymmetric``: bool, or a (B,) bool tensor (per pattern, e.g. per phase); only those
    patterns may be mirrored.
    """
    B = len(batch.counts)
    u = lambda *shape: torch.rand(*shape, generator=generator)  # noqa: E731
    phi = (2 * u(B) - 1) * math.pi if config.in_plane_rotation else torch.zeros(B)
    mirror = (u(B) < 0.5) & torch.as_tensor(centrosymmetric) & config.mirror
    batch = rotate_in_plane(batch, phi, mirror)
    batch = _miscalibrate(batch, config, u)
    batch = _perturb(batch, config, u)
    keep = _drop_mask(batch, config, u)
    return _add_spurious(_select(batch, keep), config, u)


def _per_pattern(p: float, magnitude: float, u, B: int) -> torch.Tensor:
    """(B,) strengths: U(0, magnitude) where the pattern is affected (probability p), else 0."""
    return (u(B) < p).float() * u(B) * magnitude


def _miscalibrate(batch: Batch, config: AugmentConfig, u) -> Batch:
    """Disks through ``q -> A q + t`` per pattern: ``A = s (I + e n n^T)`` (scale ``s``, stretch ``e`` along the
    unit vector ``n``), ``t`` an origin error. Patterns not drawn for an error keep ``s = 1``, ``e = 0``, ``t = 0``."""
    B, pos = len(batch.counts), batch.position
    if not (config.p_scale or config.p_ellipse or config.p_origin):
        return batch
    scale = 1 + (u(B) < config.p_scale).float() * (2 * u(B) - 1) * config.scale_max
    stretch = (u(B) < config.p_ellipse).float() * (2 * u(B) - 1) * config.ellipse_max
    axis = u(B) * math.pi
    radius = (u(B) < config.p_origin).float() * torch.sqrt(u(B)) * config.origin_max  # uniform in the disk
    turn = 2 * math.pi * u(B)
    nx, ny = torch.cos(axis)[pos], torch.sin(axis)[pos]
    along = stretch[pos] * (nx * batch.qx + ny * batch.qy)
    qx = scale[pos] * (batch.qx + along * nx) + (radius * torch.cos(turn))[pos]
    qy = scale[pos] * (batch.qy + along * ny) + (radius * torch.sin(turn))[pos]
    return Batch(qx, qy, batch.intensity, batch.counts, batch.matrix, batch.phase)


def _perturb(batch: Batch, config: AugmentConfig, u) -> Batch:
    B, P, pos = len(batch.counts), len(batch.qx), batch.position
    noise = _per_pattern(config.p_intensity_noise, config.intensity_noise_max, u, B)[pos]
    sigma = _per_pattern(config.p_jitter, config.jitter_max, u, B)[pos]
    gamma = torch.where(u(B) < config.p_flatten, u(B), torch.ones(B))[pos]
    normal = _normal(u, 3 * P).view(3, P)
    intensity = (batch.intensity * (1 + noise * normal[0]).clamp_min(0.05)) ** gamma
    qx, qy = batch.qx + sigma * normal[1], batch.qy + sigma * normal[2]
    return Batch(qx, qy, intensity, batch.counts, batch.matrix, batch.phase)


def _normal(u, n: int) -> torch.Tensor:
    """Standard normal draws from the uniform source (Box-Muller), so one generator drives all."""
    u1, u2 = u(n).clamp_min(1e-12), u(n)
    return torch.sqrt(-2 * torch.log(u1)) * torch.cos(2 * math.pi * u2)


def _drop_mask(batch: Batch, config: AugmentConfig, u) -> torch.Tensor:
    """(P,) True for disks that survive; every pattern keeps at least one disk."""
    B, P, pos = len(batch.counts), len(batch.qx), batch.position
    relative = _relative_intensity(batch, pos)
    rank = _rank_by_intensity(pos, relative)  # 0 = weakest disk of its pattern
    fraction = _per_pattern(config.p_drop_weak, config.drop_weak_max, u, B)
    keep = rank >= torch.floor(fraction * batch.counts)[pos]
    rate = _per_pattern(config.p_drop_random, config.drop_random_max, u, B)[pos]
    keep &= u(P) >= rate
    if config.p_dim:  # only the disks above a relative intensity drawn log-uniformly in [1e-3, dim_cut_max]
        low, high = math.log(1e-3), math.log(max(config.dim_cut_max, 1e-3))
        cut = torch.where(u(B) < config.p_dim, torch.exp(low + (high - low) * u(B)), torch.zeros(B))
        keep &= relative >= cut[pos]
    if config.p_edge:  # only the disks inside a radius drawn uniformly in [edge_min, k_max]
        radius = config.edge_min + (config.k_max - config.edge_min) * u(B)
        radius = torch.where(u(B) < config.p_edge, radius, torch.full((B,), math.inf))
        keep &= torch.hypot(batch.qx, batch.qy) <= radius[pos]
    survivors = torch.zeros(B, dtype=torch.int64).index_add_(0, pos, keep.long())
    keep |= (survivors == 0)[pos] & (rank == batch.counts[pos] - 1)  # keep the brightest if nothing left
    return keep


def _relative_intensity(batch: Batch, pos: torch.Tensor) -> torch.Tensor:
    """(P,) every disk's intensity relative to its pattern's brightest."""
    brightest = torch.zeros(len(batch.counts)).scatter_reduce_(0, pos, batch.intensity, "amax")
    return batch.intensity / brightest[pos].clamp_min(1e-30)


def _rank_by_intensity(pos: torch.Tensor, relative: torch.Tensor) -> torch.Tensor:
    """(P,) rank of every disk within its pattern by ``relative`` intensity, 0 = the weakest."""
    order, rank_in_order = rank_within_pattern(pos, relative)
    rank = torch.empty_like(pos)
    rank[order] = rank_in_order
    return rank


def _select(batch: Batch, keep: torch.Tensor) -> Batch:
    counts = torch.zeros_like(batch.counts).index_add_(0, batch.position, keep.long())
    return Batch(batch.qx[keep], batch.qy[keep], batch.intensity[keep], counts, batch.matrix, batch.phase)


def _add_spurious(batch: Batch, config: AugmentConfig, u) -> Batch:
    B = len(batch.counts)
    n_new = torch.where(u(B) < config.p_spurious, torch.floor(u(B) * config.spurious_max).long() + 1, 0)
    total = int(n_new.sum())
    if total == 0:
        return batch
    owner = torch.repeat_interleave(torch.arange(B), n_new, output_size=total)
    r = config.spurious_r_min + (config.k_max - config.spurious_r_min) * u(total)
    theta = (2 * u(total) - 1) * math.pi
    pos = batch.position
    brightest = torch.zeros(B).scatter_reduce_(0, pos, batch.intensity, "amax")
    intensity = brightest[owner] * config.spurious_intensity_max * u(total).clamp_min(0.02)
    pattern = torch.cat([pos, owner])
    order = torch.argsort(pattern, stable=True)  # regroup disks pattern after pattern
    cat = lambda a, b: torch.cat([a, b])[order]  # noqa: E731
    return Batch(cat(batch.qx, r * torch.cos(theta)), cat(batch.qy, r * torch.sin(theta)),
                 cat(batch.intensity, intensity), batch.counts + n_new, batch.matrix, batch.phase)
