"""Training data in torch: flat disk arrays, a split by zone axis, and batches bucketed by disk count.

A :class:`PatternStore` holds a training set's disks as flat tensors (CSR layout, like
:class:`~py4dstem_transformer.io.peaks.Peaks`) so a batch of any patterns is gathered with array
operations. Validation patterns come from zone axes never seen in training: neighbouring in-plane
angles and thicknesses of one zone axis are near-duplicates, and a split by pattern would leak
them (the published model's validation error was optimistic for this reason).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

__all__ = ["PatternStore", "Batch", "split_by_zone_axis", "bucketed_batches"]


@dataclass
class Batch:
    """Disks of B patterns, flat, pattern after pattern.

    Attributes
    ----------
    qx, qy, intensity : (P,) float32 tensors, lab frame, 1/A.
    counts : (B,) int64 tensor.
    matrix : (B, 3, 3) float32 tensor, labels (py4DSTEM convention).
    phase : (B,) int64 tensor.
    """

    qx: torch.Tensor
    qy: torch.Tensor
    intensity: torch.Tensor
    counts: torch.Tensor
    matrix: torch.Tensor
    phase: torch.Tensor

    @property
    def position(self) -> torch.Tensor:
        """(P,) pattern index of every disk."""
        return torch.repeat_interleave(torch.arange(len(self.counts)), self.counts, output_size=len(self.qx))


class PatternStore:
    """A training set's patterns as torch tensors.

    Parameters
    ----------
    training_set
        Anything with flat ``qx, qy, intensity`` arrays, ``offsets`` (N + 1,),
        ``orientation_matrices`` (N, 3, 3) and optionally ``phase`` (N,).
    """

    def __init__(self, training_set):
        as_f32 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
        self.qx, self.qy, self.intensity = (as_f32(getattr(training_set, k)) for k in ("qx", "qy", "intensity"))
        self.offsets = torch.as_tensor(np.asarray(training_set.offsets), dtype=torch.int64)
        self.counts = self.offsets[1:] - self.offsets[:-1]
        self.matrix = as_f32(training_set.orientation_matrices)
        phase = getattr(training_set, "phase", None)
        self.phase = torch.zeros(len(self.counts), dtype=torch.int64) if phase is None else torch.as_tensor(np.asarray(phase), dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.counts)

    def gather(self, index: torch.Tensor) -> Batch:
        """The patterns ``index`` (B,) as a :class:`Batch`."""
        starts, counts = self.offsets[index], self.counts[index]
        total = int(counts.sum())
        # flat position of every disk: its pattern's start + its rank within the pattern
        first = torch.cumsum(counts, 0) - counts
        flat = torch.arange(total) + torch.repeat_interleave(starts - first, counts, output_size=total)
        return Batch(self.qx[flat], self.qy[flat], self.intensity[flat], counts, self.matrix[index], self.phase[index])


def split_by_zone_axis(zone_axis_index, val_fraction: float, seed: int = 0):
    """Indices ``(train, val)`` with whole zone axes held out for validation.

    Parameters
    ----------
    zone_axis_index : (N,) int array
        Simulated beam direction of every pattern.
    val_fraction : float
        Fraction of zone axes (hence roughly of patterns) held out; 0 gives an empty validation set.
    """
    zone = np.asarray(zone_axis_index)
    zones = np.unique(zone)
    rng = np.random.default_rng(seed)
    n_val = int(round(val_fraction * len(zones)))
    if val_fraction > 0 and len(zones) > 1:
        n_val = min(max(n_val, 1), len(zones) - 1)
    held_out = rng.choice(zones, size=n_val, replace=False)
    is_val = np.isin(zone, held_out)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def bucketed_batches(
    indices: np.ndarray, counts: torch.Tensor, batch_size: int, generator: torch.Generator, bucket: int = 64
) -> Iterator[torch.Tensor]:
    """One epoch of batches: shuffled, then patterns of similar disk count grouped together.

    Indices are shuffled, cut into pools of ``bucket`` batches, each pool is sorted by disk count
    and cut into batches, and the batch order is shuffled. Padding (and so compute) drops by ~2x
    on typical sets while every pattern is still seen once per epoch in random company.
    """
    idx = torch.as_tensor(indices)[torch.randperm(len(indices), generator=generator)]
    batches = []
    pool = batch_size * bucket
    for start in range(0, len(idx), pool):
        chunk = idx[start : start + pool]
        chunk = chunk[torch.argsort(counts[chunk], stable=True)]
        batches.extend(chunk.split(batch_size))
    for i in torch.randperm(len(batches), generator=generator).tolist():
        yield batches[i]


def seeded_generator(*seed_parts: int) -> torch.Generator:
    """A CPU generator seeded from integers (e.g. run seed and step), reproducible across resumes."""
    seed = 0
    for part in seed_parts:
        seed = (seed * 1_000_003 + int(part)) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)

