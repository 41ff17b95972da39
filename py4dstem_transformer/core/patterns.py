"""Flat disk arrays, pattern after pattern: the ordering helper shared by tokens, augmentation and scans.

Disks of ``B`` patterns travel as flat ``(P,)`` arrays with a ``(P,)`` ``position`` (the pattern of
each disk, ``0..B-1``). Works on numpy arrays and torch tensors alike.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["rank_within_pattern"]


def rank_within_pattern(position, key, descending: bool = False):
    """Sort disks by (pattern, ``key``) and number them within their pattern.

    Parameters
    ----------
    position : (P,) int array or tensor
        Pattern of each disk.
    key : (P,) array or tensor
        What to rank by within a pattern (e.g. intensity). Ties keep the input order.
    descending : bool
        Rank 0 is the largest ``key`` instead of the smallest.

    Returns
    -------
    order : (P,) int
        Permutation grouping the disks by pattern (ascending), sorted by ``key`` within each.
    rank : (P,) int
        ``rank[i]``: rank of disk ``order[i]`` within its pattern (0, 1, ... in ``order``).
    """
    if isinstance(key, torch.Tensor):
        by_key = torch.argsort(key, descending=descending, stable=True)
        order = by_key[torch.argsort(position[by_key], stable=True)]  # a stable second pass keeps the key order
        counts = torch.bincount(position)
        first = torch.cumsum(counts, 0) - counts  # (B,) where each pattern starts in ``order``
        return order, torch.arange(len(order), device=order.device) - first[position[order]]
    by_key = np.argsort(-key if descending else key, kind="stable")
    order = by_key[np.argsort(position[by_key], kind="stable")]
    counts = np.bincount(position)
    first = np.cumsum(counts) - counts
    return order, np.arange(len(order)) - first[position[order]]
