"""Packaging, command line and the README's promises."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import py4dstem_transformer
from py4dstem_transformer.cli import main
from py4dstem_transformer.core.device import environment_info

ROOT = Path(__file__).resolve().parents[1]


def test_version_is_exposed():
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", py4dstem_transformer.__version__)


def test_cli_version_and_info(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and py4dstem_transformer.__version__ in capsys.readouterr().out
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for key in ("py4DSTEM", "torch", "numpy", "device", "cpu_fast_bf16", "pymatgen", "orix"):
        assert re.search(rf"^{key}\s", out, re.M), key


def test_environment_info_reports_real_versions():
    import numpy
    import torch

    info = environment_info()
    assert info["torch"] == torch.__version__ and info["numpy"] == numpy.__version__
    assert info["py4DSTEM"].startswith("0.14")
    assert isinstance(info["cpu_fast_bf16"], bool)


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "py4dstem_transformer", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and py4dstem_transformer.__version__ in out.stdout


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", readme, re.S)
    test_commands = [c for c in commands if "pytest" in c]
    assert len(test_commands) == 1
    assert test_commands[0].strip() in ci.splitlines()


def test_import_registers_generate_training_set_on_crystal():
    from py4DSTEM.process.diffraction import Crystal

    from conftest import make_cu

    assert Crystal.generate_training_set.__module__ == "py4dstem_transformer.simulation.simulate"
    ts = make_cu().generate_training_set(angle_step_zone_axis=15, thickness=[50.0], progress_bar=False)
    assert isinstance(ts, py4dstem_transformer.TrainingSet) and len(ts) > 0
    assert np.isclose(ts.config.accel_voltage, 300e3)
    for name in ("TransformerOrientationMap", "TrainingSet", "train", "list_pretrained", "generate_training_set"):
        assert name in py4dstem_transformer.__all__ and callable(getattr(py4dstem_transformer, name))
