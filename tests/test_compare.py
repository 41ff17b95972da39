"""Evaluation helpers: ROC AUC against a brute-force count, misorientation against orix-checked code."""

import numpy as np

from py4dstem_transformer.evaluation.compare import misorientation_deg, paired_accuracy, roc_auc, summarize_errors
from py4dstem_transformer.core.rotations import random_rotations, rotation_about_z
from py4dstem_transformer.core.symmetry import point_group_rotations

from conftest import make_cu


def test_roc_auc_equals_pairwise_count():
    rng = np.random.default_rng(0)
    score = np.round(rng.normal(size=300), 1)  # ties on purpose
    positive = rng.random(300) < 0.3
    score[positive] += 0.8
    pos, neg = score[positive], score[~positive]
    brute = ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / (len(pos) * len(neg))
    assert abs(roc_auc(score, positive) - brute) < 1e-12
    assert roc_auc(np.arange(10), np.arange(10) >= 5) == 1.0 and np.isnan(roc_auc(np.ones(3), np.ones(3, bool)))


def test_summary_and_misorientation():
    s = point_group_rotations(make_cu()).numpy()
    m = random_rotations(50, seed=1).numpy()
    import torch

    turned = m @ rotation_about_z(torch.full((50,), np.radians(3.0), dtype=torch.float64)).numpy()
    err = misorientation_deg(turned, m, s)
    np.testing.assert_allclose(err, 3.0, atol=1e-9)
    flipped = m * np.array([-1.0, -1.0, 1.0])
    assert np.allclose(misorientation_deg(flipped, m, s, allow_beam_flip=True), 0, atol=1e-6)
    summary = summarize_errors(np.array([0.5, 1.5, 3.0, 10.0]))
    assert summary["median"] == 2.25 and summary["within_2"] == 0.5 and summary["within_5"] == 0.75


def test_paired_accuracy_counts_discordant_patterns():
    a = np.array([1.0, 2.0, 9.0, 9.0, 0.5, 30.0])  # right, right, wrong, wrong, right, wrong
    b = np.array([1.0, 8.0, 1.0, 9.0, 7.0, 60.0])  # right, wrong, right, wrong, wrong, wrong
    p = paired_accuracy(a, b)
    assert (p["n"], p["a_only"], p["b_only"]) == (6, 2, 1)
    assert np.isclose(p["difference"], np.mean(a <= 5) - np.mean(b <= 5))
    assert np.isclose(p["standard_error"], np.sqrt(3 - 1 / 6) / 6)
    # against the spread of the difference over many resampled pattern sets
    rng = np.random.default_rng(0)
    right_a, right_b = rng.random(400) < 0.9, rng.random(400) < 0.85
    ea, eb = np.where(right_a, 1.0, 40.0), np.where(right_b, 1.0, 40.0)
    boot = [np.mean(right_a[i]) - np.mean(right_b[i]) for i in rng.integers(0, 400, (2000, 400))]
    assert abs(paired_accuracy(ea, eb)["standard_error"] / np.std(boot) - 1) < 0.1
    same = paired_accuracy(ea, ea)
    assert same["difference"] == 0 and same["standard_error"] == 0 and same["a_only"] == same["b_only"] == 0
    try:
        paired_accuracy(ea, eb[:10])
    except ValueError as e:
        assert "same patterns" in str(e)
    else:
        raise AssertionError("different pattern counts must be refused")
