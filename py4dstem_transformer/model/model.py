"""The Bragg-disk transformer: a set of disk tokens -> an orientation in SO(3) (and a phase).

Each disk is a token ``(r [1/A], theta [rad], I [relative])``. Its embedding is a learned linear map
of fixed features (equivalent to summing a radial, an angular and an intensity embedding), then
LayerNorm:

* radial: sinusoids of the continuous radius at geometrically spaced wavelengths (no bins, so no
  out-of-range bin indices and no discretisation error);
* angle: Fourier features ``cos(k theta), sin(k theta)``, k = 1..K, continuous across +-pi;
* position: ``(qx, qy) / k_max``;
* intensity: ``I``, ``sqrt(I)``, ``log(I)``.

There is no positional encoding: the model is a set function, invariant to the order of disks.
A pre-norm transformer encoder (masked attention: torch's fused kernel on CUDA, see :func:`attention`),
masked mean pooling, and an MLP head give 9 numbers, projected onto SO(3) by symmetric
orthogonalization. An optional head gives phase logits.

A joint phase model may carry *experts*: single-phase models, each trained on its phase alone
(``py4dstem-transformer combine``). The joint network then names the phase and an expert reads its own phase's
orientation (``"phase_matrix"``; a phase without one keeps the joint network's): a network shared by phases can
read one of them less precisely than a network of its own (the Cu2O probe in docs/benchmarks.md: 45-58% -> 80%
within 5 deg on py4DSTEM's Bloch-wave patterns).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..core.defaults import K_MAX
from ..core.rotations import symmetric_orthogonalization

__all__ = ["ModelConfig", "OrientationModel"]


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of :class:`OrientationModel` (saved inside every checkpoint).

    Attributes
    ----------
    d_model, n_layers, n_heads, d_ff : int
        Width, depth, attention heads and feed-forward width of the encoder.
    n_radial : int
        Number of radial sinusoid wavelengths, spaced geometrically from ``radial_min_wavelength``
        to ``4 * k_max``.
    radial_min_wavelength : float
        Shortest radial wavelength (1/A): sets the radial resolution of the embedding.
    n_angular : int
        Angular harmonics K.
    k_max : float
        Radial scale (1/A), the token range the model was built for.
    n_phases : int
        Number of phases; 1 means no phase head.
    dropout : float
    """

    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    d_ff: int = 512
    n_radial: int = 16
    radial_min_wavelength: float = 0.02
    n_angular: int = 16
    k_max: float = K_MAX
    n_phases: int = 1
    dropout: float = 0.0

    def __post_init__(self):
        if self.d_model % self.n_heads:
            raise ValueError("d_model must be divisible by n_heads")

    @property
    def n_features(self) -> int:
        return 2 * self.n_radial + 2 * self.n_angular + 2 + 3


class DiskEmbedding(nn.Module):
    """(B, N, 3) tokens ``(r, theta, I)`` -> (B, N, d_model) embeddings."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        longest = 4.0 * config.k_max
        wavelengths = torch.logspace(
            math.log10(config.radial_min_wavelength), math.log10(longest), config.n_radial
        )
        self.register_buffer("radial_omega", 2 * math.pi / wavelengths, persistent=False)  # (n_radial,)
        self.register_buffer("harmonics", torch.arange(1, config.n_angular + 1).float(), persistent=False)
        self.k_max = config.k_max
        self.proj = nn.Linear(config.n_features, config.d_model)
        self.norm = nn.LayerNorm(config.d_model)

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        r, theta, intensity = tokens.float().unbind(-1)  # (B, N) each
        rw = r[..., None] * self.radial_omega  # (B, N, n_radial)
        kt = theta[..., None] * self.harmonics  # (B, N, K)
        qxy = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], -1) / self.k_max
        i = intensity.clamp_min(1e-6)
        inten = torch.stack([i, i.sqrt(), i.log() / 7.0], -1)  # log(1e-3) / 7 ~ -1
        return torch.cat([rw.sin(), rw.cos(), kt.cos(), kt.sin(), qxy, inten], -1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(self.features(tokens)))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, dropout: float = 0.0,
              training: bool = False) -> torch.Tensor:
    """Masked multi-head attention, (B, H, N, Dh) -> (B, H, N, Dh); ``mask`` (B, 1, 1, N), True = attend.

    On CUDA: torch's fused ``scaled_dot_product_attention``. On CPU the same maths written out
    (two batched matmuls and a float32 softmax) is faster for sets of a few dozen disks: 8.6k vs
    6.3k patterns/s for the default model in bf16 on 2 cores (SDPA's CPU kernel targets long
    sequences).
    """
    if q.is_cuda:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, H, N, N)
    scores = scores.float()
    if not bool(mask.all()):  # batches of patterns with equally many disks have no padding to hide
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = F.dropout(_softmax(scores), dropout, training)
    return weights.to(v.dtype) @ v


def _softmax(scores: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dimension. torch's CPU kernel is ~5x slower below 16 elements (sparse
    patterns: fewer than 16 disks), where the three-step form wins; from 16 on, torch's."""
    if scores.shape[-1] >= 16 or scores.requires_grad:
        return torch.softmax(scores, dim=-1)
    e = (scores - scores.amax(-1, keepdim=True)).exp_()
    return e.div_(e.sum(-1, keepdim=True))


class Block(nn.Module):
    """Pre-norm encoder block: x + MHA(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        D = config.d_model
        self.n_heads = config.n_heads
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.qkv, self.out = nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.ff = nn.Sequential(nn.Linear(D, config.d_ff), nn.GELU(), nn.Linear(config.d_ff, D))
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        H = self.n_heads
        q, k, v = self.qkv(self.ln1(x)).view(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4)  # (B, H, N, D/H) each
        p = self.dropout if self.training else 0.0
        y = attention(q, k, v, attn_mask, p, self.training)
        y = y.transpose(1, 2).reshape(B, N, D)
        x = x + F.dropout(self.out(y), p, self.training)
        return x + F.dropout(self.ff(self.ln2(x)), p, self.training)


class OrientationModel(nn.Module):
    """Disk tokens -> orientation matrices (py4DSTEM convention) and, optionally, phase logits.

    Parameters
    ----------
    config : ModelConfig
    metadata : dict, optional
        What the model was trained for (crystal identity, voltage, token settings, symmetry...);
        saved with the weights and checked when the model is used. Plain Python values only.
    experts : sequence of (OrientationModel or None), optional
        With ``config.n_phases > 1``: per phase, in the phases' order, a single-phase model (same ``k_max``) whose
        orientation replaces the joint network's own for that phase (``"phase_matrix"``), or None (the joint
        network's own). Saved inside this model's file, each with its own config, metadata and history. Built by
        :func:`~py4dstem_transformer.model.experts.with_experts`.

    Examples
    --------
    >>> model = OrientationModel(ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64))
    >>> tokens, mask = torch.rand(5, 7, 3), torch.ones(5, 7, dtype=torch.bool)
    >>> model(tokens, mask)["matrix"].shape
    torch.Size([5, 3, 3])
    """

    def __init__(self, config: ModelConfig = ModelConfig(), metadata: Optional[dict] = None,
                 experts: Optional[Sequence[Optional["OrientationModel"]]] = None):
        super().__init__()
        self.config = config
        self.metadata = dict(metadata or {})
        D = config.d_model
        self.embed = DiskEmbedding(config)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(D)
        self.head = nn.Sequential(nn.Linear(D, D), nn.GELU(), nn.Linear(D, 9))
        self.phase_head = (
            nn.Sequential(nn.Linear(D, D), nn.GELU(), nn.Linear(D, config.n_phases)) if config.n_phases > 1 else None
        )
        self.history: dict = {}
        self.experts = None  # {str(phase): OrientationModel} for the phases that have one
        if experts is not None and any(e is not None for e in experts):
            experts = list(experts)
            given = {str(p): e for p, e in enumerate(experts) if e is not None}
            if len(experts) != config.n_phases or any(e.config.n_phases != 1 for e in given.values()):
                raise ValueError(f"a joint model of {config.n_phases} phase(s) takes one entry per phase, a single-phase "
                                 f"expert or None; got {len(experts)}, with n_phases "
                                 f"{[e.config.n_phases for e in given.values()]}")
            if any(e.config.k_max != config.k_max for e in given.values()):
                raise ValueError(f"experts must read tokens of the joint model's k_max ({config.k_max} 1/A); got "
                                 f"{[e.config.k_max for e in given.values()]}")
            self.experts = nn.ModuleDict(given)

    def expert(self, phase: int) -> Optional["OrientationModel"]:
        """The expert reading phase ``phase``'s orientation, or None (the joint network's own)."""
        return None if self.experts is None else self.experts[str(phase)] if str(phase) in self.experts else None

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> dict:
        """Predict.

        Parameters
        ----------
        tokens : (B, N, 3) tensor
            ``(r [1/A], theta [rad], I [relative])`` per disk (see :mod:`.tokens`).
        mask : (B, N) bool tensor
            True where a disk is present. Patterns without disks give a finite but meaningless
            output (callers mark them as unmatched).

        Returns
        -------
        dict with ``"raw"`` (B, 9), ``"matrix"`` (B, 3, 3) proper rotations (float32), with a
        phase head ``"phase_logits"`` (B, n_phases) and, with experts, ``"phase_matrix"`` (B, n_phases, 3, 3):
        each phase's orientation as its expert reads it (``"matrix"`` for a phase without one).
        """
        B, N, _ = tokens.shape
        mask = mask.clone()
        mask[:, 0] |= ~mask.any(1)  # an empty pattern attends to its (zero) first slot, not to nothing
        x = self.embed(tokens)  # (B, N, D)
        attn_mask = mask[:, None, None, :]  # (B, 1, 1, N): True = attend
        for block in self.blocks:
            x = block(x, attn_mask)
        x = self.ln_f(x)
        weights = mask.to(x.dtype)[..., None]  # (B, N, 1)
        pooled = (x * weights).sum(1) / weights.sum(1)  # (B, D) masked mean
        raw = self.head(pooled).float()
        out = {"raw": raw, "matrix": symmetric_orthogonalization(raw)}
        if self.phase_head is not None:
            out["phase_logits"] = self.phase_head(pooled).float()
        if self.experts is not None:
            experts = (self.expert(p) for p in range(self.config.n_phases))
            out["phase_matrix"] = torch.stack([out["matrix"] if e is None else e(tokens, mask)["matrix"]
                                               for e in experts], 1)
        return out

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def save(self, path) -> None:
        """Write weights, config and metadata; loadable with ``torch.load(weights_only=True)``."""
        from ..io.checkpoint import pack_history, save_checkpoint

        experts = {}
        if self.experts is not None:  # their weights are in the state dict ("experts.<phase>."); None: no expert
            each = [self.expert(p) for p in range(self.config.n_phases)]
            experts = dict(expert_configs=[None if e is None else asdict(e.config) for e in each],
                           expert_metadata=[None if e is None else e.metadata for e in each],
                           expert_history=[None if e is None else pack_history(e.history) for e in each])
        save_checkpoint(path, kind="model", model_config=asdict(self.config), state_dict=self.state_dict(),
                        metadata=self.metadata, history=pack_history(self.history), **experts)

    @classmethod
    def load(cls, path, map_location="cpu") -> "OrientationModel":
        """Rebuild a model written by :meth:`save` (never unpickles code)."""
        from ..io.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path, kind="model", map_location=map_location)
        return cls.from_checkpoint(ckpt)

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "OrientationModel":
        from ..io.checkpoint import unpack_history

        experts = None
        if ckpt.get("expert_configs"):
            experts = [None if c is None else cls(ModelConfig(**c), m)
                       for c, m in zip(ckpt["expert_configs"], ckpt["expert_metadata"])]
            for expert, history in zip(experts, ckpt.get("expert_history") or [None] * len(experts)):
                if expert is not None:
                    expert.history = unpack_history(history) or {}
        model = cls(ModelConfig(**ckpt["model_config"]), ckpt.get("metadata"), experts)
        model.load_state_dict(ckpt["state_dict"])
        model.history = unpack_history(ckpt.get("history")) or {}
        return model.eval()
