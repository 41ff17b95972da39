"""Disks a sure answer leaves off its lattice: the library search's second gate.

A sure answer (calibrated confidence at or above :class:`~.config.SearchConfig` ``confidence``) is normally not
searched further. Where a disk finder reported false disks, or where a twin of the truth explains most of a
pattern, it can still be wrong with a high confidence: the pattern then holds disks that lie on no reflection of the
answer's lattice at all, not even on one excited far beyond the score's excitation window. On a clean pattern every
disk lies on the lattice of a right answer (a reflection the score's window leaves out is still on it), so the check
costs nothing where nothing is amiss (the bench scan: no sure pattern flagged; docs/benchmarks.md, "Disks off the
lattice").

:func:`off_lattice_share` is the ``I ** power``-weighted share of a pattern's disks further than ``radius`` from
every reflection excited within ``|s_g| <= 3 sigma`` (kinematic, :func:`~..core.kinematics.simulate_disks`).
"""

from __future__ import annotations

import torch

from ..core.kinematics import simulate_disks
from .confidence import weighted_share
from .phase import Phase
from .score import square_distances

__all__ = ["off_lattice_share"]


@torch.inference_mode()
def off_lattice_share(observed: torch.Tensor, observed_mask: torch.Tensor, matrix: torch.Tensor, phase: Phase,
                      sigma_excitation_error: float, radius: float, power: float, max_disks: int = 128) -> torch.Tensor:
    """(B,) share in [0, 1] of each pattern's disks (weighted ``I ** power``) off the lattice of its answer.

    Parameters
    ----------
    observed : (B, N, 3) disks ``(qx, qy, I)`` (1/A, lab frame); observed_mask : (B, N) bool.
    matrix : (B, 3, 3) the answers (py4DSTEM convention: lab -> crystal).
    sigma_excitation_error : float
        Width (1/A) of the excitation window: reflections with ``|s_g| <= 3 sigma`` count as the lattice.
    radius : float
        A disk within this distance (1/A) of such a reflection is on the lattice (as
        :func:`~.confidence.disk_agreement` counts a disk explained).
    power : float
        Disks weigh ``I ** power``.
    max_disks : int
        Reflections simulated per answer at first; where an answer excites that many, again with four times as
        many, until none is cut off (the lattice is never truncated; Cu at 0.04 1/A excites at most ~70).
    """
    while True:
        sim, sim_mask = simulate_disks(matrix.float(), phase.reflections.to(matrix.device), sigma_excitation_error,
                                       max_disks, ordered=False, **phase.window)  # (B, M, 3), (B, M)
        if sim_mask.shape[1] < max_disks or not sim_mask.all(-1).any():
            break
        max_disks *= 4
    d2 = square_distances(observed[..., :2].float(), sim[..., :2]).masked_fill_(~sim_mask[:, None, :], torch.inf)
    on = d2.amin(-1) < radius**2 if sim.shape[1] else torch.zeros_like(observed_mask)  # (B, N)
    return weighted_share(observed, observed_mask, ~on, power)
