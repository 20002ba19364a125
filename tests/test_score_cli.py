"""`milter score`: JSON lines, rules decisions, explanations, stdin, unreadable files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import milter
from milter.cli import main
from milter.training.synthetic import make_message, write_corpus
from milter.training.train import TrainConfig, train

REPO = Path(milter.__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("score")
    ham, spam = write_corpus(root, ham=100, spam=100)
    path = root / "tiny.onnx"
    path.write_bytes(train([ham], [spam], TrainConfig(min_df=1), "test").model_bytes)
    return path


@pytest.fixture
def rules(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(
        "version: 1\nrules:\n"
        "  - name: spam\n    if:\n      probability: {min: 0.9}\n    action: spam_folder\n"
        "  - name: suspicious\n    if:\n      probability: {min: 0.5}\n    action: flag\n"
        "  - name: default\n    action: deliver\n"
    )
    return path


def run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[dict[str, object]], str]:
    code = main(["score", "--json", *argv])
    captured = capsys.readouterr()
    return code, [json.loads(line) for line in captured.out.splitlines()], captured.err


def test_json_lines_with_action_rule_model_and_features(
    tmp_path: Path, tiny_model: Path, rules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spam = tmp_path / "spam.eml"
    spam.write_bytes(make_message(900, spam=True, seed=5))
    ham = tmp_path / "ham.eml"
    ham.write_bytes(make_message(900, spam=False, seed=5))
    code, records, err = run_json(
        ["--model", str(tiny_model), "--rules", str(rules), str(spam), str(ham)], capsys
    )
    assert code == 0 and err == ""
    assert [r["file"] for r in records] == [str(spam), str(ham)]
    for record in records:
        assert {"file", "probability", "action", "rule", "model", "features"} <= set(record)
        assert str(record["model"]).startswith("spam-")
        features = record["features"]
        assert isinstance(features, list) and 1 <= len(features) <= 5
        assert all(isinstance(name, str) and isinstance(value, float) for name, value in features)
    spam_record, ham_record = records
    assert spam_record["probability"] > 0.9 > 0.5 > ham_record["probability"]  # type: ignore[operator]
    assert (spam_record["action"], spam_record["rule"]) == ("spam_folder", "spam")
    assert (ham_record["action"], ham_record["rule"]) == ("deliver", "default")


def test_unreadable_files_are_reported_and_the_run_goes_on(
    tmp_path: Path, tiny_model: Path, rules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = tmp_path / "good.eml"
    good.write_bytes(make_message(1, spam=False))
    missing = tmp_path / "missing.eml"
    code, records, err = run_json(
        ["--model", str(tiny_model), "--rules", str(rules), str(missing), str(good)], capsys
    )
    assert code == 1
    assert f"{missing}: cannot read: No such file or directory" in err
    by_file = {r["file"]: r for r in records}
    assert by_file[str(missing)]["error"] == "cannot read: No such file or directory"
    assert "probability" in by_file[str(good)]


def test_a_directory_is_every_file_under_it(
    tmp_path: Path, tiny_model: Path, rules: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ham, spam = write_corpus(tmp_path / "c", ham=70, spam=75)
    code, records, _ = run_json(
        ["--model", str(tiny_model), "--rules", str(rules), str(ham), str(spam)], capsys
    )
    assert code == 0 and len(records) == 145  # more than one batch
    assert len({r["file"] for r in records}) == 145


def test_bad_model_or_rules_exit_2(tmp_path: Path, rules: Path, capsys: pytest.CaptureFixture[str]) -> None:
    message = tmp_path / "m.eml"
    message.write_bytes(make_message(1, spam=False))
    assert main(["score", "--model", str(tmp_path / "none.onnx"), "--rules", str(rules), str(message)]) == 2
    assert "none.onnx: no such file" in capsys.readouterr().err


def test_plain_output_and_defaults_use_the_shipped_rules_and_model(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # stdin, the shipped model and rules, as an admin would run it: a real subprocess.
    result = subprocess.run(
        [sys.executable, "-m", "milter", "score", "-"],
        input=make_message(3, spam=False),
        capture_output=True,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    line = result.stdout.decode()
    assert (
        line.startswith("-: probability=")
        and " action=" in line
        and " rule=" in line
        and " model=spam-" in line
    )
