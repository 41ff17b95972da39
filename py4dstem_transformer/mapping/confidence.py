"""Calibrated confidence: the probability that a reported orientation is within 5 deg of the truth.

The raw score of a candidate (its correlation with the observed disks, :mod:`.score`) ranks the
candidates of one pattern well, but across patterns it is a weak flag for wrong answers: a sparse
pattern is explained well by several orientations, and a pattern whose beam flip is nearly
ambiguous scores high either way. What the mapper knows about being wrong, per reported
orientation (docs/benchmarks.md, confidence section):

* ``score``: its correlation with the observed disks;
* ``margin``: ``score`` minus the best score of a *distinct* candidate (more than 5 deg away after
  crystal symmetry; mostly the beam-flip partner), negative for second matches;
* ``log1p_disks``: ``log(1 + n)``, n the number of disks the model read;
* ``explained``: the ``I**power``-weighted fraction of observed disks within twice the score's kernel
  of a simulated disk (a spurious or misindexed disk lowers it);
* ``unmatched``: the ``I**power``-weighted fraction of simulated disks with no observed disk that near
  (reflections the orientation predicts but the pattern lacks);
* ``residual``: the RMS distance (1/A) of the explained disks to their simulated ones;
* ``moved_deg``: how far (deg, beam flip allowed) the answer lies from the nearest hypothesis it could
  have started from (the network's answers, turned inputs', or the library's); a hypothesis is rarely
  off by much, so a long way means the refinement drifted somewhere else.

A tiny network (F -> 8 -> 1, tanh) maps them to the probability of "strict misorientation < 5 deg".
It is fitted by :func:`calibrate` on simulated Bloch-wave patterns at orientations uniform on SO(3)
(half of them damaged), and stored as plain numbers in the model's metadata, so a model file stays
loadable with ``torch.load(weights_only=True)``. A model without a calibration reports the raw score.
The probability is only as good as the match between the simulated and the real patterns: treat it
as a ranking first and as a probability second.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch

from ..core.rotations import symmetry_min_angle
from .batch import MapBatch
from .config import MapConfig
from .phase import Phase
from .score import tokens_to_xy

__all__ = ["FEATURES", "Calibration", "confidence_features", "disk_agreement", "fit_calibration", "calibrated",
           "confidence", "phase_weights", "weighted_share", "METADATA_KEY"]

#: metadata key of the calibration in a model file
METADATA_KEY = "confidence_calibration"
#: every confidence feature, in the order a calibration stacks them
FEATURES = ("score", "margin", "log1p_disks", "explained", "unmatched", "residual", "moved_deg")


def confidence_features(score: torch.Tensor, alternative: torch.Tensor, n_disks: torch.Tensor,
                        agreement: Optional[torch.Tensor] = None, moved_deg: Optional[torch.Tensor] = None) -> dict:
    """Named float32 features (same shape as ``score``) from same-shaped (broadcastable) tensors.

    ``agreement`` (..., 3) is :func:`disk_agreement`'s ``(explained, unmatched, residual)``; it and
    ``moved_deg`` are optional (the first three features do without them).
    """
    score = score.float()
    named = {"score": score, "margin": score - alternative.float(),
             "log1p_disks": torch.log1p(torch.broadcast_to(n_disks.float(), score.shape))}
    if agreement is not None:
        named.update(zip(FEATURES[3:6], agreement.float().unbind(-1)))
    if moved_deg is not None:
        named["moved_deg"] = moved_deg.float()
    return named


def disk_agreement(observed: torch.Tensor, observed_mask: torch.Tensor, simulated: torch.Tensor,
                   simulated_mask: torch.Tensor, radius: float, power: float) -> torch.Tensor:
    """How the disks of (B, N, 3) observed and (B, M, 3) simulated ``(qx, qy, I)`` patterns pair up.

    Returns (B, 3): ``explained`` (``I**power``-weighted fraction of observed disks within ``radius``
    (1/A) of a simulated one), ``unmatched`` (weighted fraction of simulated disks with no observed
    one within ``radius``) and ``residual`` (RMS distance, 1/A, of the explained disks; 0 if none).
    """
    d = torch.cdist(observed[..., :2].float(), simulated[..., :2].float())  # (B, N, M)
    d = d.masked_fill(~simulated_mask[:, None, :], torch.inf).masked_fill(~observed_mask[..., None], torch.inf)
    near_obs, near_sim = d.amin(-1), d.amin(1)  # (B, N), (B, M)
    wb = simulated[..., 2].float().clamp_min(0).pow(power) * simulated_mask
    hit = (near_obs < radius) & observed_mask
    explained = weighted_share(observed, observed_mask, hit, power)
    unmatched = (wb * (near_sim >= radius)).sum(-1) / wb.sum(-1).clamp_min(1e-12)
    residual = torch.sqrt((near_obs.masked_fill(~hit, 0.0) ** 2).sum(-1) / hit.sum(-1).clamp_min(1))
    return torch.stack([explained, unmatched, residual], -1)


def weighted_share(observed: torch.Tensor, observed_mask: torch.Tensor, chosen: torch.Tensor,
                   power: float) -> torch.Tensor:
    """(B,) the ``I**power``-weighted share of each pattern's (B, N, 3) observed disks that (B, N) ``chosen`` marks
    (0 for a pattern with no disk)."""
    w = observed[..., 2].float().clamp_min(0).pow(power) * observed_mask
    return (w * chosen).sum(-1) / w.sum(-1).clamp_min(1e-12)


@dataclass(frozen=True)
class Calibration:
    """A fitted map from confidence features to the probability of being right (< 5 deg strict).

    Attributes
    ----------
    mean, std : (F,) feature standardisation.
    w1 : (H, F), b1 : (H,), w2 : (H,), b2 : float -- ``p = sigmoid(w2 . tanh(w1 x + b1) + b2)``.
    fitted_on : dict, how it was fitted (patterns, seed, damaged fraction, fraction right, AUC).
    features : names of the F features it reads (:data:`FEATURES`), in order.
    """

    mean: tuple
    std: tuple
    w1: tuple
    b1: tuple
    w2: tuple
    b2: float
    fitted_on: dict
    features: tuple = FEATURES[:3]  # calibrations without the field read the first three

    def probability(self, features: dict) -> torch.Tensor:
        """Probability (float32, the features' shape) that each reported orientation is right, from the
        named :func:`confidence_features` (those it does not read may be left out)."""
        missing = [k for k in self.features if k not in features]
        if missing:
            raise ValueError(f"this calibration reads the confidence features {list(self.features)}; "
                             f"{missing} were not given")
        return self.probability_of_features(torch.stack([features[k].float() for k in self.features], -1))

    def probability_of_features(self, features: torch.Tensor) -> torch.Tensor:
        """Probability for (..., F) stacked features, in the order of ``self.features``."""
        z = (features - torch.tensor(self.mean)) / torch.tensor(self.std)
        params = (torch.tensor(self.w1), torch.tensor(self.b1), torch.tensor(self.w2), torch.tensor(self.b2))
        return torch.sigmoid(_logit(z, *params))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        return cls(**{k: (tuple(map(tuple, v)) if k == "w1" else tuple(v) if isinstance(v, (list, tuple)) else v)
                      for k, v in d.items()})

    @classmethod
    def from_metadata(cls, metadata: dict) -> Optional["Calibration"]:
        d = metadata.get(METADATA_KEY)
        return None if d is None else cls.from_dict(d)


def _logit(z: torch.Tensor, w1, b1, w2, b2) -> torch.Tensor:
    """The network on standardised (..., F) features: ``w2 . tanh(w1 z + b1) + b2``."""
    return torch.tanh(z @ w1.T + b1) @ w2 + b2


def fit_calibration(features: dict, right: torch.Tensor, hidden: int = 8, steps: int = 1500,
                    seed: int = 0, fitted_on: Optional[dict] = None) -> Calibration:
    """Fit the F -> ``hidden`` -> 1 network to named (N,) :func:`confidence_features` (all of those given,
    in :data:`FEATURES` order) and (N,) bool labels (cross-entropy, Adam)."""
    names = tuple(k for k in FEATURES if k in features)
    x, y = torch.stack([features[k].float() for k in names], -1), right.float()
    if len(x) < 10 or y.min() == y.max():
        raise ValueError("calibration needs at least 10 patterns with both right and wrong answers among them")
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    gen = torch.Generator().manual_seed(seed)
    w1 = (torch.randn(hidden, len(names), generator=gen) * 0.5).requires_grad_()
    b1 = torch.zeros(hidden, requires_grad=True)
    w2 = (torch.randn(hidden, generator=gen) * 0.5).requires_grad_()
    b2 = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([w1, b1, w2, b2], lr=3e-2, weight_decay=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(_logit(z, w1, b1, w2, b2), y).backward()
        opt.step()
    return Calibration(tuple(mean.tolist()), tuple(std.tolist()), tuple(map(tuple, w1.detach().tolist())),
                       tuple(b1.detach().tolist()), tuple(w2.detach().tolist()), float(b2.detach()),
                       dict(fitted_on or {}), names)


def calibrated(score: torch.Tensor, features: dict, calibration: Calibration) -> torch.Tensor:
    """The calibrated probability for raw scores ``score`` and their named features (same shape); a match
    without a score (phases left out, patterns without disks: 0) stays at 0."""
    return torch.where(score > 0, calibration.probability(features), score)


def phase_weights(probability: np.ndarray, power: float) -> np.ndarray:
    """(..., P) what each phase's calibrated confidence is multiplied by to give its ``corr``, the largest of which
    names the phase (:class:`~.config.MapConfig` ``phase_power``): the network's phase probability over that of its
    favourite phase, raised to ``power``. The favourite weighs 1, so its ``corr`` is its orientation's confidence;
    a phase the network finds ten times less likely weighs ``10 ** -power``: at 1 the disks must fit it ten times
    better to name it, below 1 less (on py4DSTEM's sparse Cu2O patterns the network is often sure of the wrong
    phase, docs/benchmarks.md). 0 weighs every phase the network gives any probability alike."""
    if not power >= 0:
        raise ValueError(f"phase_power must be >= 0, got {power}")
    probability = np.asarray(probability, dtype=np.float64)
    favourite = probability.max(-1, keepdims=True)
    ratio = probability / np.where(favourite > 0, favourite, 1.0)
    return np.where(ratio > 0, np.clip(ratio, 1e-300, None) ** power, 0.0)


@torch.inference_mode()
def confidence(batch: MapBatch, phase: Phase, config: MapConfig) -> MapBatch:
    """Stage: the named confidence ``features`` (b, K) of every match (:func:`confidence_features`): how the
    match's disks pair with the observed ones (within twice the score's kernel) and how far it lies from the
    nearest hypothesis (deg, beam flip allowed)."""
    b, K = batch.corr.shape
    H = batch.hypotheses.shape[1]
    start = batch.hypotheses.cpu().float()[:, None].expand(b, K, H, 3, 3)
    moved = torch.rad2deg(symmetry_min_angle(batch.matrix[:, :, None].expand(b, K, H, 3, 3).reshape(-1, 3, 3),
                                             start.reshape(-1, 3, 3), phase.symmetry, allow_beam_flip=True))
    moved = moved.view(b, K, H).min(-1).values  # from the nearest hypothesis: how far the search drifted
    sim, sim_mask = batch.disks
    rows, pick = torch.arange(b)[:, None].to(sim.device), batch.pick.to(sim.device)
    sim, sim_mask = sim[rows, pick], sim_mask[rows, pick]  # the matches' disks, (b, K, M, 3), (b, K, M)
    obs = tokens_to_xy(batch.tokens.tokens).to(batch.device).repeat_interleave(K, 0)
    agreement = disk_agreement(obs, batch.tokens.mask.to(batch.device).repeat_interleave(K, 0),
                               sim.reshape(b * K, *sim.shape[2:]), sim_mask.reshape(b * K, -1),
                               2 * config.score.kernel, config.score.power).view(b, K, 3).cpu()
    features = confidence_features(batch.corr, batch.alternative, batch.tokens.counts[:, None], agreement, moved)
    return dataclasses.replace(batch, features=features)
