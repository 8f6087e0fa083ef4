"""What a released provider ships: the wheel built from this checkout, installed into a fresh
virtual environment that has nothing else, carries its licence, metadata and entry point."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.packaging


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
        check=True,
        capture_output=True,
    )
    [built] = dist.glob("airflow_provider_browseruse-*.whl")
    return built


def test_the_built_wheel_ships_its_license_metadata_and_entry_point(wheel: Path, tmp_path: Path) -> None:
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


# --- the README's "Testing your DAGs offline" example, pasted into a project of its own ----------

README_SECTION = "## Testing your DAGs offline"


def readme_project_files() -> dict[str, str]:
    """The section's Python blocks that start with a file name comment, by that file name."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(README_SECTION) :]
    section = section[: section.index("\n## ", len(README_SECTION))]
    files = {}
    for block in re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL):
        first = block.splitlines()[0]
        name = re.match(r"# ([\w/]+\.py)\b", first)
        if name:
            files[name.group(1)] = block
    return files


def test_the_readme_dag_testing_example_passes_as_pasted_into_a_fresh_project(wheel: Path, tmp_path: Path) -> None:
    import airflow

    files = readme_project_files()
    assert sorted(files) == ["conftest.py", "dags/books.py", "tests/test_books.py"]
    project = tmp_path / "project"
    for name, text in files.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    install = [uv, "pip", "install", "-q", "--python", python] if uv else [python, "-m", "pip", "install", "-q"]
    # Only the package (with the Airflow release this suite tests) and pytest.
    subprocess.run([*install, str(wheel), f"apache-airflow=={airflow.__version__}", "pytest"], check=True)

    # A user's shell: no AIRFLOW_* variables, no connection, a home of its own.
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": os.environ["PATH"], "HOME": str(home), "LANG": "C.UTF-8"}
    done = subprocess.run(
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr[-3000:]
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert re.search(r"\b2 passed\b", summary), summary
    assert not (home / "airflow").exists()  # the plugin kept Airflow out of ~/airflow
