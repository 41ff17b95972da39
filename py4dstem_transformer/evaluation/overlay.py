"""Who is right where two methods disagree: the observed disks with each answer's simulated disks on top.

The simulated disks come from py4DSTEM's own kinematic simulator (``Crystal.generate_diffraction_pattern``),
not from this package's, so the picture does not favour the transformer's physics. Disks are drawn as
marker areas proportional to ``intensity ** power`` (ACOM's weighting, 0.25).
"""

from __future__ import annotations

import contextlib
import io
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

__all__ = ["observed_disks", "simulated_disks", "disk_fit", "plot_answers", "plot_positions"]

#: Marker of each answer in :func:`plot_answers`, in order.
_STYLES = (("tab:blue", "x"), ("tab:orange", "+"), ("tab:green", "1"), ("tab:red", "2"))


def observed_disks(bragg_peaks, rx: int, ry: int) -> np.ndarray:
    """(N, 3) ``(qx, qy, intensity)`` (1/A, calibrated as the mapper would) of scan position ``(rx, ry)``.

    For many positions, pass ``as_peaks_source(bragg_peaks)`` (flat ``Peaks``) so the scan is read once."""
    from ..io.peaks import as_peaks_source, calibrated_xy

    source = as_peaks_source(bragg_peaks)
    shape = getattr(source, "whole_shape", None) or source.scan_shape
    if not (0 <= rx < shape[0] and 0 <= ry < shape[1]):
        raise IndexError(f"scan position ({rx}, {ry}) is outside the {shape[0]} x {shape[1]} scan")
    flat = int(np.ravel_multi_index((rx, ry), shape))
    peaks = source.read(flat, flat + 1)
    qx, qy = calibrated_xy(peaks)
    return np.stack([qx, qy, np.asarray(peaks.intensity, np.float64)], -1)


_PREPARED: Dict[Tuple[int, float, float], object] = {}


def _prepared(crystal, k_max: float, accel_voltage: float):
    """A private copy of ``crystal`` with structure factors and a voltage, made once per crystal and setting."""
    from ..core.crystal import private_copy

    key = (id(crystal), float(k_max), float(accel_voltage))
    if key not in _PREPARED:
        fresh = private_copy(crystal)
        with contextlib.redirect_stdout(io.StringIO()):
            fresh.setup_diffraction(accel_voltage)
            fresh.calculate_structure_factors(k_max, tol_structure_factor=1e-4)
        _PREPARED[key] = (crystal, fresh)  # the crystal is kept so that its id is not reused
    return _PREPARED[key][1]


def simulated_disks(crystal, matrix: np.ndarray, k_max: float = 2.0, accel_voltage: float = 300e3,
                    sigma_excitation_error: float = 0.02, min_intensity: float = 1e-3) -> np.ndarray:
    """(N, 3) ``(qx, qy, intensity)`` of ``crystal`` at orientation ``matrix`` (lab -> crystal), by py4DSTEM's
    ``generate_diffraction_pattern`` (kinematic), intensities relative to the brightest disk, below
    ``min_intensity`` left out. The user's crystal is not changed."""
    fresh = _prepared(crystal, k_max, accel_voltage)
    with contextlib.redirect_stdout(io.StringIO()):
        pl = fresh.generate_diffraction_pattern(orientation_matrix=np.asarray(matrix, np.float64),
                                                sigma_excitation_error=sigma_excitation_error, k_max=k_max)
    out = np.stack([pl.data["qx"], pl.data["qy"], pl.data["intensity"]], -1).astype(np.float64)
    if len(out):
        out[:, 2] /= out[:, 2].max()
        out = out[out[:, 2] >= min_intensity]
    return out


def disk_fit(observed: np.ndarray, crystal, matrix: np.ndarray, tol: float = 0.04, k_max: float = 1.7,
             r_min: float = 0.1, accel_voltage: float = 300e3) -> dict:
    """How well one answer explains one pattern, by py4DSTEM's kinematic simulation (no ground truth needed).

    The observed disks with ``r_min <= |q| <= k_max`` (1/A) are compared with as many of the answer's
    strongest simulated disks (:func:`simulated_disks`): ``explained`` is the share of observed disks within
    ``tol`` (1/A) of a simulated one, ``found`` the share of those simulated disks within ``tol`` of an observed
    one, and ``f1`` their harmonic mean. A right answer scores high on both; a wrong one leaves observed disks
    unexplained and predicts strong disks that are not there. All three are 0 where either side has no disk.
    """
    from scipy.spatial import cKDTree

    obs = np.asarray(observed, np.float64)
    r = np.hypot(obs[:, 0], obs[:, 1])
    obs = obs[(r >= r_min) & (r <= k_max)]
    sim = simulated_disks(crystal, matrix, k_max, accel_voltage)
    sim = sim[np.hypot(sim[:, 0], sim[:, 1]) >= r_min] if len(sim) else sim
    if not len(obs) or not len(sim):
        return {"explained": 0.0, "found": 0.0, "f1": 0.0}
    sim = sim[np.argsort(-sim[:, 2], kind="stable")][:len(obs)]
    explained = float((cKDTree(sim[:, :2]).query(obs[:, :2])[0] <= tol).mean())
    found = float((cKDTree(obs[:, :2]).query(sim[:, :2])[0] <= tol).mean())
    f1 = 2 * explained * found / (explained + found) if explained + found > 0 else 0.0
    return {"explained": explained, "found": found, "f1": f1}


def plot_answers(observed: np.ndarray, answers: Sequence[Tuple[str, object, np.ndarray]], ax=None,
                 k_max: float = 2.0, accel_voltage: float = 300e3, power: float = 0.25, size: float = 120.0,
                 title: Optional[str] = None):
    """One pattern: observed disks (grey circles) and each answer's simulated disks (coloured markers).

    Parameters
    ----------
    observed : (N, 3) ``(qx, qy, intensity)`` (:func:`observed_disks`)
    answers : ``(label, crystal, matrix)`` per answer; a ``None`` crystal draws nothing (no answer)
    """
    import matplotlib.pyplot as plt

    ax = ax if ax is not None else plt.subplots(figsize=(4, 4))[1]
    obs = np.asarray(observed, np.float64)
    if len(obs):
        w = np.clip(obs[:, 2] / obs[:, 2].max(), 0, None) ** power
        ax.scatter(obs[:, 0], obs[:, 1], s=size * w, facecolors="none", edgecolors="0.35", label="observed")
    for (label, crystal, matrix), (color, marker) in zip(answers, _STYLES):
        if crystal is None:
            ax.plot([], [], marker, color=color, label=f"{label}: no answer")
            continue
        sim = simulated_disks(crystal, matrix, k_max, accel_voltage)
        ax.scatter(sim[:, 0], sim[:, 1], s=size * sim[:, 2] ** power, marker=marker, color=color, label=label)
    ax.set(aspect="equal", xlim=(-k_max, k_max), ylim=(-k_max, k_max), xlabel="qx (1/Å)", ylabel="qy (1/Å)")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    return ax


def plot_positions(bragg_peaks, positions: Sequence[Tuple[int, int]], methods: Dict[str, tuple], k_max: float = 2.0,
                   accel_voltage: float = 300e3, ncols: int = 4, panel: float = 3.4, returnfig: bool = False):
    """:func:`plot_answers` at several scan positions.

    ``methods``: label -> ``(crystals, names, phase_index (Rx, Ry), matrix (Rx, Ry, 3, 3))``, e.g. a
    :class:`~..io.phase_map.PhaseMap`'s ``crystals, names, phase_index, matrix()`` and ACOM's per-crystal
    maps reduced to the best phase. Each panel's title gives each method's phase.
    """
    import matplotlib.pyplot as plt

    from ..io.peaks import as_peaks_source

    source = as_peaks_source(bragg_peaks)  # read the scan once, not once per panel
    positions = [tuple(int(v) for v in p) for p in positions]
    if not positions:
        raise ValueError("no positions to plot")
    nrows = -(-len(positions) // ncols)
    fig, axes = plt.subplots(nrows, min(ncols, len(positions)), figsize=(panel * min(ncols, len(positions)), panel * nrows),
                             squeeze=False)
    for ax in axes.ravel()[len(positions):]:
        ax.axis("off")
    for ax, (rx, ry) in zip(axes.ravel(), positions):
        answers, said = [], []
        for label, (crystals, names, phase, matrix) in methods.items():
            p = int(phase[rx, ry])
            answers.append((f"{label}" + (f" ({names[p]})" if p >= 0 else ""), crystals[p] if p >= 0 else None,
                            matrix[rx, ry] if p >= 0 else None))
            said.append(names[p] if p >= 0 else "-")
        plot_answers(observed_disks(source, rx, ry), answers, ax, k_max, accel_voltage,
                     title=f"({rx}, {ry}): " + " / ".join(said))
    fig.tight_layout()
    return fig if returnfig else None
