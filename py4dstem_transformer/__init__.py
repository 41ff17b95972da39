"""py4DSTEM-transformer: crystal orientation maps from 4D-STEM Bragg disks with a transformer.

Importing the package registers ``Crystal.generate_training_set`` on py4DSTEM's ``Crystal`` and
``DataCube.find_Bragg_disks_batched`` on its ``DataCube``.

Public names: :class:`TransformerOrientationMap` (the drop-in for ``crystal.match_orientations``),
:class:`TrainingSet`, :func:`generate_training_set`, :func:`train`, :class:`OrientationModel`,
:func:`with_experts`, :func:`list_pretrained`, :func:`simulate_scan`, :func:`find_bragg_disks`.
"""

from ._version import __version__
from .detection.finder import find_bragg_disks, register as _register_finder
from .mapping.mapper import TransformerOrientationMap
from .model.experts import with_experts
from .model.model import ModelConfig, OrientationModel
from .pretrained import list_pretrained
from .simulation.scan import simulate_scan
from .simulation.simulate import generate_training_set, register as _register
from .training.trainer import train
from .simulation.training_set import TrainingSet

_register()
_register_finder()

__all__ = [
    "__version__",
    "TransformerOrientationMap",
    "TrainingSet",
    "generate_training_set",
    "train",
    "OrientationModel",
    "ModelConfig",
    "with_experts",
    "list_pretrained",
    "simulate_scan",
    "find_bragg_disks",
]
