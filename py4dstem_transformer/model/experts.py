"""A joint phase model with an orientation network per phase: :func:`with_experts`.

A network trained on several phases at once can read one of them less precisely than a network of the same size
trained on that phase alone (docs/benchmarks.md, "A Cu2O network of its own": the shared network reads Cu as well
as the Cu model does, Cu2O far worse). :func:`with_experts` keeps the joint network for what it does well, naming
the phase and reading the phases it reads well, and gives the others a single-phase model of their own for the
orientation (:class:`~.model.OrientationModel`'s ``experts``). The mapper then takes each phase's hypotheses from
that phase's expert; everything after the network (refinement, scoring, confidence) is unchanged.

The pieces must have been made for the same data: each expert for its phase's crystal, all with the joint model's
token settings, ``k_max`` and training voltage. The result carries no confidence calibration and no voltage
validation (its answers are new): ``py4dstem-transformer calibrate`` and ``validate-voltages`` it before use.
"""

from __future__ import annotations

import copy
from typing import Mapping, Optional, Sequence, Union

from ..core.crystal import crystal_from_metadata, phase_metadata
from .model import OrientationModel

__all__ = ["with_experts", "STALE_KEYS"]

#: Metadata of the joint model that no longer holds once its orientations come from the experts.
STALE_KEYS = ("confidence_calibration", "voltage_validation")

#: Metadata that must agree between the joint model and every expert (the tokens they read, the beam they saw).
_SHARED_KEYS = ("token_config", "k_max", "accel_voltage")


def with_experts(joint: OrientationModel,
                 experts: Union[Mapping[str, OrientationModel], Sequence[Optional[OrientationModel]]]) -> OrientationModel:
    """A copy of the joint phase model ``joint`` whose phases take their orientation from ``experts``.

    Parameters
    ----------
    joint : OrientationModel
        A joint phase model (``config.n_phases >= 2``, metadata ``"phases"``); its network names the phase and reads
        the orientation of the phases without an expert.
    experts : {phase name: OrientationModel} or a sequence with one entry per phase (an OrientationModel or None)
        Single-phase models, each trained for its phase's crystal with the same token settings, ``k_max`` and
        voltage. Experts the joint model already carries are replaced (a phase left out gets none).

    Returns
    -------
    OrientationModel
        New (the arguments are not modified), in eval mode, without ``joint``'s confidence calibration and voltage
        validation (:data:`STALE_KEYS`); its metadata ``"experts"`` says where each expert came from.

    Raises
    ------
    ValueError
        Where the pieces do not fit together; the message names the phase and what differs.
    """
    phases = phase_metadata(joint.metadata)
    names = [p.get("name", "?") for p in phases]
    if joint.config.n_phases < 2 or "phases" not in joint.metadata:
        raise ValueError("experts belong to a joint phase model (trained on two or more crystals); this model maps "
                         "one phase: use the single-phase model itself")
    if isinstance(experts, Mapping):
        unknown = sorted(set(experts) - set(names))
        if unknown:
            raise ValueError(f"no phase named {unknown} in the joint model; its phases are {names}")
        experts = [experts.get(name) for name in names]
    experts = list(experts)
    if len(experts) != len(phases):
        raise ValueError(f"the joint model maps {len(phases)} phases {names}: give one entry per phase, in this order, "
                         f"an expert or None (got {len(experts)})")
    if all(e is None for e in experts):
        raise ValueError(f"no expert given for any of the phases {names}")
    for phase, expert in zip(phases, experts):
        if expert is not None:
            _check_expert(phase, expert, joint.metadata)
    metadata = {k: copy.deepcopy(v) for k, v in joint.metadata.items() if k not in STALE_KEYS}
    metadata["experts"] = [None if e is None else _provenance(phase, e) for phase, e in zip(phases, experts)]
    combined = OrientationModel(joint.config, metadata, [copy.deepcopy(e) for e in experts])
    own = {k: v for k, v in joint.state_dict().items() if not k.startswith("experts.")}
    combined.load_state_dict({**combined.state_dict(), **own})
    combined.history = copy.deepcopy(joint.history)
    return combined.eval()


def _check_expert(phase: dict, expert: OrientationModel, joint_metadata: dict) -> None:
    name = phase.get("name", "?")
    if not isinstance(expert, OrientationModel) or expert.config.n_phases != 1 or "phases" in expert.metadata:
        raise ValueError(f"the expert for phase {name!r} must be a single-phase model (trained on {name} alone)")
    if expert.experts is not None:
        raise ValueError(f"the expert for phase {name!r} carries experts of its own; pass a plain single-phase model")
    if "crystal" not in expert.metadata:
        raise ValueError(f"the expert for phase {name!r} records no crystal; pass a model trained by this package")
    try:  # lattice within 2%, frame and composition: the mapper's own check of a user's Crystal
        from ..io.compatibility import check_crystal_matches_model

        check_crystal_matches_model(crystal_from_metadata(expert.metadata), phase)
    except ValueError as err:
        raise ValueError(f"the expert for phase {name!r} was trained for another crystal: {err}") from err
    for key in _SHARED_KEYS:
        if expert.metadata.get(key) != joint_metadata.get(key):
            raise ValueError(f"the expert for phase {name!r} was trained with {key} = {expert.metadata.get(key)!r}, "
                             f"the joint model with {joint_metadata.get(key)!r}; train the expert with the joint "
                             f"model's settings")


def _provenance(phase: dict, expert: OrientationModel) -> dict:
    """What the model card needs of an expert: its training, from its own metadata and history."""
    meta, history = expert.metadata, expert.history or {}
    medians = history.get("val_median_deg") or []
    return {"phase": phase.get("name"), "parameters": expert.num_parameters,
            "training_set_size": meta.get("training_set_size"), "train_config": copy.deepcopy(meta.get("train_config")),
            "initialized_from": copy.deepcopy(meta.get("initialized_from")),
            "steps": (history.get("step") or [0])[-1], "best_validation_median_deg": min(medians) if medians else None}

