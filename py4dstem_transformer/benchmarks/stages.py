"""Wall time of each stage of one transformer mapping, measured on the mapper's own code path.

Stages (seconds, summed over chunks and batches):

* ``flatten``: in-memory ``BraggVectors`` -> flat peaks (:func:`.peaks.peaks_from_braggvectors`);
* ``tokens``: flat raw peaks -> calibrated, padded tokens (:func:`.tokens.iter_scan_tokens`);
* ``network``: the transformer's predictions (``mapper._hypotheses``, test-time rotations included);
* ``refinement``: candidates refined against the disks (``mapper.refine``);
* ``confidence``: the correlation score of every candidate (``mapper.score``);
* ``ranking``: the rest of ``mapper.predict_tokens`` (candidates, batching, best pick, orthogonalization);
* ``assembly``: matrices -> py4DSTEM ``OrientationMap`` (``mapper._to_orientation_map``).

The three middle stages are timed by wrapping the mapper's methods for the duration of the run,
so ``predict_tokens`` runs unchanged; on CUDA each timed call ends with a synchronize.
"""

from __future__ import annotations

import contextlib
import functools
import time
from typing import Dict, Tuple

import numpy as np

__all__ = ["StageClock", "staged_transformer_map", "STAGES"]

STAGES = ("flatten", "tokens", "network", "refinement", "confidence", "ranking", "assembly")


class StageClock:
    """Seconds accumulated per named stage; ``with clock("name"): ...`` times a block."""

    def __init__(self, cuda: bool = False):
        self.seconds: Dict[str, float] = {}
        self._cuda = cuda

    @contextlib.contextmanager
    def __call__(self, stage: str):
        self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0

    @contextlib.contextmanager
    def wrapping(self, obj, **stages: str):
        """Time every call of ``obj.<method>`` as ``stage`` (``stage="method"``) inside the block."""
        for stage, method in stages.items():
            setattr(obj, method, self._timed(stage, getattr(obj, method)))
        try:
            yield
        finally:
            for method in stages.values():
                delattr(obj, method)  # the instance attribute goes; the class's method shows again

    def _timed(self, stage: str, fn):
        @functools.wraps(fn)
        def timed_call(*args, **kwargs):
            with self(stage):
                return fn(*args, **kwargs)

        return timed_call

    def _sync(self) -> None:
        if self._cuda:
            import torch

            torch.cuda.synchronize()


def staged_transformer_map(mapper, bragg_peaks, refine: bool = True, chunk_size: int = 16384) -> Tuple[object, dict]:
    """Map ``bragg_peaks`` as ``mapper.match_orientations`` does (one match), stage by stage.

    For timing only: positions with too few peaks keep their prediction (``match_orientations``
    sets their corr to 0, which costs nothing measurable). Returns ``(OrientationMap, seconds per
    stage)`` with the keys of :data:`STAGES`.
    """
    from ..io.peaks import peaks_from_braggvectors
    from ..model.tokens import iter_scan_tokens

    clock = StageClock(cuda=mapper.device.type == "cuda")
    with clock("flatten"):
        peaks = peaks_from_braggvectors(bragg_peaks)
    B = peaks.num_positions
    matrix, corr = np.zeros((B, 1, 3, 3)), np.zeros((B, 1))
    chunks = iter_scan_tokens(peaks, mapper.token_config, chunk_size)
    with clock.wrapping(mapper, network="_hypotheses", refinement="refine", confidence="score"):
        while True:
            with clock("tokens"):
                item = next(chunks, None)
            if item is None:
                break
            start, tokens = item
            with clock("prediction"):
                matrix[start:start + len(tokens)], corr[start:start + len(tokens)] = mapper.predict_tokens(
                    tokens, 1, refine=refine)
    Rx, Ry = peaks.scan_shape
    with clock("assembly"):
        orientation_map = mapper._to_orientation_map(matrix.reshape(Rx, Ry, 1, 3, 3), corr.reshape(Rx, Ry, 1))
    s = {stage: clock.seconds.get(stage, 0.0) for stage in STAGES}
    s["ranking"] = clock.seconds.get("prediction", 0.0) - s["network"] - s["refinement"] - s["confidence"]
    return orientation_map, s
