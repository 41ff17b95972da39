"""Damaged, foreign, unsafe and newer model files and training sets are refused by name, never used."""

import pickle
import random

import numpy as np
import pytest
import torch

from py4dstem_transformer.io.checkpoint import (DamagedFileError, ForeignFileError, NewerFormatError, UnsafeFileError,
                                                content_checksum)
from py4dstem_transformer.model.model import ModelConfig, OrientationModel
from py4dstem_transformer.simulation.simulate import generate_training_set
from py4dstem_transformer.simulation.training_set import TrainingSet

from conftest import make_cu


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.pt"
    torch.manual_seed(0)
    OrientationModel(ModelConfig(d_model=32, n_layers=1, n_heads=2, d_ff=64), {"note": "test"}).save(path)
    return path


@pytest.fixture(scope="module")
def set_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("set") / "set.h5"
    generate_training_set(make_cu(), angle_step_zone_axis=12, thickness=[30.0], progress_bar=False).save(path)
    return path


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_a_saved_model_holds_the_checksum_of_its_contents(model_file):
    raw = torch.load(model_file, weights_only=True)
    assert raw["format_version"] == 2 and raw["checksum"] == content_checksum(raw)
    OrientationModel.load(model_file)  # verifies


def test_checksum_sees_every_value_and_no_key_order():
    a = {"w": torch.arange(6.0).view(2, 3), "meta": {"x": [1, 2.5, None], "y": "s"}}
    b = {"meta": {"y": "s", "x": (1, 2.5, None)}, "w": torch.arange(6.0).view(2, 3)}
    assert content_checksum(a) == content_checksum(b)  # key order and list/tuple do not matter
    for changed in ({**a, "w": torch.arange(6.0).view(3, 2)}, {**a, "w": a["w"].double()},
                    {**a, "meta": {"x": [1, 2.5000001, None], "y": "s"}}, {**a, "extra": 0}):
        assert content_checksum(changed) != content_checksum(a)


@pytest.mark.parametrize("seed", range(6))
def test_sixteen_changed_bytes_are_never_loaded(model_file, tmp_path, seed):
    data = bytearray(model_file.read_bytes())
    rng = random.Random(seed)
    for _ in range(16):
        data[rng.randrange(len(data))] = rng.randrange(256)
    with pytest.raises(DamagedFileError, match="damaged"):
        OrientationModel.load(_write(tmp_path / "bad.pt", bytes(data)))


def test_changed_weights_in_a_valid_archive_fail_the_checksum(model_file, tmp_path):
    raw = torch.load(model_file, weights_only=True)
    name = next(iter(raw["state_dict"]))
    raw["state_dict"][name] = raw["state_dict"][name] + 1e-3  # an archive torch writes afresh: CRCs are right
    torch.save(raw, tmp_path / "edited.pt")
    with pytest.raises(DamagedFileError, match="do not match the checksum"):
        OrientationModel.load(tmp_path / "edited.pt")


def test_each_wrong_file_gets_its_own_error_naming_it(model_file, tmp_path):
    data = model_file.read_bytes()
    half = _write(tmp_path / "half.pt", data[:len(data) // 2])
    noise = _write(tmp_path / "noise.pt", np.random.default_rng(0).bytes(4096))
    cases = [(half, DamagedFileError, "not a complete torch archive"),
             (noise, DamagedFileError, "not a complete torch archive")]

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    torch.save({"format": "py4dstem-transformer", "kind": "model", "x": Evil()}, tmp_path / "evil.pt")
    with open(tmp_path / "evil.pkl", "wb") as f:
        pickle.dump({"x": Evil()}, f)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    newer = torch.load(model_file, weights_only=True)
    newer["format_version"] = 99
    torch.save(newer, tmp_path / "newer.pt")
    cases += [(tmp_path / "evil.pt", UnsafeFileError, "would run code"),
              (tmp_path / "evil.pkl", UnsafeFileError, "would run code"),
              (tmp_path / "other.pt", ForeignFileError, "another program"),
              (tmp_path / "newer.pt", NewerFormatError, "newer py4dstem-transformer")]
    for path, error, says in cases:
        with pytest.raises(error, match=says) as info:
            OrientationModel.load(path)
        assert str(path) in str(info.value) and isinstance(info.value, ValueError)
    with pytest.raises(FileNotFoundError, match="no model"):
        OrientationModel.load(tmp_path / "missing.pt")


def test_format_1_files_without_a_checksum_still_load(model_file, tmp_path):
    old = torch.load(model_file, weights_only=True)
    old["format_version"] = 1
    del old["checksum"]
    torch.save(old, tmp_path / "old.pt")
    assert OrientationModel.load(tmp_path / "old.pt").config == OrientationModel.load(model_file).config


def test_a_models_history_round_trips_as_tensors_and_old_lists_still_load(model_file, tmp_path):
    from py4dstem_transformer.io.checkpoint import pack_history, unpack_history

    history = {"step": [1, 2, 3], "loss": [0.5, float("nan"), 1e-30], "lr": [1e-3, 1e-3, 5e-4], "empty": [],
               "mixed": [1, 2.5], "by_phase": [[0.9, 0.8], [0.7, 0.6]], "flag": [True, False]}
    packed = pack_history(history)
    assert packed["step"].dtype == torch.int64 and packed["loss"].dtype == torch.float64
    for kept in ("empty", "mixed", "by_phase", "flag"):  # not one column of one kind: stored as it is
        assert packed[kept] is history[kept]
    back = unpack_history(packed)
    assert back["step"] == [1, 2, 3] and all(type(v) is int for v in back["step"])
    assert back["lr"] == history["lr"] and back["loss"][2] == 1e-30 and np.isnan(back["loss"][1])
    model = OrientationModel.load(model_file)
    model.history = {"step": list(range(1, 1001)), "loss": [1 / k for k in range(1, 1001)]}
    model.save(tmp_path / "h.pt")
    raw = torch.load(tmp_path / "h.pt", weights_only=True)
    assert isinstance(raw["history"]["loss"], torch.Tensor)  # written as a tensor ...
    assert OrientationModel.load(tmp_path / "h.pt").history == model.history  # ... read back as the same list
    raw["history"] = model.history  # a file written before: lists
    raw["checksum"] = content_checksum(raw)
    torch.save(raw, tmp_path / "lists.pt")
    assert OrientationModel.load(tmp_path / "lists.pt").history == model.history


def test_a_saved_training_set_verifies_and_round_trips(set_file):
    ts = TrainingSet.load(set_file)
    assert ts.info["checksum"] == ts.checksum() and ts.info["format_version"] == 2


def test_changed_training_set_arrays_fail_the_checksum(set_file, tmp_path):
    import h5py

    bad = _write(tmp_path / "bad.h5", set_file.read_bytes())
    with h5py.File(bad, "r+") as f:
        names = []
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) and name.endswith("qx/data")
                     else None)
        f[names[0]][0] += 0.01  # HDF5 itself notices nothing
    with pytest.raises(DamagedFileError, match="do not match the checksum"):
        TrainingSet.load(bad)


def test_each_wrong_training_set_file_gets_its_own_error(set_file, model_file, tmp_path):
    data = set_file.read_bytes()
    half = _write(tmp_path / "half.h5", data[:len(data) // 2])
    noise = _write(tmp_path / "noise.h5", np.random.default_rng(1).bytes(4096))
    for path in (half, noise):
        with pytest.raises(DamagedFileError, match="damaged") as info:
            TrainingSet.load(path)
        assert str(path) in str(info.value)
    import h5py

    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ValueError, match="does not hold a py4dstem-transformer training set"):
        TrainingSet.load(tmp_path / "other.h5")
    with pytest.raises(DamagedFileError, match="not an HDF5 file"):
        TrainingSet.load(model_file)  # a model file passed as a training set
    with pytest.raises(FileNotFoundError, match="no training-set file"):
        TrainingSet.load(tmp_path / "missing.h5")
