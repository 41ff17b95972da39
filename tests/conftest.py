"""Shared, seeded test fixtures: small crystals and Bragg-vector scans built in memory."""

import numpy as np
import pytest
import torch

FCC = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])


def make_cu():
    from py4DSTEM.process.diffraction import Crystal

    return Crystal(positions=FCC, numbers=29, cell=3.615)


def make_cu2o():
    from py4DSTEM.process.diffraction import Crystal

    pos = np.vstack([FCC, [[0.25, 0.25, 0.25], [0.75, 0.75, 0.75]]])
    return Crystal(positions=pos, numbers=[29, 29, 29, 29, 8, 8], cell=4.2696)


def make_zns():
    """Zinc blende, F-43m: non-centrosymmetric, 12 proper rotations."""
    from py4DSTEM.process.diffraction import Crystal

    pos = np.vstack([FCC, FCC + 0.25])
    return Crystal(positions=pos, numbers=[30] * 4 + [16] * 4, cell=5.41)


def make_mg():
    """hcp Mg, P6_3/mmc: 12 proper rotations, non-orthogonal lattice vectors."""
    from py4DSTEM.process.diffraction import Crystal

    pos = np.array([[1 / 3, 2 / 3, 0.25], [2 / 3, 1 / 3, 0.75]])
    return Crystal(positions=pos, numbers=12, cell=[3.21, 3.21, 5.21, 90, 90, 120])


@pytest.fixture
def cu():
    return make_cu()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)
