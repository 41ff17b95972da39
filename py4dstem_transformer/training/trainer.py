"""``train``: fit an :class:`OrientationModel` to a training set, on a CPU or a GPU.

AdamW (no weight decay on biases and norms), linear warm-up then cosine decay, gradient clipping,
on-the-fly augmentation, validation on held-out zone axes, best-on-validation weights kept,
checkpoints every few hundred steps that resume bit-for-bit (every random draw is seeded from the
run seed and the step or epoch, never from hidden global state).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .augment import AugmentConfig, augment, rotate_in_plane
from ..io.checkpoint import load_checkpoint, pack_history, save_checkpoint, unpack_history
from ..core.crystal import CrystalIdentity
from .data import PatternStore, bucketed_batches, seeded_generator, split_by_zone_axis
from ..core.device import autocast, autocast_dtype, resolve_device
from ..core.defaults import K_MAX_MARGIN
from ..model.loss import orientation_loss, total_loss
from ..model.model import ModelConfig, OrientationModel
from ..simulation.phases import PhaseTrainingSet, as_phase_sets, padded_symmetry, phase_symmetries
from ..model.tokens import TokenConfig, tokenize

__all__ = ["TrainConfig", "train", "model_metadata", "plot_history", "validation_by_phase"]


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _positive(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and bool(np.isfinite(x)) and x > 0


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (saved in checkpoints). See :func:`train` for their meaning."""

    epochs: Optional[int] = None
    max_minutes: Optional[float] = None
    batch_size: int = 256
    lr: float = 1e-3
    warmup: int = 300  # steps
    min_lr_fraction: float = 0.02
    weight_decay: float = 0.01
    adam_beta1: float = 0.9  # AdamW's moment decay rates
    adam_beta2: float = 0.99
    grad_clip: float = 1.0
    val_fraction: float = 0.05
    val_max_patterns: int = 4096
    val_every: int = 250  # steps
    checkpoint_every: int = 250  # steps
    seed: int = 0
    beam_flip_loss: bool = True
    precision: Optional[str] = None  # None: bf16 where fast (CUDA, AMX / AVX-512-BF16 CPUs), else fp32

    def __post_init__(self):
        def need(ok, name, what):
            if not ok:
                raise ValueError(f"{name} = {getattr(self, name)!r}: {what}")

        need(self.epochs is None or (_is_int(self.epochs) and self.epochs >= 0), "epochs",
             "pass a whole number of passes >= 1 (0 builds the model without training it; None: max_minutes)")
        need(self.max_minutes is None or _positive(self.max_minutes), "max_minutes", "pass minutes > 0 (or None)")
        need(_is_int(self.batch_size) and self.batch_size >= 1, "batch_size", "pass a number of patterns >= 1")
        need(_positive(self.lr), "lr", "the learning rate must be a finite number > 0 (e.g. 1e-3)")
        need(_is_int(self.warmup) and self.warmup >= 0, "warmup", "pass a number of steps >= 0")
        need(np.isfinite(self.val_fraction) and 0 <= self.val_fraction < 1, "val_fraction",
             "the fraction of zone axes held out must be in [0, 1)")
        for name in ("val_every", "checkpoint_every", "val_max_patterns"):
            need(_is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "pass a whole number >= 1")


def train(
    training_set,
    *,
    epochs: Optional[int] = None,
    max_minutes: Optional[float] = None,
    batch_size: int = 256,
    lr: float = 1e-3,
    warmup: int = 300,
    device=None,
    val_fraction: float = 0.05,
    checkpoint_dir=None,
    resume: bool = False,
    seed: int = 0,
    progress_bar: bool = True,
    model_config: Optional[ModelConfig] = None,
    augment_config: Optional[AugmentConfig] = None,
    token_config: Optional[TokenConfig] = None,
    precision: Optional[str] = None,
    init_weights=None,
    **options,
) -> OrientationModel:
    """Train an orientation model on ``training_set`` and return it (best validation weights).

    Parameters
    ----------
    training_set : TrainingSet, PhaseTrainingSet or list of TrainingSet
        From ``crystal.generate_training_set(...)`` or ``TrainingSet.load(path)``. Several phases
        (a :class:`~py4dstem_transformer.simulation.phases.PhaseTrainingSet` or a list, one set per phase)
        train a joint model with a phase head; each phase's loss uses its own point group.
    epochs, max_minutes : optional
        Stop after this many passes over the training patterns, or this much wall time (the
        learning-rate schedule then follows the elapsed time). Neither given: 30 minutes.
        ``epochs=0`` returns the initial model (e.g. ``init_weights`` copied in) untrained.
    batch_size, lr, warmup
        Patterns per step, peak AdamW learning rate, warm-up steps.
    device : str or torch.device, optional
        Default: CUDA if available, else CPU.
    val_fraction : float
        Fraction of zone axes held out for validation (split by zone axis, never by pattern).
    checkpoint_dir : path, optional
        Where ``last.pt`` (resumable state) and ``best.pt`` (best model) are written.
    resume : bool
        Continue from ``checkpoint_dir/last.pt``; the run then ends exactly where an uninterrupted
        run with the same seed ends.
    seed : int
        Same seed, same data, same device -> same weights.
    progress_bar : bool
        Show a tqdm bar with the loss and the validation error.
    model_config, augment_config, token_config : optional
        Architecture, augmentation and token settings; defaults suit a CPU.
    precision : {"bf16", "fp32"}, optional
        Autocast dtype; default bf16 where it is fast, else fp32.
    init_weights : OrientationModel, path or a shipped model's name, optional
        Start from this model's weights (fine-tuning, e.g. a joint phase model from a single-phase
        one). Layers whose shapes differ (such as a new phase head) start fresh; the architecture
        must otherwise match ``model_config``.
    **options
        Any other :class:`TrainConfig` field (``val_every``, ``checkpoint_every``, ...).

    Returns
    -------
    OrientationModel in eval mode, with ``model.history`` (loss and validation curves) and
    ``model.metadata`` (crystal, voltage, token settings, symmetry...).
    """
    if epochs is None and max_minutes is None:
        max_minutes = 30.0
    if isinstance(training_set, (list, tuple)):
        training_set = training_set[0] if len(training_set) == 1 else PhaseTrainingSet(training_set)
    _check_training_set(training_set)
    config = TrainConfig(epochs=epochs, max_minutes=max_minutes, batch_size=batch_size, lr=lr, warmup=warmup,
                         val_fraction=val_fraction, seed=seed, precision=precision, **options)
    token_config = token_config or TokenConfig(k_max=float(training_set.config.k_max) * K_MAX_MARGIN)
    n_phases = len(as_phase_sets(training_set))
    model_config = model_config or ModelConfig(k_max=token_config.k_max, n_phases=n_phases)
    if model_config.n_phases != n_phases:
        raise ValueError(f"model_config.n_phases = {model_config.n_phases} but the training set has {n_phases} "
                         "phase(s); leave n_phases at its default or set it to the number of phases")
    run = _Run(training_set, config, model_config, augment_config or AugmentConfig(k_max=token_config.k_max),
               token_config, resolve_device(device), checkpoint_dir)
    if init_weights is not None:
        run.initialize_from(init_weights)
    if resume:
        run.restore()
    return run.fit(progress_bar)


def _check_training_set(training_set) -> None:
    """A clear error for what ``train`` cannot learn from: not a training set, or one without patterns."""
    if not (hasattr(training_set, "config") and hasattr(training_set, "offsets") and hasattr(training_set, "__len__")):
        raise TypeError(f"training_set must be a TrainingSet (generate_training_set, or TrainingSet.load(path) for a "
                        f"file), a PhaseTrainingSet or a list of them; got {type(training_set).__name__}")
    if len(training_set) == 0:  # (a PhaseTrainingSet refuses an empty phase itself)
        raise ValueError("the training set holds no patterns; simulate some first (generate_training_set with more "
                         "zone axes, or a larger k_max)")


def model_metadata(training_set, token_config: TokenConfig, symmetry) -> dict:
    """What a model needs to know about the data it was trained on (plain Python values).

    ``symmetry``: the (K, 3, 3) group, or a list of groups (one per phase). A single phase gives
    the crystal's entries at the top level; several phases give ``"phases"``, a list of them (each
    with its ``"name"``), and the shared voltage, k_max and token settings at the top level.
    """
    sets = as_phase_sets(training_set)
    groups = list(symmetry) if isinstance(symmetry, (list, tuple)) else [symmetry]
    phases = [_phase_metadata(ts, g) for ts, g in zip(sets, groups)]
    common = {
        "accel_voltage": float(training_set.config.accel_voltage),
        "k_max": float(training_set.config.k_max),
        "token_config": token_config.to_dict(),
        "training_set_size": len(training_set),
    }
    if len(sets) == 1:
        return {**phases[0], **common}
    for phase, name in zip(phases, training_set.names):
        phase["name"] = name
    return {**common, "phases": phases}


def _phase_metadata(training_set, symmetry: torch.Tensor) -> dict:
    cfg = training_set.config
    thickness = np.asarray(training_set.thickness, dtype=float)
    return {
        "crystal": CrystalIdentity.from_crystal(training_set.crystal()).to_dict(),
        "thickness_range": [float(np.nanmin(thickness)), float(np.nanmax(thickness))] if np.isfinite(thickness).any() else None,
        "dynamical": bool(getattr(cfg, "dynamical", True)),
        "centrosymmetric": bool(cfg.centrosymmetric),
        "symmetry": symmetry.tolist(),
    }


@dataclass
class _State:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    elapsed: float = 0.0
    best_val: float = math.inf
    history: dict = field(default_factory=lambda: {"step": [], "loss": [], "val_step": [], "val_median_deg": [],
                                                   "val_within_5deg": [], "val_phase_accuracy": [], "lr": []})


class _Run:
    """One training run: data, model, optimiser and the loop state that checkpoints capture."""

    def __init__(self, training_set, config, model_config, augment_config, token_config, device, checkpoint_dir):
        self.config, self.augment_config, self.token_config, self.device = config, augment_config, token_config, device
        self.store = PatternStore(training_set)
        sets = as_phase_sets(training_set)
        # per phase: may its patterns be mirrored (centrosymmetric), and the rotations that leave
        # them unchanged (stored with the set: Friedel's law adds some to kinematic sets of
        # non-centrosymmetric crystals; else the crystal's point group)
        self.centrosymmetric = torch.tensor([bool(ts.config.centrosymmetric) for ts in sets])
        groups = phase_symmetries(sets)
        self.symmetry = (groups[0] if len(groups) == 1 else padded_symmetry(groups)).float()
        self.train_idx, val_idx = split_by_zone_axis(training_set.zone_axis_index, config.val_fraction, config.seed)
        if len(self.train_idx) == 0:
            raise ValueError(f"val_fraction = {config.val_fraction} holds out every pattern of the training set "
                             f"({len(training_set)} pattern(s)); pass val_fraction=0 or simulate more zone axes")
        torch.manual_seed(config.seed)
        meta = model_metadata(training_set, token_config, groups)
        self.model = OrientationModel(model_config, meta).to(device)
        self.optimizer = _adamw(self.model, config)
        self.amp = autocast_dtype(device, config.precision)
        self.val = self._validation_tokens(val_idx)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.state, self.best_weights = _State(), None
        self.batches_per_epoch = math.ceil(len(self.train_idx) / config.batch_size)

    # -- schedule ---------------------------------------------------------------------------
    def progress(self) -> float:
        c = self.config
        fractions = []
        if c.epochs is not None:
            fractions.append(self.state.step / max(1, c.epochs * self.batches_per_epoch))
        if c.max_minutes is not None:
            fractions.append(self.state.elapsed / (60 * c.max_minutes))
        return min(1.0, max(fractions))

    def learning_rate(self) -> float:
        c = self.config
        warm = min(1.0, (self.state.step + 1) / max(1, c.warmup))
        cosine = 0.5 * (1 + math.cos(math.pi * self.progress()))
        return c.lr * warm * (c.min_lr_fraction + (1 - c.min_lr_fraction) * cosine)

    # -- loop -------------------------------------------------------------------------------
    def fit(self, progress_bar: bool) -> OrientationModel:
        from tqdm.auto import tqdm

        bar = tqdm(total=self._total_for_bar(), initial=self._bar_position(), disable=not progress_bar,
                   desc="training", unit="step" if self.config.epochs else "s")
        while not self._done():
            gen = seeded_generator(self.config.seed, 0, self.state.epoch)
            batches = list(bucketed_batches(self.train_idx, self.store.counts, self.config.batch_size, gen))
            for index in batches[self.state.batch_in_epoch:]:
                t0 = time.perf_counter()
                loss = self._step(index)
                self.state.elapsed += time.perf_counter() - t0
                self.state.batch_in_epoch += 1
                self._after_step(loss, bar)
                if self._done():
                    break
            else:
                self.state.epoch, self.state.batch_in_epoch = self.state.epoch + 1, 0
        bar.close()
        return self._finish()

    def _step(self, index: torch.Tensor) -> float:
        self.model.train()
        gen = seeded_generator(self.config.seed, 1, self.state.step)
        torch.manual_seed(seeded_generator(self.config.seed, 2, self.state.step).initial_seed())  # dropout RNG
        batch = self.store.gather(index)
        batch = augment(batch, self.augment_config, gen, self.centrosymmetric[batch.phase])
        tokens = tokenize(batch.qx, batch.qy, batch.intensity, batch.counts, self.token_config)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate()
        with autocast(self.device, self.amp):
            out = self.model(tokens.tokens.to(self.device), tokens.mask.to(self.device))
        loss, _ = total_loss(out, batch.matrix.to(self.device), self.symmetry.to(self.device),
                             self.config.beam_flip_loss, batch.phase.to(self.device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        return loss.detach().item()

    def _after_step(self, loss: float, bar) -> None:
        s, c = self.state, self.config
        t0 = time.perf_counter()
        s.step += 1
        s.history["step"].append(s.step)
        s.history["loss"].append(loss)
        s.history["lr"].append(self.optimizer.param_groups[0]["lr"])
        last = self._done()
        if self.val is not None and (s.step % c.val_every == 0 or last):
            self._validate()
        s.elapsed += time.perf_counter() - t0  # the time budget includes validation
        if self.checkpoint_dir is not None and (s.step % c.checkpoint_every == 0 or last):
            self.save()
        bar.n = self._bar_position()
        val = s.history["val_median_deg"][-1] if s.history["val_median_deg"] else float("nan")
        bar.set_postfix(loss=f"{math.degrees(loss):.2f}°", val_median=f"{val:.2f}°", refresh=False)
        bar.refresh()

    def _done(self) -> bool:
        c, s = self.config, self.state
        if c.epochs is not None and s.step >= c.epochs * self.batches_per_epoch:
            return True
        return c.max_minutes is not None and s.elapsed >= 60 * c.max_minutes

    def _total_for_bar(self):
        c = self.config
        return c.epochs * self.batches_per_epoch if c.epochs is not None else int(60 * c.max_minutes)

    def _bar_position(self) -> int:
        return self.state.step if self.config.epochs is not None else int(self.state.elapsed)

    # -- validation -------------------------------------------------------------------------
    def _validation_tokens(self, val_idx: np.ndarray):
        if len(val_idx) == 0:
            return None
        gen = seeded_generator(self.config.seed, 3)
        pick = torch.as_tensor(val_idx)[torch.randperm(len(val_idx), generator=gen)[: self.config.val_max_patterns]]
        batch = self.store.gather(pick)
        B = len(pick)
        phi = (2 * torch.rand(B, generator=gen) - 1) * math.pi  # fixed, seeded in-plane angles, no damage
        mirror = (torch.rand(B, generator=gen) < 0.5) & self.centrosymmetric[batch.phase]
        batch = rotate_in_plane(batch, phi, mirror)
        return tokenize(batch.qx, batch.qy, batch.intensity, batch.counts, self.token_config), batch.matrix, batch.phase

    @torch.inference_mode()
    def _validate(self) -> None:
        tokens, matrix, phase = self.val
        self.model.eval()
        preds, phases = [], []
        for start in range(0, len(tokens), 1024):
            with autocast(self.device, self.amp):
                out = self.model(tokens.tokens[start:start + 1024].to(self.device), tokens.mask[start:start + 1024].to(self.device))
            preds.append(out["matrix"].cpu())
            if "phase_logits" in out:
                phases.append(out["phase_logits"].argmax(1).cpu())
        angle = torch.rad2deg(orientation_loss(torch.cat(preds), matrix, self.symmetry, True, phase))
        median = float(angle.median())
        h = self.state.history
        h["val_step"].append(self.state.step)
        h["val_median_deg"].append(median)
        h["val_within_5deg"].append(float((angle < 5).float().mean()))
        if phases:
            h.setdefault("val_phase_accuracy", []).append(float((torch.cat(phases) == phase).float().mean()))
            by_phase = validation_by_phase(angle, phase, self.model.config.n_phases)
            for key, values in by_phase.items():
                h.setdefault(key, []).append(values)
        if median < self.state.best_val:
            self.state.best_val = median
            self.best_weights = {k: v.detach().clone().cpu() for k, v in self.model.state_dict().items()}
            if self.checkpoint_dir is not None:
                self._model_with(self.best_weights).save(self.checkpoint_dir / "best.pt")

    # -- checkpoints ------------------------------------------------------------------------
    def save(self) -> None:
        s = self.state
        save_checkpoint(
            self.checkpoint_dir / "last.pt", kind="training-state",
            model_config=asdict(self.model.config), state_dict=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(), train_config=asdict(self.config),
            loop={"step": s.step, "epoch": s.epoch, "batch_in_epoch": s.batch_in_epoch, "elapsed": s.elapsed,
                  "best_val": s.best_val},
            history=pack_history(s.history), best_weights=self.best_weights, metadata=self.model.metadata,
        )

    def initialize_from(self, source) -> None:
        """Copy every weight of ``source`` (a model, a model file or a shipped model's name:
        :func:`~py4dstem_transformer.pretrained.load_model`) whose name and shape match."""
        from ..pretrained import load_model

        source = load_model(source)
        if source.experts is not None:
            raise ValueError("init_weights is a joint model with an orientation network per phase (experts); start from "
                             "one of its parts instead: the joint model before `combine`, or one phase's expert")
        own = self.model.state_dict()
        shared = {k: v for k, v in source.state_dict().items() if k in own and own[k].shape == v.shape}
        if replace(source.config, n_phases=self.model.config.n_phases) != self.model.config:
            raise ValueError("init_weights has another architecture than model_config "
                             f"({source.config} vs {self.model.config}); pass a matching model_config")
        self.model.load_state_dict(shared, strict=False)
        self.model.metadata["initialized_from"] = {"training_set_size": source.metadata.get("training_set_size"),
                                                   "history_steps": len(source.history.get("step", []))}

    def restore(self) -> None:
        if self.checkpoint_dir is None:
            raise ValueError("resume=True needs checkpoint_dir")
        path = self.checkpoint_dir / "last.pt"
        if not path.exists():
            raise FileNotFoundError(f"nothing to resume: {path} does not exist")
        ckpt = load_checkpoint(path, kind="training-state")
        saved, now = _resume_settings(ckpt["train_config"]), _resume_settings(asdict(self.config))
        if saved != now:
            raise ValueError(f"cannot resume: the checkpoint was made with other settings {saved} != {now}")
        self.model.load_state_dict(ckpt["state_dict"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        loop = ckpt["loop"]
        self.state = _State(loop["step"], loop["epoch"], loop["batch_in_epoch"], loop["elapsed"], loop["best_val"],
                            unpack_history(ckpt["history"]))
        self.best_weights = ckpt["best_weights"]

    def _model_with(self, weights) -> OrientationModel:
        model = OrientationModel(self.model.config, self.model.metadata)
        model.load_state_dict(weights)
        model.history = self.state.history
        model.metadata = dict(self.model.metadata, train_config=asdict(self.config),
                              augment_config=self.augment_config.to_dict())
        return model.eval()

    def _finish(self) -> OrientationModel:
        weights = self.best_weights or {k: v.detach().cpu() for k, v in self.model.state_dict().items()}
        return self._model_with(weights)


def validation_by_phase(angle: torch.Tensor, phase: torch.Tensor, n_phases: int) -> dict:
    """Each phase's validation figures (a joint model's average hides a weak phase).

    Parameters
    ----------
    angle : (B,) errors in degrees, beam flip allowed (the network is trained blind to it by default,
        ``beam_flip_loss``: the mapper tells the two apart on the disks).
    phase : (B,) int64, each pattern's true phase.

    Returns
    -------
    dict of lists with one float per phase (NaN where the validation set holds none of that phase):
    ``val_median_deg_by_phase`` and ``val_within_5deg_by_phase``.
    """
    out = {"val_median_deg_by_phase": [], "val_within_5deg_by_phase": []}
    for p in range(n_phases):
        mine = phase == p
        if not bool(mine.any()):
            for values in out.values():
                values.append(float("nan"))
            continue
        out["val_median_deg_by_phase"].append(float(angle[mine].median()))
        out["val_within_5deg_by_phase"].append(float((angle[mine] < 5).float().mean()))
    return out


def _resume_settings(train_config: dict) -> dict:
    """The settings a resumed run must share with its checkpoint: every ``TrainConfig`` field but the budget
    (``epochs``, ``max_minutes``). A field the checkpoint lacks was added later and had its default then."""
    defaults = asdict(TrainConfig())
    return {k: train_config.get(k, v) for k, v in defaults.items() if k not in ("epochs", "max_minutes")}


def _adamw(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.adam_beta1, config.adam_beta2))


def plot_history(history, figsize=(9, 3.5), returnfig: bool = False):
    """Training curves: the loss per step (degrees, smoothed) and the validation median error.

    Parameters
    ----------
    history : dict or OrientationModel
        ``model.history`` (or the model itself).
    returnfig : bool
        Return ``(fig, axes)`` instead of ``None`` (nothing is shown; call ``plt.show()`` yourself).
    """
    import matplotlib.pyplot as plt

    h = history.history if hasattr(history, "history") else history
    loss = np.degrees(np.asarray(h["loss"], dtype=float))
    window = max(1, len(loss) // 100)
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=figsize)
    ax_loss.plot(np.asarray(h["step"])[window - 1:], smooth)
    ax_loss.set(xlabel="step", ylabel="training loss (deg, augmented)", yscale="log")
    ax_val.plot(h["val_step"], h["val_median_deg"], "o-", ms=3, label="all")
    by_phase = h.get("val_median_deg_by_phase")
    if by_phase:  # joint models since 0.2: one curve per phase (validated from the first such step on)
        steps = h["val_step"][len(h["val_step"]) - len(by_phase):]
        for p, name in enumerate(_phase_names(history, len(by_phase[0]))):
            ax_val.plot(steps, [v[p] for v in by_phase], ".-", ms=2, label=name)
        ax_val.legend(fontsize="small")
    ax_val.set(xlabel="step", ylabel="validation median error (deg)", yscale="log",
               title="held-out zone axes, beam flip allowed")
    fig.tight_layout()
    return (fig, (ax_loss, ax_val)) if returnfig else None


def _phase_names(history, n: int) -> list:
    """Phase names from a model's metadata, else ``phase 0``, ``phase 1``, ..."""
    phases = getattr(history, "metadata", {}).get("phases") or []
    names = [p.get("name") for p in phases]
    return names if len(names) == n and all(names) else [f"phase {p}" for p in range(n)]
