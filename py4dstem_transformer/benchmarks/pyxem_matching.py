"""pyxem template matching as a third method in ``py4dstem-transformer bench`` (optional extra).

pyxem matches images, not peak lists, so each pattern's calibrated Bragg vectors are drawn as
Gaussian spots (direct beam left out) on a ``shape`` detector centred on the beam, then pyxem's own
recipe runs: polar transform (``get_azimuthal_integral2d``), a diffsims template library over the
reduced fundamental zone at ``resolution_deg``, ``get_orientation``. Orientations come back as orix
``Orientation`` objects; with the spots drawn as here (``qx`` along the image's first axis), their matrix
times a 90 deg rotation about the beam (on the right, :data:`FRAME`) is py4DSTEM's ``M`` (found on diffsims'
own spots of known orientations, 2026-12-05, pyxem 0.21: without it no pattern came within 5 deg; checked in
``tests/test_robustness.py`` where pyxem is installed). pyxem may still answer the beam flip, so compare it with
the flip allowed.

Needs ``pip install pyxem orix diffsims`` (pyxem 0.21 installs beside py4DSTEM 0.14.18).
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from ..core.defaults import ACCEL_VOLTAGE

__all__ = ["FRAME", "pyxem_missing", "pyxem_match_arrays"]

#: pyxem's answer ``R`` (its orientation's matrix) -> py4DSTEM's ``M = R @ FRAME``: 90 deg about the beam.
FRAME = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def pyxem_missing() -> Optional[str]:
    """Why ``import pyxem`` fails in this Python (e.g. "ModuleNotFoundError: No module named 'pyxem'"), or None when
    it works. Tried in a process of its own, so that pyxem's imports stay out of this one (the bench times ours
    here: :func:`~.peers.run_pyxem_apart`)."""
    import subprocess
    import sys

    code = ("try:\n    import pyxem\nexcept Exception as err:\n    print(f'{type(err).__name__}: {err}')\n"
            "    raise SystemExit(1)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode:  # not installed (ImportError) or broken beside this numpy / py4DSTEM
        lines = (done.stdout or done.stderr).strip().splitlines()
        return lines[-1] if lines else f"import pyxem exited with status {done.returncode}"
    return None


def pyxem_match_arrays(crystal, qx: np.ndarray, qy: np.ndarray, intensity: np.ndarray, offsets: np.ndarray,
                       accel_voltage: float = ACCEL_VOLTAGE, k_max: float = 2.0, resolution_deg: float = 1.0,
                       shape: int = 128, timings: Optional[dict] = None) -> Tuple[np.ndarray, float, float]:
    """Template-match every pattern of flat calibrated peaks with pyxem.

    Parameters
    ----------
    crystal : py4DSTEM Crystal
    qx, qy, intensity : (P,) every pattern's peaks, ``qx, qy`` in 1/A (lab frame); pattern ``b``'s rows are
        ``offsets[b]:offsets[b + 1]`` (as :func:`~.peers.write_peaks` writes them)
    accel_voltage : float, volts
    k_max : float, 1/A; radius of the templates and of the polar transform
    resolution_deg : float, template spacing on the reduced fundamental zone
    shape : int, detector pixels per side of the drawn images

    Returns
    -------
    matrices : (B, 3, 3) orientation matrices of the best match (py4DSTEM's ``M``)
    library_s : seconds to build the template library (once, like ACOM's plan)
    match_s : seconds to draw the images, polar-transform them and match

    Before the timed matching, pyxem matches the first :data:`WARM_UP` patterns once, untimed: its first call in a
    process compiles and imports (~8 s here, against ~4 s for a later call on 8 patterns), as ACOM's and ours'
    first calls are kept out of the bench. With ``timings`` (a dict), a second such call is timed and stored as
    ``timings["call_s"]``: what every call costs whatever its size (a projection to a larger scan adds it once, not
    per pattern)."""
    from .common import timed

    library, library_s = timed(_library, crystal, accel_voltage, k_max, resolution_deg)
    offsets = np.asarray(offsets)
    first = offsets[:min(WARM_UP, len(offsets) - 1) + 1]
    small = tuple(np.asarray(a)[:first[-1]] for a in (qx, qy, intensity)) + (first,)
    for _ in range(1 if timings is None else 2):
        _, call_s = timed(_match, library, small, k_max, shape)
    if timings is not None:
        timings["call_s"] = call_s
    matrices, match_s = timed(_match, library, (qx, qy, intensity, offsets), k_max, shape)
    return matrices, library_s, match_s


#: Patterns pyxem matches once, untimed, before the timed matching (:func:`pyxem_match_arrays`).
WARM_UP = 8


def _library(crystal, accel_voltage: float, k_max: float, resolution_deg: float):
    from diffsims.generators.simulation_generator import SimulationGenerator
    from orix.sampling import get_sample_reduced_fundamental

    phase = _orix_phase(crystal)
    rotations = get_sample_reduced_fundamental(resolution=resolution_deg, point_group=phase.point_group)
    generator = SimulationGenerator(accel_voltage / 1e3, minimum_intensity=1e-3)
    return generator.calculate_diffraction2d(phase, rotation=rotations, max_excitation_error=0.1,
                                             reciprocal_radius=k_max)


def _match(library, flat_peaks, k_max: float, shape: int) -> np.ndarray:
    import pyxem as pxm

    images, scale = _draw_images(*flat_peaks, k_max, shape)  # (B, shape, shape), 1/A per pixel
    signal = pxm.signals.ElectronDiffraction2D(images[None])
    calibration = getattr(signal, "calibration", None)  # pyxem >= 0.19; before, the same object was `calibrate`
    if not hasattr(calibration, "center"):
        calibration = signal.calibrate
    calibration.scale = scale
    calibration.center = None  # the image centre, where the direct beam was drawn
    polar = signal.get_azimuthal_integral2d(npt=100, npt_azim=360, radial_range=(0, k_max), inplace=False, mean=True)
    orientations = polar.get_orientation(library, n_best=1).to_single_phase_orientations()
    return np.asarray(orientations.to_matrix()).reshape(len(images), -1, 3, 3)[:, 0] @ FRAME


def _draw_images(qx, qy, intensity, offsets, k_max: float, shape: int,
                 sigma_px: float = 1.0) -> Tuple[np.ndarray, float]:
    """(B, shape, shape) float32 images of the diffracted disks (flat calibrated peaks, pattern ``b``'s rows
    ``offsets[b]:offsets[b + 1]``), beam at the centre; and the scale (1/A per px)."""
    qx, qy, intensity, offsets = (np.asarray(a) for a in (qx, qy, intensity, offsets))
    scale = 1.05 * k_max / (shape / 2)
    num_positions = len(offsets) - 1
    position = np.repeat(np.arange(num_positions), np.diff(offsets))
    keep = np.hypot(qx, qy) > 0.1  # the direct beam is not in pyxem's templates
    grid = np.arange(shape) - shape / 2
    images = np.zeros((num_positions, shape, shape), np.float32)
    for b, x, y, i in zip(position[keep], qx[keep] / scale, qy[keep] / scale, intensity[keep]):
        gx, gy = np.exp(-0.5 * ((grid - x) / sigma_px) ** 2), np.exp(-0.5 * ((grid - y) / sigma_px) ** 2)
        images[b] += np.float32(i) * np.outer(gx, gy)
    return images, scale


def _orix_phase(crystal):
    """The orix ``Phase`` (space group from pymatgen, atoms from the py4DSTEM crystal)."""
    from diffpy.structure import Atom, Lattice, Structure
    from orix.crystal_map import Phase
    from pymatgen.core import Element
    from pymatgen.core import Lattice as PmgLattice
    from pymatgen.core import Structure as PmgStructure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    lattice = PmgLattice(np.asarray(crystal.lat_real))
    symbols = [Element.from_Z(int(z)).symbol for z in np.ravel(crystal.numbers)]
    space_group = SpacegroupAnalyzer(PmgStructure(lattice, symbols, np.asarray(crystal.positions))).get_space_group_number()
    atoms = [Atom(s, xyz) for s, xyz in zip(symbols, np.asarray(crystal.positions))]
    cell = Lattice(*lattice.abc, *lattice.angles)
    return Phase(name="crystal", space_group=space_group, structure=Structure(atoms, cell))


def main(argv=None) -> int:
    """``python -m py4dstem_transformer.benchmarks.pyxem_matching PEAKS.npz OUT.npz``: :func:`~.peers.run_pyxem` in
    a process of its own (:func:`~.peers.run_pyxem_apart`)."""
    import argparse

    from .peers import run_pyxem

    parser = argparse.ArgumentParser(prog="python -m py4dstem_transformer.benchmarks.pyxem_matching")
    parser.add_argument("peaks", help="peaks file (robustness --export-peaks, or the bench's)")
    parser.add_argument("out", help="where pyxem's answers go (.npz)")
    args = parser.parse_args(argv)
    run_pyxem(args.peaks, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
