"""`pip install .` gives a working `milter`: the wheel carries the shipped rules and model
where milter/paths.py looks for them outside a checkout."""

from __future__ import annotations

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
