"""`import dfx`, `import dfx.runtime` (every runtime module) and `dfx --help` work with
tensorflow, tensorrt and pycuda absent; a command that needs a missing extra names the pip
install that fixes it. Each check runs in a fresh interpreter with those modules blocked."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from _blocked import run_blocked

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("tensorflow", "keras", "tensorrt", "tensorrt_lean", "tensorrt_dispatch", "pycuda", "tf2onnx")

def _run(code: str) -> subprocess.CompletedProcess:
    return run_blocked(code, BLOCKED)


def _runtime_modules() -> list[str]:
    root = ROOT / "runtime"
    names = (p.relative_to(root).with_suffix("").parts for p in root.rglob("*.py"))
    return sorted("dfx.runtime." + ".".join(n[:-1] if n[-1] == "__init__" else n) for n in names if n != ("__init__",))


def test_blocker_blocks():
    result = _run("import tensorflow")
    assert result.returncode != 0 and "blocked by the test" in result.stderr


@pytest.mark.parametrize("module", ["dfx", "dfx.runtime", "dfx.images", "dfx.bundle", "dfx.metrics", "dfx.datasets", "dfx.synth", "dfx.cli", *_runtime_modules()])
def test_imports_without_heavy_frameworks(module):
    result = _run(
        f"""
        import importlib
        importlib.import_module({module!r})
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not leaked, leaked
        """
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_every_command_module_and_help_without_frameworks():
    result = _run(
        """
        from dfx import cli
        for name in cli.COMMAND_MODULES:
            __import__(name)
        try:
            cli.main(["--help"])
        except SystemExit as exc:
            assert exc.code == 0
        for command in ("train", "eval", "data", "export", "scan", "bench", "demo"):
            try:
                cli.main([command, "--help"])
            except SystemExit as exc:
                assert exc.code == 0, command
        """
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for command in ("train", "eval", "data", "scan"):
        assert command in result.stdout


def test_train_without_tensorflow_names_the_extra(tmp_path):
    result = _run(
        f"""
        from dfx import cli
        sys.exit(cli.main(["train", {str(tmp_path)!r}, "--out", {str(tmp_path / "b")!r}]))
        """
    )
    assert result.returncode == 2, result.stderr
    assert "tensorflow" in result.stderr and "pip install 'dfx[train]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_synth_works_without_tensorflow(tmp_path):
    result = _run(
        f"""
        from dfx import cli
        sys.exit(cli.main(["data", "synth", {str(tmp_path / "s")!r}, "--n", "8", "--size", "32"]))
        """
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list((tmp_path / "s").rglob("*.*"))) == 8
