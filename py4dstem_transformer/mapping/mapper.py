"""``TransformerOrientationMap``: a drop-in for ``crystal.match_orientations``.

The pipeline, per chunk of scan positions (memory stays bounded by the chunk):

1. tokens from the calibrated Bragg vectors (:mod:`.tokens`);
2. the network predicts one orientation per pattern (batches bucketed by disk count,
   ``torch.inference_mode``, bf16 autocast where it is fast); patterns with few disks whose answer
   (after steps 3-5) is not already sure also get predictions for their input turned in-plane by 45,
   90 and 135 deg (``sparse_turns``, ``sparse_confidence``); answers that repeat an earlier one are
   dropped;
3. candidates: each prediction and its beam-flip partner ``M @ diag(-1, -1, 1)`` (which a network
   cannot tell apart off a zone axis), plus the mirror partners when more than two matches are asked;
4. with ``refine=True`` (default) every candidate is refined against the disks (:mod:`.refine`) and,
   where the disks are too noisy to pin it by their positions, polished on its score (:mod:`.polish`);
5. each candidate's kinematic disks are correlated with the observed disks (:mod:`.score`); the
   best-scoring candidate is the first match; ``corr`` is the calibrated probability that it is
   within 5 deg (:mod:`.confidence`: from its score, its margin over the best distinct candidate, the
   disk count, how its disks pair with the observed ones and how far it moved from the network's
   prediction), or the raw score for a model without a calibration;
6. the matrices go into a native py4DSTEM ``OrientationMap`` (:mod:`.orientation_map`).

On a CPU, large scans are shared out to single-threaded worker processes (:mod:`.workers`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Optional

import numpy as np
import torch

from ..core.device import autocast, autocast_dtype, resolve_device
from ..core.kinematics import Reflections, simulate_disks
from ..model.model import OrientationModel
from ..io.orientation_map import build_orientation_map, ensure_plan
from ..io.peaks import Peaks, peaks_from_braggvectors
from .polish import PolishConfig, polish_orientations
from .refine import RefineConfig, refine_orientations
from ..core.rotations import BEAM_FLIP, MIRROR, rotation_about_z, symmetric_orthogonalization, symmetry_min_angle
from .score import correlation, tokens_to_xy
from ..model.tokens import TokenConfig, Tokens, iter_scan_tokens
from ..io.compatibility import check_crystal_matches_model
from ..io.crystal import crystals_from_metadata, phase_metadata
from .confidence import FEATURES, Calibration, confidence_features, disk_agreement
from ..simulation.phases import formula
from .workers import resolve_workers, split_interleaved, worker_pool

__all__ = ["TransformerOrientationMap"]

#: Right factors of the candidates scored for every prediction: identity, beam flip, mirror, both.
_PARTNERS = np.array([(1.0, 1.0, 1.0), BEAM_FLIP, MIRROR, tuple(np.multiply(BEAM_FLIP, MIRROR))])


class TransformerOrientationMap:
    """Orientation mapping with a trained transformer, returning py4DSTEM ``OrientationMap`` objects.

    Parameters
    ----------
    crystal : py4DSTEM Crystal
        The material. It must match the crystal the model was trained for (lattice and point
        group); its ``orientation_map`` attribute and plan attributes are set by the mapping.
    model : OrientationModel or path
        A trained model, or a model file.
    device : str or torch.device, optional
        Default: CUDA if available, else CPU.
    precision : {"bf16", "fp32"}, optional
        Autocast dtype for the network; default bf16 where it is fast.
    sigma_excitation_error : float
        Excitation-error width (1/A) of the kinematic patterns used to score candidates. Wider than
        py4DSTEM's 0.02 default: Bloch-wave (real) intensities spread further from the Bragg condition.
    corr_kernel_size : float
        Positional tolerance (1/A) of the score.
    corr_power : float
        Intensities enter the score as ``I ** corr_power`` (ACOM's ``intensity_power``); a low power
        scores which disks are present more than how bright they are, which dynamical scattering
        keeps better than the kinematic intensities. The defaults pick the right beam flip most often
        on Bloch-wave test patterns (docs/benchmarks.md).
    refine_config : RefineConfig
        Settings of the refinement against the disks (``match_orientations(refine=True)``).
    polish_config : PolishConfig or None
        Settings of the pattern search that follows the refinement and maximizes each candidate's
        score (:mod:`.polish`); ``None`` skips it (faster, less accurate on noisy disks).
    sparse_disks, sparse_turns : int
        Patterns with at most ``sparse_disks`` disks are also predicted from their input turned in-plane
        by k * 180 / ``sparse_turns`` deg (k < ``sparse_turns``); each distinct answer is refined.
        ``sparse_turns=2`` maps ~25% faster and gets 1-3% fewer of the sparse patterns right
        (docs/benchmarks.md).
    sparse_confidence : float
        With a calibrated model, a sparse pattern is first mapped unturned, and turned only if that
        answer's confidence is below this (1: always turn). Most sure answers stay right without
        the turns; they cost a quarter of the time.
    sparse_min_disks : int
        Patterns with fewer disks are never turned: from three disks, the turned predictions find no
        better answer (docs/benchmarks.md).
    calibrated_confidence : bool
        Report ``corr`` as the model's calibrated probability that the orientation is within 5 deg of
        the truth (:mod:`.confidence`), where the model file holds a calibration; otherwise, and with
        ``False``, ``corr`` is the raw correlation score of the best candidate.
    workers : int, optional
        CPU processes that map a scan's positions in parallel, sharing torch's threads
        (:mod:`.workers`; Linux). Default: ``torch.get_num_threads()`` (at most 8) for scans of at least
        8192 positions on a CPU, else 1 (the calling process); on CUDA always 1.

    Examples
    --------
    >>> mapper = TransformerOrientationMap.pretrained("Cu")                  # doctest: +SKIP
    >>> orientation_map = mapper.match_orientations(bragg_peaks)             # doctest: +SKIP
    >>> mapper.crystal.plot_orientation_maps(orientation_map)                # doctest: +SKIP
    """

    def __init__(self, crystal, model, device=None, precision: Optional[str] = None,
                 sigma_excitation_error: float = 0.04, corr_kernel_size: float = 0.03, corr_power: float = 0.25,
                 refine_config: RefineConfig = RefineConfig(), polish_config: Optional[PolishConfig] = PolishConfig(),
                 sparse_disks: int = 12, sparse_turns: int = 4, sparse_confidence: float = 0.85, sparse_min_disks: int = 4,
                 min_phase_probability: float = 0.02, calibrated_confidence: bool = True,
                 workers: Optional[int] = None):
        if not isinstance(model, OrientationModel):
            model = OrientationModel.load(model)
        meta = model.metadata
        self.crystals = list(crystal) if isinstance(crystal, (list, tuple)) else [crystal]
        phases = phase_metadata(meta)
        if len(self.crystals) != len(phases):
            names = [p.get("name", "?") for p in phases]
            raise ValueError(f"the model maps {len(phases)} phase(s) {names} but {len(self.crystals)} crystal(s) were "
                             f"given; pass one Crystal per phase, in this order")
        for c, phase in zip(self.crystals, phases):
            check_crystal_matches_model(c, {**phase, "accel_voltage": meta.get("accel_voltage")})
        self.crystal, self.model = self.crystals[0], model.eval()
        self.phase_names = [p.get("name") or formula(c.numbers) for c, p in zip(self.crystals, phases)]
        self.device = resolve_device(device)
        self.precision = precision
        self.sigma_excitation_error, self.corr_kernel_size = sigma_excitation_error, corr_kernel_size
        self.corr_power = corr_power
        self.calibration, self.calibrated_confidence = Calibration.from_metadata(meta), calibrated_confidence
        self.refine_config, self.polish_config, self.sparse_disks = refine_config, polish_config, sparse_disks
        self.sparse_turns, self.sparse_confidence, self.workers = sparse_turns, sparse_confidence, workers
        self.sparse_min_disks = sparse_min_disks
        self.min_phase_probability = min_phase_probability
        self.token_config = TokenConfig(**meta["token_config"]) if "token_config" in meta else TokenConfig()
        self.accel_voltage = float(meta.get("accel_voltage", 300e3))
        self.symmetries = [np.asarray(p["symmetry"]) if "symmetry" in p else None for p in phases]
        self._reflections = [None] * len(phases)
        self._separations = [None] * len(phases)

    @property
    def n_phases(self) -> int:
        return len(self.crystals)

    @classmethod
    def pretrained(cls, name: str, crystal=None, **kwargs) -> "TransformerOrientationMap":
        """A shipped model by name (see :func:`list_pretrained`); ``crystal=None`` builds the model's
        crystal (a list of crystals for a multi-phase model such as ``"Cu+Cu2O"``)."""
        from ..pretrained import load_pretrained

        model = load_pretrained(name)
        if crystal is None:
            crystal = crystals_from_metadata(model.metadata)
            crystal = crystal[0] if len(crystal) == 1 else crystal
        return cls(crystal, model, **kwargs)

    @classmethod
    def from_model(cls, model="Cu", crystal=None, **kwargs) -> "TransformerOrientationMap":
        """A mapper for a shipped model's name (:func:`list_pretrained`) or a model file, with the model's
        own crystal(s) unless ``crystal`` is given."""
        from ..pretrained import list_pretrained

        if isinstance(model, str) and model in list_pretrained():
            return cls.pretrained(model, crystal, **kwargs)
        if not isinstance(model, OrientationModel):
            model = OrientationModel.load(model)
        if crystal is None:
            crystal = crystals_from_metadata(model.metadata)
            crystal = crystal[0] if len(crystal) == 1 else crystal
        return cls(crystal, model, **kwargs)

    # -- public API, mirroring py4DSTEM ---------------------------------------------------
    def match_orientations(self, bragg_peaks, num_matches_return: int = 1, min_number_peaks: int = 3,
                           inversion_symmetry: bool = True, progress_bar: bool = True,
                           batch_size: Optional[int] = None, device=None, chunk_size: int = 16384,
                           refine: bool = True):
        """Orientation map of a whole scan, like ``crystal.match_orientations(bragg_peaks)``.

        Parameters
        ----------
        bragg_peaks : py4DSTEM BraggVectors
            Calibrated (origin and Q pixel size; ellipse and rotation used when set). Not modified.
        num_matches_return : int
            Matches per position: the best candidate first, then its near-ambiguous partners (beam
            flip; mirror partners if ``inversion_symmetry``), ranked by their score.
        min_number_peaks : int
            Positions with fewer detected peaks (the direct beam counts, as in py4DSTEM) get
            ``corr = 0`` ("no match").
        inversion_symmetry : bool
            Offer the mirror partners (``M @ diag(1, -1, -1)``) as candidates too.
        progress_bar : bool
        batch_size : int, optional
            Patterns per network call; default 256 on CPU, 4096 on CUDA.
        device : optional
            Overrides the mapper's device for this call.
        chunk_size : int
            Scan positions processed at once (bounds memory).
        refine : bool
            Refine every candidate against the disks before ranking (sub-degree orientations and a
            reliable beam-flip choice); ``False`` gives the network's answer with the flip chosen
            by the score alone.

        Returns
        -------
        py4DSTEM ``OrientationMap`` of shape (Rx, Ry, num_matches_return); also stored as
        ``self.crystal.orientation_map``. With a multi-phase model, a list of them, one per crystal
        (see :meth:`match_phases`, which also gives the phase map).
        """
        peaks = peaks_from_braggvectors(bragg_peaks)
        return self.match_peaks(peaks, num_matches_return, min_number_peaks, inversion_symmetry, progress_bar,
                                batch_size, device, chunk_size, refine)

    def match_phases(self, bragg_peaks, num_matches_return: int = 1, min_number_peaks: int = 3,
                     inversion_symmetry: bool = True, progress_bar: bool = True, batch_size: Optional[int] = None,
                     device=None, chunk_size: int = 16384, refine: bool = True):
        """Phase and orientation of every scan position in one pass (multi-phase models).

        The network gives each pattern a probability per phase and one orientation; the
        orientation is refined and scored against the disks of every phase whose probability is at
        least ``min_phase_probability`` (set on the mapper). Each crystal's ``OrientationMap`` holds
        that phase's orientation at every position, with ``corr`` = phase probability x
        orientation confidence, so py4DSTEM's ``CrystalPhase.plot_dominant_phase(use_correlation_scores=True)``
        reads the phase from them; the phase is the one with the largest ``corr``.

        Parameters are those of :meth:`match_orientations`; ``bragg_peaks`` may also be flat
        :class:`~py4dstem_transformer.io.peaks.Peaks` (from ``read_peaks``).

        Returns
        -------
        :class:`~py4dstem_transformer.io.phase_map.PhaseMap` with ``phase_index`` (Rx, Ry) (-1 where
        nothing matched), ``phase_probability`` (Rx, Ry, n) and ``orientation_maps`` (one per
        crystal, each also set as that crystal's ``orientation_map``).
        """
        from ..io.phase_map import PhaseMap

        peaks = bragg_peaks if isinstance(bragg_peaks, Peaks) else peaks_from_braggvectors(bragg_peaks)
        maps, probability = self._match(peaks, num_matches_return, min_number_peaks, inversion_symmetry, progress_bar,
                                        batch_size, device, chunk_size, refine)
        return PhaseMap.from_orientation_maps(maps, probability, self.crystals, self.phase_names)

    def match_peaks(self, peaks: Peaks, num_matches_return: int = 1, min_number_peaks: int = 3,
                    inversion_symmetry: bool = True, progress_bar: bool = True, batch_size: Optional[int] = None,
                    device=None, chunk_size: int = 16384, refine: bool = True):
        """:meth:`match_orientations` on flat :class:`~py4dstem_transformer.io.peaks.Peaks` (e.g. from
        :func:`~py4dstem_transformer.io.peaks.read_peaks`, the fast file reader)."""
        maps, _ = self._match(peaks, num_matches_return, min_number_peaks, inversion_symmetry, progress_bar,
                              batch_size, device, chunk_size, refine)
        return maps[0] if self.n_phases == 1 else maps

    def _match(self, peaks: Peaks, num_matches_return, min_number_peaks, inversion_symmetry, progress_bar,
               batch_size, device, chunk_size, refine):
        """(one OrientationMap per phase, phase probability (Rx, Ry, n_phases))."""
        from tqdm.auto import tqdm

        if len(peaks.scan_shape) != 2:
            raise ValueError(f"expected a 2-D scan, got scan shape {peaks.scan_shape}")
        device = resolve_device(device) if device is not None else self.device
        K = self._check_num_matches(num_matches_return, inversion_symmetry)
        B, P = peaks.num_positions, self.n_phases
        matrix, corr, probability = np.zeros((B, P, K, 3, 3)), np.zeros((B, P, K)), np.zeros((B, P))
        bar = tqdm(total=B, desc="matching orientations", unit="pattern", disable=not progress_bar)
        workers = resolve_workers(self.workers, device, B)
        predict = functools.partial(self._predict_share, num_matches=K, inversion_symmetry=inversion_symmetry,
                                    batch_size=batch_size, device=device, refine=refine)
        with worker_pool(predict, workers) as imap:
            for start, tokens in iter_scan_tokens(peaks, self.token_config, chunk_size):
                shares = split_interleaved(len(tokens), workers)
                parts = ((tokens.tokens[i].numpy(), tokens.mask[i].numpy(), tokens.counts[i].numpy()) for i in shares)
                for i, (m, c, prob) in zip(shares, imap(parts)):
                    rows = start + i
                    c[peaks.counts[rows] < min_number_peaks] = 0.0  # patterns without disks come with score 0
                    matrix[rows], corr[rows] = m, c * prob[:, :, None]
                    probability[rows] = prob
                    bar.update(len(i))
        bar.close()
        Rx, Ry = peaks.scan_shape
        maps = [self._to_orientation_map(matrix[:, p].reshape(Rx, Ry, K, 3, 3), corr[:, p].reshape(Rx, Ry, K), p)
                for p in range(P)]
        return maps, probability.reshape(Rx, Ry, P)

    def _predict_share(self, part, **kwargs):
        """:meth:`predict_phases` of one worker's share ``(tokens, mask, counts)`` of a chunk (numpy arrays)."""
        tokens = Tokens(*(torch.from_numpy(np.ascontiguousarray(a)) for a in part))
        return self.predict_phases(tokens, **kwargs)

    def match_single_pattern(self, bragg_peaks, num_matches_return: int = 1, min_number_peaks: int = 3,
                             inversion_symmetry: bool = True, **kwargs):
        """Orientation of one pattern, like ``crystal.match_single_pattern``.

        Parameters
        ----------
        bragg_peaks : PointList
            Calibrated peaks ``(qx, qy, intensity)`` in 1/A, origin at the direct beam (what
            ``bragg_peaks.cal[rx, ry]`` or ``generate_diffraction_pattern`` give).

        Returns
        -------
        py4DSTEM ``Orientation`` with ``num_matches_return`` matches.
        """
        from py4DSTEM.process.diffraction.utils import Orientation

        data = bragg_peaks.data if hasattr(bragg_peaks, "data") else np.asarray(bragg_peaks)
        peaks = Peaks.from_lists([np.stack([data["qx"], data["qy"], data["intensity"]], 1)], (1, 1))
        om = self.match_peaks(peaks, num_matches_return, min_number_peaks, inversion_symmetry, progress_bar=False, **kwargs)
        orientation = Orientation(num_matches=num_matches_return)
        for field in ("matrix", "family", "corr", "inds", "mirror", "angles"):
            setattr(orientation, field, getattr(om, field)[0, 0].copy())
        return orientation

    # -- the engine -------------------------------------------------------------------------
    def predict_tokens(self, tokens: Tokens, num_matches: int = 1, inversion_symmetry: bool = True,
                       batch_size: Optional[int] = None, device=None, refine: bool = True):
        """Ranked candidate orientations for a batch of tokens (single-phase models).

        Candidates are the network's prediction and its near-ambiguous partners (beam flip; mirror
        partners when ``num_matches > 2``); with ``refine``, patterns with at most ``sparse_disks``
        disks also get the predictions for their input turned in-plane (``sparse_turns``, test-time
        augmentation), because the network is least sure there. With ``refine`` every candidate is refined
        against the disks (:mod:`.refine`, :mod:`.polish`), then all are scored (:mod:`.score`) and ranked.
        Patterns go in batches of similar disk count (padding trimmed), so the working set stays
        in cache.

        Returns ``(matrix (B, K, 3, 3) float64, corr (B, K) float64)`` as numpy arrays.
        """
        if self.n_phases > 1:
            raise ValueError("this is a multi-phase model; use predict_phases")
        matrix, corr, _ = self.predict_phases(tokens, num_matches, inversion_symmetry, batch_size, device, refine)
        return matrix[:, 0], corr[:, 0]

    def predict_phases(self, tokens: Tokens, num_matches: int = 1, inversion_symmetry: bool = True,
                       batch_size: Optional[int] = None, device=None, refine: bool = True,
                       calibrated: Optional[bool] = None, return_features: bool = False):
        """Per phase, ranked candidate orientations, and the network's phase probabilities.

        As :meth:`predict_tokens`, for every phase whose probability is at least
        ``min_phase_probability`` (others keep the network's orientation with score 0).

        Returns ``(matrix (B, P, K, 3, 3), score (B, P, K), probability (B, P))`` float64 numpy
        arrays; ``score`` is the orientation confidence alone (not multiplied by the probability):
        the calibrated probability of being right where the model has a calibration and
        ``calibrated`` (default ``self.calibrated_confidence``) allows it, else the raw score. With
        ``return_features``, also the raw scores themselves and every match's named confidence features
        (:func:`.confidence.confidence_features`, (B, P, K) arrays):
        ``(matrix, raw score, features, probability)``.
        """
        calibrated = self.calibrated_confidence if calibrated is None else calibrated
        device = resolve_device(device) if device is not None else self.device
        batch_size = batch_size or (4096 if device.type == "cuda" else 256)
        # the mirror partners only compete for the 3rd and 4th matches: the network does not confuse them
        partners = _PARTNERS if (inversion_symmetry and num_matches > 2) else _PARTNERS[:2]
        partners = torch.as_tensor(partners, dtype=torch.float32)
        B, P = len(tokens), self.n_phases
        matrix, corr = torch.zeros(B, P, num_matches, 3, 3), torch.zeros(B, P, num_matches)
        features = torch.zeros(B, P, num_matches, len(FEATURES))
        probability = torch.ones(B, P)
        # a pattern without disks has nothing to read: identity, score 0, every phase as likely
        empty = tokens.counts == 0
        matrix[empty], probability[empty] = torch.eye(3), 1.0 / P
        # the wider search for sparse patterns only pays off when refinement follows
        sparse = (tokens.counts >= self.sparse_min_disks) & (tokens.counts <= self.sparse_disks) & refine
        for subset, turns in ((~sparse & ~empty, 1), (sparse & ~empty, self.sparse_turns)):
            # with a calibration, a sparse pattern is turned only if its first answer is not already sure
            first = 1 if (self.calibration is not None and self.sparse_confidence < 1) else turns
            for idx, batch in _count_sorted_batches(tokens, batch_size, subset):
                hypotheses, prob = self._hypotheses(batch, device, first)  # (b, H, 3, 3), (b, P)
                found = self._match_batch(batch, hypotheses, prob, partners, num_matches, refine, device)
                if first < turns:
                    unsure = (self._sureness(found, prob) < self.sparse_confidence).cpu()
                    if unsure.any():
                        sub = Tokens(batch.tokens[unsure], batch.mask[unsure], batch.counts[unsure])
                        more, more_prob = self._hypotheses(sub, device, turns, first=1)
                        on = unsure.to(prob.device)
                        prob[on] = (prob[on] + (turns - 1) * more_prob) / turns
                        again = self._match_batch(sub, torch.cat([hypotheses[on], more], 1), prob[on], partners,
                                                  num_matches, refine, device, found.subset(unsure))
                        found.assign(unsure, again)
                probability[idx] = prob.cpu()
                matrix[idx], corr[idx], features[idx] = found.matrix, found.corr, found.features
        matrix = symmetric_orthogonalization(matrix.double())  # float32 network output -> exact in float64
        named = dict(zip(FEATURES, features.unbind(-1)))
        if return_features:
            return (matrix.numpy(), corr.double().numpy(), {k: v.double().numpy() for k, v in named.items()},
                    probability.double().numpy())
        if calibrated and self.calibration is not None:
            corr = self._calibrated(corr, named)
        return matrix.numpy(), corr.double().numpy(), probability.double().numpy()

    def _match_batch(self, tokens: Tokens, hypotheses: torch.Tensor, prob: torch.Tensor, partners: torch.Tensor,
                     num_matches: int, refine: bool, device, refined: Optional["_Found"] = None) -> "_Found":
        """The ranked matches of a batch for every phase the network finds likely enough (others keep the
        network's answer with score 0). ``refined``: an earlier pass over the first hypotheses, whose
        refined candidates are reused."""
        b, P, K = len(tokens), self.n_phases, num_matches
        C = hypotheses.shape[1] * len(partners)
        found = _Found(hypotheses[:, None, :1].cpu().expand(b, P, K, 3, 3).clone(), torch.zeros(b, P, K),
                       torch.zeros(b, P, K, len(FEATURES)), torch.zeros(b, P, C, 3, 3), torch.zeros(b, P, dtype=torch.bool))
        for p in range(P):
            rows = prob[:, p].cpu() >= self.min_phase_probability  # always all rows for one phase
            if not rows.any():
                continue
            earlier = None
            if refined is not None and bool(refined.done[rows, p].all()):
                earlier = refined.candidates[rows, p]
            sub = tokens if rows.all() else Tokens(tokens.tokens[rows], tokens.mask[rows], tokens.counts[rows])
            m, c, f, cands = self._best_candidates(sub, hypotheses[rows.to(hypotheses.device)], partners, K, refine,
                                                   device, p, earlier)
            found.matrix[rows, p], found.corr[rows, p], found.features[rows, p] = m, c, f
            found.candidates[rows, p], found.done[rows, p] = cands.cpu(), True
        return found

    def _sureness(self, found: "_Found", prob: torch.Tensor) -> torch.Tensor:
        """(b,) calibrated confidence of each pattern's best match times its phase probability, best phase."""
        named = dict(zip(FEATURES, found.features[:, :, 0].unbind(-1)))  # (b, P) each
        return (self._calibrated(found.corr[:, :, 0], named) * prob.cpu()).max(1).values

    def _calibrated(self, corr: torch.Tensor, named: dict) -> torch.Tensor:
        """The calibrated probability for raw scores ``corr`` and their named features (same shape); a match
        without a score (phases left out, patterns without disks: 0) stays at 0."""
        return torch.where(corr > 0, self.calibration.probability(named), corr)

    def _best_candidates(self, tokens: Tokens, hypotheses: torch.Tensor, partners: torch.Tensor, num_matches: int,
                         refine: bool, device, phase: int, refined: Optional[torch.Tensor] = None):
        """Candidates (hypotheses x partners), refined and scored against ``phase``'s disks, ranked:
        ``(matrix (b, K, 3, 3), raw score (b, K), confidence features (b, K, F), candidates (b, C, 3, 3))``.
        ``refined`` (b, C0, 3, 3): the first C0 candidates, refined before (they are not refined again)."""
        b, H = hypotheses.shape[:2]
        candidates = hypotheses[:, :, None] * partners.to(hypotheses.device)[None, None, :, None, :]
        candidates = candidates.reshape(b, H * len(partners), 3, 3)
        keep = None
        if refine:
            keep = self._distinct_hypotheses(hypotheses.cpu(), phase).repeat_interleave(len(partners), 1)  # (b, C)
            todo = keep.clone()
            if refined is not None:
                candidates = torch.cat([refined.to(candidates), candidates[:, refined.shape[1]:]], 1)
                todo[:, :refined.shape[1]] = False
            if todo.any():
                candidates = self.refine(tokens, candidates, device, phase, keep=todo)
        score, disks = self.score(tokens, candidates, device, phase, return_disks=True)  # (b, C), ((b, C, M, 3), (b, C, M))
        if keep is not None:
            score = score.masked_fill(~keep, -1.0)  # a repeated hypothesis is not a candidate of its own
        matrix, corr, alternative, pick = self._rank_distinct(candidates.cpu(), score, num_matches, phase)
        moved = torch.rad2deg(symmetry_min_angle(matrix, hypotheses[:, :1].cpu().float(), self._symmetry_tensor(phase),
                                                 allow_beam_flip=True))
        rows = torch.arange(b)[:, None].to(disks[0].device)
        picked = tuple(d[rows, pick.to(d.device)] for d in disks)  # the picked candidates' disks, (b, K, M, ...)
        named = confidence_features(corr, alternative, tokens.counts[:, None],
                                    self.agreement(tokens, matrix, device, phase, disks=picked), moved)
        return matrix, corr, torch.stack([named[k] for k in FEATURES], -1), candidates

    def _distinct_hypotheses(self, hypotheses: torch.Tensor, phase: int, min_angle_deg: float = 1.5) -> torch.Tensor:
        """(b, H) bool: hypotheses not within ``min_angle_deg`` (after symmetry and the beam flip, which the
        partners add anyway) of an earlier one. Refining the same start twice would give the same answer."""
        b, H = hypotheses.shape[:2]
        keep = torch.ones(b, H, dtype=torch.bool)
        if H > 1:
            sym = self._symmetry_tensor(phase)
            for k in range(1, H):
                angle = symmetry_min_angle(hypotheses[:, k, None], hypotheses[:, :k], sym, allow_beam_flip=True)
                keep[:, k] = ~((angle < np.radians(min_angle_deg)) & keep[:, :k]).any(1)
        return keep

    def _rank_distinct(self, candidates: torch.Tensor, score: torch.Tensor, num_matches: int, phase: int = 0,
                       min_angle_deg: float = 5.0):
        """The ``num_matches`` best-scoring candidates per pattern that are distinct orientations.

        Candidates within ``min_angle_deg`` (after crystal symmetry) of a better one are skipped, so
        hypotheses that converged to the same orientation are reported once. Returns
        ``(matrix (b, K, 3, 3), score (b, K), alternative (b, K), pick (b, K))``: ``alternative`` is the best
        score of a candidate distinct from that match (0 if none), the margin's reference for the
        confidence (:mod:`.confidence`); ``pick`` the index of each match among the candidates. A slot
        with nothing distinct left gets score 0.
        """
        b, C = score.shape
        sym = self._symmetry_tensor(phase)
        available = torch.ones(b, C, dtype=torch.bool)
        matrix, corr, alternative = torch.zeros(b, num_matches, 3, 3), torch.zeros(b, num_matches), torch.zeros(b, num_matches)
        picks = torch.zeros(b, num_matches, dtype=torch.long)
        rows = torch.arange(b)
        for k in range(num_matches):
            masked = score.masked_fill(~available, -1.0)
            pick = picks[:, k] = masked.argmax(1)
            matrix[:, k], corr[:, k] = candidates[rows, pick], masked[rows, pick].clamp_min(0.0)
            near = symmetry_min_angle(matrix[:, k, None], candidates, sym, allow_beam_flip=False) < np.radians(min_angle_deg)
            alternative[:, k] = score.masked_fill(near, -1.0).max(1).values.clamp_min(0.0)  # (b, C) -> (b,)
            available &= ~near
        return matrix, corr, alternative, picks

    def _symmetry(self, phase: int = 0) -> np.ndarray:
        if self.symmetries[phase] is None:
            self.symmetries[phase] = _point_group(self.crystals[phase])
        return self.symmetries[phase]

    def _symmetry_tensor(self, phase: int = 0) -> torch.Tensor:
        """:meth:`_symmetry` as a (K, 3, 3) float32 tensor, for :func:`.rotations.symmetry_min_angle`."""
        return torch.as_tensor(self._symmetry(phase), dtype=torch.float32)

    @property
    def symmetry(self) -> np.ndarray:
        """(K, 3, 3) proper rotations of the (first) crystal."""
        return self._symmetry(0)

    def _hypotheses(self, tokens: Tokens, device, turns: int, first: int = 0):
        """Network predictions for the input rotated by k * 180 / turns deg (``first <= k < turns``), un-rotated:
        ``(matrix (b, turns - first, 3, 3), phase probability (b, n_phases) averaged over the turns)``.

        Half a turn is enough: a pattern turned by 180 deg is the same pattern (Friedel's law) and its
        answer the beam-flip partner, which is a candidate anyway."""
        out, prob = [], 0.0
        for k in range(first, turns):
            phi = np.pi * k / turns
            rotated = Tokens(_rotate_tokens(tokens.tokens, phi), tokens.mask, tokens.counts)
            prediction, p = self._network(rotated, device)
            # a pattern rotated counter-clockwise by phi has label M @ Rz(-phi), so M = P @ Rz(phi)
            out.append(prediction @ rotation_about_z(torch.tensor(phi)).float().to(prediction.device))
            prob = prob + p / (turns - first)
        return torch.stack(out, 1), prob

    @torch.inference_mode()
    def refine(self, tokens: Tokens, candidates: torch.Tensor, device=None, phase: int = 0,
               keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """(b, C, 3, 3) candidates refined against each pattern's disks (:func:`.refine.refine_orientations`),
        then polished on their score (:func:`.polish.polish_orientations`) unless ``polish_config`` is None.
        With ``keep`` ((b, C) bool), only those candidates; the others are returned as they are."""
        device = resolve_device(device) if device is not None else self.device
        b, C = candidates.shape[:2]
        keep = torch.ones(b, C, dtype=torch.bool) if keep is None else keep.cpu()
        rows = torch.arange(b).repeat_interleave(C)[keep.flatten()]  # pattern of every refined candidate
        obs, mask = tokens_to_xy(tokens.tokens)[rows].to(device), tokens.mask[rows].to(device)
        reflections, window = self._get_reflections(phase).to(device), dict(k_max=self.token_config.k_max,
                                                                             r_min=self.token_config.direct_beam_radius)
        refined, noise = refine_orientations(candidates.reshape(b * C, 3, 3)[keep.flatten().to(candidates.device)].to(device),
                                             obs, mask, reflections, self.refine_config, return_noise=True, **window)
        config = self.polish_config
        if config is not None:  # all candidates of a pattern or none, so that they compete on equal terms
            least = torch.full((b * C,), torch.inf).masked_scatter_(keep.flatten(), noise.cpu()).view(b, C).min(1).values
            polish = (least > config.min_position_noise)[rows].to(device)
            if polish.any():
                polished, _ = polish_orientations(refined[polish], obs[polish], mask[polish], reflections,
                                                  self.sigma_excitation_error, self.corr_kernel_size, self.corr_power,
                                                  self._disk_limit(tokens)[rows][polish.cpu()].to(device),
                                                  config=config, **window)
                refined[polish] = polished
        out = candidates.reshape(b * C, 3, 3).to(device=device, dtype=torch.float32).clone()
        out[keep.flatten().to(device)] = refined
        return out.view(b, C, 3, 3)

    def predict_network(self, tokens: Tokens, batch_size: Optional[int] = None, device=None) -> torch.Tensor:
        """The network's orientation for each pattern, (B, 3, 3) float32 (batches bucketed by disk count)."""
        device = resolve_device(device) if device is not None else self.device
        out = torch.zeros(len(tokens), 3, 3)
        for idx, batch in _count_sorted_batches(tokens, batch_size or (4096 if device.type == "cuda" else 256)):
            out[idx] = self._network(batch, device)[0].cpu()
        return out

    @torch.inference_mode()
    def _network(self, tokens: Tokens, device):
        """``(matrix (b, 3, 3) float32, phase probability (b, n_phases) float32)`` on ``device``."""
        model = self.model.to(device)
        with autocast(device, autocast_dtype(device, self.precision)):
            out = model(tokens.tokens.to(device), tokens.mask.to(device))
        matrix = out["matrix"].float()
        if "phase_logits" in out:
            return matrix, torch.softmax(out["phase_logits"].float(), dim=1)
        return matrix, torch.ones(len(matrix), 1, device=matrix.device)

    @torch.inference_mode()
    def score(self, tokens: Tokens, candidates: torch.Tensor, device=None, phase: int = 0, return_disks: bool = False):
        """Correlation (B, C) of the observed disks with the kinematic disks of (B, C, 3, 3) candidates; with
        ``return_disks`` also those disks, ``(disks (B, C, M, 3), mask (B, C, M))`` on ``device``."""
        device = resolve_device(device) if device is not None else self.device
        B, C = candidates.shape[:2]
        sim, sim_mask = self._kinematic_disks(tokens, candidates, device, phase)
        sim, sim_mask = sim.view(B, C, *sim.shape[1:]), sim_mask.view(B, C, -1)
        obs = tokens_to_xy(tokens.tokens).to(device)
        corr = correlation(obs, tokens.mask.to(device), sim, sim_mask, self.corr_kernel_size, self.corr_power,
                           self._disk_separation(phase)).cpu()
        return (corr, (sim, sim_mask)) if return_disks else corr

    @torch.inference_mode()
    def agreement(self, tokens: Tokens, candidates: torch.Tensor, device=None, phase: int = 0, disks=None) -> torch.Tensor:
        """(B, C, 3) :func:`.confidence.disk_agreement` of the observed disks with those of (B, C, 3, 3)
        candidates, within twice the score's kernel; ``disks``: their kinematic disks if already simulated,
        ``(disks (B, C, M, 3), mask (B, C, M))``."""
        device = resolve_device(device) if device is not None else self.device
        B, C = candidates.shape[:2]
        if disks is None:
            sim, sim_mask = self._kinematic_disks(tokens, candidates, device, phase)
        else:
            sim, sim_mask = disks[0].reshape(B * C, *disks[0].shape[2:]), disks[1].reshape(B * C, -1)
        obs = tokens_to_xy(tokens.tokens).to(device).repeat_interleave(C, 0)
        out = disk_agreement(obs, tokens.mask.to(device).repeat_interleave(C, 0), sim, sim_mask,
                             2 * self.corr_kernel_size, self.corr_power)
        return out.view(B, C, 3).cpu()

    def _kinematic_disks(self, tokens: Tokens, candidates: torch.Tensor, device, phase: int):
        """The scored kinematic disks of (B, C, 3, 3) candidates: ``(disks (B * C, M, 3), mask (B * C, M))``."""
        return simulate_disks(candidates.reshape(-1, 3, 3).to(device), self._get_reflections(phase).to(device),
                              self.sigma_excitation_error,
                              max_disks=self._disk_limit(tokens).repeat_interleave(candidates.shape[1]).to(device),
                              k_max=self.token_config.k_max, r_min=self.token_config.direct_beam_radius)

    # -- helpers ----------------------------------------------------------------------------
    def _disk_limit(self, tokens: Tokens) -> torch.Tensor:
        """(B,) simulated disks scored per candidate, from the pattern's own disk count (so that its answer
        does not depend on the patterns batched with it): 8 more than it has (16 to 48), and all 48 for a
        sparse pattern, where the reflections a candidate predicts but the pattern lacks are most of the
        evidence (docs/benchmarks.md)."""
        return torch.where(tokens.counts <= self.sparse_disks, 48, (tokens.counts + 8).clamp(16, 48))

    def _get_reflections(self, phase: int = 0) -> Reflections:
        if self._reflections[phase] is None:
            self._reflections[phase] = Reflections.from_crystal(self.crystals[phase], self.token_config.k_max,
                                                                self.accel_voltage)
        return self._reflections[phase]

    def _disk_separation(self, phase: int = 0) -> float:
        """Lower bound (1/A) on the distance between two scored disks of one candidate (cached per phase)."""
        if self._separations[phase] is None:
            self._separations[phase] = self._get_reflections(phase).min_disk_separation(self.sigma_excitation_error)
        return self._separations[phase]

    def _check_num_matches(self, num_matches_return: int, inversion_symmetry: bool) -> int:
        available = 4 if inversion_symmetry else 2
        if not 1 <= num_matches_return <= available:
            raise ValueError(
                f"num_matches_return must be between 1 and {available} (the prediction and its near-ambiguous "
                f"partners{'' if inversion_symmetry else '; pass inversion_symmetry=True for the mirror partners'})"
            )
        return int(num_matches_return)

    def _to_orientation_map(self, matrix: np.ndarray, corr: np.ndarray, phase: int = 0):
        crystal = self.crystals[phase]
        ensure_plan(crystal, self.accel_voltage, float(self.model.metadata.get("k_max", self.token_config.k_max)))
        om = build_orientation_map(crystal, matrix, corr, self._symmetry(phase))
        crystal.orientation_map = om
        return om


@dataclass
class _Found:
    """Ranked matches of a batch, per phase: matrix (b, P, K, 3, 3), corr (b, P, K) raw scores, features
    (b, P, K, F), and the refined candidates (b, P, C, 3, 3) of the phases ``done`` (b, P)."""

    matrix: torch.Tensor
    corr: torch.Tensor
    features: torch.Tensor
    candidates: torch.Tensor
    done: torch.Tensor

    def subset(self, rows: torch.Tensor) -> "_Found":
        return _Found(*(getattr(self, f.name)[rows] for f in fields(self)))

    def assign(self, rows: torch.Tensor, other: "_Found") -> None:
        """Take ``other``'s matches for ``rows`` (the candidates stay: ``other`` may have more)."""
        for name in ("matrix", "corr", "features"):
            getattr(self, name)[rows] = getattr(other, name)


def _count_sorted_batches(tokens: Tokens, batch_size: int, subset: Optional[torch.Tensor] = None):
    """Yield ``(index, Tokens)`` batches of similar disk count, padding trimmed to each batch."""
    order = torch.argsort(tokens.counts, stable=True)
    if subset is not None:
        order = order[subset[order]]
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        n = max(int(tokens.counts[idx].max()), 1)
        yield idx, Tokens(tokens.tokens[idx, :n], tokens.mask[idx, :n], tokens.counts[idx])


def _rotate_tokens(tokens: torch.Tensor, phi: float) -> torch.Tensor:
    """(B, N, 3) tokens with every disk rotated counter-clockwise by ``phi`` (theta wrapped to (-pi, pi])."""
    if phi == 0:
        return tokens
    theta = torch.remainder(tokens[..., 1] + phi + np.pi, 2 * np.pi) - np.pi
    return torch.stack([tokens[..., 0], theta, tokens[..., 2]], -1)


def _point_group(crystal) -> np.ndarray:
    from ..core.symmetry import point_group_rotations

    return point_group_rotations(crystal).numpy()
