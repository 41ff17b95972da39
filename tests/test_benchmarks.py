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
