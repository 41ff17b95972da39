"""Scans beyond one process: chunks read from a file, and the same map on a Dask cluster (also when a
worker dies mid-map)."""

import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

from py4dstem_transformer.io.detector import DetectorCalibration
from py4dstem_transformer.io.peaks import Peaks, PeaksFile, open_peaks, peaks_from_braggvectors, read_peaks
from py4dstem_transformer.mapping.selfcal import SelfCalibrationConfig, sample_spans, sampled_peaks


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """A 12 x 14 Cu polycrystal (per-position origin), as BraggVectors and as a py4DSTEM file."""
    import py4DSTEM

    from py4dstem_transformer import simulate_scan
    from py4dstem_transformer.simulation.simulate import example_crystal

    bv, truth = simulate_scan([example_crystal("Cu")], scan_shape=(12, 14), num_grains=5, seed=4, progress_bar=False)
    path = tmp_path_factory.mktemp("scan") / "bv.h5"
    py4DSTEM.save(str(path), bv, mode="o")
    return bv, truth, path


@pytest.fixture(scope="module")
def mapper():
    from py4dstem_transformer import TransformerOrientationMap

    return TransformerOrientationMap.pretrained("Cu")


def test_peaks_read_slices_positions_and_calibration():
    counts = np.array([2, 0, 3, 1, 2, 1])
    n = counts.sum()
    origin = (np.arange(6.0).reshape(2, 3), 10 + np.arange(6.0).reshape(2, 3))
    peaks = Peaks(np.arange(n, dtype=float), -np.arange(n, dtype=float), np.ones(n), counts, (2, 3),
                  DetectorCalibration(origin, 0.02))
    part = peaks.read(2, 5)
    assert part.scan_shape == (3,) and part.counts.tolist() == [3, 1, 2]
    assert part.qx.tolist() == [2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert part.calibration.origin[0].tolist() == [2.0, 3.0, 4.0] and part.calibration.origin[1].tolist() == [12, 13, 14]
    assert part.scan_position(0) == (0, 2) and part.scan_position(2) == (1, 1)  # named in the whole scan
    again = part.read(1, 3)  # a slice of a slice still knows where it sits
    assert again.scan_position(0) == (1, 0) and again.counts.tolist() == [1, 2]


def test_read_peaks_reads_the_positions_asked_for(scan):
    bv, _, path = scan
    whole = peaks_from_braggvectors(bv)
    from_file = read_peaks(path)
    np.testing.assert_array_equal(from_file.counts, whole.counts)
    for start, stop in ((0, 168), (7, 30), (13, 14), (150, 168), (20, 20)):
        part, expected = read_peaks(path, positions=(start, stop)), whole.read(start, stop)
        np.testing.assert_array_equal(part.counts, expected.counts)
        np.testing.assert_array_equal(part.qx, expected.qx)
        np.testing.assert_array_equal(part.calibration.origin[0], expected.calibration.origin[0])
        assert part.first == start and part.whole_shape == (12, 14)
    with pytest.raises(ValueError, match="outside the scan"):
        read_peaks(path, positions=(100, 200))


def test_sampled_peaks_holds_the_self_calibration_sample_only(scan):
    _, _, path = scan
    source = open_peaks(path)
    config = SelfCalibrationConfig(min_sample=40, runs=4)
    sample = sampled_peaks(source, config)
    whole = read_peaks(path)
    inside = np.zeros(168, bool)
    for a, b in sample_spans(168, config):
        inside[a:b] = True
    assert 0 < inside.sum() < 168
    np.testing.assert_array_equal(sample.counts[inside], whole.counts[inside])
    assert (sample.counts[~inside] == 0).all() and len(sample) == whole.counts[inside].sum()


def test_a_map_from_the_file_equals_the_map_from_braggvectors_reading_a_chunk_at_a_time(scan, mapper, monkeypatch):
    bv, _, path = scan
    expected = mapper.match_orientations(bv, progress_bar=False, chunk_size=50)
    reads = []
    original = PeaksFile.read

    def spy(self, start, stop):
        reads.append(stop - start)
        return original(self, start, stop)

    monkeypatch.setattr(PeaksFile, "read", spy)
    got = mapper.match_orientations(str(path), progress_bar=False, chunk_size=50)
    np.testing.assert_array_equal(got.matrix, expected.matrix)
    np.testing.assert_array_equal(got.corr, expected.corr)
    # the self-calibration's sample (on a scan this small, all of it), then chunk after chunk; then the
    # neighbours' second look reads again, a chunk at a time, the chunks holding the positions it looks at
    assert reads[0] == sum(b - a for a, b in sample_spans(168, mapper.self_calibration_config))
    assert reads[1:5] == [50, 50, 50, 18]
    assert set(reads[5:]) <= {50, 18} and len(reads[5:]) <= 4 and (got.second_look["looked"] > 0) == (len(reads) > 5)
    with pytest.raises(FileNotFoundError, match="no file"):
        mapper.match_orientations(str(path) + ".missing", progress_bar=False)


def test_map_part_is_what_a_worker_runs(scan, mapper):
    """A chunk from the file or as flat arrays, with the worker's own device: the same answers."""
    from py4dstem_transformer.mapping.distributed import MapJob, map_part
    from py4dstem_transformer.mapping.selfcal import SelfCalibration

    bv, _, path = scan
    job = MapJob(1, True, True, None, None, None, SelfCalibration(note="off"))  # device None: the worker's own
    from_file = map_part(mapper, job, (open_peaks(path), 14, 42))
    from_arrays = map_part(mapper, job, peaks_from_braggvectors(bv).read(14, 42))
    for a, b in zip(from_file, from_arrays):
        np.testing.assert_array_equal(a, b)
    matrix, corr, probability, counts = from_file
    assert matrix.shape == (28, 1, 1, 3, 3) and corr.shape == (28, 1, 1) and probability.shape == (28, 1)
    assert counts.tolist() == [len(bv.raw[i // 14, i % 14].qx) for i in range(14, 42)]
    assert (corr > 0.5).mean() > 0.5  # mapped, not empty


# --- on a Dask cluster ----------------------------------------------------------------------------

dask = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LocalCluster processes tested on Linux")


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as c:
            yield c


@pytest.mark.slow
@dask
def test_a_cluster_makes_the_same_map(scan, mapper, client):
    bv, _, path = scan
    expected = mapper.match_orientations(bv, progress_bar=False, chunk_size=40)
    for source in (bv, str(path)):
        got = mapper.match_orientations(source, progress_bar=False, chunk_size=40, client=client)
        # the same answers; to float rounding, not bit for bit: batches of another size take other BLAS kernels on
        # some CPUs (1e-7 seen on an AMD EPYC, bit-identical on an Intel Xeon), and a wrong answer is degrees away
        np.testing.assert_allclose(got.matrix, expected.matrix, rtol=0, atol=1e-5)
        np.testing.assert_allclose(got.corr, expected.corr, rtol=0, atol=1e-5)
    assert got.self_calibration.note == expected.self_calibration.note


@pytest.mark.slow
@dask
def test_the_map_survives_a_worker_killed_mid_map(scan, mapper, client):
    bv, _, _ = scan
    expected = mapper.match_orientations(bv, progress_bar=False, chunk_size=4, self_calibrate=False)
    out, errors = {}, []

    def run():
        try:
            out["map"] = mapper.match_orientations(bv, progress_bar=False, chunk_size=4, self_calibrate=False,
                                                   client=client)
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.time() + 60
    while time.time() < deadline and not any(k.startswith("p4t-map") for k in _keys_in_memory(client)):
        time.sleep(0.02)  # wait until the map is under way: a chunk done
    assert thread.is_alive(), "the map finished before a worker could be killed: make the chunks smaller"
    nanny = next(iter(client.cluster.workers.values()))
    pid = nanny.process.process.pid
    os.kill(pid, signal.SIGKILL)  # the worker process dies; its chunks run again elsewhere
    assert _gone(pid)
    thread.join(timeout=180)
    assert not errors, errors
    assert "map" in out, "the map did not finish"
    # the chunks rerun on a fresh worker process may differ in the last float32 bit
    np.testing.assert_allclose(out["map"].matrix, expected.matrix, atol=1e-6)
    np.testing.assert_allclose(out["map"].corr, expected.corr, atol=1e-6)


def _gone(pid, wait=10.0):
    import psutil

    deadline = time.time() + wait
    while time.time() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def _keys_in_memory(client):
    return [k for keys in client.has_what().values() for k in keys]
