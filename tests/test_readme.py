"""The README's first commands are the project's promise; CI must run the very same test command."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _shell_blocks(text: str) -> list[str]:
    blocks, inside, current = [], False, []
    for line in text.splitlines():
        if line.startswith("```"):
            if inside:
                blocks.append("\n".join(current).strip())
                current = []
            inside = not inside
        elif inside:
            current.append(line)
    return blocks


def test_readme_opens_with_demo_and_test_commands():
    blocks = _shell_blocks((ROOT / "README.md").read_text())
    demo, tests = blocks[0], blocks[1]
    assert "python3 -m venv" in demo and demo.endswith("dfx demo")
    assert "python3 -m venv" in tests and "pytest" in tests


def test_ci_runs_the_readme_test_command():
    tests = _shell_blocks((ROOT / "README.md").read_text())[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert tests in ci.splitlines()


def test_setup_cfg_maps_the_fixed_folders_under_dfx():
    cfg = (ROOT / "setup.cfg").read_text()
    for part in ("trainer", "export", "runtime", "benchmarks"):
        assert f"dfx.{part} = {part}" in cfg
        assert (ROOT / part / "__init__.py").is_file()
