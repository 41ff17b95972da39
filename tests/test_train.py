"""Training: it learns, it is reproducible, and a killed run resumes to the same weights."""


import numpy as np
import pytest
import torch

from py4dstem_transformer.training.augment import rotate_in_plane
from py4dstem_transformer.training.data import PatternStore
from py4dstem_transformer.model.model import ModelConfig, OrientationModel
from py4dstem_transformer.core.rotations import random_rotations, rotation_about_z, symmetry_min_angle
from py4dstem_transformer.core.symmetry import point_group_rotations
from py4dstem_transformer.model.tokens import TokenConfig, tokenize
from py4dstem_transformer.training.trainer import train

from conftest import KinematicSet, make_cu



def predict(model, batch):
    tokens = tokenize(batch.qx, batch.qy, batch.intensity, batch.counts, TokenConfig())
    with torch.no_grad():
        return model(tokens.tokens, tokens.mask)["matrix"]


@pytest.mark.slow
def test_tiny_model_learns_well_beyond_chance(kset, trained):
    s = point_group_rotations(make_cu())
    test = KinematicSet(300, seed=123)  # fresh random orientations, never seen
    store = PatternStore(test)
    batch = store.gather(torch.arange(len(test)))
    pred = predict(trained, batch).double()
    err = torch.rad2deg(symmetry_min_angle(pred, batch.matrix.double(), s, allow_beam_flip=True))
    chance = torch.rad2deg(symmetry_min_angle(random_rotations(300, seed=9), batch.matrix.double(), s, allow_beam_flip=True))
    assert float(chance.median()) > 30
    assert float(err.median()) < 12, float(err.median())
    assert float(err.median()) < 0.35 * float(chance.median())
    h = trained.history
    assert h["val_median_deg"][-1] < h["val_median_deg"][0] and len(h["loss"]) == h["step"][-1]


@pytest.mark.slow
def test_in_plane_rotation_of_the_input_rotates_the_prediction(kset, trained):
    s = point_group_rotations(make_cu())
    store = PatternStore(KinematicSet(100, seed=77))
    batch = store.gather(torch.arange(100))
    phi = torch.full((100,), 1.1)
    rotated = rotate_in_plane(batch, phi, torch.zeros(100, dtype=torch.bool))
    p0, p1 = predict(trained, batch).double(), predict(trained, rotated).double()
    expected = p0 @ rotation_about_z(-phi).double()
    equivariance = torch.rad2deg(symmetry_min_angle(p1, expected, s, allow_beam_flip=True))
    invariant = torch.rad2deg(symmetry_min_angle(p1, p0, s, allow_beam_flip=True))
    assert float(equivariance.median()) < 10
    assert float(equivariance.median()) < 0.5 * float(invariant.median())


def _small_run(kset, **kw):
    return train(kset, epochs=2, batch_size=256, lr=2e-3, warmup=5, val_fraction=0.1, seed=3, progress_bar=False,
                 model_config=ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32), val_every=4,
                 checkpoint_every=3, precision="fp32", **kw)


@pytest.mark.slow
def test_same_seed_same_weights(kset):
    a, b = _small_run(kset), _small_run(kset)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(kset, tmp_path, monkeypatch):
    whole = _small_run(kset, checkpoint_dir=tmp_path / "whole")
    real_forward, calls = OrientationModel.forward, {"n": 0}

    def dying_forward(self, *args, **kwargs):  # the model's public forward, not the trainer's internals
        if self.training:  # training steps only (validation runs in eval mode)
            calls["n"] += 1
            if calls["n"] == 8:  # killed mid-epoch, in step 8, 2 steps after the checkpoint at step 6
                raise KeyboardInterrupt
        return real_forward(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(OrientationModel, "forward", dying_forward)
        with pytest.raises(KeyboardInterrupt):
            _small_run(kset, checkpoint_dir=tmp_path / "killed")
    assert calls["n"] == 8
    assert torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["loop"]["step"] == 6
    resumed = _small_run(kset, checkpoint_dir=tmp_path / "killed", resume=True)
    assert all(torch.equal(whole.state_dict()[k], resumed.state_dict()[k]) for k in whole.state_dict())
    assert whole.history["loss"] == resumed.history["loss"]
    best = OrientationModel.load(tmp_path / "killed" / "best.pt")
    assert all(torch.equal(best.state_dict()[k], resumed.state_dict()[k]) for k in best.state_dict())


@pytest.mark.slow
def test_resume_refuses_other_settings_or_missing_state(kset, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        _small_run(kset, checkpoint_dir=tmp_path, resume=True)
    _small_run(kset, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="other settings"):
        train(kset, epochs=2, batch_size=128, seed=3, checkpoint_dir=tmp_path, resume=True, progress_bar=False,
              model_config=ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32))


@pytest.mark.slow
def test_metadata_describes_the_training_data(trained):
    meta = trained.metadata
    assert meta["accel_voltage"] == 300e3 and meta["k_max"] == 2.0 and meta["centrosymmetric"]
    assert np.allclose(meta["crystal"]["lat_real"], make_cu().lat_real)
    assert len(meta["symmetry"]) == 24 and meta["token_config"]["max_tokens"] == TokenConfig().max_tokens


@pytest.mark.slow
def test_history_plot(trained):
    import matplotlib.pyplot as plt

    from py4dstem_transformer.training.trainer import plot_history

    fig, (ax_loss, ax_val) = plot_history(trained, returnfig=True)
    assert len(ax_val.lines[0].get_xdata()) == len(trained.history["val_step"])
    plt.close(fig)


def test_resume_accepts_a_checkpoint_from_before_a_train_config_field_existed():
    """A checkpoint lacking a field (e.g. the Adam betas, added later) was made with its default then."""
    from dataclasses import asdict

    from py4dstem_transformer.training.trainer import TrainConfig, _resume_settings

    now = asdict(TrainConfig(epochs=5))
    old = {k: v for k, v in now.items() if k not in ("adam_beta1", "adam_beta2", "epochs")}
    assert _resume_settings(old) == _resume_settings(now)
    assert _resume_settings({**old, "adam_beta2": 0.999}) != _resume_settings(now)
