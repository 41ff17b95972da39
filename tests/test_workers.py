"""Worker processes: the same map as the calling process, shares dealt evenly, sensible defaults."""

import sys

import numpy as np
import pytest
import torch

from py4dstem_transformer.mapping.mapper import TransformerOrientationMap
from py4dstem_transformer.mapping.workers import resolve_workers, split_interleaved, worker_pool

from conftest import KinematicSet, kinematic_scan, make_cu

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers are forked on Linux only")


def test_split_interleaved_deals_every_item_once():
    shares = split_interleaved(11, 3)
    assert [s.tolist() for s in shares] == [[0, 3, 6, 9], [1, 4, 7, 10], [2, 5, 8]]
    assert [s.tolist() for s in split_interleaved(2, 4)] == [[0], [1]]  # no empty shares


@linux
def test_resolve_workers_defaults():
    cpu = torch.device("cpu")
    assert resolve_workers(None, cpu, 100) == 1  # small scans stay in the calling process
    assert resolve_workers(None, cpu, 10**6) == max(1, min(torch.get_num_threads(), 8))
    assert resolve_workers(3, cpu, 100) == 3
    assert resolve_workers(3, torch.device("cuda"), 10**6) == 1  # one GPU, one process
    with pytest.raises(ValueError, match="workers must be >= 1"):
        resolve_workers(0, cpu, 100)


@linux
def test_pool_runs_in_other_processes_in_order_sharing_the_threads():
    import os

    with worker_pool(lambda x: (x * x, os.getpid(), torch.get_num_threads()), 2) as imap:
        out = list(imap(range(6)))
    assert [v for v, _, _ in out] == [0, 1, 4, 9, 16, 25]
    assert os.getpid() not in {pid for _, pid, _ in out}
    assert {threads for _, _, threads in out} == {max(1, torch.get_num_threads() // 2)}  # the threads are shared


@pytest.mark.slow
@linux
def test_workers_give_the_same_map(trained):
    """Each position's answer lands in its own place. Shares batch differently (padding, one thread), so a
    near-tie between a candidate and its flip partner may rank the other way: compare the best matches up
    to symmetry, and demand all but a few of them equal."""
    from py4dstem_transformer.core.rotations import symmetry_min_angle

    truth = KinematicSet(40, seed=11)
    scan = kinematic_scan(truth, (5, 8))
    maps = {}
    for workers in (1, 2):
        mapper = TransformerOrientationMap(make_cu(), trained, workers=workers, precision="fp32")
        maps[workers] = mapper.match_orientations(scan, progress_bar=False, chunk_size=16)
    one, two = (torch.as_tensor(maps[w].matrix[:, :, 0].reshape(-1, 3, 3)) for w in (1, 2))
    angle = torch.rad2deg(symmetry_min_angle(one, two, torch.as_tensor(mapper.symmetry))).numpy()
    same = angle < 0.01
    assert same.sum() >= 38
    np.testing.assert_allclose(maps[2].corr.reshape(-1)[same], maps[1].corr.reshape(-1)[same], atol=1e-3)
    assert (maps[1].corr > 0).mean() > 0.9
