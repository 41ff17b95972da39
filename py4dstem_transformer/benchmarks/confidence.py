"""Benchmark: how well confidence scores flag wrong orientations (ROC AUC, right vs wrong).

``python -m py4dstem_transformer.benchmarks.confidence [--model Cu] [--n 1000] [--seed 20]``

The same test patterns as :mod:`.accuracy` (uniform random orientations, Bloch-wave 20-500 A, clean
and damaged), drawn with other seeds. Each pattern is mapped with the default candidates (the
prediction and its beam-flip partner, refined); for the reported orientation the mapper gives its
raw score ``s1`` and the best score ``s2`` of a *distinct* candidate (> 5 deg away after symmetry).
Scores compared, each as a flag for "strict error >= 5 deg":

* ``s1``: the raw correlation (``corr`` with ``calibrated_confidence=False``);
* ``s1 - s2``: the margin over the best distinct alternative (mostly the beam flip);
* ``n``: the number of disks the model reads;
* ``(s1 - s2) (1 - exp(-n / 8))``: the margin, discounted for sparse patterns;
* ``explained``, ``-unmatched``, ``-residual``, ``-moved``: how the reported orientation's disks pair
  with the observed ones, and how far it lies from the network's prediction (the other features
  of the calibration, :mod:`~py4dstem_transformer.mapping.confidence`), each signed so that higher means right;
* ``calibrated``: the model's calibrated probability (:mod:`~py4dstem_transformer.mapping.confidence`), the
  shipped ``corr`` where the model file holds a calibration; with its mean against the fraction right.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from ..evaluation.compare import misorientation_deg, roc_auc
from .accuracy import test_set


def confidence_scores(s1: np.ndarray, s2: np.ndarray, n_disks: np.ndarray, named: dict = None) -> dict:
    """Candidate confidences from (N,) raw scores of the reported and best distinct orientation and disk counts
    (and, given the mapper's named confidence features, those that are not made of these)."""
    sparse = 1 - np.exp(-n_disks / 8)
    scores = {"s1 (raw score)": s1, "s1 - s2": s1 - s2, "n disks": n_disks.astype(float),
              "(s1 - s2)(1 - exp(-n/8))": (s1 - s2) * sparse}
    if named is not None:
        scores.update({"explained": named["explained"], "-unmatched": -named["unmatched"],
                       "-residual": -named["residual"], "-moved": -named["moved_deg"]})
    return scores


def main(argv=None) -> dict:
    from ..core.crystal import crystal_from_metadata
    from ..model.tokens import braggvectors_to_tokens
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
        tokens = braggvectors_to_tokens(bragg, mapper.token_config)
        mapped = mapper.map_tokens(tokens, 1)
        matrix, named = mapped.matrix, {k: v[:, 0, 0] for k, v in mapped.features.items()}
        s1, s2 = named["score"], named["score"] - named["margin"]
        err = misorientation_deg(matrix[:, 0, 0], truth.orientation_matrices[0], mapper.symmetry)
        right = err < 5
        n = tokens.counts.numpy()
        scores = confidence_scores(s1, s2, n, named)
        if mapper.calibration is not None:
            scores["calibrated (corr)"] = mapper.calibration.probability(
                {k: torch.as_tensor(v) for k, v in named.items()}).numpy()
        aucs = {k: roc_auc(v, right) for k, v in scores.items()}
        report[name] = {"right": float(right.mean()), "auc": aucs}
        print(f"\n{name}: {args.n} patterns, {right.mean():.1%} right (strict < 5°)")
        for k, v in aucs.items():
            print(f"  {k:28s} ROC AUC {v:.3f}")
        if mapper.calibration is not None:
            p = scores["calibrated (corr)"]
            report[name]["mean_probability"] = float(p.mean())
            print(f"  calibrated: mean probability {p.mean():.3f} vs fraction right {right.mean():.3f}")
            for lo, hi in ((0.0, 0.5), (0.5, 0.9), (0.9, 1.01)):
                sel = (p >= lo) & (p < hi)
                if sel.any():
                    print(f"    corr in [{lo:.1f}, {min(hi, 1):.1f}): {sel.sum():4d} patterns, {right[sel].mean():.1%} right")
    return report


if __name__ == "__main__":
    main()
