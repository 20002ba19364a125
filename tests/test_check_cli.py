"""`milter check` and `milter rules test`, run as the CLI with real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from milter.cli import main
from milter.paths import SHIPPED_RULES

REPO = Path(__file__).resolve().parent.parent

RULES = """\
rules:
  - name: partner
    if:
      sender: "@partner.example"
    action: deliver
  - name: sales-spam
    if:
      recipient: "@sales.example"
      probability: {min: 0.7}
    action: quarantine
  - name: spam
    if:
      probability: {min: 0.90}
    action: spam_folder
  - name: unscored
    if:
      unscored: true
    action: flag
  - name: default
    action: deliver
"""

MESSAGE = (
    b"Return-Path: <offers@partner.example>\r\n"
    b"Delivered-To: boss@sales.example\r\n"
    b"From: Partner <offers@partner.example>\r\n"
    b"To: boss@sales.example\r\n"
    b"Subject: our new catalogue\r\n"
    b"\r\n"
    b"Hello, the catalogue is attached.\r\n"
)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# --- milter check ------------------------------------------------------------------------------


def test_check_shipped_rules(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "check", str(SHIPPED_RULES))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"{SHIPPED_RULES}: ok: 3 rules (after-queue mode)"
    assert lines[1].split() == ["15", "spam", "spam_folder", "if", "probability", ">=", "0.90"]
    assert lines[2].split() == ["20", "suspicious", "flag", "if", "probability", ">=", "0.50"]
    assert lines[3].split() == ["25", "default", "deliver", "(catch-all)"]
    assert "thresholds: spam >= 0.90, suspicious >= 0.50" in out
    assert lines[-1] == "1 ok, 0 invalid"
    assert err == ""


def test_check_invalid_rules_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(
        tmp_path / "bad.yaml", "rules:\n  - name: spam\n    if: {probabilty: {min: 0.9}}\n    action: flag\n"
    )
    code, out, err = run(capsys, "check", str(bad))
    assert code == 1
    assert out == ""
    assert err.splitlines()[0] == (
        f'{bad}:3: rule "spam": if: unknown key "probabilty"; did you mean "probability"?'
        " expected one of: all_recipients, client, header, probability, recipient, sender, size, unscored"
    )
    assert err.splitlines()[-1] == "0 ok, 1 invalid"


def test_check_mode_decides_whether_reject_is_allowed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path / "reject.yaml",
        "rules:\n  - name: r\n    if: {probability: {min: 0.99}}\n    action: reject\n",
    )
    code, _, err = run(capsys, "check", str(path))
    assert code == 1
    assert err.splitlines()[0] == (
        f'{path}:4: rule "r": action "reject" is not possible in after-queue mode;'
        " allowed: deliver, flag, spam_folder, quarantine, tempfail, discard"
    )
    code, out, err = run(capsys, "check", "--mode", "before-queue", str(path))
    assert code == 0, err
    assert f"{path}: ok: 1 rule (before-queue mode)" in out
    assert "note: no catch-all rule" in out


def test_check_directory_skips_editor_files_and_reports_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path / "a.yaml", RULES)
    bad = write(tmp_path / "b.yml", "rules:\n  - name: x\n    action: flg\n")
    for junk in (".a.yaml.swp", "a.yaml~", "#a.yaml#", "c.yaml.tmp", "4913", "notes.txt"):
        write(tmp_path / junk, "not: [valid\n")
    code, out, err = run(capsys, "check", str(tmp_path))
    assert code == 1
    assert f"{tmp_path / 'a.yaml'}: ok: 5 rules" in out
    assert err.splitlines() == [
        f'{bad}:3: rule "x": action: unknown value "flg"; did you mean "flag"?'
        " expected one of: deliver, flag, spam_folder, quarantine, reject, tempfail, discard",
        "1 ok, 1 invalid",
    ]


def test_check_empty_directory_missing_and_unknown_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    other = write(tmp_path / "notes.txt", "hi\n")
    code, out, err = run(
        capsys, "check", str(empty), str(tmp_path / "gone.yaml"), str(other), str(tmp_path / "x")
    )
    assert code == 1
    assert out == ""
    assert err.splitlines() == [
        f"{empty}: no rules (*.yaml, *.yml) or model (*.onnx) files in this directory",
        f"{tmp_path / 'gone.yaml'}: no such file",
        f"{other}: not a rules file (*.yaml, *.yml) or a model file (*.onnx); cannot tell what to check",
        f"{tmp_path / 'x'}: no such file or directory",
        "0 ok, 4 invalid",
    ]


def test_check_refuses_yaml_bomb_and_huge_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bomb = write(tmp_path / "bomb.yaml", 'a: &a ["lol", "lol"]\nb: &b [*a, *a]\nrules: *b\n')
    huge = tmp_path / "huge.yaml"
    with huge.open("wb") as f:
        f.truncate(100 * 1024 * 1024)
    code, _, err = run(capsys, "check", str(bomb), str(huge))
    assert code == 1
    assert err.splitlines() == [
        f"{bomb}:2: invalid YAML: aliases (*a) are not allowed; write the value out in full",
        f"{huge}: file is too large: 104,857,600 bytes; the limit is 1,000,000",
        "0 ok, 2 invalid",
    ]


def test_check_refuses_broken_model_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = write(tmp_path / "text.onnx", "this is not a model\n")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    code, out, err = run(capsys, "check", str(text), str(empty))
    assert code == 1
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 3
    assert lines[0].startswith(f"{text}: not a loadable ONNX model")
    assert lines[1].startswith(f"{empty}: empty file")
    assert lines[2] == "0 ok, 2 invalid"


def test_check_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path / "bad.yaml", "")
    code, out, err = run(capsys, "check", "--json", str(SHIPPED_RULES), str(bad))
    assert code == 1
    good, failed = (json.loads(line) for line in out.splitlines())
    assert good["ok"] is True
    assert good["kind"] == "rules"
    assert [(r["name"], r["action"], r["required"]) for r in good["rules"]] == [
        ("spam", "spam_folder", 0.9),
        ("suspicious", "flag", 0.5),
        ("default", "deliver", None),
    ]
    assert failed == {
        "path": str(bad),
        "kind": "rules",
        "ok": False,
        "error": f'{bad}: the file is empty; expected a mapping with a "rules" list',
    }
    assert err.splitlines() == [failed["error"]]


# --- milter check --config --------------------------------------------------------------------


def config_file(tmp_path: Path, text: str) -> Path:
    return write(tmp_path / "milter.yaml", text)


def serve_start_error(config: Path) -> tuple[int, str]:
    """`milter serve --config` run for real: its exit status and what it said it stopped on."""
    proc = subprocess.run(
        [sys.executable, "-m", "milter", "serve", "--config", str(config), "--no-watch"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    lines = [
        line for line in proc.stderr.splitlines() if "milter serve: " in line or "cannot start: " in line
    ]
    assert len(lines) == 1, proc.stderr
    return proc.returncode, lines[0].split(
        "milter serve: " if "milter serve: " in lines[0] else "cannot start: "
    )[1]


def test_check_config_checks_the_file_its_rules_and_the_model_it_would_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "model"
    models.mkdir()
    (models / "spam.onnx").write_bytes((REPO / "model" / "spam.onnx").read_bytes())
    broken = write(models / "newer.onnx", "not a model\n")
    os.utime(broken, (2_000_000_000, 2_000_000_000))  # newer: the daemon tries it first
    path = config_file(
        tmp_path,
        f"listen: 127.0.0.1:10025\nnext_hop: smtp://127.0.0.1:10026\nmode: after-queue\n"
        f"rules: {SHIPPED_RULES}\nmodel: model\nquarantine: /var/lib/milter/quarantine\n",
    )
    code, out, err = run(capsys, "check", "--config", str(path))
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"{path}: ok: smtp on 127.0.0.1:10025, after-queue mode"
    assert {"  next_hop: smtp://127.0.0.1:10026", f"  model: {models}", "  metrics: (none)"} <= set(lines)
    assert f"{SHIPPED_RULES}: ok: 3 rules (after-queue mode)" in lines
    at = lines.index(f"{models / 'spam.onnx'}: ok: model {load_model_id()}")
    assert lines[at + 1] == f"  serves: the newest valid model in {models}"
    assert lines[at + 2].startswith(f"  skipped, as the daemon skips it: {broken}: not a loadable ONNX model")
    assert lines[-1] == "3 ok, 0 invalid" and err == ""

    code, out, _ = run(capsys, "check", "--json", "--config", str(path))
    assert code == 0
    config, rules, model = (json.loads(line) for line in out.splitlines())
    assert (config["kind"], config["ok"], config["config"]["listen"]) == ("config", True, "127.0.0.1:10025")
    assert config["config"]["next_hop"] == "smtp://127.0.0.1:10026" and config["config"]["workers"] == 1
    assert (rules["kind"], rules["mode"], len(rules["rules"])) == ("rules", "after-queue", 3)
    assert (model["kind"], model["path"]) == ("model", str(models / "spam.onnx"))
    assert model["skipped"][0].startswith(f"{broken}: not a loadable ONNX model")


def load_model_id() -> str:
    from milter.model import load_model

    return load_model(REPO / "model" / "spam.onnx").id


@pytest.mark.parametrize(
    "text",
    [
        "\n\nmode: sideways\n",
        "listen: 127.0.0.1:99999\n",
        "mode: after-queue\nprotocol: milter\n",
        "lisen: 127.0.0.1:10025\n",
        "[unclosed\n",
    ],
)
def test_check_config_errors_are_the_daemons(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    path = config_file(tmp_path, text)
    code, out, err = run(capsys, "check", "--config", str(path))
    assert (code, out) == (2, "")
    assert serve_start_error(path) == (2, err.removesuffix("\n"))
    assert err.startswith(f"{path}:") and err.count("\n") == 1


def test_check_config_rules_and_model_errors_are_the_daemons(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reject = write(tmp_path / "reject.yaml", "rules:\n  - name: r\n    action: reject\n")
    empty = tmp_path / "models"
    empty.mkdir()
    path = config_file(tmp_path, f"rules: {reject}\nmodel: {empty}\n")
    code, out, err = run(capsys, "check", "--config", str(path))
    assert code == 1
    assert out.startswith(f"{path}: ok: smtp on 127.0.0.1:10025, after-queue mode\n")
    rules_error, model_error, summary = err.splitlines()
    assert rules_error.startswith(
        f'{reject}:3: rule "r": action "reject" is not possible in after-queue mode'
    )
    assert (
        model_error
        == f"{empty}: directory has no *.onnx file; expected a model file written by `milter train`"
    )
    assert summary == "1 ok, 2 invalid"
    assert serve_start_error(path) == (1, rules_error)  # the daemon stops on the rules first
    write(path, f"rules: {SHIPPED_RULES}\nmodel: {empty}\n")
    assert serve_start_error(path) == (1, model_error)

    # As a milter the mode is before-queue, so the same rules may reject.
    write(path, f"protocol: milter\nrules: {reject}\nmodel: {REPO / 'model'}\n")
    code, out, err = run(capsys, "check", "--config", str(path))
    assert code == 0, err
    assert out.startswith(f"{path}: ok: milter on 127.0.0.1:10025, before-queue mode\n")
    assert "  next_hop: (none)" in out.splitlines()
    assert f"{reject}: ok: 1 rule (before-queue mode)" in out


def test_check_config_flags_override_the_file_as_in_serve(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reject = write(tmp_path / "reject.yaml", "rules:\n  - name: r\n    action: reject\n")
    path = config_file(tmp_path, f"rules: {reject}\nmodel: {REPO / 'model'}\n")
    code, out, err = run(capsys, "check", "--config", str(path), "--mode", "before-queue", str(reject))
    assert code == 0, err
    assert out.count(f"{reject}: ok: 1 rule (before-queue mode)") == 2  # named by the file, and given
    code, _, err = run(capsys, "check", "--config", str(path), "--max-ms-per-message", "0.000001")
    assert code == 1
    assert (
        f"{REPO / 'model' / 'spam.onnx'}: takes " in err and " ms per message; expected at most 0.0 ms" in err
    )
    code, _, err = run(capsys, "check", "--config", str(path), "--max-ms-per-message", "0")
    assert code == 2  # a flag out of range, as serve says it
    assert err.startswith("--max-ms-per-message: 0 is out of range")


def test_check_needs_something_to_check(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "check")
    assert (code, out) == (2, "")
    assert err == "milter check: nothing to check; give rules or model files, or --config FILE\n"


# --- milter rules test -------------------------------------------------------------------------


def test_rules_without_subcommand_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "rules")
    assert code == 2
    assert out.startswith("usage: milter rules")
    assert "test" in out and "show which rule each message hits and why" in out


def test_rules_test_with_a_probability(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "rules", "test", str(SHIPPED_RULES), "--probability", "0.93")
    assert code == 0, err
    assert out == (
        '(no message): probability 0.9300 [given (--probability)] -> spam_folder by rule "spam" (line 15):'
        " probability 0.9300 >= 0.90\n"
    )


@pytest.mark.parametrize(
    ("p", "action", "rule"),
    [("0.95", "spam_folder", "spam"), ("0.9", "spam_folder", "spam"), ("0.6", "flag", "suspicious"),
     ("0.49", "deliver", "default")],
)  # fmt: skip
def test_rules_test_json_shipped_thresholds(
    p: str, action: str, rule: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "rules", "test", "--json", str(SHIPPED_RULES), "--probability", p)
    assert code == 0
    result = json.loads(out)
    assert (result["action"], result["rule"], result["probability"]) == (action, rule, float(p))


def test_rules_test_uses_the_envelope_delivery_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = write(tmp_path / "r.yaml", RULES)
    msg = tmp_path / "m.eml"
    msg.write_bytes(MESSAGE)
    code, out, _ = run(capsys, "rules", "test", "--json", str(rules), str(msg), "--probability", "0.99")
    assert code == 0
    result = json.loads(out)
    assert result["rule"] == "partner"
    assert result["reason"] == 'sender "offers@partner.example" matches "@partner.example"'
    assert result["envelope"] == {
        "mail_from": "offers@partner.example",
        "rcpt_tos": ["boss@sales.example"],
        "client_address": None,
    }
    # --sender overrides Return-Path: now the recipient rule decides.
    code, out, _ = run(
        capsys,
        "rules",
        "test",
        "--json",
        str(rules),
        str(msg),
        "--probability",
        "0.75",
        "--sender",
        "x@else.example",
    )
    assert code == 0
    result = json.loads(out)
    assert (result["rule"], result["action"], result["required"]) == ("sales-spam", "quarantine", 0.7)
    assert (
        result["reason"]
        == 'probability 0.7500 >= 0.70; recipient "boss@sales.example" matches "@sales.example"'
    )


def test_rules_test_all_shows_every_rule_and_condition(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = write(tmp_path / "r.yaml", RULES)
    code, out, _ = run(
        capsys,
        "rules",
        "test",
        str(rules),
        "--all",
        "--probability",
        "0.95",
        "--sender",
        "a@b.example",
        "--recipient",
        "c@d.example",
        "--client",
        "192.0.2.1",
    )
    assert code == 0
    assert out.splitlines() == [
        '(no message): probability 0.9500 [given (--probability)] -> spam_folder by rule "spam" (line 11):'
        " probability 0.9500 >= 0.90",
        "  envelope: from <a@b.example> to <c@d.example> client 192.0.2.1",
        "  no       partner     -> deliver",
        '      no   sender "a@b.example" matches none of "@partner.example"',
        "  no       sales-spam  -> quarantine",
        "      yes  probability 0.9500 >= 0.70",
        '      no   no recipient of 1 matches "@sales.example"',
        "  DECIDES  spam        -> spam_folder",
        "      yes  probability 0.9500 >= 0.90",
        "  no       unscored    -> flag",
        "      no   message is scored (probability 0.9500)",
        "  match    default     -> deliver",
        "      yes  no conditions: matches every message",
    ]


def test_rules_test_unscored(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = write(tmp_path / "r.yaml", RULES)
    code, out, _ = run(capsys, "rules", "test", "--json", "--all", str(rules), "--unscored")
    assert code == 0
    result = json.loads(out)
    assert (result["probability"], result["rule"], result["action"]) == (None, "unscored", "flag")
    assert [r["decides"] for r in result["rules"]] == [False, False, False, True, False]
    assert result["rules"][2]["conditions"] == [{"holds": False, "why": "no probability (unscored)"}]


def test_rules_test_directory_options_after_messages_and_unreadable_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mail = tmp_path / "mail"
    (mail / "new").mkdir(parents=True)
    (mail / "new" / "1.eml").write_bytes(MESSAGE)
    (mail / "new" / "2.eml").write_bytes(b"Subject: no envelope headers\r\n\r\nhi\r\n")
    (mail / ".hidden").write_bytes(b"skipped")
    code, out, err = run(
        capsys,
        "rules",
        "test",
        str(SHIPPED_RULES),
        str(mail),
        str(tmp_path / "missing.eml"),
        "--probability",
        "0.5",
    )
    assert code == 1  # one message could not be read; the others were still tested
    assert err == f"{tmp_path / 'missing.eml'}: no such file\n"
    assert [line.split(":")[0] for line in out.splitlines()] == [
        str(mail / "new" / "1.eml"),
        str(mail / "new" / "2.eml"),
    ]
    assert all('-> flag by rule "suspicious"' in line for line in out.splitlines())


def test_rules_test_invalid_rules_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = write(tmp_path / "r.yaml", "rules:\n  - name: r\n    action: reject\n")
    code, out, err = run(capsys, "rules", "test", str(rules), "--probability", "0.5", "--mode", "after-queue")
    assert code == 1
    assert out == ""
    assert err == (
        f'{rules}:3: rule "r": action "reject" is not possible in after-queue mode;'
        " allowed: deliver, flag, spam_folder, quarantine, tempfail, discard\n"
    )


def test_rules_test_needs_messages_or_a_probability(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "rules", "test", str(SHIPPED_RULES))
    assert code == 2
    assert out == ""
    assert "no MESSAGE given" in err


def test_rules_test_missing_model_says_what_to_do(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    msg = tmp_path / "m.eml"
    msg.write_bytes(MESSAGE)
    code, out, err = run(
        capsys, "rules", "test", str(SHIPPED_RULES), str(msg), "--model", str(tmp_path / "no.onnx")
    )
    assert code == 1
    assert out == ""
    assert err.startswith(f"{tmp_path / 'no.onnx'}: no such file")
    assert err.endswith("(use --model PATH, or --probability P to test the rules without a model)\n")


def test_rules_test_bad_probability_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["rules", "test", str(SHIPPED_RULES), "--probability", "1.5"])
    assert info.value.code == 2
    assert (
        "argument --probability: 1.5 is out of range; expected a probability from 0 to 1"
        in capsys.readouterr().err
    )


def test_rules_test_reads_stdin_as_a_subprocess(tmp_path: Path) -> None:
    rules = write(tmp_path / "r.yaml", RULES)
    done = subprocess.run(
        [sys.executable, "-m", "milter", "rules", "test", "--json", str(rules), "-", "--probability", "0.2"],
        input=MESSAGE,
        capture_output=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert (result["file"], result["rule"]) == ("-", "partner")


def test_check_as_a_subprocess_exit_codes(tmp_path: Path) -> None:
    bad = write(tmp_path / "bad.yaml", "rules:\n\t- name: x\n")
    done = subprocess.run(
        [sys.executable, "-m", "milter", "check", str(SHIPPED_RULES), str(bad)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout.startswith(f"{SHIPPED_RULES}: ok: 3 rules")
    assert done.stderr.splitlines()[0].startswith(f"{bad}:2: invalid YAML: found character '\\t'")


# --- with the shipped model --------------------------------------------------------------------

SHIPPED_MODEL = REPO / "model" / "spam.onnx"

SPAMMY = (
    b"Return-Path: <promo@deals.example>\r\nDelivered-To: someone@example.net\r\n"
    b'From: "Best Deals" <promo@deals.example>\r\nSubject: YOU WON $1,000,000 !!! claim now\r\n'
    b"MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
    b"<html><body><a href='http://win.example/claim'>CLICK HERE</a> to claim your prize, "
    b"cheap pills, free money, no prescription!!!</body></html>\r\n"
)


def test_check_shipped_model(capsys: pytest.CaptureFixture[str]) -> None:
    from milter.model import load_model
    from milter.text import TEXT_VERSION

    code, out, err = run(capsys, "check", str(SHIPPED_MODEL))
    assert code == 0, err
    assert out.splitlines()[0] == f"{SHIPPED_MODEL}: ok: model {load_model(SHIPPED_MODEL).id}"
    assert f"  text_version: {TEXT_VERSION}" in out.splitlines()
    assert "  metadata:" in out.splitlines()
    assert out.splitlines()[-1] == "1 ok, 0 invalid"


def test_check_model_json_has_metadata_and_figures(capsys: pytest.CaptureFixture[str]) -> None:
    from milter.model import describe_model, load_model

    code, out, _ = run(capsys, "check", "--json", str(SHIPPED_MODEL))
    assert code == 0
    result = json.loads(out)
    expected = describe_model(load_model(SHIPPED_MODEL))
    assert result["ok"] is True
    assert result["kind"] == "model"
    assert result["model"]["id"] == expected["id"]
    assert result["model"]["metadata"] == expected["metadata"]
    assert result["model"]["figures"] == expected["figures"]


def test_check_truncated_model_and_too_slow_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = SHIPPED_MODEL.read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 2])
    code, out, err = run(capsys, "check", str(truncated))
    assert code == 1
    assert out == ""
    assert err.splitlines()[0].startswith(f"{truncated}: not a loadable ONNX model")
    # The same limit the daemon applies before a model serves, here set impossibly low.
    code, out, err = run(capsys, "check", "--max-ms-per-message", "0.000001", str(SHIPPED_MODEL))
    assert code == 1
    assert " ms per message; expected at most 0.0 ms" in err.splitlines()[0]
    assert err.splitlines()[0].startswith(f"{SHIPPED_MODEL}: takes ")


def test_check_directory_with_rules_and_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "spam.onnx").write_bytes(SHIPPED_MODEL.read_bytes())
    (tmp_path / "default.yaml").write_text(SHIPPED_RULES.read_text())
    code, out, err = run(capsys, "check", str(tmp_path))
    assert code == 0, err
    assert f"{tmp_path / 'default.yaml'}: ok: 3 rules (after-queue mode)" in out
    assert f"{tmp_path / 'spam.onnx'}: ok: model spam-" in out
    assert out.splitlines()[-1] == "2 ok, 0 invalid"


def test_rules_test_scores_with_the_shipped_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from milter.message import Envelope, Message
    from milter.model import load_model
    from milter.rules import Ruleset, facts_of

    model = load_model(SHIPPED_MODEL)
    ruleset = Ruleset.load(SHIPPED_RULES)
    files = []
    for name, raw in (("spammy.eml", SPAMMY), ("plain.eml", MESSAGE)):
        (tmp_path / name).write_bytes(raw)
        files.append(str(tmp_path / name))
    code, out, err = run(capsys, "rules", "test", "--json", str(SHIPPED_RULES), *files)
    assert code == 0, err
    results = [json.loads(line) for line in out.splitlines()]
    assert [r["file"] for r in results] == files
    for result, raw in zip(results, (SPAMMY, MESSAGE), strict=True):
        expected_p = model.score_message(raw).probability
        assert result["probability"] == pytest.approx(expected_p, abs=1e-6)
        assert result["model"] == model.id
        decision = ruleset.decide(facts_of(Message(raw, Envelope("", ())), expected_p))
        assert (result["action"], result["rule"]) == (decision.action.value, decision.rule)


def test_rules_test_text_output_names_the_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from milter.model import load_model

    msg = tmp_path / "m.eml"
    msg.write_bytes(SPAMMY)
    code, out, _ = run(capsys, "rules", "test", str(SHIPPED_RULES), str(msg), "--model", str(SHIPPED_MODEL))
    assert code == 0
    p = load_model(SHIPPED_MODEL).score_message(SPAMMY).probability
    assert out.startswith(f"{msg}: probability {p:.4f} [model {load_model(SHIPPED_MODEL).id}] -> ")


def test_after_an_upgrade_a_site_model_of_another_text_version_names_the_shipped_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A site model trained before an upgrade is sound but reads another message->text: the
    daemon does not serve it, and says where this milter's own model is and how to install it;
    installed, the newest valid model serves and the site model is skipped with its reason."""
    import onnx

    from milter.model import META_TEXT_VERSION
    from milter.paths import SHIPPED_MODEL

    proto = onnx.load(str(SHIPPED_MODEL))
    for prop in proto.metadata_props:
        if prop.key == META_TEXT_VERSION:
            prop.value = "1"
    models = tmp_path / "model"
    models.mkdir()
    site = models / "site-old.onnx"
    site.write_bytes(proto.SerializeToString())
    path = config_file(tmp_path, f"rules: {SHIPPED_RULES}\nmodel: {models}\n")
    code, error = serve_start_error(path)
    assert code == 1
    assert f"{site}: model expects message->text version '1'" in error
    assert f"the model shipped with this milter is {SHIPPED_MODEL}: install it into {models}" in error
    assert f"`install -m 0644 {SHIPPED_MODEL} {models}`" in error

    subprocess.run(["install", "-m", "0644", str(SHIPPED_MODEL), str(models)], check=True)
    os.utime(site, (2_000_000_000, 2_000_000_000))  # the site model stays the newer file
    code, out, err = run(capsys, "check", "--config", str(path))
    assert code == 0, err
    assert f"{models / SHIPPED_MODEL.name}: ok: model " in out
    assert f"skipped, as the daemon skips it: {site}: model expects message->text version '1'" in out
