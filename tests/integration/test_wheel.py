"""The installed wheel carries the app: fl-compare finds it without the source checkout."""

import subprocess
import sys
import zipfile

from tests.conftest import APP_DIR


def test_the_wheel_ships_the_app_manifest_and_finds_the_installed_app(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
         "-w", str(dist), str(APP_DIR)],
        check=True,
        timeout=300,
        capture_output=True,
    )  # fmt: skip
    (wheel,) = dist.glob("*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(site)
    assert "tools/app-pyproject.toml" in names
    assert not any(n.startswith(("tests/", "testing/", "bench/")) for n in names)
    probe = (
        "from tools.app_source import AppSource; a = AppSource.installed(); "
        "print(a.pyproject); print(len(a.files()))"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    output = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {probe}"],
        cwd=elsewhere,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    assert output[0] == str(site / "tools" / "app-pyproject.toml")
    assert int(output[1]) == len(list((APP_DIR / "fl_app").rglob("*.py"))) + len(
        list((APP_DIR / "strategies").rglob("*.py"))
    ) + len(list((APP_DIR / "privacy").rglob("*.py")))
