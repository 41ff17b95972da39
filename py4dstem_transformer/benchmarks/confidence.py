"""Benchmark: how well candidate confidence scores flag wrong orientations (ROC AUC, right vs wrong).

``python -m py4dstem_transformer.benchmarks.confidence [--model Cu] [--n 1000] [--seed 20]``

The same test patterns as :mod:`.accuracy` (uniform random orientations, Bloch-wave 20-500 A, clean
and damaged), drawn with other seeds. Each pattern is mapped with ``num_matches_return=2``, which
scores the same candidates as the default (the prediction and its beam-flip partner, refined), and
reports the best candidate's score ``s1`` and the best *distinct* alternative's ``s2``. Scores
compared, each as a flag for "strict error >= 5 deg":

* ``s1``: the shipped ``corr``;
* ``s1 - s2``: the margin over the best distinct alternative (mostly the beam flip);
* ``n``: the number of disks the model reads;
* ``(s1 - s2) (1 - exp(-n / 8))``: the margin, discounted for sparse patterns.

This is a measurement for choosing a better ``corr``; nothing here changes the mapper.
"""

from __future__ import annotations

import argparse

import numpy as np

from ..compare import misorientation_deg, roc_auc
from .accuracy import test_set


def confidence_scores(corr: np.ndarray, n_disks: np.ndarray) -> dict:
    """Candidate confidences from the (N, 2) corr of the two best distinct matches and (N,) disk counts."""
    s1, s2 = corr[:, 0], corr[:, 1]
    sparse = 1 - np.exp(-n_disks / 8)
    return {"s1 (corr)": s1, "s1 - s2": s1 - s2, "n disks": n_disks.astype(float), "(s1 - s2)(1 - exp(-n/8))": (s1 - s2) * sparse}


def main(argv=None) -> dict:
    from ..mapper import crystal_from_metadata
    from ..tokens import braggvectors_to_tokens
    from .common import load_mapper

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="Cu", help="a pretrained name or a model file")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=20)
    args = parser.parse_args(argv)
    mapper = load_mapper(args.model)
    report = {}
    for damaged in (False, True):
        name = "damaged" if damaged else "clean"
        bragg, truth = test_set(crystal_from_metadata(mapper.model.metadata), args.n, args.seed + 100 * damaged, damaged)
        om = mapper.match_orientations(bragg, num_matches_return=2, progress_bar=False)
        err = misorientation_deg(om.matrix[0, :, 0], truth.orientation_matrices[0], mapper.symmetry)
        right = err < 5
        n = braggvectors_to_tokens(bragg, mapper.token_config).counts.numpy()
        aucs = {k: roc_auc(v, right) for k, v in confidence_scores(om.corr[0], n).items()}
        report[name] = {"right": float(right.mean()), "auc": aucs}
        print(f"\n{name}: {args.n} patterns, {right.mean():.1%} right (strict < 5°)")
        for k, v in aucs.items():
            print(f"  {k:28s} ROC AUC {v:.3f}")
    return report


if __name__ == "__main__":
    main()
