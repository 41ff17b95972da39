"""A coarse orientation library: the wider search for patterns the network's answers leave unsure.

The network proposes a few orientations per pattern; where none of them is near the truth, refinement
cannot get there. Measured on py4DSTEM's own simulations (docs/benchmarks.md), when the truth is among the
candidates the pipeline picks it far more often than the network proposes it (sparse patterns: 56% right,
84% with the truth added). So patterns whose best match is unsure also get the best ``top`` members of a
fixed library of orientations, scored with the same correlation as the candidates (:mod:`.score`), as
extra hypotheses; the stages refine and rank them with the pattern's own answers beside them.

The library is ``size`` orientations drawn uniformly on SO(3) (seeded, the same every time), each with its
``disks`` brightest kinematic disks, simulated once per phase. With the crystal's ``S`` proper symmetries
that is ``size`` distinct orientations in the fundamental zone, about ``(8 pi^2 / S / size)^(1/3)`` rad apart
(Cu, 20,000: ~3 deg), within the refinement's reach. Each pattern is rendered once as a raster of
Gaussians (the score's kernel) and every library disk reads its value there: ``size * disks`` lookups per
pattern, about a millisecond in torch. On a CPU a compiled pass (:mod:`.library_fused`) writes only the
raster near the pattern's disks and reads only the library disks there (its inverted index ``by_pixel``):
the same ranking, 3-6x faster.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional

import torch

from ..core.kinematics import simulate_disks
from ..core.rotations import random_rotations
from . import library_fused as _fused
from .config import ScoreConfig, SearchConfig

__all__ = ["Library", "build_library", "library_hypotheses"]


@dataclass(frozen=True)
class Library:
    """``orientations`` (L, 3, 3) (lab -> crystal); their disks as ``pixel`` (L * M,) indices into a square
    ``side`` x ``side`` raster of step ``step`` (1/A) centred on the direct beam (index ``side ** 2``: off the
    raster), with weights ``w`` (L, M) (``I ** power``, 0 where no disk); and their self-overlap ``bb`` (L,)
    (the disks of a crystal lie far apart compared with the kernel, so it is ``sum w^2``); ``by_pixel`` the
    same disks by pixel: ``(start (side * side + 1,) int64, orientation (E,) int32, weight (E,) float32)``, pixel
    p's disks at ``start[p]:start[p + 1]`` (E: the disks on the raster with a weight)."""

    orientations: torch.Tensor
    pixel: torch.Tensor
    w: torch.Tensor
    bb: torch.Tensor
    side: int
    step: float
    reader: torch.Tensor  # (L, side * side + 1) sparse CSR: ``reader @ raster`` sums each orientation's disks
    by_pixel: tuple


def _reader(pixel: torch.Tensor, w: torch.Tensor, side: int) -> torch.Tensor:
    """Row l of the (L, side * side + 1) sparse CSR matrix holds orientation l's disk weights at their pixels."""
    L, M = w.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(torch.arange(0, L * M + 1, M), pixel, w.reshape(-1), (L, side**2 + 1))


def build_library(phase, search: SearchConfig, score: ScoreConfig) -> Library:
    """The library of one :class:`~.phase.Phase`, simulated with the score's settings."""
    orientations = random_rotations(search.size, seed=search.seed).float()
    disks, mask = simulate_disks(orientations, phase.reflections, score.sigma_excitation_error, search.disks,
                                 **phase.window)
    w = disks[..., 2].clamp_min(0).pow(score.power) * mask
    side = int(math.ceil(2 * phase.k_max / search.step)) + 1
    ij = torch.round(disks[..., :2] / search.step + (side - 1) / 2).long()  # (L, M, 2)
    inside = ((ij >= 0) & (ij < side)).all(-1) & mask
    pixel = torch.where(inside, ij[..., 0] * side + ij[..., 1], side * side).reshape(-1)
    w = w * inside
    return Library(orientations, pixel, w, (w * w).sum(-1), side, search.step, _reader(pixel, w, side),
                   _by_pixel(pixel, w, side))


def _by_pixel(pixel: torch.Tensor, w: torch.Tensor, side: int) -> tuple:
    """The inverted index of :attr:`Library.by_pixel`: every disk on the raster with a weight, by pixel."""
    L, M = w.shape
    weight = w.reshape(-1)
    keep = (pixel < side * side) & (weight > 0)
    orientation = torch.arange(L).repeat_interleave(M)[keep]
    pixel, weight = pixel[keep], weight[keep]
    order = torch.argsort(pixel, stable=True)
    start = torch.zeros(side * side + 1, dtype=torch.int64)
    start[1:] = torch.cumsum(torch.bincount(pixel, minlength=side * side), 0)
    return start, orientation[order].int(), weight[order].float().contiguous()


def _rasters(observed: torch.Tensor, wa: torch.Tensor, side: int, step: float, kernel: float) -> torch.Tensor:
    """(g, side * side + 1) the observed disks as sums of Gaussians ``exp(-|x - q|^2 / 4 kernel^2)`` weighted by
    ``wa`` (g, N), on the raster (separable: one small matmul per pattern), and a 0 for "off the raster"."""
    axis = (torch.arange(side, dtype=torch.float32) - (side - 1) / 2) * step  # (side,)
    gx = torch.exp(-(observed[..., 0, None] - axis).square() / (4 * kernel**2))  # (g, N, side)
    gy = torch.exp(-(observed[..., 1, None] - axis).square() / (4 * kernel**2))
    image = torch.bmm((gx * wa[..., None]).transpose(1, 2), gy).reshape(len(wa), side * side)  # (g, side, side)
    return torch.nn.functional.pad(image, (0, 1))


@torch.inference_mode()
def library_hypotheses(observed: torch.Tensor, observed_mask: torch.Tensor, library: Library, kernel: float,
                       power: float, top: int, group: int = 16, fused: Optional[bool] = None) -> torch.Tensor:
    """(b, top, 3, 3): the ``top`` library orientations that correlate best with each of b patterns.

    The correlation is the score's (:func:`~.score.correlation`), with each library disk read from the raster
    of the observed pattern at its nearest pixel (``library.step`` apart, a fraction of the kernel): a ranking
    to choose hypotheses by, which the stages then refine and score exactly.

    Parameters
    ----------
    observed : (b, N, 3) ``(qx, qy, I)`` (1/A), e.g. :func:`~.score.tokens_to_xy` of the tokens.
    observed_mask : (b, N) bool.
    kernel, power : the score's (:class:`~.config.ScoreConfig`).
    group : patterns scored at once (torch path).
    fused : the compiled pass (:mod:`.library_fused`); default: where the patterns are on a CPU.
    """
    L, M = library.w.shape
    b = len(observed)
    wa = observed[..., 2].float().clamp_min(0).pow(power) * observed_mask  # (b, N)
    if fused is None:
        fused = _fused.available and observed.device.type == "cpu"
    if fused:
        index, _ = _fused.top_correlations(observed.cpu(), wa.cpu(), library, kernel, top)
        return library.orientations[index]
    aa = (wa * wa).sum(-1)  # (b,) the observed disks are far apart too
    out = torch.empty(b, min(top, L), dtype=torch.int64)
    for s in range(0, b, group):
        image = _rasters(observed[s:s + group, :, :2].float(), wa[s:s + group], library.side, library.step, kernel)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ab = (library.reader @ image.T.contiguous()).T  # (g, L)
        corr = ab / torch.sqrt(aa[s:s + group, None] * library.bb).clamp_min(1e-30)
        out[s:s + group] = corr.topk(min(top, L), dim=1).indices
    return library.orientations[out]
