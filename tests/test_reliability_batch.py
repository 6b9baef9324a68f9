"""Long batch runs (issue #7): an interrupted ``mmcam vqa --batch --out`` keeps every finished
item's outputs (``STEM.json`` written atomically: temporary file, then rename), leaves no partial
file, and ``--resume`` re-emits the finished records unchanged without recomputing them, then
completes the rest. Issue 10 (item 12): ``STEM.json`` also holds the settings that made the
record, and ``--resume`` redoes an item whose settings differ (the printed record keeps the
public shape, without them).

The adapter is wrapped to count its calls (and to interrupt the run) through ``mmcam.registry.load``.
"""

from __future__ import annotations

import json
from pathlib import Path

import easy_vqa
import pytest

import mmcam.batch
import mmcam.registry
from mmcam.cli import main
from reliability_support import one_torch_thread  # noqa: F401

ITEMS = 5
QUESTIONS = ["what color is the shape?", "what shape is in the image?", "is there a red shape?"]


class Interrupt(KeyboardInterrupt):
    """Ctrl-C, as the test sends it."""


@pytest.fixture
def batch_file(tmp_path) -> Path:
    paths = easy_vqa.get_test_image_paths()
    lines = [json.dumps({"image": paths[index], "question": QUESTIONS[index % 3]}) for index in range(ITEMS)]
    path = tmp_path / "questions.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def explained(monkeypatch) -> dict:
    """Counts the images the CLI's adapter explains; ``stop_at`` = n interrupts the n-th call."""
    seen: dict = {"images": [], "stop_at": None}
    real_load = mmcam.registry.load

    def load(*args, **kwargs):
        adapter = real_load(*args, **kwargs)
        real_explain = adapter.explain_batch

        def explain_batch(images, *rest, **options):
            if seen["stop_at"] == len(seen["images"]) + 1:
                raise Interrupt
            seen["images"] += [getattr(image, "source", image) for image in images]  # a LoadedImage or a path
            return real_explain(images, *rest, **options)

        adapter.explain_batch = explain_batch
        return adapter

    monkeypatch.setattr(mmcam.registry, "load", load)
    return seen


def run(capsys, batch: Path, out: Path, *extra: str) -> tuple[int, list[dict], str]:
    code = main(["vqa", "--batch", str(batch), "--out", str(out), "--json", "--batch-size", "1", *extra])
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines()], captured.err


def saved_record(path: Path) -> dict:
    """A saved ``STEM.json`` without its settings: the record as it was printed."""
    saved = json.loads(path.read_text())
    assert set(saved.pop("settings")) >= {"command", "model", "layer", "method", "image", "question"}
    return saved


def leftovers(out: Path) -> list[str]:
    """Temporary or hidden files: what an interrupted atomic write could leave behind."""
    return sorted(path.name for path in out.iterdir() if path.name.startswith(".") or path.suffix == ".tmp")


def test_interrupted_run_keeps_finished_items_and_resume_completes_the_rest(capsys, tmp_path, batch_file, explained) -> None:
    by_id = easy_vqa.get_test_image_paths()
    paths = [by_id[index] for index in range(ITEMS)]
    out = tmp_path / "out"
    explained["stop_at"] = 3  # Ctrl-C while the third item is being explained
    code, printed, stderr = run(capsys, batch_file, out)
    assert code == 130 and stderr == "mmcam: interrupted\n"
    assert [record["image"] for record in printed] == paths[:2]
    assert sorted(path.name for path in out.glob("*.json")) == ["0.json", "1.json"]
    assert leftovers(out) == []
    finished = {name: (out / name).read_bytes() for name in ("0.json", "1.json")}
    stamps = {name: (out / name).stat().st_mtime_ns for name in finished}
    for record in printed:  # each saved record is the printed one, and its maps exist
        saved = saved_record(out / f"{Path(record['image']).stem}.json")
        assert saved == record and Path(saved["explanations"][0]["heatmap"]).is_file()

    explained.update(images=[], stop_at=None)
    code, printed, stderr = run(capsys, batch_file, out, "--resume")
    assert code == 0 and stderr == ""
    assert explained["images"] == paths[2:]  # only the unfinished items were computed
    assert [record["image"] for record in printed] == paths  # all of them, in order
    for name, content in finished.items():  # finished records: re-emitted unchanged, file untouched
        assert (out / name).read_bytes() == content and (out / name).stat().st_mtime_ns == stamps[name]
    assert printed[:2] == [saved_record(out / name) for name in finished]
    assert sorted(path.name for path in out.glob("*.json")) == [f"{index}.json" for index in range(ITEMS)]
    assert leftovers(out) == []

    explained.update(images=[])
    code, again, _ = run(capsys, batch_file, out, "--resume")
    assert code == 0 and explained["images"] == [] and again == printed  # all done: nothing recomputed


def test_interrupt_while_a_record_is_written_leaves_no_partial_file(capsys, monkeypatch, tmp_path, batch_file) -> None:
    real_write_atomic = mmcam.batch.write_atomic
    writes = []

    def write_atomic(path, write):
        writes.append(Path(path).name)
        if len(writes) < 2:
            return real_write_atomic(path, write)

        def half_then_interrupt(handle):  # Ctrl-C half-way through the second record's bytes
            data = bytearray()

            class Buffer:
                def write(self, chunk):
                    data.extend(chunk)

            write(Buffer())
            handle.write(bytes(data[: len(data) // 2]))
            handle.flush()
            raise Interrupt

        return real_write_atomic(path, half_then_interrupt)

    monkeypatch.setattr(mmcam.batch, "write_atomic", write_atomic)
    out = tmp_path / "out"
    code, printed, stderr = run(capsys, batch_file, out)
    assert code == 130 and stderr == "mmcam: interrupted\n" and writes == ["0.json", "1.json"]
    assert [path.name for path in out.glob("*.json")] == ["0.json"] and leftovers(out) == []
    assert saved_record(out / "0.json") == printed[0]
    monkeypatch.setattr(mmcam.batch, "write_atomic", real_write_atomic)
    code, printed, _ = run(capsys, batch_file, out, "--resume")
    assert code == 0 and len(printed) == ITEMS and all("error" not in record for record in printed)
    assert saved_record(out / "1.json") == printed[1]


def test_resume_keeps_failed_items_failing_and_finished_ones_finished(capsys, tmp_path, batch_file, explained) -> None:
    """A failed item has no record, so a resumed run tries it again (and reports it again)."""
    missing = str(tmp_path / "missing.png")
    lines = batch_file.read_text().splitlines()
    lines.insert(1, json.dumps({"image": missing, "question": QUESTIONS[0]}))
    batch_file.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    code, first, _ = run(capsys, batch_file, out)
    assert code == 1 and first[1]["error"].startswith("image not found")
    explained.update(images=[])
    code, resumed, _ = run(capsys, batch_file, out, "--resume")
    assert code == 1 and resumed == first
    assert set(explained["images"]) <= {missing}  # at most the failed item is tried again


VQA_KEYS = {"image", "question", "model", "layer", "method", "answer", "probability", "top", "explanations", "question_words", "guided_backprop"}


def test_resume_redoes_items_made_with_other_settings(capsys, tmp_path, batch_file, explained) -> None:
    paths = [easy_vqa.get_test_image_paths()[index] for index in range(ITEMS)]
    out = tmp_path / "out"
    code, made_a, _ = run(capsys, batch_file, out, "--method", "gradcam")
    assert code == 0 and {record["method"] for record in made_a} == {"gradcam"}
    explained.update(images=[])
    code, made_b, _ = run(capsys, batch_file, out, "--method", "hirescam", "--resume")
    assert code == 0 and explained["images"] == paths  # every item redone with the new method
    assert {record["method"] for record in made_b} == {"hirescam"}
    assert all(set(record) == VQA_KEYS for record in made_a + made_b)  # the printed shape stays public
    for record in made_b:  # files rewritten: the saved record and its map are the new method's
        name = f"{Path(record['image']).stem}.json"
        assert saved_record(out / name) == record
        assert json.loads((out / name).read_text())["settings"]["method"] == "hirescam"
    explained.update(images=[])
    code, again, _ = run(capsys, batch_file, out, "--method", "hirescam", "--resume")
    assert code == 0 and explained["images"] == [] and again == made_b  # same settings: nothing redone

    code, with_answer, _ = run(capsys, batch_file, out, "--method", "hirescam", "--answer", "red", "--resume")
    assert code == 0 and explained["images"] == paths
    assert {record["explanations"][0]["answer"] for record in with_answer} == {"red"}


def test_resume_redoes_an_item_whose_own_fields_changed_or_whose_file_has_no_settings(capsys, tmp_path, batch_file, explained) -> None:
    paths = [easy_vqa.get_test_image_paths()[index] for index in range(ITEMS)]
    out = tmp_path / "out"
    code, first, _ = run(capsys, batch_file, out)
    assert code == 0
    lines = batch_file.read_text().splitlines()
    lines[1] = json.dumps({"image": paths[1], "question": "is there a blue shape?"})  # item 1 asks another question
    batch_file.write_text("\n".join(lines) + "\n")
    old_format = out / "3.json"  # as an older mmcam saved it: the record alone
    old_format.write_text(json.dumps(first[3]) + "\n")
    explained.update(images=[])
    code, resumed, _ = run(capsys, batch_file, out, "--resume")
    assert code == 0 and explained["images"] == [paths[1], paths[3]]
    assert resumed[1]["question"] == "is there a blue shape?" and resumed[1] != first[1]
    assert [resumed[i] for i in (0, 2, 3, 4)] == [first[i] for i in (0, 2, 3, 4)]
    assert "settings" in json.loads(old_format.read_text())
