"""Self-calibration: one scan-wide correction of the Q pixel size and the ellipse, measured on the crystal's disks.

A Q pixel size a few per cent off (a camera length that is not the one calibrated) or an ellipse left
uncorrected moves every disk by a fixed fraction of its ``|q|``; ACOM's correlation barely notices, but a
network trained on true positions does. The mapper measures the error from the patterns it is sure of:

1. map a sample of the scan (an eighth of it, 256 to 2048 positions, in evenly spaced runs of consecutive
   positions), run by run in an order that spreads every prefix over the scan, until at least ``min_sample``
   positions are mapped and ``enough`` patterns are sure: then the rest of the sample is left (on a Cu
   polycrystal of 128 x 128, 256 of the 2,048 positions; the scale comes out the same to 1e-5);
2. keep the patterns whose best match is sure (confidence >= ``min_confidence``) with >= ``min_disks`` disks;
3. pair every observed disk with the nearest kinematic disk of that match within ``radii[i]`` (1/A);
4. fit the symmetric 2 x 2 ``C`` minimizing ``sum |C q_observed - q_simulated|^2`` (no rotation: each
   pattern's orientation absorbs one); its uncertainty by a jackknife over ``groups`` groups of patterns;
5. map the sample again with ``C`` applied and fit again (the matches move, and so do the pairs), up to
   ``iterations`` times.

``C = s * E`` with ``s = sqrt(det C)``, the factor the Q pixel size is off by (the corrected size is the
calibrated one times ``s``), and ``E`` (``det E = 1``) the ellipse: a stretch by ``1 + ellipticity`` along
``axis_deg`` relative to the perpendicular axis. The correction is applied (to a copy of the calibration,
never the user's) only where it is significant: beyond ``significance`` standard errors and beyond
``min_change``; otherwise mapping is exactly what it is without self-calibration. A lattice parameter that
differs from the crystal's (strain, alloying) reads as a pixel-size error: the two are the same to a pattern.

The detector's reach is measured on the same sample: the ``reach_quantile`` of the patterns' outermost disk
radius (patterns with >= ``min_disks`` disks). Where it falls short of the model's window by more than
``reach_margin`` (a detector edge, or a cut in disk detection), the simulated disks the stages score against
are cut there too (at ``reach + reach_pad``), so that reflections the detector cannot record do not count as
missing.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import numpy as np
import torch

from ..core.kinematics import simulate_disks
from ..io.detector import DetectorCalibration
from ..io.peaks import Peaks
from ..model.tokens import TokenConfig, Tokens, concat_tokens, position_tokens
from .score import square_distances, tokens_to_xy

__all__ = ["SelfCalibrationConfig", "SelfCalibration", "fit_correction", "decompose", "disk_pairs", "sample_runs",
           "sample_spans", "sampled_peaks", "spread_order",
           "with_correction", "self_calibrate", "detector_reach", "phases_within_reach"]


@dataclass(frozen=True)
class SelfCalibrationConfig:
    """Settings of :func:`self_calibrate` (lengths in 1/A)."""

    sample: int = 2048  # scan positions mapped to measure the correction, at most ...
    sample_fraction: float = 0.125  # ... and at most this fraction of the scan ...
    min_sample: int = 256  # ... but at least this many (all, for smaller scans)
    runs: int = 16  # in this many evenly spaced runs of consecutive positions
    min_confidence: float = 0.5  # patterns whose best match is at least this sure take part
    min_disks: int = 6  # ... and that have at least this many disks
    min_patterns: int = 20  # fewer sure patterns: nothing is measured
    enough: int = 200  # the sample's runs stop once this many patterns are sure (and min_sample positions mapped)
    radii: tuple = (0.08, 0.05, 0.04)  # pairing radius per iteration (last one repeats)
    max_disks: int = 64  # simulated disks per match to pair with
    iterations: int = 3  # fits at most (each maps the sample once)
    groups: int = 8  # jackknife groups for the standard errors
    significance: float = 3.0  # apply only beyond this many standard errors ...
    min_change: float = 0.002  # ... and beyond this relative change (0.2%)
    converged: float = 0.0005  # stop iterating when a fit changes C by less than this
    reach_quantile: float = 0.95  # the detector's reach: this quantile of the patterns' outermost disk radius
    reach_margin: float = 0.3  # 1/A: applied where it falls this far inside the model's window (a clear edge) ...
    reach_pad: float = 0.05  # 1/A: ... and the simulated disks are then cut this far beyond it


@dataclass(frozen=True)
class SelfCalibration:
    """The measured correction: ``q_true = matrix @ q_calibrated`` (lab frame).

    Attributes
    ----------
    matrix : ((c00, c01), (c10, c11)), the symmetric correction (identity where nothing was measured)
    scale, scale_error : the Q pixel size is off by this factor (multiply it by ``scale``), and its standard error
    ellipticity, ellipticity_error : the ellipse: lengths along ``axis_deg`` are short by this fraction relative
        to the perpendicular axis (0: none), and its standard error
    axis_deg : direction (lab frame, degrees from qx towards qy, in [0, 180)) the correction stretches most
    patterns, disks : how many sure patterns and paired disks the last fit used
    applied : whether the mapping used it (significant), or mapped with the calibration as given
    reach : the detector's measured reach (1/A; inf where not measured), and ``reach_applied``: whether the
        simulated disks were cut there (it falls short of the model's window)
    note : one line for people, e.g. for the progress output
    """

    matrix: Tuple[Tuple[float, float], Tuple[float, float]] = ((1.0, 0.0), (0.0, 1.0))
    scale: float = 1.0
    scale_error: float = math.inf
    ellipticity: float = 0.0
    ellipticity_error: float = math.inf
    axis_deg: float = 0.0
    patterns: int = 0
    disks: int = 0
    applied: bool = False
    reach: float = math.inf
    reach_applied: bool = False
    note: str = "not measured"

    def corrected_q_pixel_size(self, q_pixel_size: float) -> float:
        """The Q pixel size (1/A per pixel) the measurement implies, from the calibrated one."""
        return float(q_pixel_size) * self.scale

    def __str__(self) -> str:
        return self.note


def decompose(c: np.ndarray) -> Tuple[float, float, float]:
    """``(scale, ellipticity, axis_deg)`` of a symmetric positive definite (2, 2) matrix."""
    values, vectors = np.linalg.eigh(c)  # ascending
    scale = float(math.sqrt(max(values[0] * values[1], 0.0)))
    ellipticity = float(values[1] / values[0] - 1) if values[0] > 0 else math.inf
    axis = math.degrees(math.atan2(vectors[1, 1], vectors[0, 1])) % 180.0
    return scale, ellipticity, axis


def fit_correction(observed: np.ndarray, simulated: np.ndarray, group: np.ndarray,
                   groups: int = 8) -> Tuple[np.ndarray, float, float]:
    """Least-squares symmetric ``C`` (2, 2) with ``C @ observed[i] ~ simulated[i]``.

    Parameters
    ----------
    observed, simulated : (n, 2) arrays of paired disk positions (1/A).
    group : (n,) int array, each pair's pattern; the jackknife leaves out groups of patterns.

    Returns
    -------
    ``(C, scale_error, ellipticity_error)``: jackknife standard errors over ``groups`` groups (inf with fewer
    than two groups).
    """
    c = _solve(observed, simulated)
    labels = np.unique(group)
    G = min(groups, len(labels))
    if G < 2:
        return c, math.inf, math.inf
    member = np.random.default_rng(0).permutation(len(labels)) % G  # pattern -> jackknife group
    of_pair = member[np.searchsorted(labels, group)]
    parts = np.array([decompose(_solve(observed[of_pair != g], simulated[of_pair != g]))[:2] for g in range(G)])
    errors = np.sqrt((G - 1) / G * ((parts - parts.mean(0)) ** 2).sum(0))
    return c, float(errors[0]), float(errors[1])


def _solve(observed: np.ndarray, simulated: np.ndarray) -> np.ndarray:
    """Symmetric (2, 2) ``[[a, b], [b, d]]`` minimizing ``sum |C q - g|^2``: rows ``[qx, qy, 0] -> gx``,
    ``[0, qx, qy] -> gy``."""
    qx, qy = observed[:, 0], observed[:, 1]
    zero = np.zeros_like(qx)
    design = np.concatenate([np.stack([qx, qy, zero], 1), np.stack([zero, qx, qy], 1)])
    target = np.concatenate([simulated[:, 0], simulated[:, 1]])
    (a, b, d), *_ = np.linalg.lstsq(design, target, rcond=None)
    return np.array([[a, b], [b, d]])


@torch.inference_mode()
def disk_pairs(tokens: Tokens, matrix: torch.Tensor, phase, sigma_excitation_error: float, radius: float,
               max_disks: int = 64) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every observed disk of B patterns and the nearest kinematic disk of its pattern's match within ``radius``.

    Parameters
    ----------
    tokens : Tokens of B patterns.
    matrix : (B, 3, 3) their matches (lab -> crystal), all of the crystal of ``phase`` (a :class:`~.phase.Phase`).

    Returns
    -------
    ``(observed (n, 2), simulated (n, 2), pattern (n,))``: paired positions (1/A) and each pair's pattern index.
    """
    if len(tokens) == 0:
        return np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0, dtype=np.int64)
    sim, sim_mask = simulate_disks(matrix.float(), phase.reflections, sigma_excitation_error, max_disks,
                                   k_max=phase.k_max * 1.1, r_min=phase.r_min * 0.9, ordered=False)
    obs = tokens_to_xy(tokens.tokens)[..., :2]  # (B, N, 2)
    far = sim[..., :2].masked_fill(~sim_mask[..., None], 1e4)
    best, j = square_distances(obs, far).min(-1)  # (B, N)
    paired = tokens.mask & (best < radius**2)
    nearest = torch.gather(sim[..., :2], 1, j[..., None].expand(-1, -1, 2))  # (B, N, 2)
    pattern = torch.arange(len(tokens))[:, None].expand_as(paired)
    return obs[paired].double().numpy(), nearest[paired].double().numpy(), pattern[paired].numpy()


def sample_runs(num_positions: int, sample: int, runs: int) -> list:
    """``[(start, stop), ...]``: ``runs`` evenly spaced runs of consecutive positions, ``sample`` in all (every
    position where there are no more than ``sample``)."""
    if num_positions <= sample:
        return [(0, num_positions)] if num_positions else []
    runs = max(1, min(runs, sample))
    length = sample // runs
    starts = np.linspace(0, num_positions - length, runs).round().astype(int)
    return [(int(s), int(s) + length) for s in starts]


def sample_spans(num_positions: int, config: SelfCalibrationConfig = SelfCalibrationConfig()) -> list:
    """The runs of positions :func:`self_calibrate` maps: ``clamp(N * sample_fraction, min_sample, sample)``
    positions in ``runs`` evenly spaced runs."""
    size = max(config.min_sample, min(config.sample, int(config.sample_fraction * num_positions)))
    return sample_runs(num_positions, size, config.runs)


def sampled_peaks(source, config: SelfCalibrationConfig = SelfCalibrationConfig()) -> Peaks:
    """A whole-scan :class:`Peaks` holding only the positions :func:`self_calibrate` looks at (the others
    empty), read from ``source`` (``Peaks`` or ``PeaksFile``): what a scan left on disk is calibrated from."""
    n = source.num_positions
    counts = np.zeros(n, dtype=np.int64)
    qx, qy, intensity = [], [], []
    for a, b in sample_spans(n, config):
        part = source.read(a, b)
        counts[a:b] = part.counts
        qx.append(part.qx), qy.append(part.qy), intensity.append(part.intensity)
    flat = [np.concatenate(v) if v else np.zeros(0) for v in (qx, qy, intensity)]
    return Peaks(*flat, counts=counts, scan_shape=tuple(source.scan_shape), calibration=source.calibration)


def with_correction(peaks: Peaks, matrix) -> Peaks:
    """A copy of ``peaks`` whose calibration ends in the lab-frame ``matrix`` (the peak arrays are shared, not
    copied; nothing of ``peaks`` changes). Composes with a correction ``peaks`` already carries."""
    calibration = peaks.calibration or DetectorCalibration.identity()
    c = np.asarray(matrix, dtype=float)
    if calibration.correction is not None:
        c = c @ np.asarray(calibration.correction, dtype=float)
    c = tuple(tuple(float(v) for v in row) for row in c)
    return dataclasses.replace(peaks, calibration=dataclasses.replace(calibration, correction=c))


def self_calibrate(peaks: Peaks, token_config: TokenConfig,
                   best_matches: Callable[[Tokens], Tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                   phases: Sequence, sigma_excitation_error: float,
                   config: SelfCalibrationConfig = SelfCalibrationConfig()) -> SelfCalibration:
    """Measure the scan-wide correction of ``peaks``' calibration (the module's recipe).

    Parameters
    ----------
    best_matches : ``tokens -> (matrix (b, 3, 3), confidence (b,), phase (b,))``: each pattern's best match,
        how sure it is and its phase index into ``phases``.
    """
    if peaks.num_positions < config.min_patterns:
        return SelfCalibration(note=f"self-calibration: {peaks.num_positions} positions, fewer than the "
                                    f"{config.min_patterns} sure patterns it needs; the calibration is used as given")
    spans = sample_spans(peaks.num_positions, config)
    c = np.eye(2)
    result = SelfCalibration(note="self-calibration: no sure patterns to measure on")
    chosen = None  # the runs the first fit used (positional order); the later fits map only those
    for it in range(config.iterations):
        corrected = with_correction(peaks, c) if it else peaks
        runs = range(len(spans)) if chosen is None else chosen
        tokens = {i: position_tokens(corrected, *spans[i], token_config) for i in runs}
        if it == 0:
            reach = detector_reach(list(tokens.values()), config)
        radius = config.radii[min(it, len(config.radii) - 1)]
        done, positions, sure = {}, 0, 0
        order = spread_order(len(spans)) if chosen is None else chosen
        while len(done) < len(order):
            if chosen is None and positions >= config.min_sample and sure >= config.enough:
                break  # enough to measure on: the rest of the sample is not mapped
            batch = _next_runs(order[len(done):], tokens, positions, config.min_sample if chosen is None else math.inf)
            for i, pairs in zip(batch, _runs_pairs([tokens[i] for i in batch], best_matches, phases,
                                                   sigma_excitation_error, radius, config)):
                done[i] = pairs
                positions, sure = positions + len(tokens[i]), sure + pairs[3]
        chosen = sorted(done)
        obs, sim, group, patterns = [], [], [], 0
        for i in chosen:  # in scan order, whichever order they were mapped in
            o, s, g, k = done[i]
            obs.append(o), sim.append(s), group.append(g + patterns)
            patterns += k
        obs, sim, group = np.concatenate(obs), np.concatenate(sim), np.concatenate(group)
        n_sure = len(np.unique(group))
        if n_sure < config.min_patterns:
            note = (f"self-calibration: only {n_sure} sure patterns with >= {config.min_disks} disks "
                    f"(need {config.min_patterns}); the calibration is used as given")
            if it == 0:
                result = dataclasses.replace(result, note=note)
            break
        step, scale_error, ellipticity_error = fit_correction(obs, sim, group, config.groups)
        c = step @ c
        result = _result(c, scale_error, ellipticity_error, n_sure, len(obs), config, positions)
        if not result.applied or np.abs(step - np.eye(2)).max() < config.converged:
            break
    return _with_reach(result, reach * result.scale if result.applied else reach, phases, config)


def spread_order(n: int) -> list:
    """``0 .. n-1`` in bit-reversed order (0, 8, 4, 12, 2, ... for 16): every prefix of evenly spaced runs taken in
    this order is itself spread over the scan."""
    bits = max(1, (n - 1).bit_length())
    return sorted(range(n), key=lambda i: int(format(i, f"0{bits}b")[::-1], 2))


def _next_runs(order: Sequence[int], tokens: dict, positions: int, min_positions: float) -> list:
    """The runs to map in one call: from the head of ``order``, as many as it takes for ``positions`` to reach
    ``min_positions`` (every one where it is infinite), at least one. Mapped together, a small scan's sample is one
    call instead of one per run (64 x 64: 8 calls of 32 patterns took ~1 ms a pattern)."""
    batch = [order[0]]
    positions += len(tokens[order[0]])
    for i in order[1:]:
        if positions >= min_positions:
            break
        batch.append(i)
        positions += len(tokens[i])
    return batch


def _runs_pairs(runs: Sequence[Tokens], best_matches, phases: Sequence, sigma_excitation_error: float, radius: float,
                config: SelfCalibrationConfig) -> list:
    """:func:`_run_pairs` of each of several runs, their patterns mapped in one ``best_matches`` call."""
    matrix, confidence, phase = best_matches(concat_tokens(runs))
    out, start = [], 0
    for t in runs:
        rows = slice(start, start + len(t))
        out.append(_run_pairs(t, matrix[rows], confidence[rows], phase[rows], phases, sigma_excitation_error, radius,
                              config))
        start += len(t)
    return out


def _run_pairs(tokens: Tokens, matrix: torch.Tensor, confidence: torch.Tensor, phase: torch.Tensor, phases: Sequence,
               sigma_excitation_error: float, radius: float,
               config: SelfCalibrationConfig) -> Tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """One run's ``(observed, simulated, pattern, sure patterns)`` from its patterns' best matches (``matrix`` (b, 3,
    3), ``confidence`` (b,), ``phase`` (b,)): :func:`disk_pairs` of its sure patterns, phase by phase, pattern indices
    counted from 0 over the run."""
    sure = (confidence >= config.min_confidence) & (tokens.counts >= config.min_disks)
    obs, sim, group, patterns = [], [], [], 0
    for p, ph in enumerate(phases):
        rows = torch.nonzero(sure & (phase == p)).flatten()
        o, s, g = disk_pairs(tokens[rows], matrix[rows], ph, sigma_excitation_error, radius, config.max_disks)
        obs.append(o), sim.append(s), group.append(g + patterns)
        patterns += len(rows)
    return np.concatenate(obs), np.concatenate(sim), np.concatenate(group), patterns


def detector_reach(tokens: Sequence[Tokens], config: SelfCalibrationConfig) -> float:
    """The ``reach_quantile`` of the outermost disk radius (1/A) of patterns with >= ``min_disks`` disks; inf if
    there are none."""
    outer = []
    for t in tokens:
        if t.tokens.shape[1] == 0:
            continue
        r = t.tokens[..., 0].masked_fill(~t.mask, 0.0).max(-1).values
        outer.append(r[t.counts >= config.min_disks])
    outer = torch.cat(outer) if outer else torch.zeros(0)
    return float(torch.quantile(outer.double(), config.reach_quantile)) if len(outer) else math.inf


def _with_reach(result: SelfCalibration, reach: float, phases: Sequence, config: SelfCalibrationConfig) -> SelfCalibration:
    window = min(p.k_max for p in phases)
    applied = bool(reach < window - config.reach_margin)
    if not math.isfinite(reach):
        return result
    note = f"{result.note}; detector reach {reach:.2f} 1/A" + (f" (simulated disks cut there, not at {window:.2f})"
                                                               if applied else "")
    return dataclasses.replace(result, reach=reach, reach_applied=applied, note=note)


def phases_within_reach(phases: Sequence, measured: SelfCalibration, config: SelfCalibrationConfig) -> tuple:
    """``phases`` whose window ends at the measured reach (+ ``reach_pad``) where it is applied; else as they are."""
    if not measured.reach_applied:
        return tuple(phases)
    k_max = measured.reach + config.reach_pad
    return tuple(dataclasses.replace(p, k_max=min(p.k_max, k_max)) for p in phases)


def _result(c: np.ndarray, scale_error: float, ellipticity_error: float, patterns: int, disks: int,
            config: SelfCalibrationConfig, positions: Optional[int] = None) -> SelfCalibration:
    scale, ellipticity, axis = decompose(c)
    significant = ((abs(scale - 1) > max(config.significance * scale_error, config.min_change))
                   or (ellipticity > max(config.significance * ellipticity_error, config.min_change)))
    verdict = "applied" if significant else "not significant, calibration used as given"
    note = (f"self-calibration: Q pixel size x {scale:.4f} +- {scale_error:.2g}, ellipse {100 * ellipticity:.2f}% "
            f"+- {100 * ellipticity_error:.2g}% (axis {axis:.0f} deg), from {patterns} sure patterns "
            + (f"of {positions} mapped " if positions is not None else "") + f"({disks} disks): {verdict}")
    return SelfCalibration(matrix=tuple(tuple(float(v) for v in row) for row in c), scale=scale,
                           scale_error=scale_error, ellipticity=ellipticity, ellipticity_error=ellipticity_error,
                           axis_deg=axis, patterns=patterns, disks=disks, applied=significant, note=note)
