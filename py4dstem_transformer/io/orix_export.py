"""An ``OrientationMap`` as an orix ``CrystalMap`` whose point group is the crystal's own, in the crystal's frame.

py4DSTEM's ``crystal.orientation_map_to_orix_CrystalMap`` names the point group (pymatgen's
``SpacegroupAnalyzer``) and takes orix's group of that name. orix's groups are written in one setting:
its ``2/m`` has the two-fold axis along z. A monoclinic crystal in its standard setting (b unique,
``lat_real`` with b along y, as py4DSTEM and pymatgen build it) has its two-fold along y, so the map's
symmetry is then not the crystal's: orientations related by the crystal's two-fold come out 180 deg apart
in orix (found by ``tests/test_crystal_systems.py``; py4DSTEM 0.14.18). :func:`orientation_map_to_orix`
calls py4DSTEM's exporter unchanged and, where its group differs from the crystal's own operations
(:func:`~..core.symmetry.point_group_operations`, crystal Cartesian frame), gives the map the crystal's
group instead, under the same name. Nothing else of the map changes.
"""

from __future__ import annotations

import numpy as np

from ..core.symmetry import point_group_operations

__all__ = ["orientation_map_to_orix", "save_ang_file", "orix_symmetry"]


def orix_symmetry(operations: np.ndarray, name: str = ""):
    """An orix ``Symmetry`` of (K, 3, 3) point-group operations (proper and improper, crystal Cartesian frame)."""
    from orix.quaternion import Rotation
    from orix.quaternion.symmetry import Symmetry

    operations = np.asarray(operations, dtype=np.float64)
    det = np.sign(np.linalg.det(operations))
    symmetry = Symmetry(Rotation.from_matrix(operations * det[:, None, None]).data)
    symmetry.improper = det < 0
    symmetry.name = name
    return symmetry


def orientation_map_to_orix(crystal, orientation_map, return_color_key: bool = False, **kwargs):
    """``crystal.orientation_map_to_orix_CrystalMap(orientation_map, **kwargs)`` with the crystal's own point
    group (see the module docstring); with ``return_color_key`` also orix's TSL IPF colour key for it."""
    xmap = crystal.orientation_map_to_orix_CrystalMap(orientation_map, return_color_key=False, **kwargs)
    phase = xmap.phases[xmap.phases.ids[0]]
    operations = point_group_operations(crystal)
    if not _same_group(phase.point_group, operations):
        phase.point_group = orix_symmetry(operations, phase.point_group.name)
    if return_color_key:
        from orix.plot import IPFColorKeyTSL

        return xmap, IPFColorKeyTSL(phase.point_group)
    return xmap


def save_ang_file(crystal, file_name, orientation_map, **kwargs) -> None:
    """``crystal.save_ang_file(file_name, orientation_map, **kwargs)`` from :func:`orientation_map_to_orix`'s map
    (orix's ``.ang`` writer, as py4DSTEM's)."""
    from orix.io.plugins.ang import file_writer

    file_writer(str(file_name), orientation_map_to_orix(crystal, orientation_map, **kwargs))


def _same_group(symmetry, operations: np.ndarray, atol: float = 1e-6) -> bool:
    """Whether an orix ``Symmetry`` holds exactly the (K, 3, 3) operations (improper ones as ``-R``)."""
    r = symmetry.to_matrix()
    theirs = np.where(np.asarray(symmetry.improper)[:, None, None], -r, r)
    if len(theirs) != len(operations):
        return False
    d = np.linalg.norm(theirs[:, None] - np.asarray(operations)[None], axis=(2, 3))
    return bool((d.min(1) < atol).all() and (d.min(0) < atol).all())
