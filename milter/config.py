"""The daemon's configuration: one YAML file plus command-line flags, validated up front.

`load_config(path, overrides)` returns a frozen `Config` or raises `ConfigError` naming the file,
the line and the expected form, so `milter serve` refuses to start on a bad setting instead of
failing on the first message. Precedence: built-in defaults < the file < command-line flags.

Relative paths in the file are taken relative to the file's directory (so a config and the
rules beside it can move together); relative paths given as flags are relative to the working
directory, as a shell user expects.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from milter.errors import ConfigError, FileError
from milter.paths import SHIPPED_MODEL_DIR, SHIPPED_RULES
from milter.yamlfile import Checker, load_yaml, shown

DEFAULT_CONFIG_PATH = Path("/etc/milter/milter.yaml")
DEFAULT_RULES = SHIPPED_RULES
DEFAULT_MODEL = SHIPPED_MODEL_DIR
# milter.model.DEFAULT_MAX_SECONDS_PER_MESSAGE in ms: not imported, because importing the model
# module loads onnxruntime and `milter --help` reads this module (tests/test_config.py checks
# that the two agree).
DEFAULT_MAX_MS_PER_MESSAGE = 50.0

MODES = ("after-queue", "before-queue")
PROTOCOLS = ("smtp", "milter")
ON_ERROR = ("deliver", "tempfail")
LOG_FORMATS = ("text", "json")
NEXT_HOP_FORMS = "smtp://HOST:PORT, lmtp://HOST:PORT, lmtp:/PATH.sock or maildir:PATH"
LISTEN_FORM = "HOST:PORT (e.g. 127.0.0.1:10025 or [::1]:10025)"
MAX_WORKERS = 256
# Postfix's message_size_limit default; a smaller limit here would bounce mail Postfix accepted.
POSTFIX_MESSAGE_SIZE_LIMIT = 10_240_000

Mode = Literal["after-queue", "before-queue"]
Protocol = Literal["smtp", "milter"]
OnError = Literal["deliver", "tempfail"]
LogFormat = Literal["text", "json"]


class ConfigFileError(ConfigError, FileError):
    """A configuration error located in the config file: `path:line: message`."""


@dataclass(frozen=True, slots=True)
class NextHop:
    """Where accepted mail goes: `scheme` is smtp, lmtp or maildir."""

    scheme: Literal["smtp", "lmtp", "maildir"]
    host: str | None = None
    port: int | None = None
    path: Path | None = None  # lmtp unix socket, or the Maildir

    def __str__(self) -> str:
        if self.scheme == "maildir":
            return f"maildir:{self.path}"
        if self.path is not None:
            return f"{self.scheme}:{self.path}"
        return f"{self.scheme}://{format_address(self.host or '', self.port or 0)}"


@dataclass(frozen=True, slots=True)
class Config:
    listen_host: str = "127.0.0.1"
    listen_port: int = 10025
    next_hop: NextHop = field(default_factory=lambda: NextHop("maildir", path=Path("Maildir")))
    rules: Path = DEFAULT_RULES
    model: Path = DEFAULT_MODEL  # a file, or a directory: its newest valid .onnx
    mode: Mode = "after-queue"
    # smtp: a proxy (content_filter or smtpd_proxy_filter) handing mail on to next_hop; milter:
    # Postfix's smtpd_milters, where Postfix itself queues the mail (milter.milter_protocol).
    protocol: Protocol = "smtp"
    on_error: OnError = "deliver"
    max_message_size: int = POSTFIX_MESSAGE_SIZE_LIMIT
    timeout: float = 300.0  # idle time allowed between client commands (Postfix's smtpd_timeout)
    next_hop_timeout: float = 120.0  # per next-hop command; well under Postfix's 600 s data timeout
    max_sessions: int = 100  # Postfix's default_process_limit: it never opens more
    drain_timeout: float = 30.0  # SIGTERM: how long sessions in flight may finish
    max_ms_per_message: float = DEFAULT_MAX_MS_PER_MESSAGE  # model validation's speed limit
    quarantine: Path = Path("quarantine")
    # What `milter learn` writes (milter.feedback): outside /var/lib/milter, which the unit keeps
    # 0750 milter:milter, because Dovecot's mail processes write it (docs/learning.md).
    feedback_store: Path = Path("/var/lib/milter-feedback")
    # A candidate model scoring every message beside the live one, acting on none (a file, or a
    # directory: its newest valid .onnx); None: no shadow. `milter retrain --to shadow` writes it.
    shadow_model: Path | None = None
    # What `milter retrain` records of its runs (JSON); the daemon's metrics read it.
    retrain_state: Path = Path("/var/lib/milter/retrain.json")
    log_format: LogFormat = "text"
    metrics: tuple[str, int] | None = None  # opt-in Prometheus endpoint
    subject_tag: str | None = None  # off by default: rewriting Subject breaks DKIM signatures
    scoring: bool = True  # off: proxy only (benchmarks), every message delivered unscored
    text_workers: int | None = None  # processes for message->text; None: workers.default_workers()
    workers: int = 1  # serving processes sharing the port (milter.supervisor); 1: no supervisor
    # The name in our greeting and EHLO reply, and in our EHLO to the next hop. Not this host's
    # name: Postfix's smtp client reports "mail loops back to myself" when the server it hands
    # mail to announces Postfix's own $myhostname. An address literal never matches, needs no DNS
    # and passes reject_non_fqdn_helo_hostname on the reinjection listener.
    hostname: str = "[127.0.0.1]"
    # The operator console (milter.console): off by default. Only a loopback address may go
    # without a password file (checked in _check_together); with the console on, every
    # decision is kept in the history database too (milter.history).
    console: tuple[str, int] | None = None
    console_password_file: Path | None = None
    history: Path = Path("history.sqlite3")
    history_max_rows: int = 100_000
    history_messages: int = 2_000  # the newest decisions whose message is kept too (to teach); 0: none
    # Postfix's config directory for `postqueue -c` (milter protocol: the console shows the
    # hold queue); None: Postfix's default (/etc/postfix).
    postfix_config_dir: Path | None = None

    @property
    def listen(self) -> str:
        return format_address(self.listen_host, self.listen_port)


# --- parsing of single values (shared by the file and the flags) -------------------------------


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_address(text: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); ValueError with the expected form."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"expected {LISTEN_FORM}, got {shown(text)}")
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{shown(host)} is not an IPv6 address; expected {LISTEN_FORM}") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host or ":" in host:
            raise ValueError(f"expected {LISTEN_FORM}, got {shown(text)}")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"port {shown(port_text)} is not a number from 1 to 65535; expected {LISTEN_FORM}")
    return host, int(port_text)


def parse_next_hop(url: str, base: Path | None = None) -> NextHop:
    """A next-hop URL -> NextHop; ValueError naming the accepted forms. `base`: for relative paths."""
    url = url.strip()
    scheme, sep, rest = url.partition(":")
    scheme = scheme.lower()
    if not sep or scheme not in ("smtp", "lmtp", "maildir"):
        raise ValueError(f"unknown next hop {shown(url)}; expected {NEXT_HOP_FORMS}")
    if scheme == "maildir":
        path = rest.removeprefix("//")
        if not path:
            raise ValueError(f"maildir: needs a path; expected {NEXT_HOP_FORMS}")
        return NextHop("maildir", path=_resolve(Path(path).expanduser(), base))
    if rest.startswith("//"):
        try:
            host, port = parse_address(rest[2:].rstrip("/"))
        except ValueError as e:
            raise ValueError(f"{shown(url)}: {e}; expected {NEXT_HOP_FORMS}") from None
        return NextHop(scheme, host=host, port=port)  # type: ignore[arg-type]
    if scheme == "lmtp" and (rest.startswith("/") or rest.endswith(".sock")):
        return NextHop("lmtp", path=_resolve(Path(rest), base))
    raise ValueError(f"cannot read next hop {shown(url)}; expected {NEXT_HOP_FORMS}")


def _resolve(path: Path, base: Path | None) -> Path:
    return path if path.is_absolute() or base is None else base / path


# --- the file and the overrides ----------------------------------------------------------------

# key -> (expected form, for messages)
KEYS: dict[str, str] = {
    "listen": LISTEN_FORM,
    "next_hop": NEXT_HOP_FORMS,
    "rules": "a path to a rules file",
    "model": "a path to a .onnx file or a directory of them",
    "mode": " or ".join(MODES),
    "protocol": " or ".join(PROTOCOLS),
    "on_error": " or ".join(ON_ERROR),
    "max_message_size": "an integer number of bytes",
    "timeout": "seconds",
    "next_hop_timeout": "seconds",
    "max_sessions": "an integer",
    "drain_timeout": "seconds",
    "max_ms_per_message": "milliseconds a model may take per message (checked before it serves)",
    "quarantine": "a path to a Maildir",
    "feedback_store": "a path to the directory of the feedback store (milter learn)",
    "shadow_model": "a path to a .onnx file or a directory of them, or null for none",
    "retrain_state": "a path to the file milter retrain records its runs in",
    "log_format": " or ".join(LOG_FORMATS),
    "metrics": "HOST:PORT, or null for none",
    "subject_tag": "a string such as [SPAM], or null for none",
    "scoring": "true or false",
    "text_workers": "a number of processes (0: none), or null for the default (none on 2 cores)",
    "hostname": "a host name",
    "workers": f"a number of processes from 1 to {MAX_WORKERS}, or auto (one per core)",
    "console": "HOST:PORT for the operator console, or null for none (the default)",
    "console_password_file": "a path to a file made by `milter console-password`, or null for none",
    "history": "a path to the console's history database (SQLite)",
    "history_max_rows": "an integer number of decisions the history keeps (the oldest go first)",
    "history_messages": "an integer number of the newest messages kept whole for teaching (0: none)",
    "postfix_config_dir": "a path to Postfix's config directory (postqueue -c), or null for the default",
}


def load_config(path: Path | str | None = None, overrides: Mapping[str, object] | None = None) -> Config:
    """Defaults, then the file at `path` (None: /etc/milter/milter.yaml if it exists), then
    `overrides` (config keys -> values as on the command line: strings or typed values)."""
    config = Config()
    origins: dict[str, Origin] = {}
    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    if path is not None:
        config = _apply_file(config, Path(path), origins)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in KEYS:
            raise ConfigError(f"unknown setting {key!r}; expected one of: {', '.join(sorted(KEYS))}")
        try:
            config = _apply(config, key, value, base=None)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"--{key.replace('_', '-')}: {e}") from None
        origins[key] = Origin(None, None)
    _check_together(config, origins)
    if config.protocol == "milter":
        # A milter runs inside Postfix's SMTP session, before the queue: a reject reaches the
        # client, so rules may reject.
        config = replace(config, mode="before-queue")
    return config


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a setting was given: a line of the config file, or (path None) a command-line flag."""

    path: Path | None
    line: int | None

    def names(self, key: str, value: str, file: Path | None = None) -> str:
        """`key` as the reader wrote it: `mode: X (line 4)` in `file`, `--mode X` as a flag."""
        if self.path is None:
            return f"--{key.replace('_', '-')} {value}"
        where = f"line {self.line}" if self.path == file else f"{self.path}:{self.line}"
        return f"{key}: {value} ({where})"


def _check_together(config: Config, origins: Mapping[str, Origin]) -> None:
    """Settings that are valid alone but not together."""
    mode_at, protocol_at = origins.get("mode"), origins.get("protocol")
    if config.protocol == "milter" and config.mode == "after-queue" and mode_at is not None:
        # Left over from the content filter set-up, most likely: neither can be what was meant,
        # so neither is guessed. (Not set at all, the mode is before-queue by itself.)
        assert protocol_at is not None  # protocol milter is never the default
        message = (
            f"contradicts {protocol_at.names('protocol', 'milter', mode_at.path)}: a milter works inside "
            "Postfix's SMTP session, before the queue (smtpd_milters); expected mode before-queue or "
            "no mode setting with protocol milter, or protocol smtp for the after-queue content filter"
        )
        if mode_at.path is None:
            raise ConfigError(f"--mode after-queue {message}")
        raise ConfigFileError(mode_at.path, f"mode: after-queue {message}", mode_at.line)
    _check_console(config, origins)
    if config.metrics is not None and config.workers > 1:
        # Each worker serves its own metrics endpoint, on the metrics port plus its index.
        _, port = config.metrics
        last = port + config.workers - 1
        if last > 65535:
            raise ConfigError(
                f"metrics: {config.workers} workers serve metrics on ports {port} to {last}, past 65535; "
                "expected a metrics port that leaves room for one port per worker"
            )


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach: 127.0.0.0/8, ::1, `localhost`."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _check_console(config: Config, origins: Mapping[str, Origin]) -> None:
    """A console reachable from other machines must have a password (and a readable one)."""
    if config.console is None:
        return
    host, port = config.console
    at = origins.get("console")
    where = at.names("console", format_address(host, port)) if at is not None else "console"
    if at is not None and at.path is not None:
        where = f"{at.path}:{at.line}: {where}"
    if config.console_password_file is None:
        if not is_loopback(host):
            raise ConfigError(
                f"{where}: {host} is not a loopback address, and the console has no password; "
                "expected console_password_file (make one with `milter console-password FILE`) "
                "or a loopback address such as 127.0.0.1"
            )
        return
    from milter.password import PasswordFileError, read_password_file

    try:
        read_password_file(config.console_password_file)
    except PasswordFileError as e:
        raise ConfigError(f"console_password_file: {e}") from None


def _apply_file(config: Config, path: Path, origins: dict[str, Origin]) -> Config:
    data, lines = load_yaml(path, error=ConfigFileError)
    check = Checker(path, lines, ConfigFileError)
    if data is None:
        return config  # an empty file: all defaults
    mapping = check.mapping(data, (), "")
    check.keys(mapping, (), "", KEYS)
    base = path.resolve().parent
    for key, value in mapping.items():
        try:
            config = _apply(config, key, value, base=base)
        except (ValueError, TypeError) as e:
            check.fail((key,), key, f"{e}")
        origins[key] = Origin(path, check.line((key,)))
    return config


def _apply(config: Config, key: str, value: object, base: Path | None) -> Config:
    """`config` with `key` set from `value`; ValueError/TypeError say what was expected."""
    expected = KEYS[key]
    match key:
        case "listen":
            host, port = parse_address(_text(value, expected))
            return replace(config, listen_host=host, listen_port=port)
        case "next_hop":
            return replace(config, next_hop=parse_next_hop(_text(value, expected), base))
        case "console":
            if value is None or value is False or value in ("", "off", "none"):
                return replace(config, console=None)
            return replace(config, console=parse_address(_text(value, expected)))
        case "console_password_file" | "postfix_config_dir":
            if value is None or value is False or value == "":
                return _set(config, key, None)
            return _set(config, key, _resolve(Path(_text(value, expected)).expanduser(), base))
        case "history_max_rows":
            rows = _integer(value, expected)
            if rows < 100:
                raise ValueError(f"{rows} is too small; expected {expected} of at least 100")
            return replace(config, history_max_rows=rows)
        case "history_messages":
            kept = _integer(value, expected)
            if kept < 0:
                raise ValueError(f"{kept} is negative; expected {expected}")
            return replace(config, history_messages=kept)
        case "shadow_model" if value is None or value is False or value == "":
            return replace(config, shadow_model=None)
        case (
            "rules" | "model" | "quarantine" | "feedback_store" | "shadow_model" | "retrain_state" | "history"
        ):
            return _set(config, key, _resolve(Path(_text(value, expected)).expanduser(), base))
        case "mode" | "on_error" | "log_format" | "protocol":
            allowed = {"mode": MODES, "on_error": ON_ERROR, "log_format": LOG_FORMATS, "protocol": PROTOCOLS}[
                key
            ]
            text = _text(value, expected)
            if text not in allowed:
                raise ValueError(f"unknown value {shown(text)}; expected {expected}")
            return _set(config, key, text)
        case "max_message_size" | "max_sessions":
            number = _integer(value, expected)
            low = 1 if key == "max_sessions" else 1024
            if number < low:
                raise ValueError(f"{number} is too small; expected {expected} of at least {low}")
            return _set(config, key, number)
        case "timeout" | "next_hop_timeout" | "drain_timeout":
            seconds = _number(value, expected)
            if not 0 < seconds <= 3600:
                raise ValueError(f"{seconds:g} is out of range; expected {expected} between 0 and 3600")
            return _set(config, key, seconds)
        case "max_ms_per_message":
            ms = _number(value, expected)
            if not 0 < ms <= 10_000:
                raise ValueError(f"{ms:g} is out of range; expected {expected}, between 0 and 10000")
            return _set(config, key, ms)
        case "metrics":
            if value is None or value is False or value in ("", "off", "none"):
                return replace(config, metrics=None)
            return replace(config, metrics=parse_address(_text(value, expected)))
        case "subject_tag":
            if value is None or value is False or value == "":
                return replace(config, subject_tag=None)
            tag = _text(value, expected)
            if any(c in tag for c in "\r\n"):
                raise ValueError("a subject tag cannot contain a line break")
            return replace(config, subject_tag=tag)
        case "scoring":
            return replace(config, scoring=_boolean(value, expected))
        case "text_workers":
            if value is None or value == "auto":
                return replace(config, text_workers=None)
            workers = _integer(value, expected)
            if not 0 <= workers <= 64:
                raise ValueError(f"{workers} is out of range; expected {expected} from 0 to 64")
            return replace(config, text_workers=workers)
        case "workers":
            if value == "auto":
                return replace(config, workers=cores())
            workers = _integer(value, expected)
            if not 1 <= workers <= MAX_WORKERS:
                raise ValueError(f"{workers} is out of range; expected {expected}")
            return replace(config, workers=workers)
        case "hostname":
            name = _text(value, expected)
            if not name or any(c.isspace() for c in name):
                raise ValueError(f"{shown(name)} is not a host name")
            return replace(config, hostname=name)
    raise ValueError(f"unknown setting {key!r}")  # pragma: no cover - KEYS guards this


def cores() -> int:
    """The cores this process may run on (its CPU affinity: CPUAffinity=, cpusets), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - Linux has it
        return os.cpu_count() or 1


def _set(config: Config, key: str, value: Any) -> Config:
    changes: dict[str, Any] = {key: value}
    return replace(config, **changes)


def _text(value: object, expected: str) -> str:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"expected {expected}, got {_kind(value)}")


def _integer(value: object, expected: str) -> int:
    if isinstance(value, str) and value.strip().replace("_", "").isdigit():
        return int(value.strip().replace("_", ""))
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected {expected}, got {_kind(value)}")
    return value


def _number(value: object, expected: str) -> float:
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise TypeError(f"expected {expected}, got {_kind(value)}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"expected {expected}, got {_kind(value)}")
    return float(value)


def _boolean(value: object, expected: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("on", "off", "true", "false", "yes", "no"):
        return value.lower() in ("on", "true", "yes")
    raise TypeError(f"expected {expected}, got {_kind(value)}")


def _kind(value: object) -> str:
    if isinstance(value, str):
        return f"the string {shown(value)}" if value.strip() else "an empty string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__
