"""Augmentation: geometric changes relabel exactly (py4DSTEM as the oracle), damage keeps labels."""


import numpy as np
import pytest
import torch

from py4dstem_transformer.training.augment import AugmentConfig, augment, rotate_in_plane
from py4dstem_transformer.training.data import Batch, PatternStore, bucketed_batches, split_by_zone_axis

from conftest import KinematicSet


@pytest.fixture(scope="module")
def kset40():
    return KinematicSet(40, seed=3)


def simulate(crystal, m):
    d = crystal.generate_diffraction_pattern(orientation_matrix=m, sigma_excitation_error=0.02).data
    d = d[(d["h"] != 0) | (d["k"] != 0) | (d["l"] != 0)]
    i = d["intensity"] / d["intensity"].max()
    keep = i >= 1e-3
    return np.stack([d["qx"][keep], d["qy"][keep], i[keep]], 1)


def same_disks(a, b, tol=1e-5):
    assert len(a) == len(b)
    a, b = a[np.lexsort(a[:, :2].T.round(4))], b[np.lexsort(b[:, :2].T.round(4))]
    np.testing.assert_allclose(a, b, atol=tol)


def test_rotation_and_mirror_relabel_exactly(kset40):
    crystal = kset40._crystal
    store = PatternStore(kset40)
    index = torch.arange(6)
    batch = store.gather(index)
    phi = torch.tensor([0.0, 0.4, -2.0, 3.0, 1.1, -0.7])
    mirror = torch.tensor([False, False, True, True, False, True])
    out = rotate_in_plane(batch, phi, mirror)
    offsets = np.concatenate([[0], np.cumsum(out.counts.numpy())])
    for b in range(6):
        got = torch.stack([out.qx, out.qy, out.intensity], 1)[offsets[b]:offsets[b + 1]].numpy()
        same_disks(got, simulate(crystal, out.matrix[b].double().numpy()))


def test_gather_returns_the_stored_patterns(kset40):
    store = PatternStore(kset40)
    batch = store.gather(torch.tensor([5, 0, 5]))
    assert batch.counts.tolist() == [len(kset40.qx[kset40.offsets[i]:kset40.offsets[i + 1]]) for i in (5, 0, 5)]
    n5 = int(batch.counts[0])
    assert np.array_equal(batch.qx[:n5].numpy(), kset40.qx[kset40.offsets[5]:kset40.offsets[6]])
    assert torch.equal(batch.matrix[0], batch.matrix[2])


def test_damage_keeps_labels_and_disks_and_input(kset40):
    store = PatternStore(kset40)
    batch = store.gather(torch.arange(40))
    before = batch.qx.clone()
    strong = AugmentConfig(p_drop_weak=1, drop_weak_max=0.9, p_drop_random=1, drop_random_max=0.9, p_jitter=1,
                           p_intensity_noise=1, p_flatten=1, p_spurious=1, mirror=False, in_plane_rotation=False)
    out = augment(batch, strong, torch.Generator().manual_seed(0), centrosymmetric=True)
    assert torch.equal(batch.qx, before)  # input untouched
    assert torch.equal(out.matrix, batch.matrix)  # damage never changes the label
    assert (out.counts >= 2).all()  # >= 1 real disk + >= 1 spurious disk
    assert int(out.counts.sum()) == len(out.qx)
    # deterministic given the generator
    again = augment(batch, strong, torch.Generator().manual_seed(0), centrosymmetric=True)
    assert torch.equal(again.qx, out.qx) and torch.equal(again.counts, out.counts)


def test_drop_weak_removes_the_weakest():
    qx = torch.tensor([1.0, 2.0, 3.0, 4.0, 1.0, 2.0])
    batch = Batch(qx, torch.zeros(6), torch.tensor([0.1, 0.9, 0.5, 1.0, 1.0, 0.2]), torch.tensor([4, 2]),
                  torch.eye(3).expand(2, 3, 3), torch.zeros(2, dtype=torch.int64))
    cfg = AugmentConfig.none()
    cfg = AugmentConfig(**{**cfg.to_dict(), "p_drop_weak": 1.0, "drop_weak_max": 0.999999, "in_plane_rotation": False})
    # fraction ~U(0, 1): force it high by trying seeds until it drops 3 of 4, then check which survive
    for seed in range(50):
        out = augment(batch, cfg, torch.Generator().manual_seed(seed), centrosymmetric=False)
        if int(out.counts[0]) == 1:
            assert out.qx[0] == 4.0  # only the brightest of pattern 0 is left
            return
    pytest.fail("no seed dropped 3 of 4 disks")


def test_no_mirror_for_non_centrosymmetric(kset40):
    store = PatternStore(kset40)
    batch = store.gather(torch.arange(40))
    cfg = AugmentConfig.none()
    out = augment(batch, AugmentConfig(**{**cfg.to_dict(), "in_plane_rotation": False}), torch.Generator().manual_seed(1), False)
    assert torch.equal(out.matrix, batch.matrix)


def test_split_by_zone_axis_never_shares_a_zone_axis():
    zone = np.repeat(np.arange(50), 7)
    train, val = split_by_zone_axis(zone, 0.2, seed=0)
    assert len(train) + len(val) == len(zone) and len(set(zone[train]) & set(zone[val])) == 0
    assert len(set(zone[val])) == 10
    assert len(split_by_zone_axis(zone, 0.0)[1]) == 0


def test_bucketed_batches_cover_every_pattern_once_and_cut_padding():
    counts = torch.randint(1, 60, (1000,), generator=torch.Generator().manual_seed(0))
    batches = list(bucketed_batches(np.arange(1000), counts, 32, torch.Generator().manual_seed(1), bucket=8))
    seen = torch.cat(batches)
    assert sorted(seen.tolist()) == list(range(1000))
    padded = sum(len(b) * int(counts[b].max()) for b in batches)
    random = sum(32 * int(counts[torch.randperm(1000)[:32]].max()) for _ in range(len(batches)))
    assert padded < 0.8 * random


def _only(**kw):
    cfg = {**AugmentConfig.none().to_dict(), "in_plane_rotation": False, "mirror": False}
    return AugmentConfig(**{**cfg, **kw})


def test_scale_error_scales_every_disk_of_a_pattern_alike(kset40):
    batch = PatternStore(kset40).gather(torch.arange(40))
    out = augment(batch, _only(p_scale=1.0, scale_max=0.03), torch.Generator().manual_seed(3), False)
    ratio = torch.hypot(out.qx, out.qy) / torch.hypot(batch.qx, batch.qy)
    per = torch.split(ratio, batch.counts.tolist())
    assert all(float(r.max() - r.min()) < 1e-5 for r in per)
    factors = torch.stack([r[0] for r in per])
    assert float((factors - 1).abs().max()) <= 0.03 + 1e-6 and float((factors - 1).abs().max()) > 0.01
    assert torch.equal(out.matrix, batch.matrix) and torch.equal(out.intensity, batch.intensity)


def test_origin_error_shifts_every_disk_of_a_pattern_alike(kset40):
    batch = PatternStore(kset40).gather(torch.arange(40))
    out = augment(batch, _only(p_origin=1.0, origin_max=0.03), torch.Generator().manual_seed(4), False)
    dx, dy = out.qx - batch.qx, out.qy - batch.qy
    for x, y in zip(torch.split(dx, batch.counts.tolist()), torch.split(dy, batch.counts.tolist())):
        assert float(x.max() - x.min()) < 1e-5 and float(y.max() - y.min()) < 1e-5
        assert float(torch.hypot(x[0], y[0])) <= 0.03 + 1e-6


def test_ellipse_error_stretches_one_axis_only():
    # disks on the unit circle: after a stretch e along n, |q| ranges over [1, 1 + e] (or [1 + e, 1])
    theta = torch.linspace(0, 2 * np.pi, 73)[:-1]
    batch = Batch(torch.cos(theta), torch.sin(theta), torch.ones(72), torch.tensor([72]), torch.eye(3)[None],
                  torch.zeros(1, dtype=torch.int64))
    out = augment(batch, _only(p_ellipse=1.0, ellipse_max=0.02), torch.Generator().manual_seed(5), False)
    r = torch.hypot(out.qx, out.qy)
    lo, hi = float(r.min()), float(r.max())
    assert (abs(lo - 1) < 2e-3 or abs(hi - 1) < 2e-3) and 1e-3 < hi - lo <= 0.02 + 1e-3
    assert float(torch.hypot(out.qx.mean(), out.qy.mean())) < 1e-5  # no shift


def _surviving(batch, out):
    """(pattern, qx, qy) of every surviving disk, to compare with the input's."""
    pos = torch.repeat_interleave(torch.arange(len(out.counts)), out.counts)
    return [(int(p), round(float(x), 5), round(float(y), 5)) for p, x, y in zip(pos, out.qx, out.qy)]


def test_dim_cut_keeps_only_the_brighter_disks_of_a_pattern(kset40):
    batch = PatternStore(kset40).gather(torch.arange(40))
    out = augment(batch, _only(p_dim=1.0, dim_cut_max=0.1), torch.Generator().manual_seed(6), False)
    assert torch.equal(out.matrix, batch.matrix) and (out.counts >= 1).all()
    assert int(out.counts.sum()) < int(batch.counts.sum())  # something was cut
    kept = set(_surviving(batch, out))
    pos = torch.repeat_interleave(torch.arange(40), batch.counts)
    brightest = torch.zeros(40).scatter_reduce_(0, pos, batch.intensity, "amax")
    relative = batch.intensity / brightest[pos]
    for p in range(40):  # per pattern: every kept disk is at least as bright as every dropped one
        mine = pos == p
        key = [(p, round(float(x), 5), round(float(y), 5)) in kept for x, y in zip(batch.qx[mine], batch.qy[mine])]
        key = torch.tensor(key)
        assert key.any()
        if (~key).any():
            assert float(relative[mine][key].min()) >= float(relative[mine][~key].max())
            assert float(relative[mine][~key].max()) < 0.1  # the cut is at most dim_cut_max


def test_edge_cut_keeps_the_disks_inside_one_radius_per_pattern(kset40):
    batch = PatternStore(kset40).gather(torch.arange(40))
    out = augment(batch, _only(p_edge=1.0, edge_min=1.0), torch.Generator().manual_seed(7), False)
    assert torch.equal(out.matrix, batch.matrix) and (out.counts >= 1).all()
    kept = set(_surviving(batch, out))
    pos = torch.repeat_interleave(torch.arange(40), batch.counts)
    r = torch.hypot(batch.qx, batch.qy)
    cut_somewhere = False
    for p in range(40):
        mine = pos == p
        key = torch.tensor([(p, round(float(x), 5), round(float(y), 5)) in kept
                            for x, y in zip(batch.qx[mine], batch.qy[mine])])
        if (~key).any() and key.sum() > 1:  # (a pattern with nothing inside keeps its brightest disk)
            cut_somewhere = True
            assert float(r[mine][key].max()) < float(r[mine][~key].min())  # one radius splits kept from dropped
            assert float(r[mine][~key].min()) >= 1.0 - 1e-6  # never inside edge_min
    assert cut_somewhere
    # off by default: the default config's damage never cuts by radius or brightness alone
    assert AugmentConfig().p_edge == 0 and AugmentConfig().p_dim == 0
