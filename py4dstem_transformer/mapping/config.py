"""Every setting that changes a mapped answer, as frozen dataclasses (lengths in 1/A, angles in deg).

:class:`MapConfig` gathers them; a mapper holds one, and ``py4dstem-transformer calibrate`` stores the
one it fitted the confidence under beside the calibration in the model file
(:class:`~.confidence.Calibration` ``fitted_on["map_config"]``): a mapper for that model starts from
those settings (:func:`calibrated_config`), and mapping under others says so instead of reporting an
uncalibrated ``corr``. Settings that change only the speed (batch
and chunk sizes, workers, device) are not here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

__all__ = ["ScoreConfig", "RefineConfig", "PolishConfig", "TurnConfig", "SearchConfig", "TieBreakConfig", "MapConfig",
           "Query", "config_differences", "with_defaults", "uncalibrated_warning", "calibrated_config"]


@dataclass(frozen=True)
class ScoreConfig:
    """How a candidate's kinematic disks are simulated and correlated with the observed ones."""

    sigma_excitation_error: float = 0.03  # excitation-error width (1/A); wider than py4DSTEM's 0.02, as
    # Bloch-wave intensities spread further from the Bragg condition. 0.04 until 2026-12-02: on py4DSTEM's
    # Bloch-wave patterns (check seed 7, never a benchmark's) 0.03 took LiFePO4 from 88.3% to 96.7% strict
    # (a large cell: wider, it scores the beam-flip partner as well as the truth) and left Cu within a point in
    # eight conditions. A model keeps the width its confidence was calibrated under (the shipped ones: 0.04).
    kernel: float = 0.03  # positional tolerance (1/A): the Gaussian width of every disk
    power: float = 0.25  # intensities enter as I ** power (a low power scores which disks are present)
    disks_extra: int = 8  # simulated disks scored per candidate: the pattern's own count + this ...
    disks_min: int = 16  # ... but at least this many ...
    disks_max: int = 48  # ... and at most this many (all of them for a sparse pattern, TurnConfig.max_disks)


@dataclass(frozen=True)
class RefineConfig:
    """Settings of :func:`~.refine.refine_orientations` (lengths in 1/A)."""

    iterations: int = 4
    radii: tuple = (0.12, 0.07, 0.04, 0.03)  # assignment radius per iteration (last one repeats)
    sigma_position: float = 0.01  # expected error of a disk position (upper bound of the estimate)
    sigma_position_floor: float = 0.002  # lower bound of the per-pattern estimate (~0.1 px centroids)
    sigma_log_intensity: float = 1.0  # expected error of ln I against the kinematic law ...
    intensity_noise_power: float = 0.0  # ... times (sigma_position / position noise) ** this: the intensities,
    # whose kinematic law pulls the tilt on Bloch-wave data, count less where the disks are precisely placed and as
    # before where they are jittery (0: always as before). 1 measured on py4DSTEM's patterns (seeds 11/12, 2026-12-04,
    # docs/benchmarks.md): median error 0.25 -> 0.03 deg, strict +1.5 (Cu2O) / +1.0 (Cu) points mean over four
    # conditions, damaged patterns of our simulator -0.5. But all of that on disks exactly where py4DSTEM puts them:
    # with 0.2 px of position noise, as a disk finder places disks, 1 lost 1-9 points (the Cu model and both phases of
    # the joint one, seeds 11/12, docs/benchmarks.md "Disk positions as a disk finder places them"), so neither
    # shipped model uses it (both did for a day, 2026-12-04). Mapper keyword / calibrate flag of this name
    intensity_noise_max_disks: int = 0  # ... and only for candidates with at most this many disks assigned (0: all;
    # the Cu model used 12, TurnConfig.max_disks's line between sparse and rich patterns, while it used the weight)
    intensity_weight_power: float = 0.5  # weight each disk's intensity residual by I ** power
    tau_prior_weight: float = 0.01  # how firmly the excitation width stays at sigma_excitation
    sigma_excitation: float = 0.02  # initial excitation-error width of the fitted intensity law (1/A);
    # not ScoreConfig.sigma_excitation_error, which is fixed
    candidate_sigma: float = 0.05  # wider window for the reflections disks may be assigned to

    max_reflections: int = 64
    subset_reflections: int = 96  # reflections kept per candidate for the whole fit (0: all, every iteration)
    subset_margin: float = 0.1  # widening (1/A) of the excitation window they are chosen in
    damping: float = 1e-3
    max_step_deg: float = 3.0
    fit_origin: bool = True  # fit each candidate's origin error (a shift of all its disks) alongside
    sigma_origin: float = 0.03  # expected origin error (1/A, ~1.7 px at 0.0175 1/A per px): the prior's width


@dataclass(frozen=True)
class PolishConfig:
    """Settings of :func:`~.polish.polish_orientations`, the pattern search on the score."""

    steps_deg: tuple = (1.0, 0.5, 0.25, 0.12)  # step sizes of the pattern search (deg), coarse to fine
    repeats: int = 2  # moves tried per step size
    reflections: int = 64  # reflections kept per candidate, at most
    extra_reflections: int = 24  # and at most this many more than the score keeps (``max_disks``)
    window_margin: float = 0.04  # widening (1/A) of the excitation and radial windows for those
    min_position_noise: float = 0.004  # patterns whose disks the refinement fits better (1/A) are left as they are ...
    sparse_disks: int = 0  # ... unless they have at most this many disks (0: never). On sparse patterns the refinement
    # can fit a disk finder's noise (few disks, as many parameters), its noise estimate then sits at the floor, and the
    # tilt it settles on is the noise's; the score's pattern search does not chase it. Opt-in (2026-12-04, sixth
    # session): 12 with min_position_noise 0.0021 measured on py4DSTEM's patterns with 0.2 px of position noise
    # (docs/benchmarks.md, "Polishing the patterns a disk finder's noise misleads"); both shipped models are calibrated
    # under that (the joint one since the seventh session). Mapper keyword ``polish_sparse_disks``
    tie_margin: float = 0.0  # ... unless their best two distinct candidates (more than MapConfig.margin_deg apart)
    # score within this of each other (0: never). Such a near tie is decided by how far each fit happened to stop:
    # on py4DSTEM's Bloch-wave Cu2O patterns the refinement left the true orientation ~1.5 deg off where its beam
    # flip scored a hair higher; polishing both decides on the score at its best. Opt-in: 0.03 measured within the
    # noise on py4DSTEM's patterns (Cu2O +0.4 points mean, Cu -1.6 to +2.3 by condition, 1.1-1.5x the time;
    # docs/benchmarks.md, 2026-12-04), so neither shipped model uses it.


@dataclass(frozen=True)
class TurnConfig:
    """The wider search for sparse patterns: their input turned in-plane by k * 180 / ``turns`` deg.

    Patterns with ``min_disks`` to ``max_disks`` disks whose first answer has a calibrated confidence
    below ``confidence`` (1: always) are predicted again from their turned input, and every distinct
    answer is refined (only with ``refine=True``). ``turns=2`` maps ~25% faster and gets 1-3% fewer of the
    sparse patterns right; from fewer than ``min_disks`` disks the turns find no better answer
    (docs/benchmarks.md).
    """

    max_disks: int = 12
    turns: int = 4
    confidence: float = 0.85
    min_disks: int = 4


@dataclass(frozen=True)
class ArbiterConfig:
    """Settings of the ``arbitrate`` stage (:mod:`.arbiter`): a near tie between a pattern's best candidate and its
    best distinct rival is decided by which one's intensity profile fits the disks better."""

    tie: float = 0.0  # rivals scoring within this of the best are compared (0: never, the behaviour before it).
    # 0.05 on py4DSTEM's exactly placed disks (seeds 11/12, 2026-12-04, docs/benchmarks.md): Cu2O +0.5 to +4 points,
    # Cu level; with a disk finder's position noise it loses (-1 to -3), so no shipped model uses it. Mapper keyword
    # intensity_tie; calibrate --intensity-tie
    power: float = 0.25  # intensities enter the Pearson correlation as I ** power
    sigma_excitation_error: float = 0.03  # reflections with |s_g| <= 3 sigma (1/A) make the profile
    radius: float = 0.03  # an observed disk belongs to the nearest reflection within this (1/A)
    thickness: tuple = (20.0, 2000.0)  # foil thicknesses (A) the profile is fitted over, log-spaced ...
    thicknesses: int = 40  # ... this many
    max_reflections: int = 64  # brightest reflections per candidate
    margin: float = 0.0  # the rival must fit better by more than this
    max_residual: float = 1.0  # and both must place the pattern's disks within this RMS distance (1/A) of their
    # reflections
    min_disks: int = 12  # patterns with fewer disks are not compared: a sparse pattern's profile says little (the
    # joint model's Cu on seeds 11/12, bright-only and detector-edge patterns: -0.75 to -2.25 points compared on every
    # pattern, -0.0 to +0.75 from 12 disks). 12 is TurnConfig.max_disks's line between sparse and rich patterns


@dataclass(frozen=True)
class TieBreakConfig:
    """Settings of the ``tiebreak`` stage (:mod:`.tiebreak`): a near tie between a pattern's best candidate and its best
    distinct rival decided by a second correlation with ACOM's settings (py4DSTEM's ``orientation_plan`` defaults:
    ``corr_kernel_size`` 0.08, ``sigma_excitation_error`` 0.02, ``power_radial`` 1, ``power_intensity`` 0.25)."""

    tie: float = 0.0  # rivals scoring within this of the best are compared (0: never, the behaviour before it). 0.02 in
    # the joint Cu / Cu2O model since 2026-12-05 (docs/benchmarks.md, "Near ties decided the way ACOM scores"): on
    # py4DSTEM's patterns (tuning seeds 11-15, 15 runs) its Cu2O +1.6 points (108 patterns gained, 39 lost), its Cu
    # -0.5 (7 runs; 30 gained, 40 lost); the Cu model level (22 / 23), so it does not use it. Mapper keyword acom_tie;
    # calibrate --acom-tie
    kernel: float = 0.08  # Gaussian width (1/A) of every disk: ACOM's corr_kernel_size
    sigma_excitation_error: float = 0.02  # excitation-error width (1/A) of the simulated disks: ACOM's
    power: float = 0.25  # intensities enter as I ** power
    radial_power: float = 1.0  # and every disk's weight as |q| ** radial_power (ACOM's power_radial)
    disks: int = 64  # simulated disks per candidate, the brightest
    min_disks: int = 10  # patterns with fewer disks are not compared (on the tuning seeds, the only-bright-disks
    # patterns (5 disks) lost 1-6 points compared one and all)


@dataclass(frozen=True)
class SearchConfig:
    """The library search for unsure patterns (:mod:`.library`): patterns whose best match (calibrated
    confidence x phase probability) is below ``confidence`` also get the ``top`` best of ``size`` library
    orientations (``disks`` kinematic disks each, seed ``seed``, scored on a raster of ``step``) as hypotheses. Needs a calibration and
    ``refine=True``. So do sure patterns whose answer leaves more than ``off_lattice`` of their disks off its
    lattice (:mod:`.lattice_check`)."""

    confidence: float = 0.95  # 0.85 until 2026-12-03: 0.95 (recalibrated) gives corr ROC AUC 0.91 for 0.87 on
    # py4DSTEM-simulated Cu (mean of 8 conditions), the same accuracy, ~10% more time (docs/benchmarks.md);
    # 0.5 searches fewer patterns for 1-4 points less; >= 1 searches every pattern: ~2x the time, +0.02 AUC
    min_disks: int = 2  # patterns with fewer disks are not searched
    size: int = 20000
    disks: int = 32
    top: int = 4
    seed: int = 0
    step: float = 0.015  # raster step (1/A) the patterns are scored on (half the score's kernel)
    # a sure pattern is searched too where more than this share of its disks (I ** power-weighted) lies off its
    # answer's lattice (:mod:`.lattice_check`: further than twice the score's kernel from every reflection with
    # |s_g| <= 3 lattice_sigma): false disks, or a twin; >= 1: never (as before 2026-12-05)
    off_lattice: float = 1.0
    lattice_sigma: float = 0.04  # (1/A) the lattice check's excitation width: wider than the score's


@dataclass(frozen=True)
class MapConfig:
    """All answer-changing settings of the mapping."""

    score: ScoreConfig = field(default_factory=ScoreConfig)
    refine: RefineConfig = field(default_factory=RefineConfig)
    polish: Optional[PolishConfig] = field(default_factory=PolishConfig)  # None: no pattern search
    turns: TurnConfig = field(default_factory=TurnConfig)
    search: Optional[SearchConfig] = field(default_factory=SearchConfig)  # None: no library search
    arbiter: ArbiterConfig = field(default_factory=ArbiterConfig)  # near ties decided on intensity profiles
    tiebreak: TieBreakConfig = field(default_factory=TieBreakConfig)  # near ties decided the way ACOM scores
    repeat_deg: float = 1.5  # a hypothesis this close (symmetry and beam flip allowed) to an earlier one is not refined again
    margin_deg: float = 5.0  # the confidence's margin is over the best candidate further than this from the match
    min_phase_probability: float = 0.02  # phases less likely than this (network) are not refined or scored
    phase_power: float = 1.0  # each phase's corr is its confidence x (p / p of the network's favourite) ** this:
    # below 1 the disks' fit can overrule a network sure of the wrong phase (:func:`.confidence.phase_weights`). Which
    # phases are scored and which patterns are turned or searched still follow p itself.

    def __post_init__(self):
        if not self.phase_power >= 0:
            raise ValueError(f"phase_power must be >= 0 (1: the network's phase probability as it is), got {self.phase_power}")

    def to_dict(self) -> dict:
        """Plain nested dict (tuples as lists), for a model file's metadata."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, d: dict) -> "MapConfig":
        parts = {"score": ScoreConfig, "refine": RefineConfig, "polish": PolishConfig, "turns": TurnConfig, "search": SearchConfig,
                 "arbiter": ArbiterConfig, "tiebreak": TieBreakConfig}
        kw = {}
        for k, v in d.items():
            if k in parts:
                kw[k] = None if v is None else parts[k](**{f: tuple(x) if isinstance(x, list) else x for f, x in v.items()})
            else:
                kw[k] = v
        return cls(**kw)

    def replace(self, **keywords) -> "MapConfig":
        """A copy with settings changed by their flat names (:data:`KEYWORDS`: ``corr_power=0.5``,
        ``sparse_turns=2``, ``polish_config=None``, ...) or by their fields (``score=ScoreConfig(...)``);
        the fields are replaced first, so a flat name given with its field changes that field."""
        fields_, flat = {}, {}
        for name, value in keywords.items():
            if name in KEYWORDS and KEYWORDS[name][1] is not None:
                flat[name] = value
            elif name in KEYWORDS:
                fields_[KEYWORDS[name][0]] = value
            elif name in {f.name for f in dataclasses.fields(self)}:
                fields_[name] = value
            else:
                raise TypeError(f"unknown mapping setting {name!r}; the settings are {sorted(KEYWORDS)} and "
                                f"MapConfig's fields {[f.name for f in dataclasses.fields(self)]}")
        config = dataclasses.replace(self, **fields_)  # whole fields first, then the flat names change them
        for name, value in flat.items():
            part, attr = KEYWORDS[name]
            if getattr(config, part) is None:
                raise ValueError(f"{name}={value!r} sets {part}.{attr}, but {part} is None (off); pass {part}=... too")
            config = dataclasses.replace(config, **{part: dataclasses.replace(getattr(config, part), **{attr: value})})
        return config


#: The mapper's flat keyword names for MapConfig's settings: ``name -> (field, attribute or None)``.
KEYWORDS = {
    "sigma_excitation_error": ("score", "sigma_excitation_error"),
    "corr_kernel_size": ("score", "kernel"),
    "corr_power": ("score", "power"),
    "refine_config": ("refine", None),
    "polish_config": ("polish", None),
    "sparse_disks": ("turns", "max_disks"),
    "sparse_turns": ("turns", "turns"),
    "sparse_confidence": ("turns", "confidence"),
    "sparse_min_disks": ("turns", "min_disks"),
    "min_phase_probability": ("min_phase_probability", None),
    "phase_power": ("phase_power", None),
    "search_confidence": ("search", "confidence"),
    "search_off_lattice": ("search", "off_lattice"),
    "intensity_noise_power": ("refine", "intensity_noise_power"),
    "intensity_noise_max_disks": ("refine", "intensity_noise_max_disks"),
    "intensity_tie": ("arbiter", "tie"),
    "acom_tie": ("tiebreak", "tie"),
    "polish_sparse_disks": ("polish", "sparse_disks"),
    "polish_min_position_noise": ("polish", "min_position_noise"),
}


@dataclass(frozen=True)
class Query:
    """What one ``match_orientations`` call asks for (the py4DSTEM arguments that change the answer)."""

    num_matches: int = 1
    inversion_symmetry: bool = True  # the mirror partners compete for the 3rd and 4th matches
    refine: bool = True  # refine (and polish) every candidate against the disks
    min_angle_deg: float = 5.0  # matches of one pattern are at least this far apart (after symmetry)

    def __post_init__(self):
        available = 4 if self.inversion_symmetry else 2
        if not 1 <= self.num_matches <= available:
            raise ValueError(
                f"num_matches_return must be between 1 and {available} (the prediction and its near-ambiguous "
                f"partners{'' if self.inversion_symmetry else '; pass inversion_symmetry=True for the mirror partners'})")


def calibrated_config(fitted: Optional[dict]) -> MapConfig:
    """The settings a model's confidence was calibrated under (its calibration's ``fitted_on["map_config"]``), the
    mapper's defaults for that model; ``MapConfig()`` where none was recorded or the record is of settings this
    version does not have (an older file: its ``corr`` is then reported as uncalibrated where they differ)."""
    if fitted is None:
        return MapConfig()
    try:
        return MapConfig.from_dict(fitted)
    except (TypeError, ValueError, AttributeError):
        return MapConfig()


def uncalibrated_warning(fitted: Optional[dict], config: MapConfig, refine: bool = True) -> Optional[str]:
    """The warning due where a confidence calibration fitted under the :meth:`MapConfig.to_dict` ``fitted``
    (always with ``refine=True``) is applied under ``config`` and ``refine``; None where they agree or
    nothing was recorded. A setting newer than the record counts at its default, which is by rule the
    behaviour before it existed."""
    if fitted is None:
        return None
    changed = config_differences(with_defaults(fitted), config.to_dict()) + ([] if refine else ["refine: True -> False"])
    if changed:
        return (f"corr was calibrated under other mapping settings ({'; '.join(changed)}); under these it is no "
                f"calibrated probability, only a ranking. Recalibrate (py4dstem-transformer calibrate) or pass "
                f"calibrated_confidence=False")
    return None


def with_defaults(fitted: dict, defaults: Optional[dict] = None) -> dict:
    """``fitted`` (a :meth:`MapConfig.to_dict`, maybe of an older version) with the settings it lacks at this
    version's defaults; a part that is off (None) stays off."""
    defaults = MapConfig().to_dict() if defaults is None else defaults
    out = dict(fitted)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = with_defaults(out[key], value)
    return out


def config_differences(fitted: dict, used: dict, prefix: str = "") -> list:
    """``["score.power: 0.25 -> 0.5", ...]``: the settings of two :meth:`MapConfig.to_dict` that differ."""
    out = []
    for key in sorted(set(fitted) | set(used)):
        a, b = fitted.get(key), used.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a} -> {b}")
    return out


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
