"""Benchmark: training and inference throughput of the default model, fp32 vs bf16 autocast.

``python -m py4dstem_transformer.benchmarks.training [--steps 40] [--batch-size 256]``

Training steps include everything a real step does: gathering a bucketed batch, augmentation,
tokenization, forward, symmetry-aware loss, backward and the AdamW update. Patterns are random
disk sets with a realistic size distribution (mean ~14 disks, as Bloch-wave Cu patterns at
k_max 2 1/A); throughput does not depend on what the disks are.
"""

from __future__ import annotations

import argparse
import time
from types import SimpleNamespace

import numpy as np
import torch

from ..training.data import bucketed_batches, seeded_generator
from ..model.model import ModelConfig, OrientationModel
from ..core.rotations import random_rotations
from ..model.tokens import TokenConfig, tokenize
from ..training.trainer import TrainConfig, _Run
from ..training.augment import AugmentConfig


class RandomSet:
    """A stand-in training set: random disk sets, Cu crystal, random labels."""

    def __init__(self, n: int = 20000, seed: int = 0):
        from py4DSTEM.process.diffraction import Crystal

        rng = np.random.default_rng(seed)
        counts = np.clip(rng.poisson(12, n) + 2, 2, 60)
        total = int(counts.sum())
        r, theta = rng.uniform(0.4, 2.0, total), rng.uniform(-np.pi, np.pi, total)
        self.qx, self.qy = (r * np.cos(theta)).astype(np.float32), (r * np.sin(theta)).astype(np.float32)
        self.intensity = rng.uniform(1e-3, 1, total).astype(np.float32)
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.orientation_matrices = random_rotations(n, seed=seed).numpy()
        self.thickness = np.full(n, 100.0)
        self.zone_axis_index = np.arange(n) // 20
        self.config = SimpleNamespace(k_max=2.0, accel_voltage=300e3, centrosymmetric=True, dynamical=True)
        fcc = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
        self.crystal = lambda: Crystal(fcc, 29, 3.615)

    def __len__(self):
        return len(self.orientation_matrices)


def training_throughput(data, precision: str, steps: int, batch_size: int, model_config: ModelConfig) -> float:
    config = TrainConfig(epochs=1, batch_size=batch_size, precision=precision, val_fraction=0.0)
    token_config = TokenConfig()
    run = _Run(data, config, model_config, AugmentConfig(), token_config, torch.device("cpu"), None)
    batches = list(bucketed_batches(run.train_idx, run.store.counts, batch_size, seeded_generator(0)))
    for index in batches[:3]:  # warm-up
        run._step(index)
    t0 = time.perf_counter()
    n = 0
    for index in batches[3 : 3 + steps]:
        run._step(index)
        n += len(index)
    return n / (time.perf_counter() - t0)


@torch.inference_mode()
def inference_throughput(data, precision: str, batch_size: int, model_config: ModelConfig, n: int = 8192) -> float:
    from ..training.data import PatternStore
    from ..core.device import autocast

    model = OrientationModel(model_config).eval()
    store = PatternStore(data)
    order = torch.argsort(store.counts[:n], stable=True)  # bucketed by disk count, as the mapper does
    amp = torch.bfloat16 if precision == "bf16" else None
    batches = [store.gather(order[i : i + batch_size]) for i in range(0, n, batch_size)]
    tokens = [tokenize(b.qx, b.qy, b.intensity, b.counts, TokenConfig()) for b in batches]
    with autocast("cpu", amp):
        model(tokens[0].tokens, tokens[0].mask)
        t0 = time.perf_counter()
        for t in tokens:
            model(t.tokens, t.mask)
    return n / (time.perf_counter() - t0)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args(argv)
    model_config = ModelConfig()
    data = RandomSet()
    print(f"default model: {OrientationModel(model_config).num_parameters:,} parameters, {model_config}")
    print(f"torch threads {torch.get_num_threads()}, batch {args.batch_size}")
    result = {}
    for precision in ("fp32", "bf16"):
        result[f"train_{precision}"] = training_throughput(data, precision, args.steps, args.batch_size, model_config)
        result[f"infer_{precision}"] = inference_throughput(data, precision, args.batch_size, model_config)
        print(f"{precision}: training {result[f'train_{precision}']:,.0f} patterns/s, "
              f"inference (model only) {result[f'infer_{precision}']:,.0f} patterns/s")
    return result


if __name__ == "__main__":
    main()
