"""The README's main command runs end to end (tiny scan), with the shipped model."""

import numpy as np
import pytest

from py4dstem_transformer.cli import main
from py4dstem_transformer.pretrained import list_pretrained, load_pretrained


def test_shipped_model_is_listed_and_loads_weights_only():
    import torch

    from py4dstem_transformer.pretrained import pretrained_path

    assert "Cu" in list_pretrained()
    assert pretrained_path("Cu").stat().st_size < 20e6
    raw = torch.load(pretrained_path("Cu"), weights_only=True)
    assert raw["kind"] == "model" and raw["metadata"]["accel_voltage"] == 300e3
    model = load_pretrained("Cu")
    assert len(model.metadata["symmetry"]) == 24


def test_every_entry_point_reads_a_model_file_before_a_shipped_name(tmp_path, monkeypatch):
    """One rule (``pretrained.load_model``) for the mapper (its constructor and ``from_model``), ``train``'s
    ``init_weights`` and the command line: a file at the given path first, else the shipped model of that name, else
    an error naming both."""
    import shutil

    from py4dstem_transformer import TransformerOrientationMap
    from py4dstem_transformer.pretrained import load_model, pretrained_path

    from conftest import make_cu

    monkeypatch.chdir(tmp_path)
    (tmp_path / "Cu+Cu2O").mkdir()  # a folder of that name is not a model file: the shipped model is read
    assert load_model("Cu+Cu2O").config.n_phases == 2
    assert TransformerOrientationMap(make_cu(), "Cu").phase_names == ["Cu"]  # the constructor reads names too
    shutil.copy(pretrained_path("Cu+Cu2O"), tmp_path / "Cu")  # a file named like the other shipped model
    assert load_model("Cu").config.n_phases == 2
    assert TransformerOrientationMap.from_model("Cu").phase_names == ["Cu", "Cu2O"]
    shipped = load_pretrained("Cu")
    assert load_model(shipped) is shipped
    with pytest.raises(FileNotFoundError, match=r"no model file 'NoSuch'.*shipped models: \['Cu', 'Cu\+Cu2O'\]"):
        load_model("NoSuch")


@pytest.mark.slow
def test_demo_command_runs_and_writes_pictures(tmp_path, capsys):
    assert main(["demo", "--size", "8", "--grains", "3", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "transformer" in out and "ACOM" in out and "patterns / s" in out
    png = tmp_path / "demo_maps.png"
    assert png.exists() and png.stat().st_size > 10_000


def test_demo_accuracy_on_a_small_scan(tmp_path):
    from py4dstem_transformer.evaluation.demo import run_demo

    results = run_demo(size=12, num_grains=4, out=str(tmp_path), acom=False, seed=1, progress_bar=False)
    r = results["transformer"]
    assert r["flip"]["median"] < 3.0  # a handful of grains, each mapped consistently
    assert np.isfinite(r["corr"]).all()
