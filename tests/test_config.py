"""Config: defaults, the file, flags over the file, and errors that name file, line and form."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import milter.config as config_module
from milter.cli import main
from milter.config import (
    DEFAULT_MODEL,
    DEFAULT_RULES,
    POSTFIX_MESSAGE_SIZE_LIMIT,
    Config,
    NextHop,
    load_config,
    parse_address,
    parse_next_hop,
)
from milter.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "milter.yaml"
    path.write_text(text)
    return path


def test_defaults_without_a_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", tmp_path / "absent.yaml")
    config = load_config()
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 10025)
    assert config.next_hop == NextHop("maildir", path=Path("Maildir"))
    assert config.rules == DEFAULT_RULES and config.rules.is_file()
    assert config.model == DEFAULT_MODEL and config.model.is_dir()
    assert config.mode == "after-queue" and config.on_error == "deliver"
    assert config.max_message_size >= POSTFIX_MESSAGE_SIZE_LIMIT
    assert config.subject_tag is None and config.metrics is None and config.scoring
    # The daemon's model speed limit is the one `milter check` and validate_model default to.
    from milter.model import DEFAULT_MAX_SECONDS_PER_MESSAGE

    assert config.max_ms_per_message == DEFAULT_MAX_SECONDS_PER_MESSAGE * 1000


def test_the_default_file_is_read_when_present(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path, "listen: 127.0.0.1:2525\n")
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATH", path)
    assert load_config().listen_port == 2525


def test_file_then_flags(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "listen: '[::1]:10025'\nnext_hop: smtp://127.0.0.1:10026\nrules: rules/strict.yaml\n"
        "model: /var/lib/milter/models\nmode: before-queue\non_error: tempfail\n"
        "max_message_size: 20_480_000\ntimeout: 60\nnext_hop_timeout: 30\nmax_sessions: 50\n"
        "drain_timeout: 10\nquarantine: /var/lib/milter/quarantine\nlog_format: json\n"
        "metrics: 127.0.0.1:9125\nsubject_tag: '[SPAM]'\nscoring: true\ntext_workers: 2\nhostname: mx.test\n",
    )
    config = load_config(path, {"listen": "127.0.0.1:2525", "mode": None})
    assert (config.listen_host, config.listen_port) == ("127.0.0.1", 2525)  # the flag wins
    assert config.mode == "before-queue"  # an unset flag (None) leaves the file's value
    assert config.next_hop == NextHop("smtp", "127.0.0.1", 10026)
    assert config.rules == tmp_path.resolve() / "rules" / "strict.yaml"  # relative to the file
    assert config.model == Path("/var/lib/milter/models")
    assert config.on_error == "tempfail" and config.max_message_size == 20_480_000
    assert (config.timeout, config.next_hop_timeout, config.drain_timeout) == (60.0, 30.0, 10.0)
    assert config.max_sessions == 50 and config.log_format == "json" and config.metrics == ("127.0.0.1", 9125)
    assert config.subject_tag == "[SPAM]" and config.text_workers == 2 and config.hostname == "mx.test"
    assert load_config(path, {"listen": "[::1]:2526"}).listen == "[::1]:2526"


def test_empty_file_is_all_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "# nothing set\n"), {"hostname": "h"}) == Config(hostname="h")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("listen: 127.0.0.1\n", ":1: listen: expected HOST:PORT (e.g. 127.0.0.1:10025 or [::1]:10025), got"),
        ("listen: '[zz]:25'\n", ':1: listen: "zz" is not an IPv6 address'),
        ("listen: 127.0.0.1:99999\n", ':1: listen: port "99999" is not a number from 1 to 65535'),
        (
            "\nnext_hop: ftp://x\n",
            ':2: next_hop: unknown next hop "ftp://x"; expected smtp://HOST:PORT, lmtp://',
        ),
        ("next_hop: smtp:/tmp/x\n", ":1: next_hop: cannot read next hop"),
        ("next_hop: 'maildir:'\n", ":1: next_hop: maildir: needs a path"),
        ("mode: before\n", ':1: mode: unknown value "before"; expected after-queue or before-queue'),
        ("on_error: bounce\n", ':1: on_error: unknown value "bounce"; expected deliver or tempfail'),
        ("max_message_size: 10\n", ":1: max_message_size: 10 is too small"),
        (
            "max_message_size: lots\n",
            ':1: max_message_size: expected an integer number of bytes, got the string "lots"',
        ),
        ("timeout: -1\n", ":1: timeout: -1 is out of range; expected seconds between 0 and 3600"),
        ("timeout: [1]\n", ":1: timeout: expected seconds, got a list"),
        (
            "max_ms_per_message: 0\n",
            ":1: max_ms_per_message: 0 is out of range; expected milliseconds a model may take per "
            "message (checked before it serves), between 0 and 10000",
        ),
        ("scoring: maybe\n", ':1: scoring: expected true or false, got the string "maybe"'),
        ('subject_tag: "a\\nb"\n', ":1: subject_tag: a subject tag cannot contain a line break"),
        ("text_workers: 100\n", ":1: text_workers: 100 is out of range"),
        ("workers: 0\n", ":1: workers: 0 is out of range; expected a number of processes from 1 to 256"),
        (
            "workers: many\n",
            ":1: workers: expected a number of processes from 1 to 256, or auto (one per core), got the "
            'string "many"',
        ),
        ("a: 1\nlistn: x\n", ':1: unknown key "a"; expected one of:'),
        ("listn: x\n", 'unknown key "listn"; did you mean "listen"?'),
        ("- a\n- b\n", ":1: expected a mapping (key: value), got a list"),
        ("listen: [a\n", "invalid YAML"),
        ("x: &a 1\ny: *a\n", "aliases (*a) are not allowed"),
    ],
)
def test_file_errors_name_file_line_and_form(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert str(e.value).startswith(str(path))
    assert message in str(e.value)


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape("absent.yaml: no such file")):
        load_config(tmp_path / "absent.yaml")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"listen": "localhost"}, "--listen: expected HOST:PORT"),
        ({"next_hop": "smtp://h"}, "--next-hop:"),
        ({"max_sessions": "0"}, "--max-sessions: 0 is too small"),
        ({"colour": "red"}, "unknown setting 'colour'"),
        ({"workers": "-2"}, "--workers: expected a number of processes"),
        ({"workers": "300"}, "--workers: 300 is out of range"),
        (
            {"workers": "4", "metrics": "127.0.0.1:65534"},
            "metrics: 4 workers serve metrics on ports 65534 to 65537, past 65535",
        ),
    ],
)
def test_flag_errors(overrides: dict[str, object], message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(write(tmp_path, ""), overrides)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://127.0.0.1:10026", NextHop("smtp", "127.0.0.1", 10026)),
        ("SMTP://mail.example.com:25/", NextHop("smtp", "mail.example.com", 25)),
        ("lmtp://[::1]:24", NextHop("lmtp", "::1", 24)),
        ("lmtp:/var/run/dovecot/lmtp", NextHop("lmtp", path=Path("/var/run/dovecot/lmtp"))),
        ("lmtp:private/dovecot.sock", NextHop("lmtp", path=Path("private/dovecot.sock"))),
        ("maildir:~/Maildir", NextHop("maildir", path=Path("~/Maildir").expanduser())),
        ("maildir:///srv/mail", NextHop("maildir", path=Path("/srv/mail"))),
    ],
)
def test_next_hop_urls(url: str, expected: NextHop) -> None:
    assert parse_next_hop(url) == expected
    assert parse_next_hop(str(expected)) == expected  # str() gives a URL that reads back


def test_addresses() -> None:
    assert parse_address("[2001:db8::1]:25") == ("2001:db8::1", 25)
    assert parse_address("0.0.0.0:10025") == ("0.0.0.0", 10025)
    with pytest.raises(ValueError, match="expected HOST:PORT"):
        parse_address("::1:25")  # an IPv6 address needs brackets


def test_cli_exits_2_on_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "\n\nmode: sideways\n")
    assert main(["serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"milter serve: {path}:3: mode: unknown value" in err


def test_help_documents_every_setting(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = capsys.readouterr().out
    for word in ("--listen", "--next-hop", "--rules", "--model", "--mode", "--on-error", "--max-message-size",
                 "--quarantine", "--log-format", "--no-scoring", "lmtp:/PATH.sock", "maildir:PATH",
                 "SIGHUP", "SIGTERM", "exit status", "./Maildir", "--workers", "SO_REUSEPORT"):  # fmt: skip
        assert word in text, word


def test_workers(tmp_path: Path) -> None:
    import os

    assert load_config(write(tmp_path, "")).workers == 1  # one process, no supervisor
    assert load_config(write(tmp_path, "workers: 3\n")).workers == 3
    assert load_config(write(tmp_path, "workers: 3\n"), {"workers": "2"}).workers == 2
    assert load_config(write(tmp_path, "workers: auto\n")).workers == len(os.sched_getaffinity(0))
    config = load_config(write(tmp_path, "workers: 2\nmetrics: 127.0.0.1:9125\n"))
    assert (config.workers, config.metrics) == (2, ("127.0.0.1", 9125))


def test_protocol_milter_is_before_queue_by_itself(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "protocol: milter\n")).mode == "before-queue"
    assert load_config(write(tmp_path, "protocol: milter\nmode: before-queue\n")).mode == "before-queue"
    assert load_config(write(tmp_path, "mode: after-queue\n"), {"protocol": "smtp"}).mode == "after-queue"
    # The flag replaces the file's mode, so nothing contradicts.
    config = load_config(write(tmp_path, "mode: after-queue\nprotocol: milter\n"), {"mode": "before-queue"})
    assert (config.protocol, config.mode) == ("milter", "before-queue")


MILTER_AFTER_QUEUE = (
    "a milter works inside Postfix's SMTP session, before the queue (smtpd_milters); expected mode "
    "before-queue or no mode setting with protocol milter, or protocol smtp for the after-queue "
    "content filter"
)


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        # The install.md example with `protocol: milter` uncommented and `mode:` left in.
        (
            "listen: 127.0.0.1:10025\nmode: after-queue\nprotocol: milter\n",
            {},
            "{path}:2: mode: after-queue contradicts protocol: milter (line 3): ",
        ),
        (
            "mode: after-queue\n",
            {"protocol": "milter"},
            "{path}:1: mode: after-queue contradicts --protocol milter: ",
        ),
        (
            "protocol: milter\n",
            {"mode": "after-queue"},
            "--mode after-queue contradicts protocol: milter ({path}:1): ",
        ),
    ],
)
def test_protocol_milter_with_mode_after_queue_is_refused(
    tmp_path: Path, text: str, overrides: dict[str, object], message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(path, overrides)
    assert str(e.value) == message.format(path=path) + MILTER_AFTER_QUEUE


def test_serve_refuses_protocol_milter_with_mode_after_queue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "mode: after-queue\nprotocol: milter\n")
    assert main(["serve", "--config", str(path)]) == 2
    where = f"{path}:1: mode: after-queue contradicts protocol: milter (line 2)"
    assert capsys.readouterr().err == f"milter serve: {where}: {MILTER_AFTER_QUEUE}\n"
