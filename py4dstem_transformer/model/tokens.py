"""Bragg peaks -> disk tokens ``(r, theta, I)``, vectorized over a whole scan.

Per scan position, and without a Python loop over positions:

1. calibrate raw detector positions to lab (qx, qy) in 1/A (:mod:`.calibration`);
2. remove the direct beam: every peak within ``direct_beam_radius`` of the origin;
3. keep disks inside the encoder's radial range ``r <= k_max``;
4. normalise intensities by the brightest kept disk of the pattern;
5. drop disks below ``min_relative_intensity``, and exact repeats (a disk listed twice at the same
   ``(qx, qy)`` counts once, with its brightest intensity);
6. keep at most ``max_tokens`` disks, brightest first;
7. pad to ``(B, N, 3)`` with a ``(B, N)`` mask.

Normalising after the radial cut (step 4 before step 3 in words of the paper) matches training
patterns, which only ever contain reflections inside ``k_max``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from ..core.defaults import K_MAX
from ..core.patterns import rank_within_pattern
from ..core.rotations import rotate_polar
from ..io.peaks import Peaks, peaks_from_braggvectors

__all__ = ["TokenConfig", "Tokens", "tokenize", "rotate_tokens", "iter_scan_tokens", "position_tokens", "scan_tokens",
           "concat_tokens", "braggvectors_to_tokens"]


@dataclass(frozen=True)
class TokenConfig:
    """What the encoder reads; saved inside every model and training set.

    Attributes
    ----------
    k_max : float
        Outer radius of the disks the encoder reads (1/A).
    direct_beam_radius : float
        Peaks closer than this to the calibrated origin are the direct beam (1/A).
    min_relative_intensity : float
        Disks fainter than this fraction of the pattern's brightest disk are dropped.
    max_tokens : int
        At most this many disks per pattern (the brightest).
    """

    k_max: float = K_MAX
    direct_beam_radius: float = 0.1
    min_relative_intensity: float = 1e-3
    max_tokens: int = 64

    def __post_init__(self):
        if not 0 <= self.direct_beam_radius < self.k_max:
            raise ValueError("need 0 <= direct_beam_radius < k_max")
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Tokens:
    """A padded batch of disk tokens.

    Attributes
    ----------
    tokens : (B, N, 3) float32 tensor
        ``(r [1/A], theta [rad, atan2(qy, qx) in (-pi, pi]], I [relative, (0, 1]])`` per disk, lab
        frame; padded rows are zero.
    mask : (B, N) bool tensor
        True where a disk is present.
    counts : (B,) int64 tensor
        Number of disks per pattern (``mask.sum(1)``).
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    counts: torch.Tensor

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, rows) -> "Tokens":
        """The patterns ``rows`` (an index, slice or (B,) bool mask), padding kept."""
        return Tokens(self.tokens[rows], self.mask[rows], self.counts[rows])


def tokenize(
    qx: torch.Tensor,
    qy: torch.Tensor,
    intensity: torch.Tensor,
    counts: torch.Tensor,
    config: TokenConfig = TokenConfig(),
) -> Tokens:
    """Tokens from calibrated peaks of ``B`` patterns.

    Parameters
    ----------
    qx, qy : (P,) tensors
        Lab-frame peak positions in 1/A, pattern after pattern.
    intensity : (P,) tensor
    counts : (B,) int64 tensor
        Number of peaks of each pattern; ``counts.sum() == P``.
    """
    B, P = len(counts), len(qx)
    position = torch.repeat_interleave(torch.arange(B, device=counts.device), counts, output_size=P)
    r = torch.hypot(qx, qy)
    keep = (r >= config.direct_beam_radius) & (r <= config.k_max)
    brightest = torch.zeros(B, dtype=intensity.dtype, device=intensity.device)
    brightest.scatter_reduce_(0, position, torch.where(keep, intensity, 0), reduce="amax")
    brightest_per_peak = brightest[position]  # (P,)
    keep &= (intensity >= config.min_relative_intensity * brightest_per_peak) & (brightest_per_peak > 0)
    index = _drop_repeats(keep.nonzero()[:, 0], position, qx, qy, intensity)  # (K,) kept peaks, grouped by pattern
    kept = torch.bincount(position[index], minlength=B)  # (B,)
    if len(index) and int(kept.max()) > config.max_tokens:
        index, kept = _brightest_first(index, position, intensity / brightest_per_peak, kept, config.max_tokens)
    N = int(kept.max()) if B else 0
    # slot of each kept disk in the padded (B, N) layout: pattern * N + rank within the pattern
    first = torch.cumsum(kept, 0) - kept  # (B,) index of each pattern's first kept disk
    slot = torch.arange(len(index), device=index.device) + torch.repeat_interleave(
        torch.arange(B, device=index.device) * N - first, kept, output_size=len(index)
    )
    x, y = qx[index], qy[index]
    values = torch.stack([r[index], torch.atan2(y, x), intensity[index] / brightest_per_peak[index]], -1)
    out = torch.zeros(B * N, 3, dtype=torch.float32, device=qx.device)
    out[slot] = values.float()
    mask = torch.zeros(B * N, dtype=torch.bool, device=qx.device)
    mask[slot] = True
    return Tokens(out.view(B, N, 3), mask.view(B, N), kept)


def _drop_repeats(index, position, qx, qy, intensity):
    """``index`` (ascending) without the peaks that repeat a brighter (or an earlier, equally bright) one
    at exactly the same float32 ``(qx, qy)`` of the same pattern: a disk found twice is one disk, not more evidence.
    Two stable sorts when nothing repeats (the common case), three more when something does."""
    if len(index) < 2:
        return index
    bits = lambda v: (v[index].float() + 0.0).view(torch.int32).long()  # noqa: E731  exact value, -0 read as 0
    key, pos = (bits(qx) << 32) | (bits(qy) & 0xFFFFFFFF), position[index]  # (K,) one int64 per (qx, qy)

    def repeats(order):  # (K,) bool: same pattern and place as the disk before it in ``order``
        k, p = key[order], pos[order]
        out = torch.zeros(len(order), dtype=torch.bool, device=index.device)
        out[1:] = (p[1:] == p[:-1]) & (k[1:] == k[:-1])
        return out

    order = torch.argsort(key, stable=True)
    if not bool(repeats(order[torch.argsort(pos[order], stable=True)]).any()):
        return index
    order = torch.argsort(intensity[index], descending=True, stable=True)  # brightest copy first among equals
    order = order[torch.argsort(key[order], stable=True)]
    order = order[torch.argsort(pos[order], stable=True)]
    return torch.sort(index[order][~repeats(order)]).values


def _brightest_first(index, position, relative, kept, max_tokens):
    """Truncate the kept peaks of each pattern to its ``max_tokens`` brightest (rare path), brightest first."""
    order, rank = rank_within_pattern(position[index], relative[index], descending=True)
    return index[order][rank < max_tokens], kept.clamp(max=max_tokens)


def rotate_tokens(tokens: torch.Tensor, phi: float) -> torch.Tensor:
    """(B, N, 3) tokens ``(r, theta, I)`` with every disk rotated counter-clockwise by ``phi`` (radians).

    ``theta`` is wrapped by :func:`~py4dstem_transformer.core.rotations.rotate_polar`; ``r``, ``I``
    and the padding mask are unchanged (padded rows get ``theta = phi``, which nothing reads). A
    pattern rotated by ``phi`` has the label ``M @ rotation_about_z(-phi)``. Returns ``tokens``
    itself when ``phi == 0``.
    """
    if phi == 0:
        return tokens
    theta = rotate_polar(tokens[..., 1], phi)  # (B, N)
    return torch.stack([tokens[..., 0], theta, tokens[..., 2]], -1)


def iter_scan_tokens(
    peaks: Peaks,
    config: TokenConfig = TokenConfig(),
    chunk_size: int = 8192,
    device=None,
) -> Iterator[tuple]:
    """Yield ``(start, Tokens)`` for consecutive chunks of ``chunk_size`` scan positions.

    Memory stays bounded by the chunk. Raises ``ValueError`` naming the scan positions whose
    peaks (or calibration) are NaN or infinite.
    """
    for start in range(0, peaks.num_positions, chunk_size):
        yield start, position_tokens(peaks, start, min(start + chunk_size, peaks.num_positions), config, device)


def position_tokens(peaks: Peaks, start: int, stop: int, config: TokenConfig = TokenConfig(), device=None) -> Tokens:
    """Tokens of the consecutive scan positions ``start ... stop - 1`` (flat, C order), calibrated.

    Raises ``ValueError`` naming the scan positions whose peaks (or calibration) are NaN or infinite.
    """
    offsets = peaks.offsets
    a, b = offsets[start], offsets[stop]
    counts = torch.from_numpy(peaks.counts[start:stop]).to(device)
    qx, qy, intensity = (
        torch.from_numpy(v).to(device=device, dtype=torch.float32)
        for v in (peaks.qx[a:b], peaks.qy[a:b], _within_float32(peaks.intensity[a:b], peaks.counts[start:stop]))
    )
    _check_finite(peaks, start, counts, "peaks", qx, qy, intensity)
    if peaks.calibration is not None:
        qx, qy = peaks.calibration.apply(qx, qy, counts, start)
        _check_finite(peaks, start, counts, "calibrated peaks (check the calibration)", qx, qy)
    return tokenize(qx, qy, intensity, counts, config)


_FLOAT32_SAFE = 2.0 ** 100  # brightest |I| of a pattern outside [1 / this, this]: rescaled before the float32 cast


def _within_float32(intensity: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``intensity`` (float64), with each pattern whose brightest ``|I|`` lies outside ``[2**-100, 2**100]`` scaled by
    a power of two (exact) into ``[0.5, 1)``, so that the float32 tokens neither overflow to inf (a finite 1e39
    is no error) nor underflow to 0 (1e-300 is a pattern too). Only relative intensities matter to the tokens, so
    the answer is the same as at any other scale; every other pattern is returned untouched (the same array)."""
    with np.errstate(invalid="ignore"):
        magnitude = np.where(np.isfinite(intensity), np.abs(intensity), 0.0)  # NaN / inf: refused by _check_finite
    nonzero = magnitude[magnitude > 0]
    if not len(nonzero) or (nonzero.max() <= _FLOAT32_SAFE and nonzero.min() >= 1 / _FLOAT32_SAFE):
        return intensity  # the common case: no pattern needs it (a faint disk of a bright pattern may end here too)
    position = np.repeat(np.arange(len(counts)), counts)
    brightest = np.zeros(len(counts))
    np.maximum.at(brightest, position, magnitude)
    outside = (brightest > 0) & ((brightest > _FLOAT32_SAFE) | (brightest < 1 / _FLOAT32_SAFE))
    if not outside.any():
        return intensity
    shift = np.where(outside, -np.frexp(brightest)[1], 0)  # brightest * 2**shift in [0.5, 1)
    return np.ldexp(intensity, shift[position])


def scan_tokens(peaks: Peaks, config: TokenConfig = TokenConfig(), chunk_size: int = 8192, device=None) -> Tokens:
    """All tokens of a scan in one padded batch (B = number of scan positions)."""
    chunks = [t for _, t in iter_scan_tokens(peaks, config, chunk_size, device)]
    if not chunks:
        empty = torch.zeros(0, 0, 3)
        return Tokens(empty, torch.zeros(0, 0, dtype=torch.bool), torch.zeros(0, dtype=torch.int64))
    return concat_tokens(chunks)


def concat_tokens(parts: Sequence[Tokens]) -> Tokens:
    """One padded batch of several (each padded to the widest)."""
    N = max(c.tokens.shape[1] for c in parts)
    tokens = torch.cat([torch.nn.functional.pad(c.tokens, (0, 0, 0, N - c.tokens.shape[1])) for c in parts])
    mask = torch.cat([torch.nn.functional.pad(c.mask, (0, N - c.mask.shape[1])) for c in parts])
    return Tokens(tokens, mask, torch.cat([c.counts for c in parts]))


def braggvectors_to_tokens(bragg_peaks, config: TokenConfig = TokenConfig(), device=None) -> Tokens:
    """Tokens for every position of a py4DSTEM ``BraggVectors``, C order over ``bragg_peaks.Rshape``.

    Examples
    --------
    >>> from py4dstem_transformer.simulation.scan import simulate_scan
    >>> from py4dstem_transformer.simulation.simulator import example_crystal
    >>> bragg_peaks, _ = simulate_scan([example_crystal("Cu")], scan_shape=(4, 5), num_grains=3, seed=0,
    ...                                progress_bar=False)
    >>> tokens = braggvectors_to_tokens(bragg_peaks)  # (Rx * Ry, N, 3) tokens, (Rx * Ry, N) mask
    >>> len(tokens.tokens), tokens.tokens.shape[-1], tokens.mask.shape == tokens.tokens.shape[:2]
    (20, 3, True)
    """
    return scan_tokens(peaks_from_braggvectors(bragg_peaks), config, device=device)


def _check_finite(peaks: Peaks, start: int, counts: torch.Tensor, what: str, *arrays) -> None:
    # one cheap reduction in the common case: a sum is finite iff every term is (barring overflow)
    if bool(torch.isfinite(sum(a.sum(dtype=torch.float64) for a in arrays))):
        return
    bad = ~torch.isfinite(torch.stack(arrays)).all(0)
    if not bool(bad.any()):
        return
    position = torch.repeat_interleave(torch.arange(len(counts)), counts.cpu())
    flat = np.unique(position[bad.cpu()].numpy()) + start
    where = [peaks.scan_position(f) for f in flat[:10]]
    more = f" and {len(flat) - 10} more" if len(flat) > 10 else ""
    raise ValueError(
        f"NaN or infinite values in the {what} at scan positions (rx, ry) {where}{more}; "
        "remove or fix those peaks before mapping (positions beyond float32's range, |x| > 3.4e38, count as infinite)"
    )
