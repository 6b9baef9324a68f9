"""The documented examples run."""

from __future__ import annotations

import runpy
from pathlib import Path

DEMOS = Path(__file__).resolve().parents[1] / "demos"


def test_custom_captioner_example_runs(tmp_path, capsys) -> None:
    module = runpy.run_path(str(DEMOS / "custom_captioner.py"))
    module["main"](str(tmp_path))
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0].strip() for line in lines[:5]] == ["a", "cat", "on", "the", "mat"]
    assert (tmp_path / "chelsea.html").is_file() and (tmp_path / "chelsea_00_a.npy").is_file()
