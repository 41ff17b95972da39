"""The score-ceiling benchmark's parts: the jitter turns by the angle asked, and with the truth among the
candidates the stages rank it first on clean kinematic patterns (and report the beam flip as such)."""

import numpy as np
import torch

from conftest import make_cu


def test_jittered_turns_by_the_angle_asked_and_stays_proper():
    from py4dstem_transformer.benchmarks.score_ceiling import jittered
    from py4dstem_transformer.core.rotations import random_rotations

    m = random_rotations(20, seed=3).double().numpy()
    j = jittered(m, 2.0, seed=1)
    assert np.allclose(j @ j.transpose(0, 2, 1), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(j), 1.0)
    angle = np.degrees(np.arccos(np.clip((np.trace(j @ m.transpose(0, 2, 1), axis1=1, axis2=2) - 1) / 2, -1, 1)))
    assert np.allclose(angle, 2.0, atol=1e-6)


def _kinematic_disks(crystal, matrices):
    from py4dstem_transformer.core.kinematics import Reflections, simulate_disks

    reflections = Reflections.from_crystal(crystal, 1.6, 300e3)
    sim, mask = simulate_disks(torch.as_tensor(matrices, dtype=torch.float32), reflections, 0.02, 40, k_max=1.6)
    return [np.vstack([[0.0, 0.0, 1.0], s[k].numpy()]).astype(np.float64) for s, k in zip(sim, mask)]


def test_truth_among_the_candidates_is_ranked_first_on_clean_patterns():
    from py4dstem_transformer.benchmarks.score_ceiling import ranked_truth
    from py4dstem_transformer.core.rotations import random_rotations

    matrices = random_rotations(12, seed=5).double().numpy()
    crystal = make_cu()
    row = ranked_truth(crystal, _kinematic_disks(crystal, matrices), matrices, jitter_deg=2.0, top=2)
    assert row["n"] == 12
    assert row["flip_5"] >= 11 / 12  # the truth (or its beam-flip partner) wins
    assert row["median_strict"] < 1.0  # refined back from the 2 deg jitter
    assert row["wrong"] + row["beam_flips"] == round(12 * (1 - row["strict_5"]))
