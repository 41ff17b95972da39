"""The result of joint phase + orientation mapping: :class:`PhaseMap`.

It bundles what py4DSTEM spreads over several objects: one native ``OrientationMap`` per crystal
(each also set as that crystal's ``orientation_map``, so ``CrystalPhase`` and every orientation plot
work), the phase probabilities and the phase picked at each position.
"""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

__all__ = ["PhaseMap", "out_of_plane_image", "PHASE_COLORS"]

#: Phase colours of :meth:`PhaseMap.plot` (no match: black).
PHASE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


@dataclass(eq=False)
class PhaseMap:
    """Phases and orientations of a scan.

    Attributes
    ----------
    phase_index : (Rx, Ry) int64
        Index into ``crystals`` of the phase with the largest ``corr`` (orientation confidence x phase
        weight, :func:`~..mapping.confidence.phase_weights`); -1 where nothing matched (too few peaks, vacuum).
    phase_probability : (Rx, Ry, n) float64
        The network's phase probabilities (sum to 1 over phases).
    orientation_maps : list of py4DSTEM OrientationMap
        One per crystal: that phase's orientation at every position; ``corr`` = orientation confidence x
        phase weight (the network's probability of the phase over that of its favourite, to the mapper's
        ``phase_power``; 0 where the phase was not considered or nothing matched).
    crystals : list of py4DSTEM Crystal
    names : list of str
    """

    phase_index: np.ndarray
    phase_probability: np.ndarray
    orientation_maps: List
    crystals: List
    names: List[str]

    @classmethod
    def from_orientation_maps(cls, orientation_maps: Sequence, phase_probability: np.ndarray, crystals: Sequence,
                              names: Sequence[str]) -> "PhaseMap":
        corr = np.stack([om.corr[:, :, 0] for om in orientation_maps], -1)  # (Rx, Ry, n)
        phase_index = np.where(corr.max(-1) > 0, corr.argmax(-1), -1).astype(np.int64)
        return cls(phase_index, phase_probability, list(orientation_maps), list(crystals), list(names))

    @property
    def n_phases(self) -> int:
        return len(self.crystals)

    @property
    def corr(self) -> np.ndarray:
        """(Rx, Ry) confidence of the picked phase and orientation (0 where nothing matched)."""
        corr = np.stack([om.corr[:, :, 0] for om in self.orientation_maps], -1)
        return np.where(self.phase_index >= 0, corr.max(-1), 0.0)

    def matrix(self) -> np.ndarray:
        """(Rx, Ry, 3, 3) orientation of the picked phase at each position (zeros where none)."""
        stacked = np.stack([om.matrix[:, :, 0] for om in self.orientation_maps], 2)  # (Rx, Ry, n, 3, 3)
        picked = np.take_along_axis(stacked, np.clip(self.phase_index, 0, None)[:, :, None, None, None], 2)[:, :, 0]
        return np.where((self.phase_index >= 0)[..., None, None], picked, 0.0)

    def phase_fractions(self) -> dict:
        """Fraction of matched positions in each phase."""
        matched = self.phase_index >= 0
        total = max(int(matched.sum()), 1)
        return {name: float((self.phase_index == i).sum() / total) for i, name in enumerate(self.names)}

    def crystal_phase(self, name: Optional[str] = None):
        """A py4DSTEM ``CrystalPhase`` over the crystals, ready to plot.

        The crystals' ``orientation_map`` attributes are set to this map's. py4DSTEM's plots read
        the results of ``quantify_phase``. Here they are filled from this map instead:

        * ``phase_weights`` (Rx, Ry, number of fits) holds each (crystal, match) ``corr``;
        * ``phase_reliability`` is the best ``corr`` minus the second best;
        * ``single_phase`` is False.

        So ``plot_dominant_phase(use_correlation_scores=True)`` and ``plot_phase_weights`` work
        directly. ``cp.quantify_phase(bragg_peaks)`` replaces them with py4DSTEM's own intensity fit,
        which starts from these orientations.
        """
        from py4DSTEM.process.diffraction import CrystalPhase

        for crystal, om in zip(self.crystals, self.orientation_maps):
            crystal.orientation_map = om
        cp = CrystalPhase(self.crystals, crystal_names=self.names, orientation_maps=self.orientation_maps,
                          name=name or "+".join(self.names))
        cp.phase_weights = np.concatenate([om.corr for om in self.orientation_maps], axis=2)
        ranked = np.sort(cp.phase_weights, axis=2)
        cp.phase_reliability = ranked[..., -1] - (ranked[..., -2] if ranked.shape[2] > 1 else 0.0)
        cp.phase_residuals = np.zeros(self.phase_index.shape)
        cp.single_phase = False
        return cp

    def plot(self, figsize=None, returnfig: bool = False):
        """Phase map, beam-direction (out-of-plane) orientation map coloured by each phase's own
        colour key, and the confidence ``corr``."""
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap

        orientation = self.orientation_image()
        fig, axes = plt.subplots(1, 3, figsize=figsize or (14, 4.6))
        colors = ListedColormap(["black", *PHASE_COLORS[: self.n_phases]])
        axes[0].imshow(self.phase_index + 1, cmap=colors, vmin=0, vmax=self.n_phases, interpolation="nearest")
        handles = [plt.Rectangle((0, 0), 1, 1, color=PHASE_COLORS[i]) for i in range(self.n_phases)]
        fractions = self.phase_fractions()
        axes[0].legend(handles, [f"{n} ({fractions[n]:.0%})" for n in self.names], loc="upper right", fontsize=8)
        axes[0].set_title("phase")
        axes[1].imshow(orientation)
        axes[1].set_title("beam direction (each phase's own colour key)")
        im = axes[2].imshow(self.corr, vmin=0, vmax=1, cmap="viridis")
        axes[2].set_title("confidence (corr)")
        fig.colorbar(im, ax=axes[2], fraction=0.046)
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.tight_layout()
        return (fig, axes) if returnfig else None

    def orientation_image(self) -> np.ndarray:
        """(Rx, Ry, 3) RGB: each position's beam direction in its phase's colour key, black where none."""
        image = np.zeros(self.phase_index.shape + (3,))
        for i, (crystal, om) in enumerate(zip(self.crystals, self.orientation_maps)):
            here = self.phase_index == i
            if here.any():
                image[here] = out_of_plane_image(crystal, om)[here]
        return image

    def __repr__(self) -> str:
        Rx, Ry = self.phase_index.shape
        parts = ", ".join(f"{n} {f:.1%}" for n, f in self.phase_fractions().items())
        return f"PhaseMap({Rx}x{Ry}; {parts}; unmatched {np.mean(self.phase_index < 0):.1%})"


def out_of_plane_image(crystal, om) -> np.ndarray:
    """(Rx, Ry, 3) RGB of the symmetry-reduced beam direction (py4DSTEM's colour key), full
    brightness wherever there is a match (``corr > 0``)."""
    from unittest import mock

    import matplotlib.pyplot as plt

    shown = copy.copy(om)
    shown.corr = (om.corr > 0).astype(float)  # colours at full brightness; corr gets its own panel
    before = set(plt.get_fignums())
    # py4DSTEM draws (and shows) a figure to get the colours: keep it out of the user's notebook
    with contextlib.redirect_stdout(io.StringIO()), mock.patch.object(plt, "show", lambda *a, **k: None):
        images = crystal.plot_orientation_maps(shown, corr_range=np.array([0, 1]), corr_normalize=False)
    for number in set(plt.get_fignums()) - before:
        plt.close(number)
    return np.clip(images[:, :, :, 1], 0, 1)
