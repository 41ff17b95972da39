"""``find_bragg_disks``: py4DSTEM's ``find_Bragg_disks``, batched in torch, streamed over the scan.

Same keywords, same defaults, same answers (the steps are in :mod:`.detect`); what differs is that
many patterns go through each step at once, on any torch device, and that the scan is read in
chunks of positions, so an in-memory, memory-mapped (``np.memmap``) or lazily read
(``py4DSTEM.read(..., mem="MEMMAP")``, an h5py dataset) datacube all work with bounded memory.
Registered on py4DSTEM's ``DataCube`` as ``find_Bragg_disks_batched`` (py4DSTEM's own
``find_Bragg_disks`` is left alone).
"""

from __future__ import annotations

import warnings
from typing import Iterator, Optional, Tuple

import numpy as np
import torch

from ..core.device import resolve_device
from ..io.peaks import fill_braggvectors
from .config import DiskDetectionConfig
from .correlate import template_spectrum
from .detect import BatchPeaks, detect_batch

__all__ = ["find_bragg_disks", "register", "default_batch_size"]

#: Pixels per batch (patterns x detector pixels): ~16 MB of float32 per array in flight.
_BATCH_PIXELS = 1 << 22


def default_batch_size(shape: Tuple[int, int]) -> int:
    """Patterns per batch for a detector of ``shape``: 64 at 256 x 256, 256 at 128 x 128."""
    return int(np.clip(_BATCH_PIXELS // max(1, shape[0] * shape[1]), 1, 1024))


def find_bragg_disks(
    data,
    template,
    radial_bksb: bool = False,
    filter_function=None,
    corrPower: float = 1,
    sigma: Optional[float] = None,
    sigma_dp: float = 0,
    sigma_cc: float = 2,
    subpixel: str = "multicorr",
    upsample_factor: int = 16,
    minAbsoluteIntensity: float = 0,
    minRelativeIntensity: float = 0.005,
    relativeToPeak: int = 0,
    minPeakSpacing: float = 60,
    edgeBoundary: int = 20,
    maxNumPeaks: Optional[int] = 70,
    *,
    batch_size: Optional[int] = None,
    device=None,
    workers: Optional[int] = None,
    client=None,
    progress_bar: bool = True,
    name: str = "braggvectors",
):
    """Find the Bragg disks of diffraction patterns by correlation with a probe template, batched.

    The keywords up to ``maxNumPeaks`` are py4DSTEM's ``find_Bragg_disks`` (0.14.18), with its
    defaults and meaning; the peaks are the same (tested to within 1e-3 px on noisy patterns).

    Parameters
    ----------
    data : DataCube, 2-D array, 3-D array, or (DataCube, rx, ry)
        As py4DSTEM: a whole ``DataCube`` gives ``BraggVectors`` sharing the datacube's calibration;
        one pattern (Qx, Qy) gives ``QPoints``; a stack (N, Qx, Qy) a list of ``QPoints``;
        ``(datacube, rx, ry)`` with ints gives ``QPoints``, with arrays a list of them.
    template : (Qx, Qy) array or None
        The probe kernel (``probe.kernel`` / ``probe.get_kernel(...)``), centred at pixel (0, 0).
        None finds maxima of the patterns themselves (py4DSTEM's docstring; its code differs).
    radial_bksb, filter_function, corrPower, sigma, sigma_dp, sigma_cc, subpixel, upsample_factor,
    minAbsoluteIntensity, minRelativeIntensity, relativeToPeak, minPeakSpacing, edgeBoundary, maxNumPeaks :
        py4DSTEM's. ``radial_bksb`` needs a whole DataCube with its origin calibrated; it and
        ``filter_function`` run per pattern in numpy (slower).
    batch_size : int, optional
        Patterns per batch; default :func:`default_batch_size` (about 16 MB per batch).
    device : str or torch.device, optional
        Default: CUDA if available, else CPU.
    workers : int, optional
        Processes on a CPU for a whole DataCube: a Dask ``LocalCluster`` of forked processes (Linux) for the
        call, the same path as ``client=`` (an h5py-backed datacube is read by the workers themselves; with
        ``radial_bksb`` the calling process works alone). Default 1: on 2 cores two 1-thread workers were
        no faster than one 2-thread process (the dense steps are bound by memory traffic; docs/benchmarks.md).
    client : ``dask.distributed.Client``, optional
        Find the disks of a whole DataCube on its workers, a batch of positions per task: a datacube
        backed by an HDF5 dataset (``DataCube(data=h5py_file["..."])``) is read by the workers themselves
        from the file (which they must see), an in-memory one travels in the tasks. Each worker uses
        ``device`` if given, else its visible GPU, else its CPU. Not with ``radial_bksb``.
    progress_bar : bool
    name : str
        Name of the returned ``BraggVectors``.
    """
    from py4DSTEM import DataCube

    sigma_cc = sigma if sigma is not None else sigma_cc
    config = DiskDetectionConfig(
        corrPower=corrPower,
        sigma_dp=sigma_dp,
        sigma_cc=sigma_cc,
        subpixel=subpixel,
        upsample_factor=upsample_factor,
        minAbsoluteIntensity=minAbsoluteIntensity,
        minRelativeIntensity=minRelativeIntensity,
        relativeToPeak=relativeToPeak,
        minPeakSpacing=minPeakSpacing,
        edgeBoundary=edgeBoundary,
        maxNumPeaks=maxNumPeaks,
    )
    if filter_function is not None and not callable(filter_function):
        raise TypeError(f"filter_function must be callable (pattern -> pattern), got {type(filter_function).__name__}")
    dev = resolve_device(device)
    run = dict(template=template, config=config, filter_function=filter_function, batch_size=batch_size, device=dev)

    if isinstance(data, DataCube):
        from ..mapping.local_cluster import local_client, resolve_workers

        if radial_bksb:
            _check_origin(data)
        if client is not None:
            if radial_bksb:
                raise ValueError("radial_bksb needs the DataCube itself: not available with client=; subtract the "
                                 "background first, or run without a client")
            peaks = _detect_distributed(client, data, template, config, filter_function, batch_size, device,
                                        progress_bar)
            return _to_braggvectors(peaks, data, config, template, filter_function, name)
        n_workers = resolve_workers(1 if workers is None else workers, dev, data.R_N)
        if n_workers > 1 and not radial_bksb:  # this machine's processes, as a Dask cluster: the client= path
            with local_client(n_workers) as local:
                peaks = _detect_distributed(local, data, template, config, filter_function, batch_size, dev,
                                            progress_bar)
        else:
            peaks = _detect_stream(_datacube_chunks(data, radial_bksb), data.Qshape, len_=data.R_N,
                                   progress_bar=progress_bar, **run)
        return _to_braggvectors(peaks, data, config, template, filter_function, name)
    if radial_bksb:
        raise ValueError("radial_bksb needs a whole DataCube with its origin calibrated (it subtracts a radial median)")
    if isinstance(data, np.ndarray) or torch.is_tensor(data):
        arr = np.asarray(data)
        if arr.ndim not in (2, 3):
            raise ValueError(f"data as an array must be one pattern (Qx, Qy) or a stack (N, Qx, Qy), got shape {arr.shape}")
        stack = arr[None] if arr.ndim == 2 else arr
        chunks = _array_chunks(stack)
        peaks = _detect_stream(chunks, stack.shape[1:], len_=len(stack), progress_bar=False, **run)
        points = _to_qpoints(peaks)
        return points[0] if arr.ndim == 2 else points
    if isinstance(data, tuple) and len(data) == 3 and isinstance(data[0], DataCube):
        dc, rx, ry = data
        scalar = np.ndim(rx) == 0 and np.ndim(ry) == 0
        rx, ry = np.atleast_1d(np.asarray(rx, dtype=np.int64)), np.atleast_1d(np.asarray(ry, dtype=np.int64))
        if rx.shape != ry.shape:
            raise ValueError(f"rx and ry must have the same shape, got {rx.shape} and {ry.shape}")
        stack = np.stack([np.asarray(dc.data[x, y]) for x, y in zip(rx, ry)]) if len(rx) else np.zeros((0, *dc.Qshape))
        peaks = _detect_stream(_array_chunks(stack), dc.Qshape, len_=len(stack), progress_bar=False, **run)
        points = _to_qpoints(peaks)
        return points[0] if scalar else points
    raise TypeError(
        f"data must be a py4DSTEM DataCube, a pattern or stack of patterns (numpy array), or (datacube, rx, ry); "
        f"got {type(data).__name__}"
    )


# --- reading --------------------------------------------------------------------------------------


def _datacube_chunks(datacube, radial_bksb: bool):
    """A function ``(batch) -> iterator of (start, stop)`` flat ranges over the scan in C order, and a
    reader ``(start, stop) -> (n, Qx, Qy) array``.

    A range is whole scan rows where a batch holds them, else part of one row: slices of the stored
    array, so a memory-mapped or h5py-backed datacube is read a chunk at a time.
    """
    data = datacube.data
    rnx, rny = datacube.R_Nx, datacube.R_Ny

    def ranges(batch: int) -> Iterator[Tuple[int, int]]:
        if batch >= rny:
            rows = batch // rny
            for r in range(0, rnx, rows):
                yield r * rny, min(rnx, r + rows) * rny
        else:
            for r in range(rnx):
                for c in range(0, rny, batch):
                    yield r * rny + c, r * rny + min(rny, c + batch)

    def read(start: int, stop: int) -> np.ndarray:
        if radial_bksb:
            return np.stack([datacube.get_radial_bksb_dp(i // rny, i % rny) for i in range(start, stop)])
        return _read_positions(data, rny, start, stop)

    return ranges, read


def _read_positions(data, rny: int, start: int, stop: int) -> np.ndarray:
    """(stop - start, Qx, Qy): the flat positions ``start ... stop - 1`` of a 4-D (Rx, Ry, Qx, Qy) array,
    h5py dataset or memmap (whole scan rows, or part of one row, as :func:`_datacube_chunks` cuts them)."""
    if start % rny == 0 and stop % rny == 0:
        block = np.asarray(data[start // rny : stop // rny])
        return block.reshape(-1, *block.shape[2:])
    r = start // rny
    return np.asarray(data[r, start - r * rny : stop - r * rny])


def _array_chunks(stack: np.ndarray):
    def ranges(batch: int):
        for start in range(0, len(stack), batch):
            yield start, min(len(stack), start + batch)

    def read(start: int, stop: int) -> np.ndarray:
        return np.asarray(stack[start:stop])

    return ranges, read


def _check_origin(datacube):
    """What py4DSTEM's radial background subtraction needs: a polar datacube and an origin."""
    origin = datacube.calibration.get_origin() if datacube.calibration is not None else None
    if origin is None or origin[0] is None:
        raise ValueError(
            "radial_bksb=True subtracts a radial median around the origin, which this datacube's calibration does "
            "not have: set it first (datacube.calibration.set_origin((qx0, qy0)), e.g. from datacube.get_probe_size)"
        )
    if getattr(datacube, "polar", None) is None:
        raise ValueError(
            "radial_bksb=True reads the radial median from the datacube's polar transform, which it does not have: "
            "build it first as for py4DSTEM's own find_Bragg_disks (see py4DSTEM's DataCube.polar / PolarDatacube)"
        )


# --- detecting ------------------------------------------------------------------------------------


def _detect_stream(chunks, shape, len_, template, config, filter_function, batch_size, device, progress_bar):
    """Run :func:`detect_batch` over every chunk, here; one :class:`BatchPeaks` for all patterns, in order."""
    from tqdm.auto import tqdm

    ranges, read = chunks
    shape = tuple(int(s) for s in shape)
    out_shape = shape
    if filter_function is not None and len_:
        out_shape = tuple(np.asarray(filter_function(np.zeros(shape, dtype=np.float32))).shape)  # what it returns
    template_ft = template_spectrum(template, out_shape, device=device)
    batch = int(batch_size) if batch_size is not None else default_batch_size(out_shape)
    if batch < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    def detect(part):
        block = read(*part)
        if filter_function is not None:
            block = np.stack([np.asarray(filter_function(p)) for p in block]) if len(block) else block
        block = np.ascontiguousarray(block, dtype=np.float32)
        with warnings.catch_warnings():  # a read-only memmap: torch warns about writing, which nothing here does
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            x = torch.as_tensor(block, device=device)
        return detect_batch(x, template_ft, config)  # raises on NaN / inf

    parts = []
    with tqdm(total=len_, desc="Finding Bragg disks", unit="DP", unit_scale=True, disable=not progress_bar) as bar:
        for part in ranges(batch):
            peaks = detect(part)
            parts.append(peaks)
            bar.update(len(peaks.counts))
    return BatchPeaks.concatenate(parts)


def _detect_distributed(client, datacube, template, config, filter_function, batch_size, device, progress_bar):
    """The whole scan on a Dask cluster, a batch of positions per task; one :class:`BatchPeaks`, in order."""
    from distributed import as_completed
    from tqdm.auto import tqdm

    ranges, read = _datacube_chunks(datacube, False)
    batch = int(batch_size) if batch_size is not None else default_batch_size(tuple(datacube.Qshape))
    source = _h5_source(datacube.data)
    futures = {}
    for i, (start, stop) in enumerate(ranges(batch)):
        part = (source, datacube.R_Ny, start, stop) if source is not None else read(start, stop)
        future = client.submit(_detect_task, part, template, config, filter_function,
                               None if device is None else str(device), pure=False)
        futures[future] = i
    parts = [None] * len(futures)
    with tqdm(total=datacube.R_N, desc="Finding Bragg disks", unit="DP", unit_scale=True,
              disable=not progress_bar) as bar:
        for future in as_completed(futures, loop=client.loop):  # also a client that is not the default
            peaks = future.result()
            parts[futures.pop(future)] = peaks
            bar.update(len(peaks.counts))
            future.release()
    return BatchPeaks.concatenate(parts)


def _h5_source(data):
    """(file name, dataset name) of an h5py dataset, else None."""
    if isinstance(data, np.ndarray) or not hasattr(data, "file") or not hasattr(data, "name"):
        return None
    return str(data.file.filename), str(data.name)


def _detect_task(part, template, config, filter_function, device):
    """One batch on a Dask worker: ``part`` is a (n, Qx, Qy) array or ((file, dataset), Ry, start, stop)."""
    from ..mapping.distributed import prepare_worker

    prepare_worker()
    if isinstance(part, tuple):
        (path, dataset), rny, start, stop = part
        import h5py

        with h5py.File(path, "r") as f:
            block = _read_positions(f[dataset], rny, start, stop)
    else:
        block = part
    return _detect_stream(_array_chunks(block), block.shape[1:], len(block), template, config, filter_function,
                          len(block) or 1, resolve_device(device), progress_bar=False)  # this task's one batch


# --- py4DSTEM containers --------------------------------------------------------------------------


def _structured(peaks: BatchPeaks) -> np.ndarray:
    flat = np.zeros(len(peaks.x), dtype=[(n, np.float64) for n in ("qx", "qy", "intensity")])
    flat["qx"], flat["qy"], flat["intensity"] = peaks.x, peaks.y, peaks.intensity
    return flat


def _to_qpoints(peaks: BatchPeaks) -> list:
    from py4DSTEM.data import QPoints

    flat, offsets = _structured(peaks), np.concatenate([[0], np.cumsum(peaks.counts)])
    return [QPoints(flat[offsets[i] : offsets[i + 1]].copy()) for i in range(len(peaks.counts))]


def _to_braggvectors(peaks: BatchPeaks, datacube, config, template, filter_function, name):
    """``BraggVectors`` holding the raw peaks, attached to the datacube (so sharing its calibration), as py4DSTEM does."""
    from emdfile import Metadata
    from py4DSTEM import BraggVectors

    bv = BraggVectors(datacube.Rshape, datacube.Qshape, name=name)
    fill_braggvectors(bv, peaks.x, peaks.y, peaks.intensity, peaks.counts)
    params = config.to_dict()
    params.update(template=template, filter_function=filter_function, finder="py4dstem_transformer.find_bragg_disks")
    bv.metadata = Metadata(name="gen_params", data=params)
    datacube.attach(bv)
    return bv


# --- registration ---------------------------------------------------------------------------------


def _datacube_find_bragg_disks_batched(self, template, data=None, **kwargs):
    """``DataCube.find_Bragg_disks`` batched in torch (py4dstem_transformer): same keywords and results.

    ``data``: None (the whole scan, returns BraggVectors attached to this datacube), ``(rx, ry)``
    (returns QPoints or a list of them) or an (R_Nx, R_Ny) boolean mask (a list of QPoints, in C order).
    Extra keywords: ``batch_size``, ``device``, ``progress_bar``, ``name``. See
    :func:`py4dstem_transformer.find_bragg_disks`.
    """
    kwargs.pop("returncalc", None)
    if data is None:
        return find_bragg_disks(self, template, **kwargs)
    if isinstance(data, tuple) and len(data) == 2:
        return find_bragg_disks((self, data[0], data[1]), template, **kwargs)
    mask = np.asarray(data)
    if mask.dtype != bool or mask.shape != tuple(self.Rshape):
        raise ValueError(f"data must be None, (rx, ry), or a boolean mask of the scan shape {tuple(self.Rshape)}")
    rx, ry = np.nonzero(mask)
    return find_bragg_disks((self, rx, ry), template, **kwargs)


def register() -> None:
    """Add ``find_Bragg_disks_batched`` to py4DSTEM's ``DataCube`` (idempotent; py4DSTEM's own method untouched)."""
    from py4DSTEM import DataCube

    DataCube.find_Bragg_disks_batched = _datacube_find_bragg_disks_batched
