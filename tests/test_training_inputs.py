"""Training inputs (issue 21, item 3): training-set files and the arguments of ``generate_training_set`` and
``train``. Each bad input gives a clear error naming the argument (or file) and what to pass, or works
sensibly; nothing runs on silently into an empty set or an untrained model."""

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import make_cu, make_cu2o
from py4dstem_transformer.io.checkpoint import DamagedFileError, ForeignFileError
from py4dstem_transformer.model.model import ModelConfig
from py4dstem_transformer.simulation.simulate import generate_training_set
from py4dstem_transformer.simulation.training_set import TrainingSet
from py4dstem_transformer.training.trainer import TrainConfig, train

FAST = dict(dynamical=False, progress_bar=False)
TINY = ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32)


def make_al():
    from py4DSTEM.process.diffraction import Crystal

    return Crystal(positions=make_cu().positions, numbers=13, cell=4.05)


@pytest.fixture(scope="module")
def cu_set():
    return generate_training_set(make_cu(), num_zone_axes=40, seed=1, **FAST)


@pytest.fixture(scope="module")
def al_set():
    return generate_training_set(make_al(), num_zone_axes=20, seed=3, **FAST)


@pytest.fixture(scope="module")
def one_pattern():
    return generate_training_set(make_cu(), num_zone_axes=1, seed=2, **FAST)


def quick_train(training_set, **kw):
    args = dict(epochs=1, batch_size=16, lr=1e-3, warmup=2, val_fraction=0.1, seed=0, progress_bar=False,
                model_config=TINY, precision="fp32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train(training_set, **{**args, **kw})


def empty_like(ts):
    """A TrainingSet with no pattern (``generate_training_set`` refuses to make one; a user can build it)."""
    return TrainingSet(ts.config, np.zeros((0, 3, 3)), np.zeros(0), np.zeros(0, np.int64), ts.zone_axes, [0],
                       np.zeros(0), np.zeros(0), np.zeros(0))


# -- generate_training_set ----------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, name", [
    (dict(num_zone_axes=0), "num_zone_axes"),
    (dict(num_zone_axes=-3), "num_zone_axes"),
    (dict(num_zone_axes=3, k_max=0.0), "k_max"),
    (dict(num_zone_axes=3, k_max=-1.0), "k_max"),
    (dict(num_zone_axes=3, k_max=float("nan")), "k_max"),
    (dict(num_zone_axes=3, n_jobs=0), "n_jobs"),
    (dict(num_zone_axes=3, n_jobs=-3), "n_jobs"),
    (dict(num_zone_axes=3, accel_voltage=0.0), "accel_voltage"),
    (dict(num_zone_axes=3, accel_voltage=-300e3), "accel_voltage"),
    (dict(num_zone_axes=3, sigma_excitation_error=0.0), "sigma_excitation_error"),
    (dict(num_zone_axes=3, sigma_excitation_error=-0.02), "sigma_excitation_error"),
    (dict(num_zone_axes=3, precession_angle_degrees=-1.0), "precession_angle_degrees"),
    (dict(num_zone_axes=3, min_relative_intensity=1.0), "min_relative_intensity"),
    (dict(num_zone_axes=3, dedup_tolerance=-1.0), "dedup_tolerance"),
    (dict(zone_axes=np.zeros((0, 3))), "zone_axes"),
    (dict(zone_axes=[[0.0, 0.0, 0.0]]), "zone_axes"),
    (dict(zone_axes=[[np.nan, 0.0, 1.0]]), "zone_axes"),
    (dict(zone_axes=[[0.0, 1.0]]), "zone_axes"),
    (dict(angle_step_zone_axis=0.0), "angle_step_zone_axis"),
])
def test_generate_training_set_names_the_bad_argument(kwargs, name):
    with pytest.raises(ValueError, match=rf"{name}.*(pass|must)"):
        generate_training_set(make_cu(), **FAST, **kwargs)


@pytest.mark.parametrize("kwargs, name", [
    (dict(thickness=[]), "thickness"),
    (dict(thickness=[-5.0]), "thickness"),
    (dict(thickness=[50.0, 0.0]), "thickness"),
    (dict(thickness=[10.0, 100.0], num_thicknesses=0), "num_thicknesses"),
    (dict(thickness=[10.0, 100.0], num_thicknesses=-1), "num_thicknesses"),
])
def test_dynamical_thickness_arguments_are_checked_before_any_simulation(kwargs, name):
    with pytest.raises(ValueError, match=rf"{name}.*(pass|must)"):
        generate_training_set(make_cu(), num_zone_axes=2, progress_bar=False, **kwargs)


def test_a_set_with_no_pattern_left_is_refused_with_the_reason():
    with pytest.raises(ValueError, match=r"no pattern left.*dropped_empty': 3.*k_max = 0.05.*larger k_max"):
        generate_training_set(make_cu(), num_zone_axes=3, k_max=0.05, **FAST)


def test_not_a_crystal_is_refused():
    with pytest.raises(TypeError, match="py4DSTEM Crystal, got str"):
        generate_training_set("Cu", num_zone_axes=3, **FAST)


def test_n_jobs_minus_one_and_one_direction_work(one_pattern):
    assert len(one_pattern) == 1 and one_pattern.counts[0] > 0
    ts = generate_training_set(make_cu(), num_zone_axes=2, n_jobs=-1, seed=2, **FAST)
    same = generate_training_set(make_cu(), num_zone_axes=2, n_jobs=1, seed=2, **FAST)
    assert len(ts) == 2 and np.array_equal(ts.qx, same.qx) and np.array_equal(ts.orientation_matrices,
                                                                               same.orientation_matrices)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(num_zone_axes=st.integers(1, 6), k_max=st.floats(0.3, 3.0), seed=st.integers(0, 1000),
       min_relative_intensity=st.floats(0.0, 0.5))
def test_any_valid_kinematic_arguments_give_a_consistent_set(num_zone_axes, k_max, seed, min_relative_intensity):
    """A consistent set, or (every pattern empty or collinear, e.g. k_max below Cu's 111 at 0.48 1/A) the clear
    no-pattern error."""
    try:
        ts = generate_training_set(make_cu(), num_zone_axes=num_zone_axes, k_max=k_max, seed=seed,
                                   min_relative_intensity=min_relative_intensity, **FAST)
    except ValueError as error:
        assert "no pattern left" in str(error) and "larger k_max" in str(error)
        return
    assert 1 <= len(ts) <= num_zone_axes
    assert ts.offsets[0] == 0 and ts.offsets[-1] == len(ts.qx) and (np.diff(ts.offsets) >= 1).all()
    r = np.hypot(ts.qx, ts.qy)
    assert (r <= k_max * (1 + 1e-6)).all() and np.isfinite(ts.intensity).all()
    assert (ts.intensity <= 1).all() and (ts.intensity >= min_relative_intensity * (1 - 1e-6)).all()
    m = ts.orientation_matrices
    np.testing.assert_allclose(np.linalg.det(m), 1.0, atol=1e-9)


# -- training-set files -----------------------------------------------------------------------------
def test_one_pattern_file_round_trips_and_trains(tmp_path, one_pattern):
    path = tmp_path / "one.h5"
    one_pattern.save(path)
    back = TrainingSet.load(path)
    assert len(back) == 1 and np.array_equal(back.qx, one_pattern.qx)
    model = quick_train(back)
    assert model.history["step"] == [1] and np.isfinite(model.history["loss"]).all()
    assert model.metadata["training_set_size"] == 1


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.9, 0.99])
def test_truncated_file_gives_an_error_naming_it(tmp_path, one_pattern, keep):
    whole = tmp_path / "whole.h5"
    one_pattern.save(whole)
    data = whole.read_bytes()
    cut = tmp_path / f"cut_{int(keep * 100)}.h5"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DamagedFileError, match=cut.name):
        TrainingSet.load(cut)


def test_missing_or_foreign_file_gives_an_error_naming_it(tmp_path):
    import h5py

    with pytest.raises(FileNotFoundError, match="missing.h5"):
        TrainingSet.load(tmp_path / "missing.h5")
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as f:
        f.create_dataset("x", data=np.arange(3))
    with pytest.raises(ForeignFileError, match="foreign.h5"):
        TrainingSet.load(foreign)
    import emdfile

    other = tmp_path / "other.h5"
    root = emdfile.Root(name="something_else")
    root.add_to_tree(emdfile.Array(data=np.arange(3.0), name="x"))
    emdfile.save(str(other), root, mode="o")
    with pytest.raises(ForeignFileError, match="other.h5 does not hold a py4dstem-transformer training set"):
        TrainingSet.load(other)


# -- train ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, name", [
    (dict(epochs=-1), "epochs"),
    (dict(epochs=2.5), "epochs"),
    (dict(epochs=None, max_minutes=0.0), "max_minutes"),
    (dict(batch_size=0), "batch_size"),
    (dict(lr=0.0), "lr"),
    (dict(lr=-1e-3), "lr"),
    (dict(lr=float("nan")), "lr"),
    (dict(warmup=-1), "warmup"),
    (dict(val_fraction=1.0), "val_fraction"),
    (dict(val_fraction=-0.1), "val_fraction"),
    (dict(val_every=0), "val_every"),
    (dict(checkpoint_every=0), "checkpoint_every"),
])
def test_train_names_the_bad_argument(cu_set, kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} = .*(pass|must)"):
        quick_train(cu_set, **kwargs)


def test_zero_epochs_builds_the_initial_model_untrained(cu_set):
    source = quick_train(cu_set)
    model = quick_train(cu_set, epochs=0, init_weights=source)
    assert model.history["step"] == [] and model.metadata["initialized_from"]
    for name, value in model.state_dict().items():
        assert np.array_equal(value.numpy(), source.state_dict()[name].numpy()), name


def test_train_config_defaults_stay_valid():
    assert TrainConfig().epochs is None and TrainConfig(epochs=5).epochs == 5


def test_empty_set_is_refused(cu_set, al_set):
    with pytest.raises(ValueError, match="training set holds no patterns.*generate_training_set"):
        quick_train(empty_like(cu_set))
    with pytest.raises(ValueError, match=r"training set of phase\(s\) \['Al'\] holds no patterns"):
        quick_train([cu_set, empty_like(al_set)])


def test_a_file_path_or_other_object_is_refused(tmp_path):
    with pytest.raises(TypeError, match=r"TrainingSet\.load\(path\).*got str"):
        quick_train(str(tmp_path / "set.h5"))
    with pytest.raises(TypeError, match="got ndarray"):
        quick_train(np.zeros((3, 3)))


def test_one_pattern_set_held_out_entirely_is_refused(one_pattern):
    # one zone axis, held out for validation: nothing left to train on
    from py4dstem_transformer.training.data import split_by_zone_axis

    train_idx, _ = split_by_zone_axis(one_pattern.zone_axis_index, 0.99, 0)
    assert len(train_idx) == 0
    with pytest.raises(ValueError, match=r"val_fraction = 0.99 holds out every pattern.*val_fraction=0"):
        quick_train(one_pattern, val_fraction=0.99)


def test_users_training_set_is_not_modified(cu_set):
    before = {k: np.copy(getattr(cu_set, k)) for k in ("qx", "qy", "intensity", "offsets", "orientation_matrices")}
    quick_train(cu_set)
    for k, v in before.items():
        assert np.array_equal(v, getattr(cu_set, k)), k


def _init_from_another_crystal(source, target_set, model_config):
    from py4dstem_transformer.core.crystal import CrystalIdentity

    model = quick_train(target_set, model_config=model_config, init_weights=source)
    source_weights = source.state_dict()
    # the new model is for the training set's crystal, starts from the source's weights, carries no foreign calibration
    assert model.metadata["crystal"] == CrystalIdentity.from_crystal(target_set.crystal()).to_dict()
    assert model.metadata["crystal"] != source.metadata["crystal"]
    assert "confidence_calibration" not in model.metadata
    assert model.metadata["initialized_from"]["training_set_size"] == source.metadata["training_set_size"]
    moved = [k for k, v in model.state_dict().items() if not np.array_equal(v.numpy(), source_weights[k].numpy())]
    assert 0 < len(moved)  # it trained
    assert np.isfinite(model.history["loss"]).all()
    return model


def test_init_from_a_model_for_another_crystal_fine_tunes(cu_set, al_set):
    """A Cu model is a fine starting point for Al (same architecture): it trains, and the result is an Al model."""
    cu_model = quick_train(cu_set)
    _init_from_another_crystal(cu_model, al_set, TINY)


def test_init_from_a_model_of_another_architecture_names_it(cu_set):
    cu_model = quick_train(cu_set)
    with pytest.raises(ValueError, match="init_weights has another architecture than model_config"):
        quick_train(cu_set, model_config=ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=32), init_weights=cu_model)


@pytest.mark.slow
@pytest.mark.parametrize("make", [make_al, make_cu2o])
def test_init_from_the_shipped_cu_model_for_another_crystal(make):
    from py4dstem_transformer.pretrained import load_pretrained

    shipped = load_pretrained("Cu")
    target = generate_training_set(make(), num_zone_axes=8, seed=4, **FAST)
    assert "confidence_calibration" in shipped.metadata
    _init_from_another_crystal(shipped, target, shipped.config)
