"""Models shipped with the package, trained by the project's own commands (model cards: docs/models.md).

Each entry is a checkpoint file in this folder, loaded with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["list_pretrained", "load_pretrained", "pretrained_path", "load_model"]

_HERE = Path(__file__).resolve().parent

#: name -> (file, one-line description)
REGISTRY = {
    "Cu": ("cu.pt", "fcc Cu (Fm-3m, a = 3.615 A), trained at 300 kV (maps 30-300 kV), k_max 2.1 1/A; Bloch-wave, "
           "kinematic and precessed patterns, 10-2000 A thick; searches the library candidates of sure patterns "
           "that leave disks off their lattice, too (search_off_lattice=0.03)"),
    "Cu+Cu2O": ("cu_cu2o.pt", "joint phase + orientation: Cu (Fm-3m, a = 3.615 A) and Cu2O (Pn-3m, a = 4.2696 A), "
                "trained at 300 kV (maps 30-300 kV), k_max 2.1 1/A; Bloch-wave, kinematic and precessed patterns, "
                "10-2000 A thick; searches every pattern's library candidates (search_confidence=1); Cu2O's "
                "orientation read by a Cu2O network of its own (an expert)"),
}


def list_pretrained(verbose: bool = False):
    """Names of the shipped models (with ``verbose``, a dict name -> description)."""
    available = {name: desc for name, (file, desc) in REGISTRY.items() if (_HERE / file).exists()}
    return available if verbose else sorted(available)


def pretrained_path(name: str) -> Path:
    if name not in REGISTRY or not (_HERE / REGISTRY[name][0]).exists():
        raise ValueError(f"no pretrained model named {name!r}; available: {list_pretrained()}")
    return _HERE / REGISTRY[name][0]


def load_pretrained(name: str):
    """The shipped :class:`~py4dstem_transformer.model.model.OrientationModel` called ``name``."""
    from ..model.model import OrientationModel

    return OrientationModel.load(pretrained_path(name))


def load_model(model):
    """``model`` itself if it is an :class:`~py4dstem_transformer.model.model.OrientationModel`; else the model file at
    that path where one exists, or else the shipped model of that name. One rule for every entry point (the mapper's
    constructor and ``from_model``, ``train``'s ``init_weights``, the command line's ``--model`` / ``--init`` /
    ``combine``), so a file named like a shipped model is read as the file everywhere. Neither a file nor a shipped name: a ``FileNotFoundError`` that lists the shipped
    names."""
    from ..model.model import OrientationModel

    if isinstance(model, OrientationModel):
        return model
    path = Path(model)
    if path.is_file():
        return OrientationModel.load(path)
    if str(model) in list_pretrained():
        return load_pretrained(str(model))
    raise FileNotFoundError(f"no model file {str(model)!r} (from {Path.cwd()}) and no shipped model of that name; "
                            f"shipped models: {list_pretrained()}")
