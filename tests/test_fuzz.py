"""The fuzz harnesses stay part of the build (issue #15): every seed and every saved reproducer
goes through its door's target (each find stays a regular test), and each atheris harness runs
briefly (a bounded number of mutated inputs, seconds) so a regression in a door shows in CI.
Long campaigns: benchmarks/fuzz/run.py, numbers in the README's Hardening section."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dfx.benchmarks.fuzz import targets

ROOT = Path(__file__).resolve().parents[1]
CI_RUNS = 1500  # mutated inputs per harness in CI: seconds each on 2 shared cores
CI_SECONDS = 20  # and never longer than this


def _need(door: str) -> None:
    reason = targets.available(door)
    if reason:
        pytest.skip(f"the {door} door is not here: {reason}")


@pytest.mark.parametrize("door", targets.DOORS)
def test_seeds_and_reproducers_keep_their_door_contract(door):
    _need(door)
    assert any(targets.corpus_dir(door).iterdir()), f"no seed corpus for {door}: run benchmarks/fuzz/make_seeds.py"
    assert targets.replay(door) >= 3


def test_every_reproducer_is_replayed():
    """The finds so far, by door: the two TIFF files of issue #15, what the harnesses found, and
    what review found while writing them (the OIP parser's RecursionError/OverflowError, once 500s)."""
    found = {d: sorted(p.name for p in targets.reproducers_dir(d).iterdir()) for d in targets.DOORS if targets.reproducers_dir(d).is_dir()}
    assert {"tiff-rational-strip-offset", "tiff-second-frame-without-dimensions"} <= set(found["images"])
    assert {"undecodable-csv-header", "quote-inside-unquoted-field"} <= set(found["results"])
    assert {"deeply-nested-json", "uint8-data-infinity", "uint8-data-huge-int"} <= set(found["serve"]) & set(found["http"])


def test_image_seeds_reach_both_outcomes():
    """The seeds start the fuzzer on both sides of the door: images that decode, and inputs
    refused with ImageError (truncated, header bombs, TIFF finds, not images)."""
    from dfx.images import ImageError, load_image

    decoded, refused = 0, 0
    for path in sorted(targets.corpus_dir("images").iterdir()) + sorted(targets.reproducers_dir("images").iterdir()):
        try:
            load_image(path.read_bytes()[1:], 8)
            decoded += 1
        except ImageError:
            refused += 1
    assert decoded >= 15 and refused >= 4


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None, reason="atheris is not installed (pip install 'dfx[fuzz]')")
@pytest.mark.parametrize("door", targets.DOORS)
def test_harness_runs_briefly_without_findings(door, tmp_path):
    _need(door)
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fuzz" / "run.py"), door, "--runs", str(CI_RUNS),
         "--seconds", str(CI_SECONDS), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=CI_SECONDS + 120,
    )
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert run.returncode == 0 and summary["result"].startswith("ok"), run.stderr[-3000:]
    assert summary["inputs"] >= min(CI_RUNS, 200) and not summary["findings"]
