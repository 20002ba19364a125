"""`milter promote`: the shadow model goes live, through the daemon's own hot reload."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from milter.errors import ConfigError, MilterError

DESCRIPTION = """\
Make the shadow model (config key shadow_model: a file, or the newest valid .onnx of a
directory), or the model FILE named, the live one: it is loaded and checked as the daemon checks
a model, copied into the config's model directory under its own name (a temporary name first,
then a rename, so the daemon never reads half a file), and removed from the shadow place. The
daemon's reload watcher sees the new file, checks it again and swaps it in whole; the newest
valid model in the directory serves. A model that fails the check is not copied.

Undo: remove the file from the model directory (the newest valid one left serves, the shipped
model at the last), or promote the previous one again.
"""

EPILOG = """\
exit status:
  0  the model was copied into the model directory (the daemon picks it up)
  1  no valid model to promote (none in shadow_model, or FILE failed the check)
  2  usage error or a bad config file

examples:
  milter promote                                   the shadow model goes live
  milter promote /var/lib/milter/shadow/site-1a2b3c4d.onnx
  journalctl -u milter | grep 'now serving model'  what the daemon did with it
"""


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "promote",
        help="make the shadow model (or FILE) the live model, through the hot reload",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("file", nargs="?", type=Path, metavar="FILE", help="the model to promote")
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="the config file (default: /etc/milter/milter.yaml if it exists)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from milter.commands.retrain import install
    from milter.config import load_config
    from milter.reload import select_model

    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"milter promote: {e}", file=sys.stderr)
        return 2
    source = args.file if args.file is not None else config.shadow_model
    if source is None:
        print(
            "milter promote: no FILE and no shadow_model in the config; see milter promote --help",
            file=sys.stderr,
        )
        return 2
    try:
        model = select_model(source, config.max_ms_per_message / 1000.0)
        path = model.path
        out = config.model / path.name if config.model.is_dir() else config.model
        if out.resolve() == path.resolve():
            print(f"milter promote: {path} is the live model's own file already", file=sys.stderr)
            return 1
        install(path.read_bytes(), out, config.max_ms_per_message / 1000.0)
    except (MilterError, OSError) as e:
        print(f"milter promote: {e}", file=sys.stderr)
        return 1
    if args.file is None or (config.shadow_model is not None and _within(path, config.shadow_model)):
        path.unlink(missing_ok=True)  # the shadow stops: it would only agree with itself
    print(f"promoted {model.id}: {path} -> {out}; the daemon serves it once its reload has checked it")
    return 0


def _within(path: Path, place: Path) -> bool:
    place = place.resolve()
    return path.resolve() == place or path.resolve().parent == place
