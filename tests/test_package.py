"""Packaging, command line and the README's promises."""

import ast
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


def test_console_reports_a_users_error_in_one_line_and_keeps_bugs_loud(tmp_path, capsys, monkeypatch):
    from py4dstem_transformer import cli

    monkeypatch.delenv("PY4DSTEM_TRANSFORMER_TRACEBACK", raising=False)
    out = tmp_path / "x.pt"
    assert cli.console(["calibrate", "NoSuch", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("py4dstem-transformer: error: no model file 'NoSuch'") and "Traceback" not in err
    assert "--traceback" in err and not out.exists()
    with pytest.raises(FileNotFoundError, match="no model file 'NoSuch'"):
        cli.console(["--traceback", "calibrate", "NoSuch", "--out", str(out)])
    monkeypatch.setenv("PY4DSTEM_TRANSFORMER_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError):
        cli.console(["calibrate", "NoSuch", "--out", str(out)])
    monkeypatch.delenv("PY4DSTEM_TRANSFORMER_TRACEBACK")
    assert cli.console(["info"]) == 0
    capsys.readouterr()

    def bug(argv):
        raise TypeError("a bug, not the user's doing")

    monkeypatch.setattr(cli, "main", bug)
    with pytest.raises(TypeError, match="a bug"):  # only the errors a user can fix become one line
        cli.console(["info"])


def test_installed_command_is_the_console_entry_point():
    text = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^py4dstem-transformer = "py4dstem_transformer\.cli:console"$', text, re.M)
    result = subprocess.run([sys.executable, "-m", "py4dstem_transformer", "calibrate", "NoSuch", "--out", "x.pt"],
                            capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: no model file 'NoSuch'" in result.stderr


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


# -- the layout: folders import downwards only, and nothing in the library imports the benchmarks ----------------
PACKAGE = ROOT / "py4dstem_transformer"
#: Each top-level folder (or module) of the package and its tier: core <- io, model <- simulation, training,
#: mapping, detection <- evaluation <- benchmarks, with the command line at the top. A module imports its own tier or lower.
TIERS = {"_version": 0, "core": 0, "io": 1, "model": 1, "pretrained": 1, "simulation": 2, "training": 2, "mapping": 2, "detection": 2,
         "evaluation": 3, "benchmarks": 4, "cli": 5, "__main__": 5, "__init__": 5}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def _imports(path: Path):
    """``(imported module, line, inside a function)`` for each import of the package in the file at ``path``."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                   for n in ast.walk(f)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]) if node.level else ""
            source = ".".join(p for p in (base, node.module) if p)
            names = [f"{source}.{a.name}" if _is_module(f"{source}.{a.name}") else source for a in node.names]
        else:
            continue
        for name in dict.fromkeys(names):  # once per imported module
            if name.split(".")[0] == "py4dstem_transformer":
                yield name, node.lineno, id(node) in in_function


def _folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _import_edges() -> dict:
    """``{(importing folder, imported folder): ["module -> module (line n)", ...]}`` across the package."""
    edges = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        source = _module_name(path)
        for target, line, _ in _imports(path):
            if _folder(source) != _folder(target):
                edges.setdefault((_folder(source), _folder(target)), []).append(f"{source} -> {target} (line {line})")
    return edges


def _cycle(edges) -> list:
    """One cycle of folders in the graph ``edges`` (a list of folders), or [] if there is none."""
    graph = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)

    def visit(node, path):
        for nxt in sorted(graph.get(node, ())):
            if nxt in path:
                return path[path.index(nxt):] + [nxt]
            found = visit(nxt, path + [nxt])
            if found:
                return found
        return []

    return next((c for c in (visit(n, [n]) for n in sorted(graph)) if c), [])


def test_the_cycle_finder_finds_cycles():
    assert _cycle({("a", "b"): [], ("b", "c"): [], ("c", "a"): []}) == ["a", "b", "c", "a"]
    assert _cycle({("a", "b"): [], ("b", "c"): [], ("a", "c"): []}) == []


def test_every_package_folder_has_a_tier():
    folders = {_folder(_module_name(p)) for p in PACKAGE.rglob("*.py")}
    assert folders == set(TIERS), folders ^ set(TIERS)


def test_no_import_cycle_between_the_folders():
    edges = _import_edges()
    cycle = _cycle(edges)
    assert cycle == [], " -> ".join(cycle) + ":\n" + "\n".join(w for pair in zip(cycle, cycle[1:]) for w in edges[pair])


def test_folders_import_only_their_own_tier_or_lower():
    upward = [why for (a, b), whys in _import_edges().items() if TIERS[b] > TIERS[a] for why in whys]
    assert upward == [], "\n".join(upward)


def test_the_library_never_imports_the_benchmarks_and_only_cli_parses_arguments():
    """Only cli.py imports benchmarks (``bench``, inside the command's function), and only cli.py uses argparse."""
    offending = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        if _folder(module) == "benchmarks":
            continue
        for target, line, in_function in _imports(path):
            if _folder(target) == "benchmarks" and not (module == "py4dstem_transformer.cli" and in_function):
                offending.append(f"{module} imports {target} (line {line})")
        uses_argparse = re.search(r"^\s*(import|from) argparse\b", path.read_text(), re.M)
        if uses_argparse and module != "py4dstem_transformer.cli":
            offending.append(f"{module} imports argparse")
    assert offending == [], "\n".join(offending)
