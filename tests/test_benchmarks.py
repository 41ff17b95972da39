"""The benchmark commands run (tiny sizes) and return the figures they print."""

import math

from py4dstem_transformer.benchmarks import accuracy, memory, speed, tokens


def test_token_benchmark_runs(capsys):
    r = tokens.main(["--size", "16", "--repeats", "1", "--no-file"])
    assert r["positions"] == 256 and r["tokens_s"] > 0
    assert "patterns/s" in capsys.readouterr().out


def test_speed_and_memory_benchmarks_run(capsys):
    r = speed.main(["--size", "8", "--acom-n", "5", "--repeats", "1"])
    assert r["positions"] == 64 and r["network"] > 0 and r["refined"] > 0 and r["ACOM (extrapolated)"] > 0
    m = memory.main(["--size", "8"])
    assert m["peak_gb"] >= m["base_gb"] > 0
    assert "extrapolated" in capsys.readouterr().out


def test_accuracy_benchmark_runs(tmp_path):
    report = accuracy.main(["--n", "20", "--acom-n", "10", "--json", str(tmp_path / "a.json")])
    clean = report["clean"]
    assert set(clean) == {"network fp32", "network", "refined", "ACOM default"}
    assert 0 <= clean["refined"]["strict"]["median"] <= 180 and not math.isnan(clean["refined"]["strict"]["median"])
    assert (tmp_path / "a.json").stat().st_size > 100


def test_confidence_benchmark_runs(capsys):
    from py4dstem_transformer.benchmarks import confidence

    report = confidence.main(["--n", "30"])
    for name in ("clean", "damaged"):
        assert 0 <= report[name]["right"] <= 1
        assert set(report[name]["auc"]) >= {"s1 (raw score)", "s1 - s2", "calibrated (corr)"}  # the shipped Cu is calibrated
        assert 0 < report[name]["mean_probability"] < 1
    assert "ROC AUC" in capsys.readouterr().out


def test_phase_benchmark_runs(tmp_path, capsys):
    import json

    from py4dstem_transformer.benchmarks import phases

    report = phases.main(["--size", "12", "--grains", "4", "--acom-n", "8", "--json", str(tmp_path / "p.json")])
    assert report["joint"]["n_crystalline"] > 0 and 0 <= report["joint"]["phase_accuracy"] <= 1
    assert report["acom"]["extrapolated"] and report["crystal_phase"]["n"] == 8
    assert json.loads((tmp_path / "p.json").read_text())["size"] == 12
    assert "(extrapolated)" in capsys.readouterr().out
