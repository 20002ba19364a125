"""`milter check PATH...` and `milter check --config FILE`: validate the config file, rules and
model files exactly as the daemon would load them."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from milter.config import KEYS, Config, format_address, load_config
from milter.errors import ConfigError, FileError, RulesError
from milter.rules import MODE_ACTIONS, Ruleset, actions_for_mode, describe_rules
from milter.yamlfile import type_name

if TYPE_CHECKING:
    from milter.model import Model  # imported where used: it loads onnxruntime
    from milter.reload import ModelSelector

DESCRIPTION = """\
Validate rules files (*.yaml, *.yml) and model files (*.onnx) the way `milter serve` does before
it lets them serve: a rules file is parsed, every rule checked and compiled, and its actions
checked against the filter mode; a model is loaded, its inputs, outputs and message->text version
checked against this milter, and it must score built-in test messages to probabilities in [0, 1]
within the time limit. A directory argument checks every rules and model file in it (skipping
editor and partial files, as the reload watcher does).

With --config FILE it checks what `milter serve --config FILE` would start on: the config file,
read by the same code as the daemon's (the same errors, and exit status 2 for a bad setting),
then the rules file and the model it names, in its mode and with its model time limit; for a
model directory, the model the daemon would serve (the newest valid one) and the files it would
skip. PATH arguments beside --config are checked too, in the config's mode. The port is not
opened: a daemon may be listening on it already.

What was found is printed on standard output: for a config file, every setting; for rules,
each rule with its action and conditions; for a model, its id, metadata and validation figures.
Errors go to standard error as `path:line: message`. Use it in CI, or as ExecReload's check
before `systemctl reload`.
"""

EPILOG = """\
exit status:
  0  every file is valid
  1  at least one file is invalid (or no file was found)
  2  usage error, or (--config) a configuration error, as `milter serve` exits

examples:
  milter check --config /etc/milter/milter.yaml
  milter check rules/default.yaml
  milter check --mode before-queue /etc/milter/rules/ /var/lib/milter/model/new.onnx
  milter check --json rules/ model/ | jq .
"""


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "check",
        help="validate rules and model files as the daemon would",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "paths", nargs="*", type=Path, metavar="PATH", help="rules file, model file or directory"
    )
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="a config file (/etc/milter/milter.yaml): check it, and the rules and model it names, "
        "as `milter serve --config FILE` would",
    )
    parser.add_argument(
        "--mode",
        choices=tuple(MODE_ACTIONS),
        default=None,
        help="the filter mode to check actions against; `reject` needs before-queue (default: the "
        "config file's with --config, else after-queue)",
    )
    parser.add_argument(
        "--max-ms-per-message",
        type=float,
        default=None,
        metavar="MS",
        help="refuse a model slower than this per message (default: the config file's with --config, "
        "else the daemon's limit, 50 ms)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object per file instead of text")
    parser.set_defaults(func=run)


RULES_SUFFIXES = (".yaml", ".yml")
MODEL_SUFFIXES = (".onnx",)


@dataclass
class Result:
    path: Path
    kind: str  # "rules" or "model" or "unknown"
    error: str | None = None
    info: dict[str, object] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)  # human-readable summary


def run(args: argparse.Namespace) -> int:
    if not args.paths and args.config is None:
        print("milter check: nothing to check; give rules or model files, or --config FILE", file=sys.stderr)
        return 2
    mode: str = args.mode or "after-queue"
    max_seconds = _max_seconds(args.max_ms_per_message)
    results: list[Result] = []
    if args.config is not None:
        # The flags that `milter serve` has too override the file as they do there.
        overrides = {"mode": args.mode, "max_ms_per_message": args.max_ms_per_message}
        try:
            config = load_config(args.config, overrides)
        except ConfigError as e:
            report(Result(args.config, "config", str(e)), args.json)
            return 2  # as `milter serve` exits on it
        mode, max_seconds = config.mode, config.max_ms_per_message / 1000
        results.extend(check_config(args.config, config))
    for path in args.paths:
        results.extend(check_path(path, mode, max_seconds))
    for r in results:
        report(r, args.json)
    bad = sum(r.error is not None for r in results)
    if not args.json:
        print(f"{len(results) - bad} ok, {bad} invalid", file=sys.stderr if bad else sys.stdout)
    return 1 if bad else 0


def report(r: Result, as_json: bool) -> None:
    """One result: JSON or its text lines on standard output; its error on standard error."""
    if as_json:
        obj: dict[str, object] = {"path": str(r.path), "kind": r.kind, "ok": r.error is None}
        if r.error is not None:
            obj["error"] = r.error
        obj.update(r.info)
        print(json.dumps(obj, default=str), flush=True)
    elif r.error is None:
        print("\n".join(r.lines), flush=True)
    if r.error is not None:
        print(r.error, file=sys.stderr, flush=True)


def _max_seconds(ms: float | None) -> float:
    if ms is not None:
        return ms / 1000.0
    from milter.model import DEFAULT_MAX_SECONDS_PER_MESSAGE

    return DEFAULT_MAX_SECONDS_PER_MESSAGE


def check_config(path: Path, config: Config) -> list[Result]:
    """The config file (already loaded), then its rules and model as the daemon loads them at start."""
    from milter.policy import Policy
    from milter.reload import PolicyLoader

    settings = config_settings(config)
    result = Result(path, "config", info={"config": settings})
    result.lines.append(f"{path}: ok: {config.protocol} on {config.listen}, {config.mode} mode")
    result.lines.extend(f"  {key}: {_setting_text(value)}" for key, value in settings.items())
    # The daemon's own loader, built as milter.server.Daemon builds it.

    def make_policy(rules: Ruleset, model: Model, shadow: Model | None = None) -> Policy:
        return Policy(config, model, rules, shadow)

    loader = PolicyLoader(
        config.rules,
        config.model,
        make_policy,
        mode=config.mode,
        max_seconds_per_message=config.max_ms_per_message / 1000,
        shadow_path=config.shadow_model,
    )
    loaded = loader.reload()
    errors = loader.startup_errors(loaded)
    rules_error = next((str(e) for e in errors if isinstance(e, RulesError)), None)
    model_error = next((str(e) for e in errors if not isinstance(e, RulesError)), None)
    rules = Result(config.rules, "rules", rules_error)
    if loader.rules.active is not None:
        describe_rules_result(rules, loader.rules.active, config.mode)
    model_path = loader.models.active_path or config.model
    model = Result(model_path, "model", model_error)
    if loader.models.active is not None:
        describe_model_result(model, loader.models.active)
        skipped = [r.reason for r in loaded.refused if r.kind == "model"]
        notes = [f"  serves: the newest valid model in {config.model}"] if model_path != config.model else []
        notes.extend(f"  skipped, as the daemon skips it: {reason}" for reason in skipped)
        model.lines[1:1] = notes  # under the model's first line, before its metadata
        model.info["skipped"] = skipped
    results = [result, rules, model]
    if loader.shadow is not None:
        results.append(
            _shadow_result(loader.shadow, [r.reason for r in loaded.refused if r.kind == "shadow"])
        )
    return results


def _shadow_result(selector: ModelSelector, skipped: list[str]) -> Result:
    """The shadow model the daemon would score with beside the live one; none is no error
    (the daemon starts without one), so it is said, not failed."""
    if selector.active is None:
        result = Result(selector.path, "shadow")
        found = "; ".join(skipped) if skipped else "no .onnx file"
        result.lines.append(f"{selector.path}: no shadow model (the daemon scores without one): {found}")
        result.info["skipped"] = skipped
        return result
    result = describe_model_result(Result(selector.active_path or selector.path, "shadow"), selector.active)
    result.lines[0] = result.lines[0].replace(": ok: model", ": ok: shadow model", 1)
    result.lines[1:1] = [f"  skipped, as the daemon skips it: {reason}" for reason in skipped]
    result.info["skipped"] = skipped
    return result


def config_settings(config: Config) -> dict[str, object]:
    """Every setting by its config file key, as the file would write it (None: none)."""
    settings: dict[str, object] = {}
    for key in KEYS:
        match key:
            case "listen":
                value: object = config.listen
            case "next_hop":
                value = None if config.protocol == "milter" else str(config.next_hop)  # unused there
            case "metrics":
                value = format_address(*config.metrics) if config.metrics is not None else None
            case "rules" | "model" | "quarantine":
                value = str(getattr(config, key))
            case _:
                value = getattr(config, key)
        settings[key] = value
    return settings


def _setting_text(value: object) -> str:
    if value is None:
        return "(none)"
    return str(value).lower() if isinstance(value, bool) else str(value)


def check_path(path: Path, mode: str, max_seconds: float) -> list[Result]:
    """Results for a file, or for every rules and model file in a directory."""
    if path.is_dir():
        from milter.reload import is_temporary

        files = sorted(
            p
            for p in path.iterdir()
            if p.name.endswith(RULES_SUFFIXES + MODEL_SUFFIXES)
            and not is_temporary(p.name)
            and not p.is_dir()
        )
        if not files:
            message = f"{path}: no rules (*.yaml, *.yml) or model (*.onnx) files in this directory"
            return [Result(path, "unknown", message)]
        return [check_file(p, mode, max_seconds) for p in files]
    return [check_file(path, mode, max_seconds)]


def check_file(path: Path, mode: str, max_seconds: float) -> Result:
    if path.name.endswith(RULES_SUFFIXES):
        return check_rules(path, mode)
    if path.name.endswith(MODEL_SUFFIXES):
        return check_model(path, max_seconds)
    if not path.exists():
        return Result(path, "unknown", f"{path}: no such file or directory")
    return Result(
        path,
        "unknown",
        f"{path}: not a rules file (*.yaml, *.yml) or a model file (*.onnx); cannot tell what to check",
    )


def check_rules(path: Path, mode: str) -> Result:
    result = Result(path, "rules")
    try:
        ruleset = Ruleset.load(path, allowed_actions=actions_for_mode(mode), mode=mode)
    except FileError as e:
        result.error = str(e)
        return result
    except Exception as e:  # a bug of ours must not pass as "valid", nor hide the other files
        result.error = f"{path}: unexpected error while checking: {type(e).__name__}: {e}"
        return result
    return describe_rules_result(result, ruleset, mode)


def describe_rules_result(result: Result, ruleset: Ruleset, mode: str) -> Result:
    path = result.path
    width = max(len(r.name) for r in ruleset)
    awidth = max(len(r.action.value) for r in ruleset)
    result.lines.append(f"{path}: ok: {len(ruleset)} rule{'s' if len(ruleset) != 1 else ''} ({mode} mode)")
    for rule, text in zip(ruleset, describe_rules(ruleset), strict=True):
        when = text.split(" ", 2)[2]  # "name: action <when>"
        result.lines.append(
            f"  {rule.line or '?':>4}  {rule.name:<{width}}  {rule.action.value:<{awidth}}  {when}"
        )
    if ruleset.catch_all is None:
        result.lines.append(
            "  note: no catch-all rule (one without `if`) at the end: a message no rule matches is delivered"
        )
    if ruleset.thresholds:
        result.lines.append(
            "  thresholds: " + ", ".join(f"{name} >= {p:.2f}" for name, p in ruleset.thresholds)
        )
    result.info["rules"] = [
        {
            "name": rule.name,
            "action": rule.action.value,
            "line": rule.line,
            "if": rule.describe(),
            "required": rule.required,
            "description": rule.description,
        }
        for rule in ruleset
    ]
    result.info["catch_all"] = ruleset.catch_all is not None
    result.info["mode"] = mode
    return result


def check_model(path: Path, max_seconds: float) -> Result:
    result = Result(path, "model")
    try:
        from milter.model import load_model, validate_model

        model = load_model(path)
        validate_model(model, max_seconds)
    except FileError as e:
        result.error = str(e)
        return result
    except Exception as e:  # a bug of ours must not pass as "valid", nor hide the other files
        result.error = f"{path}: unexpected error while checking: {type(e).__name__}: {e}"
        return result
    return describe_model_result(result, model)


def describe_model_result(result: Result, model: Model) -> Result:
    from milter.model import describe_model

    info = describe_model(model)
    result.info["model"] = info
    result.lines.append(f"{result.path}: ok: model {info.get('id', '?')}")
    for key, value in info.items():
        if key in ("path", "id"):
            continue
        result.lines.extend(_show(key, value, 1))
    return result


def _show(key: str, value: object, depth: int) -> list[str]:
    """`key: value` lines, nested mappings indented (model metadata and figures)."""
    pad = "  " * depth
    if isinstance(value, str) and value[:1] in "{[":
        # Metadata values are strings; `milter train` writes structured ones as JSON.
        with contextlib.suppress(ValueError):
            value = json.loads(value)
    if isinstance(value, dict):
        if not value:
            return [f"{pad}{key}: (none)"]
        out = [f"{pad}{key}:"]
        for k, v in value.items():
            out.extend(_show(str(k), v, depth + 1))
        return out
    if isinstance(value, float):
        return [f"{pad}{key}: {value:.6g}"]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10_000:
        return [f"{pad}{key}: {value:,}"]
    if isinstance(value, list | tuple):
        text = ", ".join(str(v) for v in value)
        return [f"{pad}{key}: {text if len(text) < 200 else type_name(list(value)) + f' of {len(value)}'}"]
    return [f"{pad}{key}: {value}"]
