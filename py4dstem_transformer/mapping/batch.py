"""The batch every mapping stage takes and returns: :class:`MapBatch`.

``b`` patterns on one device; ``H`` hypotheses (network predictions) per pattern, ``C`` candidates
(hypotheses x partners), ``M`` simulated disks per candidate, ``K`` matches. Each stage fills the
next fields and returns a new batch (:func:`dataclasses.replace`); nothing is changed in place.
Orientation matrices are py4DSTEM's (lab -> crystal, float32).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from ..model.tokens import Tokens
from .config import Query

__all__ = ["MapBatch"]


@dataclass(frozen=True)
class MapBatch:
    tokens: Tokens  # (b, N, 3) (r, theta, I), mask (b, N), counts (b,)
    hypotheses: torch.Tensor  # (b, H, 3, 3) the network's answers; the first for the unturned input
    query: Query
    device: torch.device
    earlier: Optional[torch.Tensor] = None  # (b, C0, 3, 3) the first C0 candidates, already refined
    earlier_shift: Optional[torch.Tensor] = None  # (b, C0, 2) their fitted origin errors (1/A)
    # candidates (expand)
    candidates: Optional[torch.Tensor] = None  # (b, C, 3, 3)
    distinct: Optional[torch.Tensor] = None  # (b, C) bool: not a repeat of an earlier hypothesis (None: all)
    fresh: Optional[torch.Tensor] = None  # (b, C) bool: still to be refined
    shift: Optional[torch.Tensor] = None  # (b, C, 2) each candidate's origin error (1/A): observed = simulated + shift
    # refine
    noise: Optional[torch.Tensor] = None  # (b, C) position noise (1/A) of the fresh refined candidates, inf elsewhere
    # score
    score: Optional[torch.Tensor] = None  # (b, C) correlation, -1 for repeats
    disks: Optional[Tuple[torch.Tensor, torch.Tensor]] = None  # (b, C, M, 3) (qx, qy, I), mask (b, C, M)
    # arbitrate
    order: Optional[torch.Tensor] = None  # (b, C) what rank orders the candidates by (None: score)
    # rank
    matrix: Optional[torch.Tensor] = None  # (b, K, 3, 3) the matches, best first
    corr: Optional[torch.Tensor] = None  # (b, K) their score (0: no distinct candidate left)
    alternative: Optional[torch.Tensor] = None  # (b, K) best score of a candidate distinct from the match
    pick: Optional[torch.Tensor] = None  # (b, K) index of each match among the candidates
    # confidence
    features: Optional[Dict[str, torch.Tensor]] = None  # name -> (b, K), :data:`~.confidence.FEATURES`

    def __len__(self) -> int:
        return len(self.tokens)
