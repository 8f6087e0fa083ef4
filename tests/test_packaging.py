"""What a released provider ships: the wheel built from this checkout, installed into a fresh
virtual environment that has nothing else, carries its licence, metadata and entry point."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.packaging


def test_the_built_wheel_ships_its_license_metadata_and_entry_point(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
    )
    [wheel] = dist.glob("airflow_provider_browseruse-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = archive.read(f"{info}/METADATA").decode()
        licence = archive.read(f"{info}/licenses/LICENSE").decode()
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
    assert "Apache License" in licence and "Version 2.0" in licence
    assert "License-Expression: Apache-2.0" in metadata
    assert "Classifier: Framework :: Apache Airflow :: Provider" in metadata
    assert "Requires-Python: >=3.10" in metadata
    assert "airflow_provider_browseruse/py.typed" in names
    assert "[apache_airflow_provider]\nprovider_info = airflow_provider_browseruse:get_provider_info" in entry_points

    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, capture_output=True)
    probe = (
        "import json\n"
        "from importlib.metadata import distribution, entry_points\n"
        "files = [str(f) for f in distribution('airflow-provider-browseruse').files]\n"
        "[entry] = entry_points(group='apache_airflow_provider')\n"
        "info = entry.load()()\n"
        "print(json.dumps({'licence': [f for f in files if f.endswith('LICENSE')], 'name': info['package-name']}))\n"
    )
    found = json.loads(subprocess.run([python, "-c", probe], check=True, capture_output=True, text=True).stdout)
    assert found["name"] == "airflow-provider-browseruse"
    assert len(found["licence"]) == 1
