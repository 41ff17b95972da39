"""Wall time of each stage of one transformer mapping, measured on the mapper's own pipeline.

Stages (seconds, summed over chunks and batches):

* ``flatten``: in-memory ``BraggVectors`` -> flat peaks (:func:`~..io.peaks.peaks_from_braggvectors`);
* ``tokens``: flat raw peaks -> calibrated, padded tokens (:func:`~..model.tokens.iter_scan_tokens`);
* ``network``: the transformer's predictions (test-time turns included);
* the pipeline's stages (:data:`~..mapping.pipeline.STAGES`): ``expand`` (candidates), ``refine`` (against
  the disks), ``polish`` (on the score), ``score`` (the correlation), ``tiebreak`` and ``arbitrate`` (near
  ties), ``rank`` (distinct matches), ``confidence`` (the calibration's features);
* ``other``: the rest of :func:`~..mapping.pipeline.map_tokens` (batching, calibration, orthogonalization);
* ``assembly``: matrices -> py4DSTEM ``OrientationMap``.

The pipeline runs with timed stand-ins for its stages and network (same functions, same order), so the
answers are the mapper's own; on CUDA each timed call ends with a synchronize.
"""

from __future__ import annotations

import contextlib
import functools
import time
from typing import Dict, Tuple

import numpy as np

from ..mapping.pipeline import STAGES as PIPELINE

__all__ = ["StageClock", "staged_transformer_map", "STAGES"]

STAGES = ("flatten", "tokens", "network") + tuple(s.__name__ for s in PIPELINE) + ("other", "assembly")


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

    def timed(self, stage: str, fn):
        """``fn`` that adds its calls' time to ``stage``."""
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
    """Map ``bragg_peaks`` as ``mapper.match_orientations`` does (one match, in this process), stage by stage.

    Returns ``(OrientationMap, seconds per stage)`` with the keys of :data:`STAGES`.
    """
    from ..io.peaks import peaks_from_braggvectors
    from ..mapping.config import Query
    from ..mapping.pipeline import map_tokens
    from ..mapping.predict import Network, default_batch_size
    from ..model.tokens import iter_scan_tokens

    clock = StageClock(cuda=mapper.device.type == "cuda")

    class TimedNetwork(Network):
        def __call__(self, tokens):
            with clock("network"):
                return super().__call__(tokens)

    network = TimedNetwork(mapper.model, mapper.device, mapper.precision)
    stages = tuple(clock.timed(s.__name__, s) for s in PIPELINE)
    query = Query(1, refine=refine, min_angle_deg=mapper.config.margin_deg)
    with clock("flatten"):
        peaks = peaks_from_braggvectors(bragg_peaks)
    B = peaks.num_positions
    matrix, corr = np.zeros((B, 1, 1, 3, 3)), np.zeros((B, 1, 1))
    chunks = iter_scan_tokens(peaks, mapper.token_config, chunk_size)
    calibration = mapper.calibration if mapper.calibrated_confidence else None
    while True:
        with clock("tokens"):
            item = next(chunks, None)
        if item is None:
            break
        start, tokens = item
        with clock("mapping"):
            mapped = map_tokens(tokens, network, mapper.phases, mapper.config, query,
                                default_batch_size(mapper.device), stages)
            rows = slice(start, start + len(tokens))
            matrix[rows], corr[rows] = mapped.matrix, mapped.confidence(calibration) * mapped.probability[:, :, None]
    corr[peaks.counts < 3] = 0.0  # match_orientations' default min_number_peaks
    Rx, Ry = peaks.scan_shape
    with clock("assembly"):
        orientation_map = mapper._orientation_map(0, matrix[:, 0].reshape(Rx, Ry, 1, 3, 3), corr[:, 0].reshape(Rx, Ry, 1))
    s = {stage: clock.seconds.get(stage, 0.0) for stage in STAGES}
    s["other"] = clock.seconds.get("mapping", 0.0) - sum(s[k] for k in STAGES[2:-2])
    return orientation_map, s
