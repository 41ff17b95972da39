"""The bench's outputs as text: every figure as JSON, the tables as markdown, and the docs section.

``docs/benchmarks.md`` holds the section between ``<!-- bench:start -->`` and ``<!-- bench:end -->``;
:func:`update_docs` replaces it. ACOM (and pyxem) figures computed from a random subset of a scan are
marked "(extrapolated)" wherever they appear.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .published import PAPER_FIG3, PAPER_STAGES_GPU_1024
from .stages import STAGES

__all__ = ["write_json", "markdown", "update_docs", "START", "END"]

START, END = "<!-- bench:start -->", "<!-- bench:end -->"
_X = " (extrapolated)"


def write_json(report: dict, path) -> Path:
    """``report`` as strict JSON (NaN -> null, numpy scalars -> numbers)."""
    path = Path(path)
    path.write_text(json.dumps(_plain(report), indent=1))
    return path


def _plain(x):
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def markdown(report: dict, image_prefix: str = "") -> str:
    """The whole section (heading to figures), images linked as ``image_prefix + bench_*.png``."""
    parts = [_intro(report), _speed_table(report), _img(image_prefix, "scaling", "time vs scan size"),
             _stage_table(report), _img(image_prefix, "stages", "per-stage breakdown"), _accuracy_table(report),
             _img(image_prefix, "errors", "error histograms"), _img(image_prefix, "maps", "orientation maps"),
             _file_table(report), _published_table(report)]
    return "\n\n".join(p for p in parts if p) + "\n"


def update_docs(section: str, docs_path) -> Path:
    """Replace the text between the bench markers of ``docs_path`` with ``section``."""
    path = Path(docs_path)
    text = path.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{path} has no {START} ... {END} markers to replace")
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    path.write_text(f"{head}{START}\n{section.rstrip()}\n{END}{tail}")
    return path


def _img(prefix: str, name: str, alt: str) -> str:
    return f"![{alt}]({prefix}bench_{name}.png)"


def _num(x, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:,.{digits}f}" if abs(x) < 100 else f"{x:,.0f}"


def _intro(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    sizes = ", ".join(f"{r['size']}² ({r['grains']} grains)" for r in report["sizes"])
    return f"""## Side-by-side benchmark (`py4dstem-transformer bench`)

```
{report.get('command', 'py4dstem-transformer bench')}
```

Measured {m['date']} on {m['cpu']}, {m['cpu_cores']} cores, torch {m['torch']} ({m['torch_threads']} threads),
py4DSTEM {m['py4DSTEM']}, numpy {m['numpy']}; transformer on `{m['device']}`, {m['dtype']}
(`{s['model']}` model, `refine={s['refine']}`); load average (1 min) {m['load_average_start']:.1f} at the
start, {m['load_average_end']:.1f} at the end (other jobs on the cores slow torch's threads most).
Scans: {sizes}; the model's crystal, `simulate_scan` (Voronoi grains, random orientations, Bloch-wave 20–500 Å,
one-pixel vacuum boundaries), the same in-memory `BraggVectors` to every method. Times are wall clock
after a warm-up on an 8×8 scan. Transformer total = setup (model file + reflection list) +
`match_orientations`; ACOM total = `orientation_plan` (default plan) + `match_orientations`. ACOM runs
on at most {s['acom_max']} positions per scan: on larger scans on a random subset, and every figure
derived from it is marked **(extrapolated)**. Ratios only compare
numbers of the same run. pyxem: {report['pyxem']}. quantem: {report.get('quantem', 'not run')}."""


def _speed_table(report: dict) -> str:
    lines = ["### Speed", "",
             "| scan | patterns | transformer (s) | transformer patterns/s | ACOM (s) | ACOM patterns/s | ACOM measured on "
             "| ACOM time / transformer time |", "|---|---|---|---|---|---|---|---|"]
    for r in report["sizes"]:
        t, a = r["transformer"], r["acom"]
        x = _X if a["extrapolated"] else ""
        lines.append(f"| {r['size']}² | {r['patterns']:,} | {_num(t['total_s'])} | {_num(t['patterns_per_s'], 0)} | "
                     f"{_num(a['total_s'])}{x} | {_num(a['patterns_per_s'], 1)}{x} | {a['basis']} | "
                     f"{a['total_s'] / t['total_s']:,.1f}×{x} |")
    pyxem = [r for r in report["sizes"] if "pyxem" in r and "failed" not in r["pyxem"]]
    if pyxem:
        lines += ["", "| scan | pyxem (s) | pyxem patterns/s | library (s) |", "|---|---|---|---|"]
        lines += [f"| {r['size']}² | {_num(r['pyxem']['total_s'])}{_X if r['pyxem']['extrapolated'] else ''} | "
                  f"{_num(r['pyxem']['patterns_per_s'], 1)} | {_num(r['pyxem']['library_s'])} |" for r in pyxem]
    quantem = [r for r in report["sizes"] if "quantem" in r and "failed" not in r["quantem"]]
    if quantem:
        lines += ["", "| scan | quantem (s) | quantem patterns/s | plan (s) | quantem time / transformer time |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['size']}² | {_num(r['quantem']['total_s'])}{_X if r['quantem']['extrapolated'] else ''} | "
                  f"{_num(r['quantem']['patterns_per_s'], 1)} | {_num(r['quantem']['plan_s'])} | "
                  f"{r['quantem']['total_s'] / r['transformer']['total_s']:,.1f}×"
                  f"{_X if r['quantem']['extrapolated'] else ''} |" for r in quantem]
    return "\n".join(lines)


def _stage_table(report: dict) -> str:
    head = " | ".join(STAGES)
    lines = ["### Stages (seconds)", "",
             "Transformer stages from a second, staged run of the same mapping (`benchmarks/stages.py`): network = "
             "the transformer; then the pipeline's stages (docs/architecture.md): expand = candidates, refine = "
             "refined against the disks, polish = pattern search on the score, score = the correlation, rank = "
             "distinct matches, confidence = the calibration's features; other = the rest of the mapping (batching, "
             "calibration). ACOM: plan, and match time per pattern.", "",
             f"| scan | {head} | sum of stages | end to end (setup) | ACOM plan | ACOM ms / pattern |",
             "|---" * (len(STAGES) + 5) + "|"]
    for r in report["sizes"]:
        t, a = r["transformer"], r["acom"]
        stages = " | ".join(_num(t["stages_s"][k], 3) for k in STAGES)
        lines.append(f"| {r['size']}² | {stages} | {_num(t['stages_sum_s'], 3)} | {_num(t['total_s'], 3)} "
                     f"({_num(t['setup_s'], 3)}) | {_num(a['plan_s'], 3)} | {_num(1e3 * a['s_per_pattern'], 1)} |")
    return "\n".join(lines)


def _accuracy_table(report: dict) -> str:
    lines = ["### Accuracy against the ground truth (all scans pooled, crystalline positions)", "",
             "Symmetry-reduced misorientation (m-3m); *strict* and with the 180° rotation about the beam allowed "
             "(*flip*). corr AUC: ROC AUC of each method's own `corr` for right (strict < 5°) vs wrong.", "",
             "| method | positions | median strict | median flip | p90 strict | ≤2° strict | ≤2° flip | ≤5° strict "
             "| ≤5° flip | corr AUC |", "|---|---|---|---|---|---|---|---|---|---|"]
    for method, a in report["accuracy_pooled"].items():
        s, f = a["strict"], a["flip"]
        lines.append(f"| {method} | {s['n']:,} | {_num(s['median'])}° | {_num(f['median'])}° | {_num(s['p90'])}° | "
                     f"{s['within_2']:.1%} | {f['within_2']:.1%} | {s['within_5']:.1%} | {f['within_5']:.1%} | "
                     f"{_num(a['corr_auc'], 3)} |")
    return "\n".join(lines)


def _file_table(report: dict) -> str:
    rows = [r for r in report["sizes"] if "file" in r]
    if not rows:
        return (f"### From a file\n\nNot measured in this run (`--file-min-size "
                f"{report['settings']['file_min_size']}` is above every scan size).")
    lines = ["### From a file (`py4DSTEM.save`, then mapped from disk)", "",
             "| scan | file | save | `read_peaks` + map (s) | `py4DSTEM.read` + map (s) | read: `read_peaks` / "
             "`py4DSTEM.read` (s) | faster | same map as in memory | ACOM from file: `py4DSTEM.read` + ACOM (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = r["file"]
        x = _X if f["acom_extrapolated"] else ""
        lines.append(f"| {r['size']}² | {_num(f['file_mb'])} MB | {_num(f['save_s'])} s | {_num(f['read_peaks_total_s'])} | "
                     f"{_num(f['py4dstem_read_total_s'])} | {_num(f['read_peaks_s'])} / {_num(f['py4dstem_read_s'])} | "
                     f"{f['py4dstem_read_total_s'] / f['read_peaks_total_s']:.1f}× | "
                     f"{'yes' if f['maps_match_memory'] else 'NO'} | {_num(f['acom_from_file_total_s'])}{x} |")
    return "\n".join(lines)


def _published_table(report: dict) -> str:
    paper = list(PAPER_FIG3)
    lines = ["### Published figures beside ours (Je et al., Fig. 3; `../shared/docs/method.md` §8)", "",
             "Their wall times (s), end to end including `py4DSTEM.read` of their file, on their machine (~15 CPU "
             "cores or one GPU; ACOM py4DSTEM 0.14.8 on one core), beside ours from the in-memory `BraggVectors` "
             "(the file path is in the table above). Different machines and ACOM versions: compare ratios within "
             "a source, not times across sources.", "",
             "| scan | " + " | ".join(f"paper: {k}" for k in paper) + " | ours: transformer | ours: ACOM |",
             "|---" * (len(paper) + 3) + "|"]
    for r in report["sizes"]:
        theirs = " | ".join(_num(PAPER_FIG3[k].get(r["size"])) for k in paper)
        x = _X if r["acom"]["extrapolated"] else ""
        lines.append(f"| {r['size']}² | {theirs} | {_num(r['transformer']['total_s'])} | {_num(r['acom']['total_s'])}{x} |")
    stages = ", ".join(f"{k} {v:g} s" for k, v in PAPER_STAGES_GPU_1024.items())
    return "\n".join(lines) + f"\n\nTheir stages at 1024² on the GPU: {stages}."
