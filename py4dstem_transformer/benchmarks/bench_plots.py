"""The bench's figures (PNG): time vs scan size, stages, error histograms, orientation maps.

Each function takes the bench's ``report`` (and ``raw`` where per-position data are needed), writes
one file and returns its path; none calls ``plt.show()``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .published import PAPER_FIG3
from .stages import STAGES

__all__ = ["plot_all", "plot_scaling", "plot_stages", "plot_errors"]


def plot_all(report: dict, raw: dict, folder) -> list:
    """Every figure into ``folder`` as ``bench_{scaling,stages,errors,maps}.png``; returns the paths."""
    from ..evaluation.demo import plot_comparison

    folder = Path(folder)
    paths = [plot_scaling(report, folder / "bench_scaling.png"), plot_stages(report, folder / "bench_stages.png"),
             plot_errors(raw, folder / "bench_errors.png")]
    m = raw.get("maps")
    if m is not None:
        paths.append(plot_comparison(m["mapper"], m["truth"], m["maps"], folder / "bench_maps.png"))
    return paths


def plot_scaling(report: dict, path, figsize=(6.5, 4.8)) -> Path:
    """Log-log wall time vs scan side N, both methods, ours solid, the paper's Fig. 3 dashed (grey)."""
    import matplotlib.pyplot as plt

    rows = report["sizes"]
    N = np.array([r["size"] for r in rows])
    fig, ax = plt.subplots(figsize=figsize)
    ax.plot(N, [r["transformer"]["total_s"] for r in rows], "o-", color="C0", label="transformer (this machine)")
    acom = np.array([r["acom"]["total_s"] for r in rows])
    extrapolated = np.array([r["acom"]["extrapolated"] for r in rows])
    ax.plot(N, acom, "-", color="C3")
    ax.plot(N[~extrapolated], acom[~extrapolated], "s", color="C3", label="ACOM, measured on every position")
    ax.plot(N[extrapolated], acom[extrapolated], "s", mfc="none", color="C3", label="ACOM, extrapolated from a subset")
    for (name, times), style in zip(PAPER_FIG3.items(), ("--", ":", "-.")):
        sizes = sorted(times)
        ax.plot(sizes, [times[s] for s in sizes], style, color="0.55", lw=1, label=f"paper: {name}")
    ax.set(xscale="log", yscale="log", xlabel="scan side N (N × N patterns)", ylabel="wall time (s)",
           title="Orientation mapping time vs scan size")
    ax.set_xticks(N, [str(n) for n in N])
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_stages(report: dict, path, figsize=(7.5, 4.2)) -> Path:
    """The transformer's stages as fractions of their sum per scan size (stacked bars), sum on top."""
    import matplotlib.pyplot as plt

    rows = report["sizes"]
    seconds = np.array([[r["transformer"]["stages_s"][k] for k in STAGES] for r in rows])  # (S, stages)
    fraction = seconds / seconds.sum(1, keepdims=True)
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=figsize)
    bottom = np.zeros(len(rows))
    for k, name in enumerate(STAGES):
        ax.bar(x, fraction[:, k], bottom=bottom, label=name, color=f"C{k}")
        bottom += fraction[:, k]
    for i, total in enumerate(seconds.sum(1)):
        ax.text(i, 1.01, f"{total:.3g} s", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, [f"{r['size']}²" for r in rows])
    ax.set(ylim=(0, 1.1), ylabel="fraction of the staged run", title="Transformer: time per stage")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return _save(fig, path)


def plot_errors(raw: dict, path, figsize=(10, 3.8)) -> Path:
    """Histograms of the misorientation to the ground truth (all scans pooled, log-spaced bins from
    0.01 to 63 deg), strict and with the beam flip allowed; each curve sums to 1."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=figsize, sharey=True)
    bins = np.geomspace(0.01, 63.0, 57)  # 63 deg: beyond the largest m-3m misorientation (62.8 deg)
    for ax, key, title in zip(axes, ("errors_strict", "errors_flip"), ("strict", "beam flip allowed")):
        for method, parts in raw["errors"].items():
            errors = np.concatenate([p[key] for p in parts if p] or [np.zeros(0)])
            if errors.size:
                ax.hist(np.clip(errors, bins[0], bins[-1]), bins=bins, histtype="step", lw=1.4,
                        weights=np.full(errors.size, 1 / errors.size), label=f"{method} (n={errors.size:,})")
        for limit in (2, 5):
            ax.axvline(limit, color="0.7", lw=0.8, ls=":")
        ax.set(xscale="log", xlabel="misorientation (deg; first bin: ≤ 0.01)", title=title)
    axes[0].set_ylabel("fraction of positions")
    axes[1].legend(fontsize=7)
    return _save(fig, path)


def _save(fig, path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
