"""Flat Bragg-peak arrays for a whole scan, read from py4DSTEM ``BraggVectors`` or an HDF5 file.

py4DSTEM stores peaks as a nested Python list of PointLists, one per scan position. Everything
downstream here works on one flat array per field plus per-position counts (a CSR layout), so a
scan is processed with array operations instead of a Python loop per position.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from .detector import DetectorCalibration

__all__ = ["Peaks", "PeaksFile", "as_peaks_source", "calibrated_xy", "peaks_from_braggvectors", "peaks_from_pointlistarray", "braggvectors_from_pointlistarray",
           "peaks_to_braggvectors", "fill_braggvectors", "read_peaks",
           "open_peaks"]

_VECTORS = "_v_uncal"


@dataclass(frozen=True)
class Peaks:
    """The Bragg peaks of a scan, flat.

    Attributes
    ----------
    qx, qy, intensity : (P,) float64 arrays
        All peaks of all positions, position after position (C order over ``scan_shape``).
        Raw detector pixels unless ``calibration`` is None (then already in 1/A, lab frame).
    counts : (B,) int64 array
        Number of peaks at each scan position, ``B = prod(scan_shape)``.
    scan_shape : (Rx, Ry)
    calibration : DetectorCalibration or None
        How to turn raw positions into 1/A; None means the positions are calibrated already.
    first, whole_shape : where a slice (from :meth:`read`) sits in its scan: its first position's flat index
        and the scan's shape (None: not a slice), so that messages name the scan's (rx, ry).
    """

    qx: np.ndarray
    qy: np.ndarray
    intensity: np.ndarray
    counts: np.ndarray
    scan_shape: Tuple[int, ...]
    calibration: Optional[DetectorCalibration] = None
    first: int = 0
    whole_shape: Optional[Tuple[int, ...]] = None

    def scan_position(self, flat: int) -> Tuple[int, ...]:
        """(rx, ry) in the whole scan of this Peaks' flat position ``flat``."""
        return tuple(int(i) for i in np.unravel_index(self.first + int(flat), self.whole_shape or self.scan_shape))

    @property
    def offsets(self) -> np.ndarray:
        """(B + 1,) start of each position's peaks in the flat arrays."""
        out = np.zeros(len(self.counts) + 1, dtype=np.int64)
        np.cumsum(self.counts, out=out[1:])
        return out

    @property
    def num_positions(self) -> int:
        return len(self.counts)

    def __len__(self) -> int:
        return len(self.qx)

    def read(self, start: int, stop: int) -> "Peaks":
        """The flat scan positions ``start ... stop - 1`` alone, as a 1-D scan (views, not copies; the
        calibration's per-position values sliced). The same call as :meth:`PeaksFile.read`."""
        offsets = self.offsets
        a, b = offsets[start], offsets[stop]
        cal = None if self.calibration is None else self.calibration.positions(start, stop)
        return Peaks(self.qx[a:b], self.qy[a:b], self.intensity[a:b], self.counts[start:stop], (stop - start,), cal,
                     self.first + start, self.whole_shape or self.scan_shape)

    @classmethod
    def from_lists(cls, peaks, scan_shape=None, calibration=None) -> "Peaks":
        """Build from a sequence of (n_i, 3) arrays ``(qx, qy, intensity)``, one per position."""
        arrays = [np.asarray(p, dtype=np.float64).reshape(-1, 3) for p in peaks]
        counts = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
        flat = np.concatenate(arrays) if arrays else np.zeros((0, 3))
        shape = (len(arrays),) if scan_shape is None else tuple(scan_shape)
        if int(np.prod(shape)) != len(arrays):
            raise ValueError(f"scan_shape {shape} does not hold {len(arrays)} positions")
        return cls(flat[:, 0].copy(), flat[:, 1].copy(), flat[:, 2].copy(), counts, shape, calibration)


def peaks_from_braggvectors(bragg_peaks) -> Peaks:
    """Flatten a py4DSTEM ``BraggVectors`` (raw vectors plus its calibration); nothing is copied back.

    Raises ``ValueError`` if the origin or the Q pixel size is not calibrated.
    """
    pla = getattr(bragg_peaks, _VECTORS, None)
    if pla is None or not hasattr(bragg_peaks, "calibration"):
        raise TypeError(
            f"expected py4DSTEM BraggVectors (from datacube.find_Bragg_disks), got {type(bragg_peaks).__name__}"
        )
    calibration = DetectorCalibration.from_py4dstem(bragg_peaks.calibration, getattr(bragg_peaks, "calstate", None))
    data = [pl.data for row in pla._pointlists for pl in row]
    return _from_structured(data, tuple(pla.shape), calibration)


def peaks_from_pointlistarray(pointlists) -> Peaks:
    """Flatten a py4DSTEM ``PointListArray`` of calibrated peaks: ``qx, qy`` in 1/A about the direct beam and
    ``intensity``, one PointList per scan position (what ``py4DSTEM.read`` gives for older files). py4DSTEM's
    own ``match_orientations`` and ``CrystalPhase`` need ``BraggVectors``: see
    :func:`braggvectors_from_pointlistarray`."""
    names = tuple(getattr(pointlists, "dtype", None).names or ()) if hasattr(pointlists, "dtype") else ()
    missing = [f for f in ("qx", "qy", "intensity") if f not in names]
    if missing:
        raise ValueError(f"this PointListArray has fields {list(names)}, not {missing}: expected calibrated peaks "
                         "qx, qy (1/A, origin at the direct beam) and intensity")
    if len(pointlists.shape) != 2:
        raise ValueError(f"expected a 2-D scan of PointLists, got shape {pointlists.shape}")
    rx, ry = pointlists.shape
    data = [pointlists.get_pointlist(i, j).data for i in range(rx) for j in range(ry)]
    return _from_structured(data, (rx, ry), None)


def braggvectors_from_pointlistarray(pointlists, Qshape=(256, 256)):
    """py4DSTEM ``BraggVectors`` holding a ``PointListArray`` of calibrated peaks (1/A about the direct beam).

    py4DSTEM 0.14's ``crystal.match_orientations`` and ``CrystalPhase.quantify_phase`` read a calibration
    state that a bare ``PointListArray`` does not have. The vectors are stored as they are (Q pixel size
    1 1/A, origin 0, the calibration state set explicitly, as py4DSTEM's autodetection would call a Q pixel
    size of 1 uncalibrated). The input is not changed."""
    return peaks_to_braggvectors(peaks_from_pointlistarray(pointlists), Qshape, origin=(0.0, 0.0), q_pixel_size=1.0)


def peaks_to_braggvectors(peaks: Peaks, Qshape=(256, 256), origin=None, q_pixel_size=None):
    """Build a py4DSTEM ``BraggVectors`` holding ``peaks`` as its raw vectors.

    Parameters
    ----------
    peaks : Peaks
        Raw detector positions (pixels) with a 2-D ``scan_shape``.
    Qshape : (Qx, Qy)
        Detector shape in pixels.
    origin : (qx0, qy0), optional
        Direct-beam position (pixels; floats or (Rx, Ry) arrays). Defaults to
        ``peaks.calibration.origin``.
    q_pixel_size : float, optional
        1/A per pixel; defaults to ``peaks.calibration.q_pixel_size``.

    Returns
    -------
    BraggVectors with origin and Q pixel size (units 'A^-1') calibrated.
    """
    from py4DSTEM import BraggVectors

    if len(peaks.scan_shape) != 2:
        raise ValueError(f"BraggVectors need a 2-D scan, got scan_shape {peaks.scan_shape}")
    cal = peaks.calibration
    origin = origin if origin is not None else (cal.origin if cal is not None else None)
    q_pixel_size = q_pixel_size if q_pixel_size is not None else (cal.q_pixel_size if cal is not None else None)
    if origin is None or q_pixel_size is None:
        raise ValueError("peaks_to_braggvectors needs an origin and a Q pixel size (pass them or a calibration)")
    bv = BraggVectors(tuple(peaks.scan_shape), tuple(Qshape))
    fill_braggvectors(bv, peaks.qx, peaks.qy, peaks.intensity, peaks.counts)
    bv.calibration.set_origin(origin)
    bv.calibration.set_Q_pixel_units("A^-1")
    bv.calibration.set_Q_pixel_size(q_pixel_size)
    bv.setcal(center=True, ellipse=False, pixel=True, rotate=False)
    return bv


def fill_braggvectors(bv, qx, qy, intensity, counts) -> None:
    """Set the raw vectors of every position of ``bv`` (a new py4DSTEM ``BraggVectors``) from flat arrays,
    position after position in C order (``counts`` peaks each)."""
    pla = bv._v_uncal
    flat = np.zeros(len(qx), dtype=pla.dtype)
    flat["qx"], flat["qy"], flat["intensity"] = qx, qy, intensity
    offsets = np.concatenate([[0], np.cumsum(counts)])
    for b, pl in enumerate(pl for row in pla._pointlists for pl in row):  # C order: b = rx * Ry + ry
        pl.data = flat[offsets[b] : offsets[b + 1]].copy()


#: Scan positions read from a file at once by :func:`read_peaks`.
_READ_BLOCK = 65536


def read_peaks(path, name: Optional[str] = None, positions: Optional[Tuple[int, int]] = None) -> Peaks:
    """Read Bragg peaks and their calibration straight from a file written by ``py4DSTEM.save``.

    About 10x faster than ``py4DSTEM.read`` (which rebuilds one PointList per position).

    Parameters
    ----------
    path : str or Path
        HDF5 file holding a BraggVectors.
    name : str, optional
        Name of the BraggVectors group when the file holds several.
    positions : (start, stop), optional
        Read only the flat (C-order) scan positions ``start ... stop - 1`` (the scan rows holding them),
        returned as a 1-D scan with the calibration sliced alike; default the whole scan.
    """
    source = open_peaks(path, name)
    if positions is None:
        whole = source.read(0, source.num_positions)
        return dataclasses.replace(whole, scan_shape=source.scan_shape, calibration=source.calibration, whole_shape=None)
    start, stop = (int(v) for v in positions)
    if not 0 <= start <= stop <= source.num_positions:
        raise ValueError(f"positions {positions} are outside the scan's 0 ... {source.num_positions}")
    return source.read(start, stop)


def open_peaks(path, name: Optional[str] = None) -> "PeaksFile":
    """A :class:`PeaksFile`: the scan shape and calibration of the BraggVectors in ``path``, its peaks left
    on disk until :meth:`PeaksFile.read` asks for some positions."""
    import h5py

    with h5py.File(path, "r") as f:
        group = _find_braggvectors(f, name)
        data = group[_VECTORS]["data"]  # (Rx, Ry) dataset of variable-length structured arrays
        calibration = _read_calibration(f, group)
        cal = DetectorCalibration.from_py4dstem(calibration, None)
        return PeaksFile(str(path), group.name, tuple(int(v) for v in data.shape), cal)


@dataclass(frozen=True)
class PeaksFile:
    """Bragg peaks left in a py4DSTEM file, read a block of scan positions at a time: what a scan larger
    than memory is mapped from (the mapper, or each Dask worker, reads only its chunk).

    Attributes
    ----------
    path : the HDF5 file
    group : the BraggVectors' group in it
    scan_shape : (Rx, Ry)
    calibration : DetectorCalibration (per-position values for the whole scan: small)
    """

    path: str
    group: str
    scan_shape: Tuple[int, ...]
    calibration: Optional[DetectorCalibration]

    @property
    def num_positions(self) -> int:
        return int(np.prod(self.scan_shape))

    def read(self, start: int, stop: int) -> Peaks:
        """The flat scan positions ``start ... stop - 1`` as a 1-D scan of :class:`Peaks` (calibration sliced)."""
        import h5py

        ry = self.scan_shape[1]
        r0, r1 = start // ry, -(-stop // ry)
        rows = max(1, _READ_BLOCK // max(1, ry))
        # in blocks of scan rows, so that the 1 M small per-position arrays of a 1024^2 scan never exist at once
        with h5py.File(self.path, "r") as f:
            data = f[self.group][_VECTORS]["data"]
            parts = [_flat_fields(list(data[r:min(r1, r + rows)].ravel())) for r in range(r0, r1, rows)]
        counts, qx, qy, intensity = (np.concatenate(field) for field in zip(*parts)) if parts else (
            np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros(0))
        skip, keep = start - r0 * ry, stop - start  # trim the rows to the positions asked for
        offsets = np.concatenate([[0], np.cumsum(counts)])
        a, b = offsets[skip], offsets[skip + keep]
        cal = None if self.calibration is None else self.calibration.positions(start, stop)
        return Peaks(qx[a:b], qy[a:b], intensity[a:b], counts[skip:skip + keep], (keep,), cal, start, self.scan_shape)


def _flat_fields(data) -> tuple:
    """``(counts, qx, qy, intensity)`` of a list of per-position structured arrays (float64, flat)."""
    counts = np.fromiter((len(d) for d in data), dtype=np.int64, count=len(data))
    flat = np.concatenate(data) if data else np.zeros(0, [("qx", "f8"), ("qy", "f8"), ("intensity", "f8")])
    return (counts, *(np.ascontiguousarray(flat[k], dtype=np.float64) for k in ("qx", "qy", "intensity")))


def _from_structured(data, scan_shape, calibration) -> Peaks:
    counts, qx, qy, intensity = _flat_fields(data)
    return Peaks(qx, qy, intensity, counts=counts, scan_shape=scan_shape, calibration=calibration)


def _find_braggvectors(f, name):
    found = []

    def visit(path, obj):
        if path.endswith(f"/{_VECTORS}/data"):
            found.append(path[: -len(f"/{_VECTORS}/data")])

    f.visititems(visit)
    if name is not None:
        found = [p for p in found if p.split("/")[-1] == name]
    if not found:
        what = f"named {name!r} " if name else ""
        raise ValueError(f"no BraggVectors {what}found in {f.filename}")
    if len(found) > 1:
        names = ", ".join(p.split("/")[-1] for p in found)
        raise ValueError(f"{f.filename} holds several BraggVectors ({names}); pass name=")
    return f[found[0]]


def _read_calibration(f, group):
    """The py4DSTEM Calibration of the tree holding ``group`` (None if absent)."""
    from emdfile import Metadata
    from py4DSTEM.data import Calibration

    root = f[group.name.split("/")[1]]
    for holder in (group, root):
        bundle = holder.get("metadatabundle")
        if bundle is not None and "calibration" in bundle:
            md = Metadata.from_h5(bundle["calibration"])
            cal = Calibration()
            cal._params.update(md._params)
            return cal
    return None


def as_peaks_source(bragg_peaks):
    """``Peaks`` or ``PeaksFile`` for what a user maps: py4DSTEM ``BraggVectors``, a calibrated ``PointListArray``,
    flat ``Peaks``, a ``PeaksFile`` or the path of a py4DSTEM file."""
    import os

    if isinstance(bragg_peaks, (Peaks, PeaksFile)):
        return bragg_peaks
    if isinstance(bragg_peaks, (str, os.PathLike)):
        if not os.path.exists(bragg_peaks):
            raise FileNotFoundError(f"no file {os.fspath(bragg_peaks)!r} (expected a py4DSTEM file holding BraggVectors)")
        return open_peaks(bragg_peaks)
    if type(bragg_peaks).__name__ == "PointListArray":
        return peaks_from_pointlistarray(bragg_peaks)
    return peaks_from_braggvectors(bragg_peaks)


def calibrated_xy(peaks: Peaks) -> Tuple[np.ndarray, np.ndarray]:
    """(P,) ``qx, qy`` (float64, 1/A, lab frame) of every peak of ``peaks``: its calibration applied, or the
    positions as they are where they are calibrated already."""
    qx, qy = np.asarray(peaks.qx, np.float64), np.asarray(peaks.qy, np.float64)
    if peaks.calibration is None:
        return qx, qy
    import torch

    tx, ty = peaks.calibration.apply(torch.from_numpy(qx), torch.from_numpy(qy), torch.as_tensor(peaks.counts))
    return tx.numpy(), ty.numpy()
