"""Rotation vocabulary, batched over any leading dimensions.

Convention (py4DSTEM's, stated once here and used everywhere in the package):

* An orientation matrix ``M`` (3, 3) maps **lab to crystal** coordinates. Its columns are the lab
  x, y and z axes written in the crystal's Cartesian frame; ``M[:, 2]`` is the beam direction
  (the zone axis). A reciprocal-lattice vector seen in the lab is ``g_lab = M.T @ g_crystal``.
* Crystal symmetry multiplies on the **left**: ``S @ M`` gives the same diffraction pattern for
  every proper point-group rotation ``S`` (crystal Cartesian frame).
* A 180 deg rotation about the beam multiplies on the **right**: ``M @ diag(-1, -1, 1)``
  (the "beam flip", a near-ambiguity of projected patterns off a zone axis).
* Mirroring a pattern ``qx -> -qx`` corresponds to ``M @ diag(1, -1, -1)`` for centrosymmetric
  crystals (a 180 deg rotation about lab x).

Every function accepts tensors of shape ``(..., 3, 3)`` (or ``(..., 9)`` where stated), preserves
``dtype`` and ``device``, and never loops in Python over the batch.
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np
import torch

__all__ = [
    "BEAM_FLIP",
    "MIRROR",
    "symmetric_orthogonalization",
    "geodesic_angle",
    "symmetry_min_angle",
    "random_rotations",
    "rotation_about_z",
    "rotation_about_x",
    "rotate_xy",
    "rotate_polar",
    "beam_flip",
    "skew",
    "exp_so3",
]

#: Right factor of a 180 deg rotation about the beam (lab z): ``M @ BEAM_FLIP``.
BEAM_FLIP = (-1.0, -1.0, 1.0)
#: Right factor of a 180 deg rotation about lab x, the label of a pattern mirrored ``qx -> -qx``.
MIRROR = (1.0, -1.0, -1.0)

_SVD_DTYPES = (torch.float32, torch.float64)


def symmetric_orthogonalization(x: torch.Tensor) -> torch.Tensor:
    """Project arbitrary 3x3 matrices onto SO(3) (the closest proper rotation, Frobenius norm).

    Uses the SVD ``X = U S V^T`` and returns ``U diag(1, 1, det(U V^T)) V^T``, the special
    orthogonal Procrustes solution (Levinson et al. 2020). Differentiable.

    Parameters
    ----------
    x : (..., 9) or (..., 3, 3) tensor
        Row-major 9-vectors (a network's output) or matrices.

    Returns
    -------
    (..., 3, 3) tensor, same dtype and device: orthonormal with determinant +1.
    """
    if x.shape[-1] == 9:
        x = x.reshape(*x.shape[:-1], 3, 3)
    if x.shape[-2:] != (3, 3):
        raise ValueError(f"expected (..., 9) or (..., 3, 3), got shape {tuple(x.shape)}")
    dtype = x.dtype
    work = x if dtype in _SVD_DTYPES else x.float()  # SVD has no half-precision kernels
    with torch.autocast(work.device.type, enabled=False):  # keep the products in full precision
        u, _, vh = torch.linalg.svd(work)
        det = torch.linalg.det(u @ vh)
        d = torch.ones_like(work[..., 0, :])  # (..., 3)
        d = torch.cat([d[..., :2], det[..., None]], dim=-1)
        r = (u * d[..., None, :]) @ vh
    return r.to(dtype)


def geodesic_angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle (radians, in [0, pi]) of the rotation taking ``a`` to ``b``: the angle of ``a^T b``.

    Uses ``atan2(|vee(D - D^T)| / 2, (tr D - 1) / 2)`` with ``D = a^T b``, accurate near 0 and pi
    (``arccos`` of the trace loses all precision there). Broadcasts over leading dimensions.
    """
    return _angle_of(a.transpose(-1, -2) @ b)


def _angle_of(d: torch.Tensor) -> torch.Tensor:
    """Rotation angle (radians) of (..., 3, 3) rotations ``d``, by the atan2 form of :func:`geodesic_angle`."""
    sin = 0.5 * torch.stack(
        [d[..., 2, 1] - d[..., 1, 2], d[..., 0, 2] - d[..., 2, 0], d[..., 1, 0] - d[..., 0, 1]],
        dim=-1,
    ).norm(dim=-1)
    cos = 0.5 * (d[..., 0, 0] + d[..., 1, 1] + d[..., 2, 2] - 1.0)
    return torch.atan2(sin, cos)


def beam_flip(m: torch.Tensor) -> torch.Tensor:
    """``M @ diag(-1, -1, 1)``: the same orientation rotated 180 deg about the beam."""
    return m * m.new_tensor(BEAM_FLIP)


def symmetry_min_angle(
    pred: torch.Tensor,
    true: torch.Tensor,
    symmetry: Optional[torch.Tensor] = None,
    allow_beam_flip: bool = False,
) -> torch.Tensor:
    """Misorientation angle (radians) after crystal symmetry, py4DSTEM convention.

    ``min_S geodesic_angle(pred, S @ true)`` over the proper point-group rotations ``S`` (left
    multiplication); with ``allow_beam_flip`` also over ``pred @ diag(-1, -1, 1)``.

    Parameters
    ----------
    pred, true : (..., 3, 3) tensors
        Orientation matrices (lab -> crystal), broadcastable against each other.
    symmetry : (K, 3, 3) tensor, optional
        Proper rotations in the crystal Cartesian frame (see :func:`point_group_rotations`).
        ``None`` means no symmetry (identity only).
    allow_beam_flip : bool
        Also accept the 180 deg rotation about the beam.

    Returns
    -------
    angle : (...) tensor, radians.
    """
    if symmetry is None:
        symmetry = torch.eye(3, dtype=true.dtype, device=true.device)[None]
    symmetry = symmetry.to(dtype=true.dtype, device=true.device)
    # the smallest angle has the largest trace (cos = (tr - 1) / 2): rank the K symmetry copies by trace
    # alone, as one matrix product, and take the accurate angle of the best only.
    # tr(pred^T S true) = sum_ij S_ij (pred true^T)_ij; the flipped prediction (pred F)^T S true = F d has
    # the trace 2 d_22 - tr(d), with d_22 = pred[:, 2] . S true[:, 2]
    pred, true = torch.broadcast_tensors(pred, true)
    flat = symmetry.reshape(-1, 9)  # (K, 9): S_ij at 3 i + j
    trace = (pred @ true.transpose(-1, -2)).reshape(*pred.shape[:-2], 9) @ flat.T  # (..., K)
    flipped = None
    if allow_beam_flip:
        d22 = (pred[..., :, 2, None] * true[..., None, :, 2]).reshape(*pred.shape[:-2], 9) @ flat.T  # (..., K)
        flip_trace = 2 * d22 - trace
        flipped = flip_trace > trace
        trace = torch.maximum(trace, flip_trace)
    index = trace.argmax(-1)  # (...)
    best_d = pred.transpose(-1, -2) @ symmetry[index] @ true  # (..., 3, 3)
    if flipped is not None:
        flip = flipped.gather(-1, index[..., None])[..., 0]  # (...)
        best_d = torch.where(flip[..., None, None], best_d * best_d.new_tensor(BEAM_FLIP)[:, None], best_d)
    return _angle_of(best_d)


def rotation_about_z(phi):
    """Active (counter-clockwise) rotations about z by ``phi`` (radians), shape ``phi.shape + (3, 3)``.

    Rotating a diffraction pattern counter-clockwise by ``phi`` in (qx, qy) (``theta -> theta + phi``)
    turns its label ``M`` into ``M @ rotation_about_z(-phi)``, because ``g_lab = M.T @ g_crystal``.
    A torch tensor gives a tensor (same dtype and device); a numpy array or number gives a float64
    numpy array. The transpose is the passive form ``[[c, s, 0], [-s, c, 0], [0, 0, 1]]``.
    """
    c, s = _cos_sin(_angle(phi))
    o, i = _zeros_ones(c)
    return _stack_rows([[c, -s, o], [s, c, o], [o, o, i]])


def rotation_about_x(phi):
    """Active (counter-clockwise) rotations about x by ``phi`` (radians), shape ``phi.shape + (3, 3)``.

    Same conventions as :func:`rotation_about_z`.
    """
    c, s = _cos_sin(_angle(phi))
    o, i = _zeros_ones(c)
    return _stack_rows([[i, o, o], [o, c, -s], [o, s, c]])


def rotate_xy(x, y, phi, position=None):
    """Points ``(x, y)`` rotated counter-clockwise by ``phi`` radians: ``(c x - s y, s x + c y)``.

    Parameters
    ----------
    x, y : (P,) arrays or tensors
        Positions (e.g. lab-frame qx, qy in 1/A).
    phi : float, array or tensor
        Angle(s), broadcast against ``x``; with ``position``, one angle per pattern (B,).
    position : (P,) int tensor or array, optional
        Pattern of each point in a flat, pattern-after-pattern layout: point ``p`` turns by
        ``phi[position[p]]`` (cosines are taken per pattern, then spread).
    """
    c, s = _cos_sin(phi)
    if position is not None:
        c, s = c[position], s[position]
    return c * x - s * y, s * x + c * y


def rotate_polar(theta, phi):
    """Polar angles ``theta`` (radians, tensor) of points rotated counter-clockwise by ``phi``.

    ``remainder(theta + phi + pi, 2 pi) - pi``: wrapped into [-pi, pi) (rounding may give +pi).
    """
    return torch.remainder(theta + phi + np.pi, 2 * np.pi) - np.pi


def _cos_sin(phi):
    """(cos, sin) of ``phi``: tensors for a tensor, Python floats for a number, else numpy arrays."""
    if isinstance(phi, torch.Tensor):
        return torch.cos(phi), torch.sin(phi)
    if np.ndim(phi) == 0 and not isinstance(phi, np.ndarray):
        return float(np.cos(phi)), float(np.sin(phi))
    return np.cos(phi), np.sin(phi)


def _angle(phi):
    """A tensor as it is; anything else as a float64 numpy array (0-d for a number)."""
    return phi if isinstance(phi, torch.Tensor) else np.asarray(phi, dtype=np.float64)


def _zeros_ones(like):
    if isinstance(like, torch.Tensor):
        return torch.zeros_like(like), torch.ones_like(like)
    return np.zeros_like(like), np.ones_like(like)


def _stack_rows(rows):
    """3 rows of 3 same-shaped entries -> (..., 3, 3), torch or numpy like the entries."""
    xp = torch if isinstance(rows[0][0], torch.Tensor) else np
    return xp.stack([xp.stack(row, -1) for row in rows], -2)


def random_rotations(
    n: Union[int, tuple],
    seed: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    dtype: torch.dtype = torch.float64,
    device: Union[str, torch.device, None] = None,
) -> torch.Tensor:
    """Rotations drawn uniformly (Haar measure) on SO(3).

    Normalised 4-D Gaussian vectors are uniform unit quaternions, hence uniform rotations.

    Parameters
    ----------
    n : int or tuple
        Batch shape.
    seed : int, optional
        Seed for a private generator (ignored if ``generator`` is given). Same seed, same output.
    generator : torch.Generator, optional
        CPU generator to draw from.

    Returns
    -------
    (*n, 3, 3) tensor of proper rotations.
    """
    shape = (n,) if isinstance(n, int) else tuple(n)
    if generator is None:
        generator = torch.Generator()
        generator.manual_seed(seed if seed is not None else torch.seed())
    q = torch.randn(*shape, 4, generator=generator, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    return _quaternion_to_matrix(q).to(dtype=dtype, device=device)


def _quaternion_to_matrix(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (..., 4) as (w, x, y, z) -> active rotation matrices (..., 3, 3)."""
    w, x, y, z = q.unbind(-1)
    rows = [
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ]
    return torch.stack(rows, dim=-2)


def skew(v: torch.Tensor) -> torch.Tensor:
    """(..., 3) vectors -> (..., 3, 3) cross-product matrices ``[v]x``."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([torch.stack([zero, -z, y], -1), torch.stack([z, zero, -x], -1),
                        torch.stack([-y, x, zero], -1)], -2)


def exp_so3(omega: torch.Tensor) -> torch.Tensor:
    """Rodrigues: (..., 3) rotation vectors -> (..., 3, 3) rotations."""
    theta = omega.norm(dim=-1, keepdim=True).clamp_min(1e-12)[..., None]  # (..., 1, 1)
    k = skew(omega) / theta
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device)
    return eye + torch.sin(theta) * k + (1 - torch.cos(theta)) * (k @ k)
