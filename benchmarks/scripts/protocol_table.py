"""Put several `dfx protocol` runs side by side (the README's table).

    python benchmarks/scripts/protocol_table.py protocol-npr/protocol.json protocol-seed/protocol.json

One row per protocol row; per run its AUC and, for held-out groups, the share of the held-out
images flagged (real source) or caught (generator) at the fold's threshold; then the shortcut
baseline's AUC on the same split (from the first run: the baseline does not depend on the model).
"""

from __future__ import annotations

import json
import sys


def main(paths: list[str]) -> None:
    runs = [json.load(open(p)) for p in paths]
    names = [f"{r['config']['architecture']} ({r['config']['fit']})" for r in runs]
    head = "| row | " + " | ".join(f"{n} AUC | {n} at threshold" for n in names) + " | shortcut baseline AUC |"
    print(head)
    print("|" + "---|" * (2 + 2 * len(runs)))
    for row in runs[0]["rows"]:
        cells = []
        for run in runs:
            r = run["rows"].get(row)
            if r is None:
                cells += ["", ""]
                continue
            if r.get("held_out") == "real":
                rate = f"{r['held_out_fpr']:.0%} flagged"
            elif r.get("held_out") == "fake":
                rate = f"{r['held_out_tpr']:.0%} caught"
            else:
                rate = f"acc {r['accuracy']:.3f}"
            cells += [f"{r['auc']:.3f}", rate]
        base = runs[0]["rows"][row].get("baseline_auc")
        label = f"held out: {row} ({runs[0]['rows'][row]['held_out']})" if runs[0]["rows"][row].get("held_out") else row
        print(f"| {label} | " + " | ".join(cells) + f" | {'' if base is None else f'{base:.3f}'} |")
    for name, run in zip(names, runs):
        s = run.get("summary", {})
        if s.get("held_out_mean_auc") is not None:
            print(f"\n{name}: held-out mean AUC {s['held_out_mean_auc']:.3f} (min {s['held_out_min_auc']:.3f}); "
                  f"in-distribution {s['in_distribution_auc']:.3f}; worst robustness drop {s['worst_robustness_drop']:.3f}; "
                  f"smallest margin over the baseline {s['min_margin_over_baseline']:+.3f}", end="")
    print()


if __name__ == "__main__":
    main(sys.argv[1:])
