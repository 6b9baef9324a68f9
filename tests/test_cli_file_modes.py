"""Files under ``--out`` get the mode an ordinary new file gets, 0o666 less the umask (issue
10, item 13), although each is written atomically through a temporary file."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import easy_vqa
import pytest

from mmcam._files import write_atomic
from mmcam.cli import main
from reliability_support import one_torch_thread  # noqa: F401


@pytest.fixture
def umask() -> Iterator:
    """Set the process umask for one test; the old one is restored afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_honour_the_umask_like_open(tmp_path, umask, mask, expected) -> None:
    umask(mask)
    written = write_atomic(tmp_path / "record.json", lambda handle: handle.write(b"{}\n"))
    with open(tmp_path / "plain.json", "wb") as handle:  # what an ordinary open() gives
        handle.write(b"{}\n")
    assert _mode(written) == _mode(tmp_path / "plain.json") == expected
    assert written.read_bytes() == b"{}\n" and sorted(p.name for p in tmp_path.iterdir()) == ["plain.json", "record.json"]


def test_every_file_of_a_batch_run_is_readable_by_others_under_umask_022(capsys, tmp_path, umask) -> None:
    umask(0o022)
    paths = easy_vqa.get_test_image_paths()
    batch = tmp_path / "items.jsonl"
    batch.write_text("".join(json.dumps({"image": paths[i], "question": "what shape is this?"}) + "\n" for i in range(2)))
    out = tmp_path / "out"
    assert main(["vqa", "--batch", str(batch), "--out", str(out), "--method", "gradcam", "--json"]) == 0
    capsys.readouterr()
    files = sorted(out.iterdir())
    names = {p.name for p in files}
    assert {"0.json", "1.json", "0.html", "0_strip.png"} <= names and any(name.endswith("_overlay.png") for name in names)
    assert {p.name: oct(_mode(p)) for p in files} == {p.name: oct(0o644) for p in files}
