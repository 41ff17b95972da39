"""The Bragg-disk transformer, its loss and its checkpoints."""

import math

import pytest
import torch

from py4dstem_transformer.model.loss import orientation_loss, total_loss
from py4dstem_transformer.model.model import ModelConfig, OrientationModel
from py4dstem_transformer.core.rotations import random_rotations
from py4dstem_transformer.core.symmetry import point_group_rotations
from py4dstem_transformer.simulation.phases import padded_symmetry

from conftest import make_cu

TINY = ModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, n_phases=3)


def random_tokens(B=6, N=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = 0.3 + 1.7 * torch.rand(B, N, generator=g)
    theta = (2 * torch.rand(B, N, generator=g) - 1) * math.pi
    intensity = torch.rand(B, N, generator=g).clamp_min(1e-3)
    counts = torch.randint(1, N + 1, (B,), generator=g)
    mask = torch.arange(N)[None] < counts[:, None]
    tokens = torch.stack([r, theta, intensity], -1) * mask[..., None]
    return tokens, mask


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return OrientationModel(TINY).eval()


def test_outputs_are_proper_rotations_and_phase_logits(model):
    tokens, mask = random_tokens()
    out = model(tokens, mask)
    m = out["matrix"]
    assert m.shape == (6, 3, 3) and out["phase_logits"].shape == (6, 3)
    assert torch.allclose(m.transpose(1, 2) @ m, torch.eye(3).expand(6, 3, 3), atol=1e-5)
    assert torch.allclose(torch.linalg.det(m), torch.ones(6), atol=1e-5)


def test_padding_does_not_change_the_output(model):
    tokens, mask = random_tokens()
    padded_tokens = torch.cat([tokens, torch.randn(6, 5, 3)], 1)  # garbage in the padded slots
    padded_mask = torch.cat([mask, torch.zeros(6, 5, dtype=torch.bool)], 1)
    a, b = model(tokens, mask), model(padded_tokens, padded_mask)
    torch.testing.assert_close(a["raw"], b["raw"], atol=1e-5, rtol=1e-5)


def test_order_of_disks_does_not_change_the_output(model):
    tokens, mask = random_tokens()
    perm = torch.randperm(tokens.shape[1], generator=torch.Generator().manual_seed(3))
    a, b = model(tokens, mask), model(tokens[:, perm], mask[:, perm])
    torch.testing.assert_close(a["raw"], b["raw"], atol=1e-5, rtol=1e-5)


def test_empty_pattern_gives_finite_output(model):
    tokens, mask = random_tokens()
    mask[2] = False
    tokens[2] = 0
    out = model(tokens, mask)
    assert torch.isfinite(out["raw"]).all()


def test_bf16_autocast_runs_and_stays_close(model):
    tokens, mask = random_tokens(B=64, seed=4)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(tokens, mask)["matrix"]
    assert low.dtype == torch.float32
    with torch.no_grad():
        angle = torch.rad2deg(orientation_loss(low, model(tokens, mask)["matrix"], torch.eye(3)[None], False))
    assert float(angle.median()) < 2.0


def test_symmetry_equivalent_labels_give_equal_loss():
    s = point_group_rotations(make_cu()).float()
    pred, true = random_rotations((2, 32), seed=1, dtype=torch.float32)
    equivalent = s[torch.randint(0, 24, (32,), generator=torch.Generator().manual_seed(2))] @ true
    for flip in (False, True):
        torch.testing.assert_close(orientation_loss(pred, equivalent, s, flip), orientation_loss(pred, true, s, flip),
                                   atol=1e-5, rtol=0)
    # the flip option can only lower the loss, and makes the flipped label exact
    flipped = true * torch.tensor([-1.0, -1.0, 1.0])
    assert (orientation_loss(pred, true, s, True) <= orientation_loss(pred, true, s, False) + 1e-6).all()
    assert orientation_loss(flipped, true, s, True).max() < 1e-3


def test_per_phase_symmetry_and_phase_cross_entropy():
    cubic = point_group_rotations(make_cu()).float()
    groups = padded_symmetry([cubic, torch.eye(3)[None]])  # phase 1: the identity only, padded with itself
    true = random_rotations(8, seed=5, dtype=torch.float32)
    pred = cubic[7] @ true  # right for phase 0 (cubic), wrong for phase 1 (identity only)
    phase = torch.tensor([0, 1] * 4)
    angle = orientation_loss(pred, true, groups, False, phase)
    assert angle[phase == 0].max() < 1e-3 and angle[phase == 1].min() > 0.5
    logits = torch.zeros(8, 2)
    loss, _ = total_loss({"matrix": pred, "phase_logits": logits}, true, groups, False, phase)
    assert math.isclose(float(loss), float(angle.mean()) + 0.1 * math.log(2), rel_tol=1e-5)


def test_gradients_flow_through_the_projection(model):
    tokens, mask = random_tokens()
    model.train()
    loss = orientation_loss(model(tokens, mask)["matrix"], random_rotations(6, seed=0, dtype=torch.float32),
                            point_group_rotations(make_cu()).float()).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    model.zero_grad()
    model.eval()


def test_save_load_round_trip_is_exact_and_weights_only(model, tmp_path):
    model.metadata = {"crystal": {"numbers": [29, 29, 29, 29]}, "accel_voltage": 300e3}
    path = tmp_path / "m.pt"
    model.save(path)
    raw = torch.load(path, weights_only=True)  # a model file never needs code to load
    assert raw["kind"] == "model" and raw["model_config"]["d_model"] == 32
    loaded = OrientationModel.load(path)
    assert loaded.config == model.config and loaded.metadata == model.metadata
    tokens, mask = random_tokens()
    assert torch.equal(loaded(tokens, mask)["raw"], model(tokens, mask)["raw"])


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_a_file_that_needs_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": "py4dstem-transformer", "kind": "model", "payload": _Evil()}, path)
    with pytest.raises(ValueError, match="refusing to load"):
        OrientationModel.load(path)
    assert "must never run" not in capsys.readouterr().out
    torch.save({"something": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a py4dstem-transformer checkpoint"):
        OrientationModel.load(tmp_path / "other.pt")
