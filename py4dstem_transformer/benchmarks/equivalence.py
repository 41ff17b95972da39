"""Same maps before and after a change: a fixed seeded set mapped and saved, or two saved runs compared.

``python -m py4dstem_transformer.benchmarks.equivalence save OUT.npz`` maps 150 random orientations each of
Cu and Cu2O, clean and damaged (:func:`~py4dstem_transformer.simulation.scan.simulate_random_orientations`,
seeds 901/902, +10 damaged) with the shipped ``Cu`` model (Cu sets) and ``Cu+Cu2O`` model (all sets,
``match_phases``), at 1 and 4 matches, in one process, and saves every ``matrix``, ``corr`` and phase
probability. ``python -m py4dstem_transformer.benchmarks.equivalence compare A.npz B.npz`` prints the
largest difference per field (a refactor that changes no answer gives 0). To compare with an older commit,
run ``save`` in each checkout (``PYTHONPATH=<checkout>``).
"""

from __future__ import annotations

import argparse

import numpy as np

SETS = (("Cu", 901), ("Cu2O", 902))


def save(path: str) -> dict:
    from ..mapping.mapper import TransformerOrientationMap
    from ..simulation.scan import simulate_random_orientations
    from ..simulation.simulator import example_crystal

    out = {}
    cu, joint = (TransformerOrientationMap.pretrained(name, workers=1) for name in ("Cu", "Cu+Cu2O"))
    for name, seed in SETS:
        for damaged in (False, True):
            bragg, _ = simulate_random_orientations(example_crystal(name), 150, seed + 10 * damaged, damaged)
            key = f"{name.lower()}_{'dmg' if damaged else 'clean'}"
            for K in (1, 4):
                if name == "Cu":
                    om = cu.match_orientations(bragg, num_matches_return=K, progress_bar=False)
                    out[f"Cu/{key}/K{K}/matrix"], out[f"Cu/{key}/K{K}/corr"] = om.matrix, om.corr
                pm = joint.match_phases(bragg, num_matches_return=K, progress_bar=False)
                for p, om in enumerate(pm.orientation_maps):
                    out[f"CuCu2O/{key}/K{K}/p{p}/matrix"], out[f"CuCu2O/{key}/K{K}/p{p}/corr"] = om.matrix, om.corr
                out[f"CuCu2O/{key}/K{K}/prob"] = pm.phase_probability
    np.savez(path, **out)
    return out


def compare(a_path: str, b_path: str) -> dict:
    """``{field: largest |difference|}`` over every saved array (matrix, corr, prob)."""
    a, b = np.load(a_path), np.load(b_path)
    if set(a) != set(b):
        raise ValueError(f"the two runs saved different arrays: {sorted(set(a) ^ set(b))}")
    worst = {}
    for key in a:
        field = key.rsplit("/", 1)[1]
        worst[field] = max(worst.get(field, 0.0), float(np.abs(a[key] - b[key]).max()))
    return worst


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("save", help="map the seeded set and save it").add_argument("out")
    cmp = sub.add_parser("compare", help="largest difference per field of two saved runs")
    cmp.add_argument("a")
    cmp.add_argument("b")
    args = parser.parse_args(argv)
    if args.command == "save":
        save(args.out)
        print(f"saved {args.out}")
        return {}
    worst = compare(args.a, args.b)
    print("largest |difference| per field:", worst)
    return worst


if __name__ == "__main__":
    main()
