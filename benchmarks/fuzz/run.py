"""Run one fuzz harness for a time or a number of inputs; save what breaks it.

    python benchmarks/fuzz/run.py images --seconds 300            # 5 minutes
    python benchmarks/fuzz/run.py bundle --runs 1000000 --out /tmp/fuzz-out
    python benchmarks/fuzz/run.py all --seconds 10                # each harness briefly (what CI does)

The harness starts from its seed corpus (corpus/<door>/, read only) and grows a working corpus
in OUT/<door>/corpus (OUT: --out, default $TMPDIR/dfx-fuzz). An input that raises outside the door's error type, hangs past --timeout
seconds, or takes more than --rss-mb of memory is saved as OUT/<door>/crash-*, timeout-* or
oom-*; copy it into reproducers/<door>/ (with the fix) and tests/test_fuzz.py replays it for
ever after. Prints one JSON line per harness: door, inputs, seconds, result, findings.
Exit status 0 when no harness found anything, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from targets import DOORS, available, corpus_dir  # noqa: E402


def run_one(door: str, *, seconds: float | None, runs: int | None, out: Path, timeout: int, rss_mb: int,
            quiet: bool = False) -> dict:
    reason = available(door)
    if reason:
        return {"door": door, "inputs": 0, "seconds": 0.0, "result": f"skipped: {reason}", "findings": []}
    work = out / door
    (work / "corpus").mkdir(parents=True, exist_ok=True)
    flags = [f"-timeout={timeout}", f"-rss_limit_mb={rss_mb}", f"-artifact_prefix={work}/", "-print_final_stats=1"]
    if seconds is not None:
        flags.append(f"-max_total_time={int(max(1, seconds))}")
    if runs is not None:
        flags.append(f"-runs={runs}")
    command = [sys.executable, str(HERE / f"fuzz_{door}.py"), str(work / "corpus"), str(corpus_dir(door)), *flags]
    before = {p.name for p in work.iterdir() if p.is_file()}
    began = time.perf_counter()
    log = work / "fuzz.log"
    with open(log, "w") as handle:
        process = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONHASHSEED": "0"})
    elapsed = time.perf_counter() - began
    text = log.read_text(errors="replace")
    findings = sorted(p.name for p in work.iterdir() if p.is_file() and p.name not in before
                      and p.name.startswith(("crash-", "timeout-", "oom-", "leak-", "slow-unit-")))
    executed = [int(m) for m in re.findall(r"stat::number_of_executed_units:\s*(\d+)", text)]
    done = re.findall(r"Done (\d+) runs in (\d+) second", text)
    inputs = executed[-1] if executed else (int(done[-1][0]) if done else _last_count(text))
    if process.returncode == 0 and not findings:
        result = "ok: no crash, no hang, no out-of-memory, no exception outside the door's type"
    else:
        result = f"FOUND (exit {process.returncode}); see {log}"
    if not quiet and process.returncode != 0:
        tail = "\n".join(text.splitlines()[-40:])
        print(tail, file=sys.stderr)
    return {"door": door, "inputs": inputs, "seconds": round(elapsed, 1), "result": result,
            "findings": [str(work / f) for f in findings], "log": str(log)}


def _last_count(text: str) -> int:
    # libFuzzer's progress lines start with "#<inputs>"; the last one is the count so far.
    counts = re.findall(r"^#(\d+)\s", text, flags=re.MULTILINE)
    return int(counts[-1]) if counts else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("door", choices=(*DOORS, "all"), help="which harness, or all of them one after another")
    parser.add_argument("--seconds", type=float, help="stop after this long (per harness)")
    parser.add_argument("--runs", type=int, help="stop after this many inputs (per harness)")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "dfx-fuzz",
                        help="working corpus, logs and findings (default $TMPDIR/dfx-fuzz, outside the repository)")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take before it counts as a hang (default 10)")
    parser.add_argument("--rss-mb", type=int, default=2048, help="memory (MB) past which an input counts as out-of-memory (default 2048)")
    args = parser.parse_args(argv)
    if args.seconds is None and args.runs is None:
        parser.error("give --seconds and/or --runs: a campaign needs an end")
    doors = DOORS if args.door == "all" else (args.door,)
    failed = False
    for door in doors:
        summary = run_one(door, seconds=args.seconds, runs=args.runs, out=args.out, timeout=args.timeout, rss_mb=args.rss_mb)
        print(json.dumps(summary), flush=True)
        failed |= summary["result"].startswith("FOUND")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
