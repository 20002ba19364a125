"""`pip install .` gives a working `milter`: the wheel carries the shipped rules and model
where milter/paths.py looks for them outside a checkout, and the documents where the systemd
units' Documentation= points; building leaves nothing in the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import milter
from milter import paths

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_carries_the_shipped_rules_and_model(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("milter-*.whl")
    data = f"milter-{milter.__version__}.data/data/share/milter"
    with zipfile.ZipFile(wheel) as archive:
        assert "milter/py.typed" in archive.namelist()
        assert archive.read(f"{data}/rules/default.yaml") == (ROOT / "rules/default.yaml").read_bytes()
        assert archive.read(f"{data}/model/spam.onnx") == (ROOT / "model/spam.onnx").read_bytes()
        for unit in ("milter.service", "milter@.service", "milter-retrain.service", "milter-retrain.timer"):
            assert archive.read(f"{data}/systemd/{unit}") == (ROOT / "systemd" / unit).read_bytes()


def test_installed_layout_is_found_under_the_prefix(tmp_path: Path) -> None:
    # Outside a checkout, the shipped files are looked for under sys.prefix/share/milter.
    code = (
        "import sys; sys.prefix = sys.argv[1]; "
        "import milter.paths as p; print(p.SHIPPED_RULES); print(p.SHIPPED_MODEL)"
    )
    package = tmp_path / "site" / "milter"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "paths.py").write_bytes(Path(paths.__file__).read_bytes())
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "prefix")],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path / "site",
    ).stdout.split()
    assert out == [
        str(tmp_path / "prefix/share/milter/rules/default.yaml"),
        str(tmp_path / "prefix/share/milter/model/spam.onnx"),
    ]


def test_in_a_checkout_the_shipped_files_are_the_repository_ones() -> None:
    assert paths.SHIPPED_RULES == ROOT / "rules" / "default.yaml"
    assert paths.SHIPPED_MODEL == ROOT / "model" / "spam.onnx"


# What a checkout holds besides the sources (tests/test_packaging copies the rest).
NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", ".cache", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis",
    "corpus", "Maildir",
)  # fmt: skip
UNIT_PREFIX = "/opt/milter"  # the virtual environment the shipped units run milter from


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_pip_install_of_a_checkout_leaves_it_as_it_was_and_installs_the_documents(tmp_path: Path) -> None:
    checkout, prefix, tmp = tmp_path / "checkout", tmp_path / "opt-milter", tmp_path / "tmp"
    shutil.copytree(ROOT, checkout, ignore=NOT_SOURCES)
    tmp.mkdir()
    before = tree(checkout)
    # A virtual environment of its own, as /opt/milter is: pip install --prefix would uninstall
    # the milter this test runs from (pip removes the version it finds on its own sys.path).
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(prefix)], check=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(prefix / "bin" / "python"), "install", "-q",
         "--no-deps", "--no-compile", str(checkout)],
        check=True, capture_output=True, env={**os.environ, "TMPDIR": str(tmp)},
    )  # fmt: skip
    assert tree(checkout) == before  # no build/, no milter.egg-info
    assert [p.name for p in tmp.glob("milter-build-*")] == []  # the build's own directory is gone
    installed = prefix / "share" / "doc" / "milter"
    for name in ("install.md", "rules.md", "scaling.md"):
        assert (installed / name).read_bytes() == (ROOT / "docs" / name).read_bytes()
    for unit in ("milter.service", "milter@.service", "milter-retrain.service", "milter-retrain.timer"):
        [doc] = [
            line.removeprefix("Documentation=file:")
            for line in (ROOT / "systemd" / unit).read_text().splitlines()
            if line.startswith("Documentation=")
        ]
        assert doc.startswith(f"{UNIT_PREFIX}/"), doc
        assert (prefix / doc.removeprefix(f"{UNIT_PREFIX}/")).is_file(), f"{unit}: {doc} is not installed"
