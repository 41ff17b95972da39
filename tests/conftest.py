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


class KinematicSet:
    """A minimal stand-in with the TrainingSet interface: kinematic Cu patterns at random beam
    directions (in-plane angle 0), one pattern per zone axis. Used to test training on its own."""

    def __init__(self, n, seed=0, k_max=2.0, sigma=0.02):
        from types import SimpleNamespace

        from py4dstem_transformer.rotations import random_rotations

        crystal = make_cu()
        crystal.setup_diffraction(300e3)
        crystal.calculate_structure_factors(k_max)
        mats = random_rotations(n, seed=seed).numpy()
        qx, qy, inten, counts = [], [], [], []
        for m in mats:
            p = crystal.generate_diffraction_pattern(orientation_matrix=m, sigma_excitation_error=sigma)
            d = p.data
            keep = (d["h"] != 0) | (d["k"] != 0) | (d["l"] != 0)
            d = d[keep]
            i = d["intensity"] / d["intensity"].max() if len(d) else d["intensity"]
            keep = i >= 1e-3
            qx.append(d["qx"][keep]); qy.append(d["qy"][keep]); inten.append(i[keep]); counts.append(int(keep.sum()))
        self.qx, self.qy, self.intensity = (np.concatenate(a).astype(np.float32) for a in (qx, qy, inten))
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.orientation_matrices = mats
        self.thickness = np.zeros(n)
        self.zone_axis_index = np.arange(n)
        self.config = SimpleNamespace(k_max=k_max, accel_voltage=300e3, centrosymmetric=True, dynamical=False)
        self._crystal = crystal

    def __len__(self):
        return len(self.orientation_matrices)

    def crystal(self):
        return make_cu()
