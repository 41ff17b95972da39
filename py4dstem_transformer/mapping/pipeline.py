"""The mapping of a batch of tokens, as a pipeline of stages.

``predict`` (the network, :mod:`.predict`) gives each pattern its hypotheses and phase probabilities;
then, for every phase the network finds likely enough, the stages run in order, each
``(MapBatch, Phase, MapConfig) -> MapBatch``:

``expand`` (candidates: hypotheses x partners) -> ``refine`` (against the disks) -> ``polish`` (on the
score, noisy disks only) -> ``score`` (correlation with the disks) -> ``tiebreak`` (near ties between distinct
candidates decided the way ACOM scores) -> ``arbitrate`` (near ties decided on intensity profiles) -> ``rank``
(distinct matches) -> ``confidence`` (the calibration's features); the two tie stages run where the model's settings
ask for them, and each only moves a rival up: with both on, a rival is first where either puts it first.

Sparse patterns (:class:`~.config.TurnConfig`) whose best answer is not sure (calibrated confidence x
phase probability below ``turns.confidence``) are predicted again from their input turned in-plane, and
the stages run again over all their hypotheses; the candidates refined the first time are reused.
Then every pattern still unsure (:class:`~.config.SearchConfig`) gets the best orientations of a coarse
library (:mod:`.library`) beside its own answers, and the stages run once more over those.
Chunking, devices and worker processes stay outside (:mod:`.schedule`).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from functools import reduce
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from ..core.rotations import symmetric_orthogonalization
from ..model.tokens import Tokens
from .arbiter import arbitrate
from .batch import MapBatch
from .candidates import expand, partners
from .config import MapConfig, Query
from .confidence import FEATURES, calibrated, confidence
from .lattice_check import off_lattice_share
from .library import library_hypotheses
from .phase import Phase
from .polish import polish
from .predict import Network, count_sorted_batches
from .rank import rank
from .refine import refine
from .score import score, tokens_to_xy
from .tiebreak import tiebreak

__all__ = ["STAGES", "run_stages", "map_tokens", "map_phases", "Mapped"]

#: The stages of one phase, in order; each ``(MapBatch, Phase, MapConfig) -> MapBatch``.
STAGES = (expand, refine, polish, score, tiebreak, arbitrate, rank, confidence)


def run_stages(batch: MapBatch, phase: Phase, config: MapConfig, stages=STAGES) -> MapBatch:
    """``batch`` through ``stages`` for one phase."""
    return reduce(lambda b, stage: stage(b, phase, config), stages, batch)


@dataclass
class Mapped:
    """Per phase, ranked matches of B patterns (float64 numpy): ``matrix`` (B, P, K, 3, 3), raw ``score``
    (B, P, K) (the correlation of the match; 0 for no match), ``features`` {name: (B, P, K)} and the
    network's ``probability`` (B, P)."""

    matrix: np.ndarray
    score: np.ndarray
    features: Dict[str, np.ndarray]
    probability: np.ndarray

    def confidence(self, calibration) -> np.ndarray:
        """(B, P, K) calibrated probability of being right, or the raw score without a calibration."""
        if calibration is None:
            return self.score
        named = {k: torch.as_tensor(v).float() for k, v in self.features.items()}
        return calibrated(torch.as_tensor(self.score).float(), named, calibration).double().numpy()


@dataclass
class _Found:
    """Ranked matches of a batch, per phase: matrix (b, P, K, 3, 3), corr (b, P, K) raw scores, features
    (b, P, K, F), and the refined candidates (b, P, C, 3, 3) with their origin errors (b, P, C, 2) of the
    phases ``done`` (b, P)."""

    matrix: torch.Tensor
    corr: torch.Tensor
    features: torch.Tensor
    candidates: torch.Tensor
    shift: torch.Tensor
    done: torch.Tensor

    def __getitem__(self, rows: torch.Tensor) -> "_Found":
        return _Found(*(getattr(self, f.name)[rows] for f in fields(self)))

    def assign(self, rows: torch.Tensor, other: "_Found") -> None:
        """Take ``other``'s matches for ``rows`` (the candidates stay: ``other`` may have more)."""
        for name in ("matrix", "corr", "features"):
            getattr(self, name)[rows] = getattr(other, name)


def map_tokens(tokens: Tokens, network: Network, phases: Sequence[Phase], config: MapConfig, query: Query,
               batch_size: int, stages=STAGES) -> Mapped:
    """Ranked, refined and scored matches of every pattern for every phase (:class:`Mapped`).

    Patterns go in batches of similar disk count (padding trimmed), so the working set stays in
    cache; a pattern's answer does not depend on the patterns batched with it (to float rounding: on some CPUs
    batches of another size take other BLAS kernels, ~1e-6). A pattern without disks
    has nothing to read: identity, score 0, every phase as likely. ``stages``: :data:`STAGES` or stand-ins
    with their names (e.g. timed ones, :mod:`..benchmarks.stages`).
    """
    B, P, K = len(tokens), len(phases), query.num_matches
    matrix, corr = torch.zeros(B, P, K, 3, 3), torch.zeros(B, P, K)
    features, probability = torch.zeros(B, P, K, len(FEATURES)), torch.ones(B, P)
    empty = tokens.counts == 0
    matrix[empty], probability[empty] = torch.eye(3), 1.0 / P
    turns = config.turns
    # the wider search for sparse patterns only pays off when refinement follows
    sparse = (tokens.counts >= turns.min_disks) & (tokens.counts <= turns.max_disks) & query.refine
    calibration = phases[0].calibration
    for subset, n_turns in ((~sparse & ~empty, 1), (sparse & ~empty, turns.turns)):
        # with a calibration, a sparse pattern is turned only if its first answer is not already sure
        first = 1 if (calibration is not None and turns.confidence < 1) else n_turns
        for idx, batch in count_sorted_batches(tokens, batch_size, subset):
            hypotheses, prob = network.hypotheses(batch, first)  # (b, H, 3, 3), (b, P)
            found = map_phases(batch, hypotheses, prob, network.device, phases, config, query, stages)
            if first < n_turns:
                unsure = (_sureness(found, prob, calibration)[0] < turns.confidence).cpu()
                if unsure.any():
                    more, more_prob = network.hypotheses(batch[unsure], n_turns, first=1)
                    on = unsure.to(prob.device)
                    prob[on] = (prob[on] + (n_turns - 1) * more_prob) / n_turns
                    again = map_phases(batch[unsure], torch.cat([hypotheses[on], more], 1), prob[on], network.device,
                                        phases, config, query, stages, found[unsure])
                    found.assign(unsure, again)
            if config.search is not None and query.refine and calibration is not None:
                _search_library(batch, prob, found, network.device, phases, config, query, calibration, stages)
            probability[idx] = prob.cpu()
            matrix[idx], corr[idx], features[idx] = found.matrix, found.corr, found.features
    matrix = symmetric_orthogonalization(matrix.double())  # float32 network output -> exact in float64
    return Mapped(matrix.numpy(), corr.double().numpy(),
                  {k: v.double().numpy() for k, v in zip(FEATURES, features.unbind(-1))}, probability.double().numpy())


def map_phases(tokens: Tokens, hypotheses: torch.Tensor, prob: torch.Tensor, device, phases: Sequence[Phase],
                config: MapConfig, query: Query, stages=STAGES, refined: Optional[_Found] = None) -> _Found:
    """The stages for every phase the network finds likely enough (the others keep the network's answer with
    score 0). ``hypotheses``: (b, H, 3, 3) shared by the phases, or (b, H, P, 3, 3) each phase's own (a model with
    experts). ``refined``: an earlier pass over the first hypotheses, whose refined candidates are reused."""
    b, P, K = len(tokens), len(phases), query.num_matches
    C = hypotheses.shape[1] * len(partners(K, query.inversion_symmetry))
    first = hypotheses[:, 0] if per_phase(hypotheses) else hypotheses[:, :1].expand(b, P, 3, 3)  # (b, P, 3, 3)
    found = _Found(first[:, :, None].cpu().expand(b, P, K, 3, 3).clone(), torch.zeros(b, P, K),
                   torch.zeros(b, P, K, len(FEATURES)), torch.zeros(b, P, C, 3, 3), torch.zeros(b, P, C, 2),
                   torch.zeros(b, P, dtype=torch.bool))
    for p, phase in enumerate(phases):
        rows = prob[:, p].cpu() >= config.min_phase_probability  # always all rows for one phase
        if not rows.any():
            continue
        earlier = earlier_shift = None
        if refined is not None and bool(refined.done[rows, p].all()):
            earlier, earlier_shift = refined.candidates[rows, p], refined.shift[rows, p]
        sub = tokens if rows.all() else tokens[rows]
        own = hypotheses[rows.to(hypotheses.device)]
        own = own[:, :, p] if per_phase(hypotheses) else own
        batch = run_stages(MapBatch(sub, own, query, device, earlier, earlier_shift), phase, config, stages)
        found.matrix[rows, p], found.corr[rows, p] = batch.matrix, batch.corr
        found.features[rows, p] = torch.stack([batch.features[k] for k in FEATURES], -1)
        found.candidates[rows, p], found.done[rows, p] = batch.candidates.cpu(), True
        if batch.shift is not None:
            found.shift[rows, p] = batch.shift.cpu()
    return found


def per_phase(hypotheses: torch.Tensor) -> bool:
    """Whether ``hypotheses`` are each phase's own, (b, H, P, 3, 3) (a model with experts), not shared (b, H, 3, 3)."""
    return hypotheses.dim() == 5


def _search_library(tokens: Tokens, prob: torch.Tensor, found: _Found, device, phases: Sequence[Phase],
                    config: MapConfig, query: Query, calibration, stages=STAGES) -> None:
    """Unsure patterns (:class:`~.config.SearchConfig`) mapped again with their own best match per phase and
    the library's best orientations of every phase as hypotheses; their matches are replaced (in ``found``)
    by the new ranking, in which their first answers compete too."""
    search = config.search
    sureness, best = _sureness(found, prob, calibration)
    enough = tokens.counts >= search.min_disks
    unsure = ((sureness < search.confidence).cpu() | (search.confidence >= 1)) & enough
    if search.off_lattice < 1:
        unsure |= _off_lattice(tokens, found, best, phases, config, ~unsure & enough)
    if not unsure.any():
        return
    sub = tokens[unsure]
    observed = tokens_to_xy(sub.tokens)
    extra = [library_hypotheses(observed, sub.mask, phase.library(search, config.score), config.score.kernel,
                                config.score.power, search.top) for phase in phases]
    hypotheses = torch.cat([found.matrix[unsure][:, :, 0]] + extra, 1).to(device)  # (u, P + P * top, 3, 3)
    on = unsure.to(prob.device)
    found.assign(unsure, map_phases(sub, hypotheses, prob[on], device, phases, config, query, stages))


def _sureness(found: _Found, prob: torch.Tensor, calibration):
    """``(sureness (b,), phase (b,))``: the calibrated confidence of each pattern's best match times its phase
    probability, in its best phase, and that phase's index."""
    named = dict(zip(FEATURES, found.features[:, :, 0].unbind(-1)))  # (b, P) each
    return (calibrated(found.corr[:, :, 0], named, calibration) * prob.cpu()).max(1)


def _off_lattice(tokens: Tokens, found: _Found, phase_index: torch.Tensor, phases: Sequence[Phase],
                 config: MapConfig, rows: torch.Tensor) -> torch.Tensor:
    """(b,) bool: those of the ``rows`` whose best match (of phase ``phase_index``) leaves more than
    ``config.search.off_lattice`` of their disks off its lattice (:func:`.lattice_check.off_lattice_share`)."""
    search, off = config.search, torch.zeros_like(rows)
    for p, phase in enumerate(phases):
        on = rows & (phase_index == p)
        if not on.any():
            continue
        sub = tokens[on]
        share = off_lattice_share(tokens_to_xy(sub.tokens), sub.mask, found.matrix[on, p, 0].cpu(), phase,
                                  search.lattice_sigma, 2 * config.score.kernel, config.score.power)
        off[on] = share > search.off_lattice
    return off
