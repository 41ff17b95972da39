"""``py4dstem-transformer bench`` at tiny sizes: every output is written, ACOM subsets are labelled."""

import json

import numpy as np
import pytest

from py4dstem_transformer.benchmarks.bench_report import END, START, update_docs
from py4dstem_transformer.cli import main

MACHINE_KEYS = {"cpu", "cpu_cores", "torch_threads", "torch", "py4DSTEM", "device", "dtype"}
ACCURACY_KEYS = {"n", "median", "p90", "within_2", "within_5"}


def fake_run_pyxem_apart(peaks_path, out_path=None):
    """Stands in for pyxem (an optional extra) in its own process: reads the peaks file the bench wrote, answers
    identity matrices, 0.01 s library, 0.02 s matching of which 0.005 s a call costs whatever its size."""
    fake_run_pyxem_apart.calls += 1
    z = np.load(peaks_path)
    assert float(z["k_max"]) == 2.0 and len(z["qx"]) == z["offsets"][-1]
    out_path = out_path or str(peaks_path).replace(".npz", ".pyxem.npz")
    np.savez(out_path, matrix=np.tile(np.eye(3), (len(z["offsets"]) - 1, 1, 1)), library_s=0.01, match_s=0.02,
             call_s=0.005, pyxem="fake")
    return out_path


def fake_run_quantem(peaks_path, python, out_path=None):
    """Stands in for quantem in its own environment: reads the peaks file the bench wrote, answers the identity
    (the last position: no match), 0.03 s plan, 0.04 s matching."""
    z = np.load(peaks_path)
    n = len(z["offsets"]) - 1
    assert python == "fake-python" and len(z["qx"]) == z["offsets"][-1] and z["cell"].shape == (3, 3)
    fake_run_quantem.sizes.append(n)
    matrix = np.tile(np.eye(3), (n, 1, 1))
    matrix[-1] = np.nan
    out_path = out_path or str(peaks_path).replace(".npz", ".quantem.npz")
    np.savez(out_path, matrix=matrix, corr=np.ones(n), reliability=np.linspace(0, 1, n), plan_s=0.03, match_s=0.04,
             quantem="fake")
    return out_path


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """The command on 4 x 4 (ACOM on every position) and 8 x 8 (ACOM on 16 of 64, extrapolated),
    with a fake pyxem as the third method and a fake quantem as the fourth."""
    from py4dstem_transformer.benchmarks import peers, pyxem_matching

    tmp = tmp_path_factory.mktemp("bench")
    docs = tmp / "benchmarks.md"
    docs.write_text(f"# Benchmarks\n\n{START}\nold figures\n{END}\n\n## Other section\n")
    argv = ["bench", "--sizes", "4,8", "--acom-max", "16", "--file-min-size", "8", "--out", str(tmp / "out"),
            "--no-progress", "--update-docs", "--docs", str(docs), "--quantem-python", "fake-python"]
    fake_run_pyxem_apart.calls, fake_run_quantem.sizes = 0, []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(peers, "run_quantem", fake_run_quantem)
        patch.setattr(pyxem_matching, "pyxem_missing", lambda: None)
        patch.setattr(peers, "run_pyxem_apart", fake_run_pyxem_apart)
        assert main(argv) == 0
    return tmp, json.loads((tmp / "out" / "bench.json").read_text())


@pytest.mark.slow
def test_json_holds_every_figure_and_the_machine(bench_run):
    _, report = bench_run
    assert MACHINE_KEYS <= set(report["machine"])
    assert report["command"].startswith("py4dstem-transformer bench --sizes 4,8 --acom-max 16")
    assert [r["size"] for r in report["sizes"]] == [4, 8]
    for row in report["sizes"]:
        t, a = row["transformer"], row["acom"]
        assert t["total_s"] > 0 and t["patterns_per_s"] > 0 and a["total_s"] > 0 and a["plan_s"] > 0
        assert all(v >= 0 for v in t["stages_s"].values()) and t["stages_s"]["network"] > 0
        for method in ("transformer", "transformer (ACOM's positions)", "ACOM"):
            assert ACCURACY_KEYS <= set(row["accuracy"][method]["strict"]) and "flip" in row["accuracy"][method]
    assert set(report["accuracy_pooled"]) >= {"transformer", "ACOM"}


@pytest.mark.slow
def test_acom_subsets_are_labelled_extrapolated(bench_run):
    tmp, report = bench_run
    small, large = report["sizes"]
    assert not small["acom"]["extrapolated"] and small["acom"]["positions_matched"] == 16
    assert large["acom"]["extrapolated"] and large["acom"]["positions_matched"] == 16
    assert "extrapolated" in large["acom"]["basis"]
    markdown = (tmp / "out" / "bench.md").read_text()
    row_8 = next(line for line in markdown.splitlines() if line.startswith("| 8² | 64 |"))
    row_4 = next(line for line in markdown.splitlines() if line.startswith("| 4² | 16 |"))
    assert "(extrapolated)" in row_8 and "extrapolated" not in row_4


@pytest.mark.slow
def test_file_path(bench_run):
    _, report = bench_run
    small, large = report["sizes"]
    assert "file" not in small
    f = large["file"]
    assert f["maps_match_memory"] and f["read_peaks_total_s"] > 0 and f["py4dstem_read_total_s"] > 0


@pytest.mark.slow
def test_a_third_method_flows_into_every_output(bench_run):
    tmp, report = bench_run
    assert fake_run_pyxem_apart.calls == 2
    small, large = report["sizes"]
    assert not small["pyxem"]["extrapolated"] and large["pyxem"]["extrapolated"]
    assert large["pyxem"]["positions_matched"] == 16
    # the call's own cost once, with the library; the rest of the matching per pattern, projected to all 64
    assert large["pyxem"]["total_s"] == pytest.approx(0.01 + 0.005 + (0.02 - 0.005) / 16 * 64)
    # scored on ACOM's positions, so on exactly as many crystalline positions as ACOM
    assert large["accuracy"]["pyxem"]["strict"]["n"] == large["accuracy"]["ACOM"]["strict"]["n"] > 0
    assert report["accuracy_pooled"]["pyxem"]["corr_auc"] is None
    assert "| 8² |" in (tmp / "out" / "bench.md").read_text().split("pyxem patterns/s")[1]


@pytest.mark.slow
def test_quantem_in_its_own_environment_flows_into_every_output(bench_run):
    tmp, report = bench_run
    assert fake_run_quantem.sizes == [16, 16]  # ACOM's positions: all 16 of 4 x 4, 16 of the 64 of 8 x 8
    small, large = report["sizes"]
    q = large["quantem"]
    assert not small["quantem"]["extrapolated"] and q["extrapolated"] and q["positions_matched"] == 16
    assert q["no_match"] == 1 and q["total_s"] == pytest.approx(0.03 + 0.04 / 16 * 64)
    assert large["accuracy"]["quantem"]["strict"]["n"] == large["accuracy"]["ACOM"]["strict"]["n"] > 0
    assert set(report["accuracy_pooled"]["quantem"]) == {"strict", "flip", "corr_auc"}
    markdown = (tmp / "out" / "bench.md").read_text()
    assert "| 8² |" in markdown.split("quantem patterns/s")[1] and "quantem: its plan" in markdown
    assert "--quantem-python fake-python" in report["command"]


def test_a_pattern_quantem_leaves_without_a_match_counts_as_wrong():
    """As in benchmarks.peers: no answer is 180 deg off (strict and flip), even where the truth is the identity
    that stands in for it; the other positions keep their errors."""
    from types import SimpleNamespace

    from py4dstem_transformer.benchmarks.bench import _none_wrong
    from py4dstem_transformer.evaluation.compare import evaluate_orientation_map

    n = 6
    found = SimpleNamespace(matrix=np.tile(np.eye(3), (1, n, 1, 1, 1)), corr=np.linspace(0, 1, n)[None, :, None])
    truth = np.tile(np.eye(3), (1, n, 1, 1))
    none = np.arange(n) >= 4
    out = _none_wrong(evaluate_orientation_map(found, truth, np.eye(3)[None], np.ones((1, n), bool)), none)
    assert list(out["errors_strict"]) == [0.0] * 4 + [180.0] * 2 and list(out["errors_flip"][4:]) == [180.0] * 2
    assert out["strict"]["n"] == n and out["corr_auc"] == 0.0  # the two highest corr are the two without an answer


def test_a_pyxem_that_fails_in_its_own_process_is_reported_not_raised(monkeypatch):
    """The real child process (``python -m ...pyxem_matching``) given a peaks file without the crystal: the bench's
    pyxem row names the failure, with the child's own error, and the run goes on."""
    from types import SimpleNamespace

    from py4dstem_transformer.benchmarks import bench, peers

    monkeypatch.setattr(peers, "write_peaks", lambda path, *a, **k: np.savez(path, nothing=0))
    monkeypatch.setattr(bench, "_crystal", lambda config: None)
    row, accuracy = bench._run_pyxem(bench.BenchConfig(), SimpleNamespace(Rshape=(2, 2)), np.arange(4), None, None)
    assert accuracy == {} and row["failed"].startswith("RuntimeError: pyxem failed on")
    assert "KeyError" in row["failed"] and "positions" in row["failed"]


def test_pyxem_is_skipped_with_a_reason_when_it_cannot_be_imported():
    from py4dstem_transformer.benchmarks.bench import _pyxem_note
    from py4dstem_transformer.benchmarks.pyxem_matching import pyxem_missing

    try:
        import pyxem  # noqa: F401
    except ImportError:
        assert "pyxem" in pyxem_missing()
        assert _pyxem_note(pyxem_missing()).startswith("skipped")
    else:
        assert pyxem_missing() is None


@pytest.mark.slow
def test_plots_and_docs_are_written(bench_run):
    tmp, _ = bench_run
    for name in ("scaling", "stages", "errors", "maps"):
        assert (tmp / "out" / f"bench_{name}.png").stat().st_size > 5_000
        assert (tmp / "images" / f"bench_{name}.png").exists()
    docs = (tmp / "benchmarks.md").read_text()
    assert "old figures" not in docs and "## Other section" in docs and "(images/bench_scaling.png)" in docs
    assert docs.index(START) < docs.index("Side-by-side benchmark") < docs.index(END)


def test_update_docs_needs_the_markers(tmp_path):
    path = tmp_path / "b.md"
    path.write_text("# no markers\n")
    with pytest.raises(ValueError, match="markers"):
        update_docs("text", path)


def test_staged_run_computes_what_match_orientations_computes():
    from py4dstem_transformer.benchmarks.common import load_mapper
    from py4dstem_transformer.benchmarks.stages import STAGES, staged_transformer_map
    from py4dstem_transformer.simulation.scan import simulate_scan

    mapper = load_mapper("Cu")
    bragg, truth = simulate_scan([mapper.crystal], scan_shape=(6, 6), num_grains=3, seed=3, progress_bar=False)
    expected = mapper.match_orientations(bragg, progress_bar=False)
    staged, seconds = staged_transformer_map(mapper, bragg)
    crystalline = truth.phase >= 0
    np.testing.assert_allclose(staged.matrix[crystalline], expected.matrix[crystalline], atol=1e-6)
    np.testing.assert_allclose(staged.corr, expected.corr, atol=1e-6)
    assert set(seconds) == set(STAGES) and all(seconds[k] > 0 for k in ("network", "expand", "refine", "score", "rank"))

