"""``TransformerOrientationMap``: a drop-in for ``crystal.match_orientations``, a facade over the pipeline.

It holds the model, the crystals, their physics (:class:`~.phase.Phase`, built once) and the settings
(:class:`~.config.MapConfig`), and turns py4DSTEM's inputs into the pipeline's and its output into
py4DSTEM's ``OrientationMap``: peaks -> tokens in chunks (:mod:`.schedule`) -> stages
(:mod:`.pipeline`) -> calibrated ``corr`` -> ``OrientationMap`` (:mod:`..io.orientation_map`).
"""

from __future__ import annotations

import functools
import warnings
from typing import Optional

import numpy as np
import torch

from ..core.defaults import ACCEL_VOLTAGE
from ..core.device import resolve_device
from ..io.compatibility import check_crystal_matches_model, check_voltage, resolve_precession, resolve_voltage
from ..core.crystal import crystals_from_metadata, phase_metadata
from ..io.orientation_map import build_orientation_map, ensure_plan
from ..io.peaks import Peaks, as_peaks_source
from ..model.model import OrientationModel
from ..model.tokens import TokenConfig, Tokens
from ..pretrained import load_model
from .confidence import Calibration, phase_weights
from .config import MapConfig, Query, calibrated_config, uncalibrated_warning
from .phase import build_phases
from .pipeline import Mapped, map_tokens
from .predict import Network, default_batch_size
from .schedule import map_scan
from .selfcal import (SelfCalibration, SelfCalibrationConfig, phases_within_reach, sampled_peaks,
                      self_calibrate as measure_correction, with_correction)
from .local_cluster import Inherited, local_chunk_size, local_client, resolve_workers
from .neighbours import NeighbourConfig, second_look

__all__ = ["TransformerOrientationMap"]


class TransformerOrientationMap:
    """Orientation mapping with a trained transformer, returning py4DSTEM ``OrientationMap`` objects.

    Parameters
    ----------
    crystal : py4DSTEM Crystal, or a list of them (one per phase of a multi-phase model)
        Must match the crystal the model was trained for (lattice, composition); gets the
        ``orientation_map`` and plan attributes py4DSTEM's plots read.
    model : OrientationModel, path of a model file, or a shipped model's name (a file of that name first:
        :func:`~py4dstem_transformer.pretrained.load_model`)
    config : MapConfig, optional
        Every setting that changes an answer (:mod:`.config`). Default: the settings the model's confidence
        was calibrated under, recorded in the model file (the shipped models: ``MapConfig()`` with the score's
        older excitation width, ``sigma_excitation_error=0.04``; a model calibrated with ``calibrate
        --search-confidence 1`` searches every pattern), else ``MapConfig()``.
        ``**settings`` change single ones by their flat names
        (``corr_power=0.5``, ``sparse_turns=2``, ``polish_config=None``, ...; :data:`.config.KEYWORDS`).
        Settings other than the calibration's are warned about: ``corr`` is then no calibrated probability.
    device : str or torch.device, optional
        Default: CUDA if available, else CPU.
    precision : {"bf16", "fp32"}, optional
        Autocast dtype of the network; default bf16 where it is fast.
    calibrated_confidence : bool
        ``corr`` is the calibrated probability that the orientation is within 5 deg of the truth where the
        model holds a calibration (:mod:`.confidence`); otherwise, and with ``False``, the raw score.
    workers : int, optional
        CPU processes sharing torch's threads: a Dask ``LocalCluster`` of forked processes for each call, the
        same path as ``client=`` (:mod:`.local_cluster`; Linux). Default: ``torch.get_num_threads()`` (at most
        8) for scans of at least 8192 positions on a CPU, else 1 (the calling process); on CUDA always 1.
    accel_voltage : float, optional
        The microscope's voltage (V), where the crystal does not carry one: py4DSTEM keeps it as
        ``crystal.accel_voltage`` (``crystal.setup_diffraction(200e3)``), and that comes first. Default: the
        model's training voltage. The scoring and refinement use this voltage's wavelength; a voltage the
        model was not measured to map as well as its own (``metadata["voltage_validation"]``) is refused,
        with how to train for it. :attr:`voltage_note` says which voltage was used and why.
    precession_angle_degrees : float, optional
        Precession angle of the data (deg, py4DSTEM's keyword); the scoring and refinement then use the
        cycle-averaged excitation (:mod:`~..core.kinematics`). Default None: no precession.

    Examples
    --------
    >>> mapper = TransformerOrientationMap.pretrained("Cu")                  # doctest: +SKIP
    >>> orientation_map = mapper.match_orientations(bragg_peaks)             # doctest: +SKIP
    >>> mapper.crystal.plot_orientation_maps(orientation_map)                # doctest: +SKIP
    """

    def __init__(self, crystal, model, *, config: Optional[MapConfig] = None, device=None,
                 precision: Optional[str] = None, calibrated_confidence: bool = True,
                 workers: Optional[int] = None, accel_voltage: Optional[float] = None,
                 precession_angle_degrees: Optional[float] = None, **settings):
        model = load_model(model)
        meta, self.crystals = model.metadata, list(crystal) if isinstance(crystal, (list, tuple)) else [crystal]
        self._phase_meta = phase_metadata(meta)
        if len(self.crystals) != len(self._phase_meta):
            names = [p.get("name", "?") for p in self._phase_meta]
            raise ValueError(f"the model maps {len(names)} phase(s) {names} but {len(self.crystals)} crystal(s) were "
                             f"given; pass one Crystal per phase, in this order")
        for c, phase in zip(self.crystals, self._phase_meta):
            check_crystal_matches_model(c, phase)
        self.crystal, self.model = self.crystals[0], model.eval()
        self.calibration, self.calibrated_confidence = Calibration.from_metadata(meta), calibrated_confidence
        fitted = self.calibration.fitted_on.get("map_config") if self.calibration is not None else None
        self.config = (config or calibrated_config(fitted)).replace(**settings)
        self.device, self.precision, self.workers = resolve_device(device), precision, workers
        self.token_config = TokenConfig(**meta["token_config"]) if "token_config" in meta else TokenConfig()
        self.accel_voltage, source = resolve_voltage(self.crystals, accel_voltage, meta.get("accel_voltage"),
                                                     ACCEL_VOLTAGE)
        shown = check_voltage(self.accel_voltage, meta)
        self.precession_angle_degrees = resolve_precession(precession_angle_degrees)
        self.voltage_note = (f"voltage: {self.accel_voltage / 1e3:g} kV, from {source}"
                             + (f"; {shown}" if shown else "")
                             + (f"; precession {self.precession_angle_degrees:g} deg" if self.precession_angle_degrees
                                else ""))
        self.self_calibration_config = SelfCalibrationConfig()
        self.self_calibration: Optional[SelfCalibration] = None  # the last scan's measurement
        self.neighbour_config = NeighbourConfig()
        self._warn_if_uncalibrated(refine=True)

    @classmethod
    def pretrained(cls, name: str, crystal=None, **kwargs) -> "TransformerOrientationMap":
        """A shipped model by name (:func:`list_pretrained`) with its own crystal(s) unless ``crystal`` is given."""
        from ..pretrained import load_pretrained

        return cls.from_model(load_pretrained(name), crystal, **kwargs)

    @classmethod
    def from_model(cls, model="Cu", crystal=None, **kwargs) -> "TransformerOrientationMap":
        """A mapper for a model file, a shipped model's name or an ``OrientationModel``
        (:func:`~py4dstem_transformer.pretrained.load_model`: a file of that name first), with the model's own
        crystal(s) unless ``crystal`` is given."""
        model = load_model(model)
        if crystal is None:
            crystal = crystals_from_metadata(model.metadata)
            crystal = crystal[0] if len(crystal) == 1 else crystal
        return cls(crystal, model, **kwargs)

    @property
    def n_phases(self) -> int:
        return len(self.crystals)

    @functools.cached_property
    def phases(self):
        """The per-phase physics (:class:`~.phase.Phase`) of the data's voltage and precession, built on first use."""
        return self.phases_for(self.accel_voltage, self.precession_angle_degrees)

    def phases_for(self, accel_voltage: float, precession_angle_degrees: float = 0.0):
        """The per-phase physics at another voltage (V) and precession angle (deg), built anew (not cached)."""
        return build_phases(self.crystals, self._phase_meta, self.token_config.k_max, self.token_config.direct_beam_radius,
                            accel_voltage, self.config.score, self.calibration, precession_angle_degrees)

    @property
    def phase_names(self) -> list:
        return [p.name for p in self.phases]

    @property
    def symmetry(self) -> np.ndarray:
        """(S, 3, 3) proper rotations of the (first) crystal."""
        return self.phases[0].rotations

    # -- py4DSTEM's API ----------------------------------------------------------------------
    def match_orientations(self, bragg_peaks_array, num_matches_return: int = 1,
                           min_angle_between_matches_deg: Optional[float] = None, min_number_peaks: int = 3,
                           inversion_symmetry: bool = True, multiple_corr_reset: bool = True,
                           return_orientation: bool = True, progress_bar: bool = True, *,
                           batch_size: Optional[int] = None, device=None, chunk_size: int = 16384, refine: bool = True,
                           self_calibrate: bool = True, client=None, neighbours: bool = True):
        """Orientation map of a whole scan, like ``crystal.match_orientations(bragg_peaks_array)``.

        Parameters
        ----------
        bragg_peaks_array : py4DSTEM BraggVectors (calibrated origin and Q pixel size; ellipse and rotation
            used when set; never modified), a ``PointListArray`` of calibrated peaks (``qx, qy`` in 1/A about
            the direct beam, ``intensity``; as ACOM takes it), flat :class:`~..io.peaks.Peaks` (from
            ``read_peaks``), or the path
            of a file written by ``py4DSTEM.save`` (or its :class:`~..io.peaks.PeaksFile`, ``open_peaks``):
            then the peaks are read one chunk at a time and the scan never has to fit in memory
        num_matches_return : matches per position (1-4): the best first, then its near-ambiguous partners
            (beam flip; mirror partners if ``inversion_symmetry``) ranked by their confidence
        min_angle_between_matches_deg : matches of one position are at least this far apart (after crystal
            symmetry); None (py4DSTEM's default) keeps the mapper's 5 deg
        min_number_peaks : positions with fewer peaks (the direct beam counts, as in py4DSTEM) get ``corr = 0``
        inversion_symmetry : offer the mirror partners (``M @ diag(1, -1, -1)``) too
        multiple_corr_reset : accepted for py4DSTEM's signature: every match here always carries its own
            confidence (what py4DSTEM's ``True`` gives)
        return_orientation : return the map (it is always stored as ``crystal.orientation_map``)
        progress_bar : bool
        batch_size, device, chunk_size : speed only: patterns per network call (default 256 on a CPU, 4096 on
            CUDA), the device for this call, scan positions processed at once (bounds memory)
        refine : refine every candidate against the disks (sub-degree, a reliable beam-flip choice); ``False``
            gives the network's answer with the flip chosen by the score alone
        self_calibrate : measure the scan's Q pixel-size and ellipse error from the patterns the mapper is sure of
            and, where it is significant, map with it corrected (:mod:`.selfcal`; never changes
            ``bragg_peaks_array``). The measurement is printed with the progress output and kept as the
            map's ``self_calibration`` (a :class:`~.selfcal.SelfCalibration`), e.g.
            ``orientation_map.self_calibration.corrected_q_pixel_size(old_size)``. ``False``: the
            calibration as given.
        client : ``dask.distributed.Client``, optional
            Map on its workers (:mod:`.distributed`): chunks of ``chunk_size`` positions go out as flat peak
            arrays (from a file: the workers read their own), the mapper goes to every worker once, and the map
            is assembled here, the same as without a client. Each worker uses ``device`` if given, else its
            own visible GPU, else its CPU. ``workers`` is not used then.
        neighbours : after the scan is mapped, take a second look at the positions the mapper is unsure of
            (calibrated confidence below ``mapper.neighbour_config.confidence``, 0.9) with the answers of their
            sure neighbours as candidates, refined and scored on their own disks (:mod:`.neighbours`). A
            neighbour's orientation replaces a position's answer only where more sure neighbours agree with it
            and it scores above the answer or within ``tie`` (0.03) of it: a near tie the disks cannot decide
            (mostly the beam flip) goes to the orientation of the grain around it, while a grain boundary or
            a twin the disks do see stays. Counts are printed with the progress output and kept as the map's
            ``second_look`` (a dict; ``second_look["changed_map"]``, (Rx, Ry) bool, shows where the
            neighbours decided). Needs ``refine=True`` and a calibrated model; ``False``: every pattern on its own.

        Returns
        -------
        py4DSTEM ``OrientationMap`` (Rx, Ry, num_matches_return); with a multi-phase model a list of them,
        one per crystal (:meth:`match_phases` also gives the phase map).
        """
        maps, _ = self._match(bragg_peaks_array, num_matches_return, min_angle_between_matches_deg, min_number_peaks,
                              inversion_symmetry, progress_bar, batch_size, device, chunk_size, refine, self_calibrate,
                              client, neighbours)
        if return_orientation:
            return maps[0] if self.n_phases == 1 else maps

    match_peaks = match_orientations  # flat Peaks are welcome in match_orientations too

    def match_phases(self, bragg_peaks_array, num_matches_return: int = 1,
                     min_angle_between_matches_deg: Optional[float] = None, min_number_peaks: int = 3,
                     inversion_symmetry: bool = True, progress_bar: bool = True, *, batch_size: Optional[int] = None,
                     device=None, chunk_size: int = 16384, refine: bool = True, self_calibrate: bool = True,
                     client=None, neighbours: bool = True):
        """Phase and orientation of every position in one pass (multi-phase models); arguments as in
        :meth:`match_orientations`.

        Each crystal's ``OrientationMap`` holds that phase's orientation at every position, with ``corr`` =
        orientation confidence x the phase's weight: the network's probability of the phase over that of its favourite,
        to the power ``config.phase_power`` (:func:`.confidence.phase_weights`; phases below
        ``config.min_phase_probability`` are not scored), so py4DSTEM's ``CrystalPhase.plot_dominant_phase(use_correlation_scores=True)`` reads them.
        Returns a :class:`~..io.phase_map.PhaseMap` (``phase_index`` (Rx, Ry), -1 where nothing matched;
        ``phase_probability`` (Rx, Ry, n); ``orientation_maps``).
        """
        from ..io.phase_map import PhaseMap

        maps, probability = self._match(bragg_peaks_array, num_matches_return, min_angle_between_matches_deg,
                                        min_number_peaks, inversion_symmetry, progress_bar, batch_size, device,
                                        chunk_size, refine, self_calibrate, client, neighbours)
        return PhaseMap.from_orientation_maps(maps, probability, self.crystals, self.phase_names)

    def match_single_pattern(self, bragg_peaks, num_matches_return: int = 1,
                             min_angle_between_matches_deg: Optional[float] = None, min_number_peaks: int = 3,
                             inversion_symmetry: bool = True, multiple_corr_reset: bool = True,
                             plot_polar: bool = False, plot_corr: bool = False, **kwargs):
        """Orientation of one pattern, like ``crystal.match_single_pattern``: ``bragg_peaks`` a PointList of
        calibrated ``(qx, qy, intensity)`` (1/A, origin at the direct beam); returns a py4DSTEM ``Orientation``.
        ``plot_polar`` and ``plot_corr`` show ACOM's polar correlation images, which this method has none of."""
        from py4DSTEM.process.diffraction.utils import Orientation

        if plot_polar or plot_corr:
            raise ValueError("plot_polar and plot_corr plot ACOM's polar correlation images; the transformer has none. "
                             "Plot the pattern with its simulated disks instead (crystal.generate_diffraction_pattern)")
        data = bragg_peaks.data if hasattr(bragg_peaks, "data") else np.asarray(bragg_peaks)
        peaks = Peaks.from_lists([np.stack([data["qx"], data["qy"], data["intensity"]], 1)], (1, 1))
        om = self.match_orientations(peaks, num_matches_return, min_angle_between_matches_deg, min_number_peaks,
                                     inversion_symmetry, multiple_corr_reset, progress_bar=False, **kwargs)
        orientation = Orientation(num_matches=num_matches_return)
        for field in ("matrix", "family", "corr", "inds", "mirror", "angles"):
            setattr(orientation, field, getattr(om, field)[0, 0].copy())
        return orientation

    # -- tokens in, matches out ----------------------------------------------------------------
    def map_tokens(self, tokens: Tokens, num_matches: int = 1, inversion_symmetry: bool = True, refine: bool = True,
                   min_angle_deg: Optional[float] = None, batch_size: Optional[int] = None, device=None,
                   phases=None, config: Optional[MapConfig] = None) -> Mapped:
        """The pipeline (:func:`.pipeline.map_tokens`) on a batch of tokens: ranked matches, raw scores, the
        confidence features and phase probabilities of every pattern and phase (:class:`~.pipeline.Mapped`).
        ``phases``: other physics than :attr:`phases` (e.g. another calibration deciding the turns).; ``config``: other settings than :attr:`config`"""
        device = self.device if device is None else resolve_device(device)
        query = Query(int(num_matches), inversion_symmetry, refine,
                      self.config.margin_deg if min_angle_deg is None else float(min_angle_deg))
        return map_tokens(tokens, Network(self.model, device, self.precision), phases or self.phases, config or self.config,
                          query,
                          batch_size or default_batch_size(device))

    def _match(self, bragg_peaks, num_matches, min_angle_deg, min_number_peaks, inversion_symmetry, progress_bar,
               batch_size, device, chunk_size, refine, self_calibrate=True, client=None, neighbours=True):
        """(one OrientationMap per phase, phase probability (Rx, Ry, P))."""
        from .distributed import MapJob, map_job_tokens, map_scan_distributed

        peaks = as_peaks_source(bragg_peaks)
        if len(peaks.scan_shape) != 2:
            raise ValueError(f"expected a 2-D scan, got scan shape {peaks.scan_shape}")
        if chunk_size is None or int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        chunk_size = int(chunk_size)
        asked, device = device, self.device if device is None else resolve_device(device)
        K = Query(int(num_matches), inversion_symmetry).num_matches  # checked before any work
        if not refine:
            self._warn_if_uncalibrated(refine=False)
        self.phases  # built first: the self-calibration and the detector's reach use them
        measured = SelfCalibration(note="self-calibration: off (self_calibrate=False)")
        if progress_bar:
            from tqdm.auto import tqdm
            tqdm.write(self.voltage_note)
        if self_calibrate:
            measured = self.measure_calibration(peaks, batch_size, device)
            if progress_bar:
                tqdm.write(measured.note)
            if measured.applied:
                peaks = with_correction(peaks, measured.matrix)
        self.self_calibration = measured
        phases = phases_within_reach(self.phases, measured, self.self_calibration_config)
        # on a cluster each worker picks its own device (its GPU, else CPU) unless this call asked for one
        job = MapJob(K, inversion_symmetry, refine, min_angle_deg, batch_size,
                     None if client is not None and asked is None else str(device), measured)
        workers = 1 if client is not None else resolve_workers(self.workers, device, peaks.num_positions)
        if client is not None:
            matrix, corr, probability, counts = map_scan_distributed(client, self, job, peaks, chunk_size, progress_bar)
        elif workers > 1:  # this machine's processes, as a Dask cluster: the same path as client=
            if refine and self.calibrated_confidence and self.calibration is not None and self.config.search is not None:
                for phase in phases:  # built once here; forked workers inherit it (copies share the cache)
                    phase.library(self.config.search, self.config.score)
            handle = Inherited(self)
            try:
                with local_client(workers) as local:
                    matrix, corr, probability, counts = map_scan_distributed(
                        local, self, job, peaks, local_chunk_size(peaks.num_positions, workers, chunk_size),
                        progress_bar, shipped=handle)
            finally:
                handle.release()
        else:
            matrix, corr, probability, counts = map_scan(
                peaks, self.token_config, lambda tokens: map_job_tokens(self, job, tokens, phases), (self.n_phases, K),
                chunk_size, progress_bar)
        weights = phase_weights(probability, self.config.phase_power)  # (B, P): corr = confidence x weight
        look = None
        calibration = self.calibration if self.calibrated_confidence else None
        if neighbours and refine and calibration is not None and self.neighbour_config is not None:
            query = Query(K, inversion_symmetry, True, self.config.margin_deg if min_angle_deg is None else float(min_angle_deg))
            look = second_look(peaks, self.token_config, phases, self.config, self.neighbour_config, query, calibration,
                               matrix, corr, probability, counts, device, batch_size or default_batch_size(device),
                               chunk_size, progress_bar, min_number_peaks)
            if progress_bar:
                tqdm.write(f"second look: {look['looked']} of {look['unsure']} unsure positions had sure neighbours "
                           f"of another orientation; {look['changed']} changed")
        corr[counts < min_number_peaks] = 0.0  # too few peaks: no match
        corr *= weights[:, :, None]
        Rx, Ry = peaks.scan_shape
        maps = [self._orientation_map(p, matrix[:, p].reshape(Rx, Ry, K, 3, 3), corr[:, p].reshape(Rx, Ry, K))
                for p in range(self.n_phases)]
        for m in maps:
            m.self_calibration, m.second_look = measured, look
        return maps, probability.reshape(Rx, Ry, self.n_phases)

    def __getstate__(self):
        """Pickled (e.g. to Dask workers) without the per-phase physics and its caches: rebuilt where it lands."""
        state = dict(self.__dict__)
        state.pop("phases", None)
        return state

    def measure_calibration(self, bragg_peaks, batch_size: Optional[int] = None, device=None) -> SelfCalibration:
        """The scan-wide Q pixel-size and ellipse error of ``bragg_peaks`` (BraggVectors or Peaks), measured on a
        sample of its patterns (:func:`.selfcal.self_calibrate`, settings ``self.self_calibration_config``);
        nothing is mapped beyond the sample and nothing is changed."""
        peaks = as_peaks_source(bragg_peaks)
        if not isinstance(peaks, Peaks):  # a file: read only the positions the measurement maps
            peaks = sampled_peaks(peaks, self.self_calibration_config)
        device = self.device if device is None else resolve_device(device)
        calibration = self.calibration if self.calibrated_confidence else None

        quick = self.config.replace(search=None)  # the sure patterns are sure without the library

        def best_matches(tokens):
            mapped = self.map_tokens(tokens, 1, True, True, None, batch_size, device, config=quick)
            sure = torch.from_numpy(mapped.confidence(calibration)[:, :, 0] * mapped.probability)  # (b, P)
            confidence, phase = sure.max(1)
            matrix = torch.from_numpy(mapped.matrix[np.arange(len(tokens)), phase.numpy(), 0])
            return matrix, confidence, phase

        return measure_correction(peaks, self.token_config, best_matches, self.phases,
                                  self.config.score.sigma_excitation_error, self.self_calibration_config)

    def _orientation_map(self, phase: int, matrix: np.ndarray, corr: np.ndarray):
        crystal = self.crystals[phase]
        ensure_plan(crystal, self.accel_voltage, float(self.model.metadata.get("k_max", self.token_config.k_max)))
        crystal.orientation_map = build_orientation_map(crystal, matrix, corr, self.phases[phase].rotations)
        return crystal.orientation_map

    def _warn_if_uncalibrated(self, refine: bool) -> None:
        fitted = self.calibration.fitted_on.get("map_config") if self.calibration is not None else None
        message = uncalibrated_warning(fitted, self.config, refine) if self.calibrated_confidence else None
        if message:
            warnings.warn(message, stacklevel=3)
