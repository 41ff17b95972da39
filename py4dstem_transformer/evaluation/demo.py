"""``py4dstem-transformer demo``: a synthetic Cu polycrystal mapped by the transformer and by ACOM.

Simulates a scan (:func:`~py4dstem_transformer.simulation.scan.simulate_scan`: Voronoi grains, random
orientations, Bloch-wave patterns 20-500 A thick, raw detector pixels + calibration), maps it with
the shipped Cu model and with py4DSTEM's ``match_orientations`` (default plan), prints a side-by-side
table and writes PNGs of the ground truth and both orientation maps.
"""

from __future__ import annotations

import time
from pathlib import Path

__all__ = ["plot_comparison", "run_demo"]


def run_demo(size: int = 32, num_grains: int = 12, out="demo_out", acom: bool = True, seed: int = 0,
             progress_bar: bool = True) -> dict:
    """Run the comparison; returns the figures it prints (and writes ``out``/demo_*.png)."""
    from .compare import acom_default, evaluate_orientation_map
    from ..core.crystal import crystal_from_metadata
    from ..mapping.mapper import TransformerOrientationMap
    from ..simulation.scan import simulate_scan

    mapper = TransformerOrientationMap.pretrained("Cu")
    crystal = crystal_from_metadata(mapper.model.metadata)
    bragg, truth = simulate_scan([crystal], scan_shape=(size, size), num_grains=num_grains, seed=seed,
                                 progress_bar=progress_bar)
    crystalline = truth.phase >= 0
    t0 = time.perf_counter()
    om = mapper.match_orientations(bragg, progress_bar=progress_bar)
    results = {"transformer": {"seconds": time.perf_counter() - t0, "map": om}}
    if acom:
        acom_crystal = crystal_from_metadata(mapper.model.metadata)
        t0 = time.perf_counter()
        results["ACOM"] = {"map": acom_default(acom_crystal, bragg, progress_bar=progress_bar)}
        results["ACOM"]["seconds"] = time.perf_counter() - t0  # plan + match, as a user runs it
    n = size * size
    for name, r in results.items():
        r.update(evaluate_orientation_map(r["map"], truth.orientation_matrices, mapper.symmetry, crystalline))
        r["patterns_per_s"] = n / r["seconds"]
    _print_table(results, n, int(crystalline.sum()))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = plot_comparison(mapper, truth, {k: v["map"] for k, v in results.items()}, out / "demo_maps.png")
    print(f"\nwrote {path}")
    return results


def _print_table(results: dict, n: int, n_crystalline: int) -> None:
    names = list(results)
    print(f"\n{n} patterns ({n_crystalline} crystalline); errors are symmetry-reduced misorientations vs ground truth")
    rows = [("wall time (s)", "seconds", "{:.2f}"), ("patterns / s", "patterns_per_s", "{:,.0f}")]
    print(f"{'':34}" + "".join(f"{k:>14}" for k in names))
    for label, key, fmt in rows:
        print(f"{label:34}" + "".join(f"{fmt.format(results[k][key]):>14}" for k in names))
    for mode in ("strict", "flip"):
        what = "beam flip allowed" if mode == "flip" else "strict"
        for stat, fmt in (("median", "{:.2f}°"), ("within_2", "{:.1%}"), ("within_5", "{:.1%}")):
            label = f"{stat.replace('_', ' ')} ({what})"
            print(f"{label:34}" + "".join(f"{fmt.format(results[k][mode][stat]):>14}" for k in names))
    print(f"{'corr ROC AUC (right < 5° vs wrong)':34}" + "".join(f"{results[k]['corr_auc']:>14.3f}" for k in names))
    if "ACOM" in results:
        ratio = results["ACOM"]["seconds"] / results["transformer"]["seconds"]
        print(f"\ntransformer is {ratio:,.0f}x faster than ACOM on this scan (same machine, same run)")


def plot_comparison(mapper, truth, maps: dict, path, figsize=None):
    """One PNG: out-of-plane orientation maps of the ground truth and each method, and the transformer's corr."""
    import matplotlib.pyplot as plt

    from ..io.orientation_map import build_orientation_map
    from ..io.phase_map import out_of_plane_image

    crystal = mapper.crystal  # carries the plan the plots need
    true_om = build_orientation_map(crystal, truth.orientation_matrices[:, :, None], (truth.phase >= 0)[..., None] * 1.0,
                                    mapper.symmetry)
    panels = {"ground truth": true_om, **maps}
    images = {name: out_of_plane_image(crystal, om) for name, om in panels.items()}
    fig, axes = plt.subplots(1, len(images) + 1, figsize=figsize or (4 * (len(images) + 1), 4.2))
    for ax, (name, image) in zip(axes, images.items()):
        ax.imshow(image)
        ax.set_title(f"{name}: beam direction")
    im = axes[-1].imshow(maps["transformer"].corr[:, :, 0], vmin=0, vmax=1, cmap="viridis")
    axes[-1].set_title("transformer confidence (corr)")
    fig.colorbar(im, ax=axes[-1], fraction=0.046)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close("all")
    return path
