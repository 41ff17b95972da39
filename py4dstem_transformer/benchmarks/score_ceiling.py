"""Benchmark: how often the pipeline's ranking picks the truth when the truth is among its candidates.

``python -m py4dstem_transformer.benchmarks.score_ceiling [--materials LiCoO2,Si] [--n 600] [--seed 7]
[--jitter 2] [--top 4] [--acom-n 0] [--json FILE]``

No network takes part. Each pattern (py4DSTEM's Bloch-wave code, the crystal-system benchmark's ``bloch_006``
condition: :func:`.crystal_systems.benchmark_patterns`) gets as hypotheses its true orientation turned by
``--jitter`` deg about a random axis, beside the ``--top`` best orientations of the coarse library (what the
library search adds to every pattern under ``search_confidence=1``). The stages then run as in mapping
(:data:`~..mapping.pipeline.STAGES`: partners, refinement, polish, score, ranking), and the best match is
compared with the truth (strict and with the beam flip allowed).

What it measures is an upper bound of the whole pipeline on that material: a network that always put the
truth among its hypotheses would get this and no more. The rest (to 100%) is lost by the score, to
orientations its kinematic physics cannot tell from the truth: the beam-flip partner (the same disks turned by
180 deg, told apart only by which side of the pattern is excited) and, in a pseudo-symmetric crystal, other
orientations whose disks fall on the same places (``wrong``). ``--acom-n``: py4DSTEM's ACOM (default plan) on
the first patterns, the same ones, in the same run.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Optional, Sequence

import numpy as np
import torch

__all__ = ["jittered", "ranked_truth", "main"]


def jittered(matrices: np.ndarray, degrees: float, seed: int = 0) -> np.ndarray:
    """(n, 3, 3) ``matrices`` each turned by ``degrees`` about a random axis (left factor, crystal frame)."""
    rng = np.random.default_rng(seed)
    axis = rng.normal(size=(len(matrices), 3))
    axis /= np.linalg.norm(axis, axis=1, keepdims=True)
    a = np.radians(degrees)
    K = np.zeros((len(matrices), 3, 3))
    K[:, 0, 1], K[:, 0, 2], K[:, 1, 2] = -axis[:, 2], axis[:, 1], -axis[:, 0]
    K -= K.transpose(0, 2, 1)
    turn = np.eye(3) + np.sin(a) * K + (1 - np.cos(a)) * K @ K
    return turn @ matrices


def ranked_truth(crystal, disks: Sequence[np.ndarray], matrices: np.ndarray, jitter_deg: float = 2.0, top: int = 4,
                 seed: int = 0, config=None) -> dict:
    """The stages' best match for each pattern given its (jittered) truth and the library's ``top``; figures.

    ``disks``: per pattern (k, 3) ``(qx, qy, I)`` (1/A, lab frame, direct beam first), as
    :func:`.robustness.simulate_condition` gives them; ``matrices`` (n, 3, 3) their true orientations."""
    from ..core.rotations import symmetry_min_angle
    from ..mapping.batch import MapBatch
    from ..mapping.config import MapConfig, Query, SearchConfig
    from ..mapping.library import library_hypotheses
    from ..mapping.phase import build_phases
    from ..mapping.pipeline import STAGES, run_stages
    from ..mapping.score import tokens_to_xy
    from ..model.tokens import TokenConfig, braggvectors_to_tokens
    from . import robustness as rb
    from .crystal_systems import _test_condition

    config = config or MapConfig()
    n, condition, tokens_config = len(matrices), _test_condition(), TokenConfig()
    bragg = rb.pack_braggvectors(rb.detector_pixels(disks), condition, rb.believed_origin(condition, n, seed))
    tokens = braggvectors_to_tokens(bragg, tokens_config)
    phase = build_phases([crystal], [{"name": "crystal"}], tokens_config.k_max, tokens_config.direct_beam_radius,
                         condition.accel_voltage, config.score, None)[0]
    t0 = time.perf_counter()
    search = config.search or SearchConfig()
    library = library_hypotheses(tokens_to_xy(tokens.tokens), tokens.mask, phase.library(search, config.score),
                                 config.score.kernel, config.score.power, top)  # (n, top, 3, 3)
    truth = torch.as_tensor(jittered(matrices, jitter_deg, seed), dtype=torch.float32)[:, None]
    hypotheses = torch.cat([truth, library.float()], 1)
    query = Query(1, True, True, config.margin_deg)
    batch = run_stages(MapBatch(tokens, hypotheses, query, torch.device("cpu")), phase, config, STAGES)
    seconds = time.perf_counter() - t0
    best = batch.matrix[:, :1]
    true = torch.as_tensor(matrices, dtype=torch.float32)[:, None]
    strict = np.degrees(symmetry_min_angle(best, true, phase.symmetry, allow_beam_flip=False)[:, 0].numpy())
    flip = np.degrees(symmetry_min_angle(best, true, phase.symmetry, allow_beam_flip=True)[:, 0].numpy())
    return {"n": n, "strict_5": float(np.mean(strict <= 5)), "flip_5": float(np.mean(flip <= 5)),
            "beam_flips": int(np.sum((strict > 5) & (flip <= 5))), "wrong": int(np.sum(flip > 5)),
            "median_strict": float(np.median(strict)), "disks_median": float(np.median(tokens.counts.numpy())),
            "seconds": seconds, "errors_strict": strict.tolist()}


def main(argv=None) -> dict:
    from .crystal_systems import MATERIALS, _test_condition, benchmark_patterns, material_crystal
    from . import robustness as rb

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--materials", default="LiCoO2,Si", help="comma-separated: " + ", ".join(MATERIALS))
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--seed", type=int, default=7, help="test patterns' seed (the crystal-system benchmark's: 0)")
    parser.add_argument("--jitter", type=float, default=2.0, help="the truth is turned by this (deg) before refinement")
    parser.add_argument("--top", type=int, default=4, help="library orientations beside the truth")
    parser.add_argument("--acom-n", type=int, default=0, help="ACOM on the first this many (0: skip)")
    parser.add_argument("--out", default=None, help="folder to keep the simulated patterns in")
    parser.add_argument("--json", help="write every figure to this file")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = {}
    for name in [m.strip() for m in args.materials.split(",") if m.strip()]:
        crystal = material_crystal(name)
        disks, matrices, _ = benchmark_patterns(name, crystal, args.n, args.seed, args.out)
        row = ranked_truth(crystal, disks, matrices, args.jitter, args.top, args.seed)
        line = (f"{name}: n {row['n']}, disks {row['disks_median']:.0f}: truth among the candidates -> strict "
                f"{row['strict_5']:.1%}, flip allowed {row['flip_5']:.1%} ({row['beam_flips']} beam flips, "
                f"{row['wrong']} other wrong), median {row['median_strict']:.2f} deg, {row['seconds']:.0f} s")
        if args.acom_n:
            from ..core.crystal import private_copy
            from ..core.symmetry import point_group_rotations

            m = min(args.acom_n, args.n)
            condition = _test_condition()
            bragg = rb.pack_braggvectors(rb.detector_pixels(disks[:m]), condition,
                                         rb.believed_origin(condition, args.n, args.seed)[:m])
            acom = rb.run_acom(private_copy(crystal), bragg, matrices[:m], point_group_rotations(crystal).numpy())
            row["acom"] = {k: acom[k] for k in ("n", "strict_5", "flip_5", "median_strict", "errors_strict")}
            row["ceiling_on_acom_patterns"] = float(np.mean(np.asarray(row["errors_strict"][:m]) <= 5.0))
            line += (f"; on the first {m}: ceiling {row['ceiling_on_acom_patterns']:.1%}, ACOM strict "
                     f"{acom['strict_5']:.1%}, flip allowed {acom['flip_5']:.1%}")
        print(line, flush=True)
        rows[name] = row
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
