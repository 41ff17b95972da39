"""The network's answers: orientation hypotheses (and phase probabilities) for a batch of tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import numpy as np
import torch

from ..core.device import autocast, autocast_dtype
from ..core.rotations import rotation_about_z
from ..model.model import OrientationModel
from ..model.tokens import Tokens, rotate_tokens

__all__ = ["Network", "count_sorted_batches", "default_batch_size"]


@dataclass(frozen=True)
class Network:
    """A trained model in eval mode on ``device``, called under autocast at ``precision`` (bf16 where fast)."""

    model: OrientationModel
    device: torch.device
    precision: Optional[str] = None

    @torch.inference_mode()
    def __call__(self, tokens: Tokens) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(matrix (b, 3, 3) float32, phase probability (b, P) float32)`` on ``device``; a model with experts
        (:mod:`..model.experts`) answers per phase: matrix (b, P, 3, 3)."""
        model = self.model
        if next(model.parameters()).device != self.device:  # walking every module each call costs ~1 ms
            model = model.to(self.device)
        with autocast(self.device, autocast_dtype(self.device, self.precision)):
            out = model(tokens.tokens.to(self.device), tokens.mask.to(self.device))
        matrix = out["phase_matrix" if "phase_matrix" in out else "matrix"].float()
        if "phase_logits" in out:
            return matrix, torch.softmax(out["phase_logits"].float(), dim=1)
        return matrix, torch.ones(len(matrix), 1, device=matrix.device)

    def hypotheses(self, tokens: Tokens, turns: int = 1, first: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
        """Answers for the input turned by k * 180 / turns deg (``first <= k < turns``), turned back:
        ``(matrix (b, turns - first, 3, 3), phase probability (b, P) averaged over the turns)``; with experts,
        matrix (b, turns - first, P, 3, 3), each phase's own.

        Half a turn is enough: a pattern turned by 180 deg is the same pattern (Friedel's law) and its
        answer the beam-flip partner, which is a candidate anyway."""
        out, prob = [], 0.0
        for k in range(first, turns):
            phi = np.pi * k / turns
            prediction, p = self(Tokens(rotate_tokens(tokens.tokens, phi), tokens.mask, tokens.counts))
            # a pattern rotated counter-clockwise by phi has label M @ Rz(-phi), so M = P @ Rz(phi)
            out.append(prediction @ rotation_about_z(torch.tensor(phi)).float().to(prediction.device))
            prob = prob + p / (turns - first)
        return torch.stack(out, 1), prob


def default_batch_size(device: torch.device) -> int:
    """Patterns per network call: 4096 on CUDA, 256 on a CPU (where the working set then stays in cache)."""
    return 4096 if device.type == "cuda" else 256


def count_sorted_batches(tokens: Tokens, batch_size: int,
                         subset: Optional[torch.Tensor] = None) -> Iterator[Tuple[torch.Tensor, Tokens]]:
    """Yield ``(index, Tokens)`` batches of similar disk count (of the (B,) bool ``subset``), padding trimmed."""
    order = torch.argsort(tokens.counts, stable=True)
    if subset is not None:
        order = order[subset[order]]
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        n = max(int(tokens.counts[idx].max()), 1)
        yield idx, Tokens(tokens.tokens[idx, :n], tokens.mask[idx, :n], tokens.counts[idx])
