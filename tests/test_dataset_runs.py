"""Dataset runs (``--format parquet``): rows, the viewer on them, refusal, resume after a kill,
error rows, and the same rows from the local engine, torchrun and Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import mmcam
from mmcam.data.scenes import make_split

pq = pytest.importorskip("pyarrow.parquet")
ROOT = Path(__file__).resolve().parents[1]
KEYS = ("item", "target_index", "target", "text", "answer", "score", "peak_x", "peak_y", "bbox", "grid_h", "grid_w", "error")


@pytest.fixture(scope="module")
def items(tmp_path_factory) -> Path:
    """Six scenes (captions given for odd lines, generated for even ones), a blank line, and a
    missing image: 8 items on lines 0-7 with line 6 blank."""
    folder = tmp_path_factory.mktemp("dataset")
    lines = []
    for n, scene in enumerate(make_split("test", 6)):
        Image.fromarray(scene.image).save(folder / f"scene{n}.png")
        lines.append(json.dumps({"image": f"scene{n}.png", **({"caption": scene.caption} if n % 2 else {})}))
    lines += ["", json.dumps({"image": "missing.png"})]
    (folder / "items.jsonl").write_text("\n".join(lines) + "\n")
    return folder / "items.jsonl"


def _mmcam(*args: str, cwd: Path, launcher: tuple[str, ...] = ("-m", "mmcam"), timeout: int = 300) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *launcher, *args], capture_output=True, text=True, cwd=cwd, env=environment, timeout=timeout)


def _rows(out: Path) -> list[dict]:
    manifest = json.loads((out / "manifest.json").read_text())
    rows = [row for part in manifest["parts"] for row in pq.read_table(out / part).to_pylist()]
    return sorted(rows, key=lambda row: (row["item"], row["target_index"] or 0))


def _same_rows(mine: list[dict], theirs: list[dict]) -> None:
    assert [tuple(row[key] for key in ("item", "target_index", "target", "error")) for row in mine] == [
        tuple(row[key] for key in ("item", "target_index", "target", "error")) for row in theirs
    ]
    for a, b in zip(mine, theirs, strict=True):
        assert {key: a[key] for key in KEYS if key != "score"} == {key: b[key] for key in KEYS if key != "score"}
        if a["error"] is None:
            assert a["score"] == pytest.approx(b["score"], abs=1e-5)
            np.testing.assert_allclose(a["map"], b["map"], rtol=0, atol=1e-5 * max(1.0, max(b["map"])))


@pytest.fixture(scope="module")
def local_run(items, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "out"
    result = _mmcam("caption", "--batch", str(items), "--out", str(out), "--format", "parquet", "--batch-size", "4", "--workers", "1", cwd=items.parent)
    assert result.returncode == 1, result.stderr  # one item failed
    assert "7 items (1 failed)" in result.stdout
    return out


def test_rows_hold_each_items_explanation(local_run, items) -> None:
    rows = _rows(local_run)
    manifest = json.loads((local_run / "manifest.json").read_text())
    assert manifest["items"] == 7 and manifest["failed"] == 1 and manifest["rows"] == len(rows)
    assert (manifest["model"], manifest["method"], manifest["layer"]) == ("shapes-captioner", "hirescam", "encoder")
    assert sorted({row["item"] for row in rows}) == [0, 1, 2, 3, 4, 5, 7]  # 0-based lines; line 6 is blank
    (bad,) = [row for row in rows if row["error"]]
    assert bad["item"] == 7 and bad["image"] == "missing.png" and "missing.png" in bad["error"]
    # the rows of item 1 are what explain() gives for that image and caption
    scene = make_split("test", 6)[1]
    alone = mmcam.load("shapes-captioner").explain(scene.image, scene.caption, method="hirescam", guided=False)
    mine = [row for row in rows if row["item"] == 1]
    assert [row["target"] for row in mine] == alone.labels and mine[0]["text"] == scene.caption
    for t, row in enumerate(mine):
        np.testing.assert_allclose(np.reshape(row["map"], (row["grid_h"], row["grid_w"])), alone.grid_maps[t], atol=1e-5)
        peak, box = alone.place(t)
        assert (row["peak_x"], row["peak_y"]) == tuple(peak) and tuple(row["bbox"]) == tuple(box)
        assert row["score"] == pytest.approx(float(alone.scores[t]), abs=1e-5)


def test_viewer_reads_the_parquet_output(local_run) -> None:
    result = _mmcam("view", str(local_run), cwd=local_run.parent)
    assert result.returncode == 0, result.stderr
    page = (local_run / "viewer.html").read_text()
    assert "scene1.png" in page and "missing.png" in page


def test_a_second_run_without_resume_refuses(local_run, items) -> None:
    before = sorted(path.name for path in (local_run / "parts").iterdir())
    result = _mmcam("caption", "--batch", str(items), "--out", str(local_run), "--format", "parquet", cwd=items.parent)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "already holds a run; pass --resume" in result.stderr
    assert sorted(path.name for path in (local_run / "parts").iterdir()) == before


def test_a_killed_run_resumed_has_every_item_once(local_run, items, tmp_path) -> None:
    out = tmp_path / "out"
    arguments = ("caption", "--batch", str(items), "--out", str(out), "--format", "parquet", "--batch-size", "1", "--workers", "0")
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "mmcam", *arguments], cwd=items.parent, env=environment, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "parts").glob("*.parquet"))) < 2:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    committed = len(list((out / "parts").glob("*.parquet")))
    assert 2 <= committed < 7 and not (out / "manifest.json").exists()  # killed mid-run
    result = _mmcam(*arguments, "--resume", cwd=items.parent)
    assert result.returncode == 1, result.stderr
    _same_rows(_rows(out), _rows(local_run))


def test_torchrun_two_processes_give_the_same_rows(local_run, items, tmp_path) -> None:
    out = tmp_path / "out"
    launcher = ("-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(29500 + os.getpid() % 1000), "-m", "mmcam")
    result = _mmcam("caption", "--batch", str(items), "--out", str(out), "--format", "parquet", "--batch-size", "2", "--workers", "0", cwd=items.parent, launcher=launcher)
    assert result.returncode == 1, result.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["processes"] == 2 and {part.split("-")[1] for part in manifest["parts"]} == {"000", "001"}
    _same_rows(_rows(out), _rows(local_run))


def test_ray_gives_the_same_rows(local_run, items, tmp_path, monkeypatch) -> None:
    ray = pytest.importorskip("ray")
    monkeypatch.chdir(items.parent)  # the items' image paths are relative to it
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        manifest = mmcam.explain_dataset(items, tmp_path / "out", engine="ray", workers=2, batch_size=2, progress=False)
    finally:
        ray.shutdown()
    assert json.loads(manifest.read_text())["engine"] == "ray"
    _same_rows(_rows(tmp_path / "out"), _rows(local_run))


@pytest.mark.parametrize(
    ("items", "batch_size", "workers", "blocks"),
    [(8192, 16, 2, 64), (1024, 16, 2, 32), (40, 16, 2, 32), (3, 16, 2, 3), (0, 16, 1, 1), (100_000, 16, 4, 782)],
)
def test_ray_blocks_hold_several_minibatches_and_balance_the_actors(items, batch_size, workers, blocks) -> None:
    from mmcam.datasets.engines import BATCHES_PER_BLOCK, BLOCKS_PER_WORKER, _ray_blocks

    assert (BATCHES_PER_BLOCK, BLOCKS_PER_WORKER) == (8, 16)  # the values measured in docs/RESULTS.md
    # about 8 minibatches a block (8192 / 64 = 128 items), at least 16 blocks per actor, never
    # more blocks than items (nor fewer than one)
    assert _ray_blocks(items, batch_size, workers) == blocks


def test_vqa_parquet_rows(tmp_path) -> None:
    scenes = make_split("test", 3)
    lines = []
    for n, scene in enumerate(scenes):
        Image.fromarray(scene.image).save(tmp_path / f"q{n}.png")
        lines.append(json.dumps({"image": f"q{n}.png", "question": "what color is the shape?", **({"answer": "red"} if n == 1 else {})}))
    (tmp_path / "items.jsonl").write_text("\n".join(lines) + "\n")
    result = _mmcam("vqa", "--batch", "items.jsonl", "--out", "out", "--format", "parquet", "--top", "1", "--workers", "0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = _rows(tmp_path / "out")
    assert [row["item"] for row in rows] == [0, 1, 2] and rows[1]["target"] == "red"
    alone = mmcam.load("easy-vqa").explain(scenes[1].image, "what color is the shape?", ["red"], method="gradcam", guided=False)
    assert rows[1]["answer"] == alone.info["answer"] and rows[1]["text"] == "what color is the shape?"
    assert rows[1]["score"] == pytest.approx(float(alone.scores[0]), abs=1e-5)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("--engine", "ray"), "--engine need --format parquet (with --batch and --out)"),
        (("--format", "parquet"), "--format parquet needs --batch FILE.jsonl and --out DIR"),
    ],
)
def test_dataset_options_without_a_dataset_run_are_one_line_errors(items, arguments, message) -> None:
    result = _mmcam("caption", "--batch", str(items), *arguments, cwd=items.parent)
    assert result.returncode == 2 and result.stderr.strip() == f"mmcam: error: {message}"
