"""Put several clip_vit `dfx protocol` runs side by side: one row per run, the held-out generators
zero-shot and with k shots, the share of each held-out photo source flagged at the fold's
threshold, in distribution, and the laundered / half-size gaps.

    python benchmarks/scripts/clip_heads_table.py NAME=OUT/protocol.json [NAME=...]
"""

from __future__ import annotations

import json
import sys


def table(runs: dict[str, dict]) -> str:
    first = next(iter(runs.values()))["rows"]
    gens = [n for n, r in first.items() if r.get("held_out") == "fake" and not r.get("shots") and "view_of" not in r]
    reals = [n for n, r in first.items() if r.get("held_out") == "real" and "view_of" not in r]
    shots = sorted({r["shots"] for run in runs.values() for r in run["rows"].values() if r.get("shots")})
    head = ["run", "in-dist AUC"] + [f"{g} 0-shot" for g in gens] + [f"{g} {k}-shot" for k in shots for g in gens] \
        + [f"{s} flagged" for s in reals] + ["laundered / half-size gap"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, run in runs.items():
        rows = run["rows"]

        def cell(key, field="auc"):
            return f"{rows[key][field]:.3f}" if key in rows else ""

        gaps = [abs(r["auc"] - rows[r["view_of"]]["auc"]) for r in rows.values() if "view_of" in r]
        cells = [name, cell("in-distribution")] + [cell(g) for g in gens] + [cell(f"{g} / {k}-shot") for k in shots for g in gens] \
            + [cell(s, "held_out_fpr") for s in reals] + [f"{max(gaps):.3f}" if gaps else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    runs = {}
    for arg in sys.argv[1:]:
        name, path = arg.split("=", 1)
        runs[name] = json.load(open(path))
    print(table(runs))
