"""rank_within_pattern: one ordering of flat disk arrays for tokens, augmentation and scans."""

import numpy as np
import pytest
import torch

from py4dstem_transformer.core.patterns import rank_within_pattern


def _loop_oracle(position, key, descending):
    """Pattern by pattern, disks in a stable sort by key: (order, rank)."""
    order, rank = [], []
    for b in np.unique(position):
        disks = np.flatnonzero(position == b)  # input order
        ranked = sorted(disks, key=lambda i: -key[i] if descending else key[i])  # Python's sort is stable
        order += ranked
        rank += list(range(len(ranked)))
    return np.array(order, dtype=np.int64), np.array(rank, dtype=np.int64)


@pytest.mark.parametrize("descending", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_a_per_pattern_loop_on_numpy_and_torch(descending, seed):
    rng = np.random.default_rng(seed)
    position = np.sort(rng.integers(0, 12, 200))
    if seed == 2:
        position = rng.permutation(position)  # patterns need not be grouped in the input
    key = rng.integers(0, 6, 200) / 5.0  # many ties: they keep the input order
    expected = _loop_oracle(position, key, descending)
    for got in (rank_within_pattern(position, key, descending),
                rank_within_pattern(torch.as_tensor(position), torch.as_tensor(key, dtype=torch.float32), descending)):
        np.testing.assert_array_equal(np.asarray(got[0]), expected[0])
        np.testing.assert_array_equal(np.asarray(got[1]), expected[1])


def test_empty_input():
    order, rank = rank_within_pattern(torch.zeros(0, dtype=torch.int64), torch.zeros(0))
    assert order.shape == rank.shape == (0,)
    order, rank = rank_within_pattern(np.zeros(0, dtype=np.int64), np.zeros(0))
    assert order.shape == rank.shape == (0,)
