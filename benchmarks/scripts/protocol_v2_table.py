"""Protocol v2 runs side by side (docs/pseudo-fakes.md): with and without pseudo-fakes, or
with and without a policy.

    python benchmarks/scripts/protocol_v2_table.py without=out/without/protocol.json with=out/with/protocol.json

One line per row (held-out rows followed by their laundered twin); per run the AUC, the share
flagged (held-out photo source) or caught (held-out generator) at the fold's threshold, and the
shortcut baseline's AUC on the same images (the baseline differs between runs whose data differ).
Then each run's summary. Rows a run did not reach are left empty.
"""

from __future__ import annotations

import json
import sys

from dfx.trainer.protocol import summarize


def _rate(r: dict) -> str:
    if r.get("held_out") == "real":
        return f"{r['held_out_fpr']:.0%} flagged"
    if r.get("held_out") == "fake":
        return f"{r['held_out_tpr']:.0%} caught"
    return ""


def table(runs: dict[str, dict]) -> str:
    names = list(runs)
    order: list[str] = []
    for run in runs.values():
        order += [k for k in run["rows"] if k not in order]
    lines = ["| row | " + " | ".join(f"{n}: AUC | {n}: at threshold | {n}: baseline AUC" for n in names) + " |",
             "|" + "---|" * (1 + 3 * len(names))]
    for row in order:
        cells = []
        for run in runs.values():
            r = run["rows"].get(row)
            if r is None:
                cells += ["", "", ""]
                continue
            base = f"{r['baseline_auc']:.3f}" if r.get("baseline_auc") is not None else ""
            cells += [f"{r['auc']:.3f}", _rate(r), base]
        first = next(run["rows"][row] for run in runs.values() if row in run["rows"])
        label = f"held out: {row}" if first.get("held_out") and "laundered_of" not in first else row
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    for name, run in runs.items():
        s = run.get("summary") or summarize(run["rows"])  # a run still going has no summary yet
        shown = ", ".join(f"{k} {v:.3f}" for k, v in s.items() if isinstance(v, float))
        lines.append(f"- {name}: {shown}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    runs = {}
    for arg in argv:
        name, _, path = arg.rpartition("=")
        with open(path) as f:
            runs[name or path] = json.load(f)
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
