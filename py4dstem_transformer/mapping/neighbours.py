"""A second look at a scan's unsure positions, with their neighbours' answers as candidates.

A grain spans many scan positions. Where one pattern is unsure (its disks explain two orientations almost
equally, mostly its beam flip, or its own hypotheses missed the truth), the sure answers of the positions
around it are the likeliest candidates. Each unsure position gets them beside its own best match, and they
are refined and scored on its own disks: they compete there, so a neighbour's orientation wins only where this
pattern's disks prefer it, and grain boundaries and twins stay sharp. With ``tie > 0`` a near tie (the
best distinct rival scoring within ``tie`` of the best) goes to the one more sure neighbours agree with.

Runs after the whole scan is mapped (in the calling process, on the unsure positions only, read again from
the peaks a chunk at a time); the first pass is unchanged where the second finds nothing new.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
import torch

from ..core.rotations import symmetric_orthogonalization, symmetry_min_angle
from ..model.tokens import position_tokens
from .config import MapConfig, Query
from .confidence import FEATURES, phase_weights
from .pipeline import Mapped, map_phases
from .predict import count_sorted_batches

_MARGIN = FEATURES.index("margin")

__all__ = ["NeighbourConfig", "neighbour_offsets", "neighbour_answers", "support", "second_look"]


@dataclass(frozen=True)
class NeighbourConfig:
    """Settings of the second look (:func:`second_look`).

    Attributes
    ----------
    confidence : positions whose best match (calibrated confidence x phase weight) is below this get it.
    sure : a neighbour's best match is a candidate where it is at least this sure.
    radius : neighbours are the positions within this many scan steps (both axes): ``(2 r + 1)^2 - 1`` of them.
    tie : raw score (the correlation, :mod:`.score`); a best match whose best distinct rival (> 5 deg away)
        scores within this of it, and which fewer sure neighbours agree with (within 5 deg) than the rival,
        gives its place to the rival. 0: the score alone decides (then only a neighbour's orientation that
        scores above the pattern's own answer can replace it).
    min_support : a new answer needs at least this many sure neighbours agreeing with it.
    """

    confidence: float = 0.9
    sure: float = 0.9
    radius: int = 1
    tie: float = 0.03
    min_support: int = 1

    def __post_init__(self):
        if self.radius < 1:
            raise ValueError(f"NeighbourConfig.radius must be >= 1 scan step, got {self.radius}")
        if self.tie < 0:
            raise ValueError(f"NeighbourConfig.tie must be >= 0 (a score difference), got {self.tie}")


def neighbour_offsets(radius: int) -> np.ndarray:
    """(N, 2) scan-step offsets of the neighbours, the nearest first (N = (2 r + 1)^2 - 1)."""
    r = np.arange(-radius, radius + 1)
    d = np.stack(np.meshgrid(r, r, indexing="ij"), -1).reshape(-1, 2)
    d = d[(d != 0).any(1)]
    return d[np.argsort(np.hypot(d[:, 0], d[:, 1]), kind="stable")]


def neighbour_answers(rows: np.ndarray, shape: Tuple[int, int], best: np.ndarray, phase: np.ndarray, sure: np.ndarray,
                      config: NeighbourConfig) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sure neighbours of the flat scan positions ``rows`` (u,) of a scan of ``shape`` (C order).

    ``best`` (B, 3, 3), ``phase`` (B,) and ``sure`` (B,) are every position's best match, its phase and how sure
    it is. Returns ``(matrix (u, N, 3, 3), phase (u, N), valid (u, N) bool)``: per row its N neighbours' best
    matches, valid where the neighbour is inside the scan and at least ``config.sure``.
    """
    Rx, Ry = shape
    x, y = np.divmod(np.asarray(rows, np.int64), Ry)
    d = neighbour_offsets(config.radius)
    nx, ny = x[:, None] + d[:, 0], y[:, None] + d[:, 1]  # (u, N)
    inside = (nx >= 0) & (nx < Rx) & (ny >= 0) & (ny < Ry)
    flat = np.where(inside, nx * Ry + ny, 0)
    valid = inside & (sure[flat] >= config.sure)
    return best[flat], phase[flat], valid


def support(matrix: torch.Tensor, neighbours: torch.Tensor, valid: torch.Tensor, symmetry: torch.Tensor,
            angle_deg: float = 5.0) -> torch.Tensor:
    """(u,) how many of the (u, N) ``valid`` neighbour orientations lie within ``angle_deg`` of (u, 3, 3)
    ``matrix`` (after crystal ``symmetry``; the beam flip is a different orientation here)."""
    angle = symmetry_min_angle(matrix[:, None].double(), neighbours.double(), symmetry.double())  # (u, N)
    return ((angle < np.radians(angle_deg)) & valid).sum(1)


def _new_rows(unsure: np.ndarray, shape, best, phase, sure, config, phases, repeat_deg) -> Tuple[np.ndarray, ...]:
    """The unsure rows with a sure neighbour whose orientation is not their own (strict, > ``repeat_deg``), and
    those neighbours."""
    rows = np.flatnonzero(unsure)
    nb, nb_phase, valid = neighbour_answers(rows, shape, best, phase, sure, config)
    if len(rows) == 0:
        return rows, nb, nb_phase, valid
    angle = _angle_by_phase(best[rows][:, None], nb, phase[rows], phases)  # (u, N)
    same = valid & (nb_phase == phase[rows][:, None]) & (angle < np.radians(repeat_deg))
    keep = (valid & ~same).any(1)
    return rows[keep], nb[keep], nb_phase[keep], valid[keep]


def second_look(peaks, token_config, phases: Sequence, config: MapConfig, neighbour_config: NeighbourConfig, query: Query,
                calibration, matrix: np.ndarray, corr: np.ndarray, probability: np.ndarray, counts: np.ndarray,
                device, batch_size: int, chunk_size: int = 16384, progress_bar: bool = True,
                min_peaks: int = 3) -> dict:
    """Map the unsure positions of a mapped scan again with their sure neighbours' answers as candidates.

    ``matrix`` (B, P, K, 3, 3), ``corr`` (B, P, K) (calibrated, without the phase weight) and the network's
    ``probability`` (B, P) are the first pass's over the B positions of ``peaks`` (scan shape (Rx, Ry)); a phase is
    named by ``corr`` x its weight (:func:`~.confidence.phase_weights` at ``config.phase_power``), as the mapper
    names it; the
    matches of a row looked at again are replaced in place where its new best match is another orientation (or
    phase) than its first, and more sure neighbours agree with the new one (within 5 deg) than with the first.
    Positions with fewer than ``min_peaks`` peaks (``counts``, the direct beam included, as
    ``min_number_peaks``) are not looked at: they get no match. Needs a ``calibration`` (the gates are
    calibrated probabilities). Returns a summary: ``{"unsure": positions
    below the gate, "looked": those with a sure neighbour of another orientation, "changed": those replaced,
    "changed_map": (Rx, Ry) bool, where they are}`` (the positions whose answer the neighbours decided).
    """
    shape, B = tuple(peaks.scan_shape), len(corr)
    K = query.num_matches
    weights = phase_weights(probability, config.phase_power)  # (B, P), as the mapper weighs corr
    sure_p = corr[:, :, 0] * weights  # (B, P)
    phase, sure = sure_p.argmax(1), sure_p.max(1)
    best = matrix[np.arange(B), phase, 0]  # (B, 3, 3)
    unsure = (sure < neighbour_config.confidence) & (counts >= min_peaks)
    rows, nb, nb_phase, valid = _new_rows(unsure, shape, best, phase, sure, neighbour_config, phases, config.repeat_deg)
    changed_map = np.zeros(B, dtype=bool)
    summary = {"unsure": int(unsure.sum()), "looked": int(len(rows)), "changed": 0,
               "changed_map": changed_map.reshape(shape).copy()}
    if not len(rows):
        return summary
    inner = Query(max(K, 2), query.inversion_symmetry, True, query.min_angle_deg)  # the rival for the tie
    from tqdm.auto import tqdm

    bar = tqdm(total=len(rows), desc="second look (neighbours)", unit="pattern", disable=not progress_bar)
    for start in range(0, B, chunk_size):
        stop = min(B, start + chunk_size)
        here = (rows >= start) & (rows < stop)
        if not here.any():
            continue
        part = peaks.read(start, stop)
        tokens = position_tokens(part, 0, stop - start, token_config)
        local = np.zeros(stop - start, dtype=np.int64) - 1
        local[rows[here] - start] = np.flatnonzero(here)  # chunk position -> index into rows
        subset = torch.zeros(stop - start, dtype=torch.bool)
        subset[rows[here] - start] = True
        for idx, batch in count_sorted_batches(tokens, batch_size, subset):
            r = local[idx.numpy()]  # indices into rows
            own = torch.from_numpy(matrix[rows[r], :, 0]).float()  # (b, P, 3, 3)
            hypotheses = torch.cat([own, torch.from_numpy(nb[r]).float()], 1).to(device)  # (b, P + N, 3, 3)
            prob = torch.from_numpy(probability[rows[r]]).float()
            found = map_phases(batch, hypotheses, prob, device, phases, config, inner)
            new_matrix, raw, features = found.matrix, found.corr, found.features  # (b, P, K'), ...
            if neighbour_config.tie > 0:
                new_matrix, raw, features = _break_ties(new_matrix, raw, features, nb[r], nb_phase[r], valid[r],
                                                        phases, neighbour_config.tie, neighbour_config.min_support)
            mapped = Mapped(symmetric_orthogonalization(new_matrix[:, :, :K].double()).numpy(),
                            raw[:, :, :K].double().numpy(),
                            {k: v.double().numpy() for k, v in zip(FEATURES, features[:, :, :K].unbind(-1))},
                            prob.double().numpy())
            new_corr = mapped.confidence(calibration)  # (b, P, K)
            new_phase = (new_corr[:, :, 0] * weights[rows[r]]).argmax(1)
            new_best = mapped.matrix[np.arange(len(r)), new_phase, 0]
            neighbours = (nb[r], nb_phase[r], valid[r])
            # a new answer is taken only where it is another orientation and more sure neighbours agree with it
            # than with the first: what the score alone decides stays as the first pass had it
            moved = _farther(new_best, new_phase, best[rows[r]], phase[rows[r]], phases)
            agree = _support(new_best, new_phase, *neighbours, phases)
            take = moved & (agree > _support(best[rows[r]], phase[rows[r]], *neighbours, phases)) \
                & (agree >= neighbour_config.min_support)
            summary["changed"] += int(take.sum())
            changed_map[rows[r[take]]] = True
            matrix[rows[r[take]]], corr[rows[r[take]]] = mapped.matrix[take], new_corr[take]
            bar.update(len(r))
    bar.close()
    summary["changed_map"] = changed_map.reshape(shape)
    return summary


def _angle_by_phase(a: np.ndarray, b: np.ndarray, phase: np.ndarray, phases: Sequence) -> np.ndarray:
    """Misorientation (rad) of (u, ..., 3, 3) ``a`` and ``b`` (broadcastable) after the crystal symmetry of each
    row's ``phase`` (u,)."""
    out = np.zeros(np.broadcast_shapes(a.shape, b.shape)[:-2])
    for p, ph in enumerate(phases):
        on = phase == p
        if on.any():
            out[on] = symmetry_min_angle(torch.from_numpy(a[on]), torch.from_numpy(b[on]), ph.symmetry.double()).numpy()
    return out


def _farther(a: np.ndarray, phase_a: np.ndarray, b: np.ndarray, phase_b: np.ndarray, phases: Sequence,
             angle_deg: float = 5.0) -> np.ndarray:
    """(b,) bool: (b, 3, 3) orientations ``a`` of phases ``phase_a`` are another phase than ``b``'s or further than
    ``angle_deg`` from them (after crystal symmetry)."""
    return (phase_a != phase_b) | (_angle_by_phase(a, b, phase_a, phases) > np.radians(angle_deg))


def _support(matrix: np.ndarray, phase: np.ndarray, nb: np.ndarray, nb_phase: np.ndarray, valid: np.ndarray,
             phases: Sequence, angle_deg: float = 5.0) -> np.ndarray:
    """(b,) how many valid neighbours (b, N) of each row's phase lie within ``angle_deg`` of its (b, 3, 3) ``matrix``
    (as :func:`support`)."""
    near = _angle_by_phase(matrix[:, None], nb, phase, phases) < np.radians(angle_deg)  # (b, N)
    return (near & valid & (nb_phase == phase[:, None])).sum(1)


def _break_ties(matrix: torch.Tensor, raw: torch.Tensor, features: torch.Tensor, nb: np.ndarray, nb_phase: np.ndarray,
                valid: np.ndarray, phases: Sequence, tie: float, min_support: int = 1):
    """Per phase, swap the first two matches (b, P, K >= 2) where the second scores within ``tie`` of the first
    and more sure neighbours of that phase agree with it."""
    matrix, raw, features = matrix.clone(), raw.clone(), features.clone()
    neighbours = torch.from_numpy(nb)
    for p, ph in enumerate(phases):
        ok = torch.from_numpy(valid & (nb_phase == p))
        if not ok.any():
            continue
        first = support(matrix[:, p, 0], neighbours, ok, ph.symmetry)
        second = support(matrix[:, p, 1], neighbours, ok, ph.symmetry)
        swap = (raw[:, p, 1] > 0) & (raw[:, p, 0] - raw[:, p, 1] <= tie) & (second > first) & (second >= min_support)
        for t in (matrix, raw, features):
            t[swap, p, :2] = t[swap, p, :2].flip(1)
        margin = features[:, p, 0, _MARGIN]  # the tie was decided for it: its margin is the tie's, not below it
        features[:, p, 0, _MARGIN] = torch.where(swap, margin.abs(), margin)
    return matrix, raw, features
