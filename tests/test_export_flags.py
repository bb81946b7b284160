"""`dfx export` refuses flags that do not apply to what was asked, instead of ignoring them."""

from __future__ import annotations

import pytest

from dfx.cli import main
from dfx.forms import FORMS, ONNX_FORMS


@pytest.mark.parametrize(
    "flags, needs",
    [
        (["--calib", "data/calib"], "--int8"),
        (["--calib-count", "64"], "--int8"),
        (["--calib-method", "minmax"], "--int8"),
        (["--recalibrate"], "--int8"),
        (["--int8-float-convs", "2"], "--int8"),
        (["--fp16", "--calib", "data/calib"], "--int8"),  # another form does not make it apply
        (["--lean"], "--engine"),
        (["--int8", "--max-batch", "64"], "--engine"),
        (["--fp16", "--opt-batch", "8"], "--engine"),
    ],
)
def test_orphan_flag_is_refused_with_exit_2(tmp_path, capsys, flags, needs):
    assert main(["export", str(tmp_path / "no-bundle"), *flags]) == 2
    err = capsys.readouterr().err
    assert f"{flags[-2] if flags[-1][0] != '-' else flags[-1]} applies only with {needs}" in err
    assert f"hint: add {needs}" in err


@pytest.mark.parametrize("flags", [["--int8", "--calib", "x"], ["--engine", "--lean"], ["--calib-count", "512"], []])
def test_flags_that_apply_pass_the_check(tmp_path, capsys, flags):
    # The check passes; the export itself then fails on the missing bundle (also exit 2).
    assert main(["export", str(tmp_path / "no-bundle"), *flags]) == 2
    assert "applies only with" not in capsys.readouterr().err


def test_forms_table_names_every_onnx_file_once():
    files = [FORMS[name].file for name in ONNX_FORMS]
    assert len(set(files)) == len(files) == 4
    assert {FORMS[name].activations for name in ("int8", "cpu-int8")} == {"int8", "uint8"}
    from dfx.bundle import ONNX_ROLES

    assert ONNX_ROLES == {name: FORMS[name].role for name in ONNX_FORMS}
    assert FORMS["int8"].tolerance.min_agreement < FORMS["fp32"].tolerance.min_agreement  # looked up in dfx.parity
