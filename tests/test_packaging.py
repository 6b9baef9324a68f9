"""The built wheel: mmcam is its only top-level package, and the shipped models load from it
even when the user's working directory has a ``models`` package of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("mmcam-*.whl")
    return built


def test_wheel_has_one_top_level_package_with_weights_and_samples(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"mmcam"}
    assert "mmcam/models/weights/shapes_captioner.safetensors" in names
    assert "mmcam/models/weights/easy_vqa.safetensors" in names
    assert "mmcam/data/samples/chelsea.jpg" in names


def test_installed_wheel_loads_shipped_models_beside_a_users_models_package(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )
    project = tmp_path / "user_project"
    (project / "models").mkdir(parents=True)
    (project / "models" / "__init__.py").write_text("USER_MODELS = True\n")
    script = (
        "import mmcam, models; assert models.USER_MODELS; "
        "assert mmcam.__file__.startswith(%r); "
        "print(mmcam.load('shapes-captioner').name, mmcam.load('easy-vqa').name)" % str(target)
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(project), str(target)])}
    result = subprocess.run([sys.executable, "-c", script], cwd=project, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["shapes-captioner", "easy-vqa"]
