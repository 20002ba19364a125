"""Live reload with real files, real models, real inotify events and a real event loop."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import re
import shutil
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib
import onnx
import pytest

from milter.errors import ModelError, RulesError
from milter.metrics import Metrics
from milter.model import META_TEXT_VERSION, Model, load_model, model_id_of
from milter.notify import Notifier
from milter.reload import (
    ModelSelector,
    PolicyLoader,
    Reloader,
    ReloadReport,
    is_temporary,
    model_candidates,
    select_model,
)
from milter.rules import Ruleset
from milter.text import message_text
from milter.training.corpus import LabelledMessage
from milter.training.train import TrainConfig, train_on

# --- a small model, trained on mail this test writes -------------------------------------------

HAM_WORDS = ("meeting", "lunch", "project", "report", "schedule", "review", "notes", "agenda")
SPAM_WORDS = ("winner", "prize", "pills", "cheap", "casino", "free", "money", "click", "lottery")


def _mail(i: int, spam: bool, rng: random.Random) -> bytes:
    words = " ".join(rng.choice(SPAM_WORDS if spam else HAM_WORDS) for _ in range(30))
    sender = f"Deals <d{i}@offers.example.ru>" if spam else f"Alice <alice{i}@example.org>"
    return (
        f"From: {sender}\r\nTo: bob@example.net\r\nSubject: {words[:40]}\r\n"
        f"Date: Mon, {1 + i % 28} Mar 2025 10:00:00 +0000\r\n\r\n{words}\r\n"
    ).encode()


@pytest.fixture(scope="session")
def model_bytes() -> bytes:
    rng = random.Random(4)
    messages = [
        LabelledMessage(f"m{i}-{label}", label, "test", (1, float(i)), _mail(i, bool(label), rng))
        for i in range(60)
        for label in (0, 1)
    ]
    texts = [message_text(m.raw) for m in messages]
    return train_on(
        messages, texts, TrainConfig(max_features=400, min_df=1, augment=()), "tests/test_reload.py"
    ).model_bytes


def with_metadata(model: bytes, **entries: str) -> bytes:
    """The same model with metadata entries set: a distinct file (and model id) per variant."""
    proto = onnx.load_from_string(model)
    props = {p.key: p.value for p in proto.metadata_props}
    props.update(entries)
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    data: bytes = proto.SerializeToString()
    return data


@pytest.fixture(scope="session")
def variants(model_bytes: bytes) -> Callable[[str], bytes]:
    cache: dict[str, bytes] = {}

    def variant(name: str) -> bytes:
        if name not in cache:
            cache[name] = with_metadata(model_bytes, **{"milter.test_variant": name})
        return cache[name]

    return variant


# --- files --------------------------------------------------------------------------------------

RULES = """\
version: 1
rules:
  - name: {name}
    if:
      probability: {{min: 0.90}}
    action: spam_folder
  - name: default
    action: deliver
"""


def rules_text(name: str) -> str:
    return RULES.format(name=name)


def write(path: Path, data: bytes | str, mtime: float | None = None) -> None:
    """Write in place (same inode), as `echo > file` or an editor without backup copies does."""
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def write_by_rename(path: Path, data: bytes | str) -> None:
    """Write beside the target and rename over it, as most editors and installers do."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    tmp.rename(path)


@dataclass
class Setup:
    root: Path
    rules: Path  # the rules file
    models: Path  # the model directory

    def model(self, name: str) -> Path:
        return self.models / name


@pytest.fixture
def setup(tmp_path: Path, variants: Callable[[str], bytes]) -> Setup:
    (tmp_path / "rules").mkdir()
    (tmp_path / "model").mkdir()
    s = Setup(tmp_path, tmp_path / "rules" / "default.yaml", tmp_path / "model")
    write(s.rules, rules_text("first"))
    write(s.model("a.onnx"), variants("a"), mtime=time.time() - 100)
    return s


# --- temporary files and the choice of model ----------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [".default.yaml.swp", "default.yaml~", "4913", "5036", "#default.yaml#", ".#default.yaml",
     "spam.onnx.part", "spam.onnx.tmp", "x.yaml.dpkg-new", ".spam.onnx.AbC123", "spam.onnx.crdownload"],
)  # fmt: skip
def test_temporary_names(name: str) -> None:
    assert is_temporary(name)


@pytest.mark.parametrize("name", ["default.yaml", "spam.onnx", "spam-2026.onnx", "rules.yml"])
def test_real_names(name: str) -> None:
    assert not is_temporary(name)


def test_candidates_newest_first_then_by_name(tmp_path: Path) -> None:
    now = time.time()
    for name, age in [("old.onnx", 300), ("b.onnx", 10), ("a.onnx", 10), ("new.onnx", 1)]:
        write(tmp_path / name, b"x", mtime=now - age)
    write(tmp_path / ".hidden.onnx", b"x", mtime=now)
    write(tmp_path / "partial.onnx.part", b"x", mtime=now)
    write(tmp_path / "notes.txt", b"x", mtime=now)
    (tmp_path / "dir.onnx").mkdir()
    names = [p.name for p in model_candidates(tmp_path)]
    assert names == ["new.onnx", "b.onnx", "a.onnx", "old.onnx"]


def test_select_model_skips_a_newer_invalid_file_with_its_reason(
    setup: Setup, caplog: pytest.LogCaptureFixture, model_bytes: bytes
) -> None:
    write(setup.model("z-truncated.onnx"), model_bytes[: len(model_bytes) // 2])
    with caplog.at_level(logging.WARNING, logger="milter.reload"):
        model = select_model(setup.models)
    assert model.path == setup.model("a.onnx")
    [line] = [r.getMessage() for r in caplog.records]
    assert str(setup.model("z-truncated.onnx")) in line
    assert "not a loadable ONNX model" in line


def test_select_model_takes_the_newest_valid(setup: Setup, variants: Callable[[str], bytes]) -> None:
    write(setup.model("b.onnx"), variants("b"), mtime=time.time() - 50)
    write(setup.model("c.onnx"), variants("c"), mtime=time.time() - 150)
    assert select_model(setup.models).path == setup.model("b.onnx")
    # A configured file is used as it is.
    assert select_model(setup.model("c.onnx")).path == setup.model("c.onnx")


def test_select_model_with_nothing_valid_names_every_file(setup: Setup) -> None:
    write(setup.model("a.onnx"), b"not onnx at all")
    write(setup.model("b.onnx"), b"")
    with pytest.raises(ModelError) as e:
        select_model(setup.models)
    assert "no valid model among 2 file(s)" in str(e.value)
    assert "a.onnx" in str(e.value) and "b.onnx" in str(e.value)
    empty = setup.root / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match=r"directory has no \*.onnx file"):
        select_model(empty)


def test_slow_model_is_refused(setup: Setup) -> None:
    with pytest.raises(ModelError, match="ms per message; expected at most"):
        select_model(setup.models, max_seconds_per_message=0.0)


class CountingLoads:
    """load_model, counting the files actually read."""

    def __init__(self) -> None:
        self.paths: list[str] = []

    def __call__(self, path: Path) -> Model:
        self.paths.append(path.name)
        return load_model(path)


def test_selector_falls_back_and_keeps_the_last_good(setup: Setup, variants: Callable[[str], bytes]) -> None:
    loads = CountingLoads()
    selector = ModelSelector(setup.models, load=loads)
    assert selector.select() == []
    a = selector.active
    assert a is not None and a.path.name == "a.onnx"
    write(setup.model("b.onnx"), variants("b"), mtime=time.time() - 10)
    selector.select()
    b = selector.active
    assert b is not None and b.path.name == "b.onnx" and b.id != a.id
    # Unchanged files are not read again.
    selector.select()
    assert selector.active is b
    assert loads.paths == ["a.onnx", "b.onnx"]
    # Removing the active model falls back to the previous valid one.
    setup.model("b.onnx").unlink()
    selector.select()
    assert selector.active is not None and selector.active.path.name == "a.onnx"
    # Overwriting the active model with garbage keeps the good one in memory, and says so once.
    write(setup.model("a.onnx"), b"garbage")
    [refusal] = selector.select()
    assert refusal.path == setup.model("a.onnx")
    assert selector.active is not None and selector.active.id == a.id
    assert selector.select() == []
    # Its only file gone: the model in memory keeps serving.
    setup.model("a.onnx").unlink()
    assert selector.select() == []
    assert selector.active is not None and selector.active.id == a.id


# --- the policy loader --------------------------------------------------------------------------


def pair(rules: Ruleset, model: Model) -> tuple[Ruleset, Model]:
    return rules, model


def test_initial_policy_and_startup_errors(setup: Setup) -> None:
    rules, model = PolicyLoader(setup.rules, setup.models, pair).initial()
    assert [r.name for r in rules] == ["first", "default"]
    assert model.path == setup.model("a.onnx")

    write(setup.rules, "version: 1\nrules:\n  - name: x\n    action: explode\n")
    with pytest.raises(RulesError, match=r"default.yaml:4: .*explode"):
        PolicyLoader(setup.rules, setup.models, pair).initial()

    write(setup.rules, rules_text("first"))
    setup.model("a.onnx").unlink()
    with pytest.raises(ModelError, match=r"no \*.onnx file"):
        PolicyLoader(setup.rules, setup.models, pair).initial()


def test_each_part_keeps_its_last_good_version(setup: Setup, variants: Callable[[str], bytes]) -> None:
    loader = PolicyLoader(setup.rules, setup.models, pair)
    first = loader.initial()
    # Broken rules and a new valid model: the model goes live with the last good rules.
    write(setup.rules, "version: 1\nrules: [")
    write(setup.model("b.onnx"), variants("b"))
    result = loader.reload()
    assert result.changed == {"model"}
    assert [r.kind for r in result.refused] == ["rules"]
    assert result.policy is not None
    rules, model = result.policy
    assert rules is first[0] and model.path.name == "b.onnx"
    # Nothing changed since: no new policy, nothing refused again.
    again = loader.reload()
    assert again.policy is None and again.refused == () and again.changed == frozenset()


# --- the reloader, live -------------------------------------------------------------------------


class Daemon:
    """What server.py does: one policy reference, swapped whole, read once per message."""

    def __init__(self, policy: tuple[Ruleset, Model]) -> None:
        self.policy = policy
        self.swaps: list[tuple[Ruleset, Model]] = []
        self.loop_thread: list[bool] = []

    def swap(self, policy: tuple[Ruleset, Model]) -> None:
        self.loop_thread.append(threading.get_ident() == threading.main_thread().ident)
        self.policy = policy
        self.swaps.append(policy)

    @property
    def rule_name(self) -> str:
        return self.policy[0].rules[0].name

    @property
    def model_file(self) -> str:
        return self.policy[1].path.name


@dataclass
class Live:
    daemon: Daemon
    reloader: Reloader[tuple[Ruleset, Model]]
    metrics: Metrics
    rules: Path

    def failed(self, kind: str) -> float:
        v = self.metrics.registry.get_sample_value("milter_reloads_total", {"kind": kind, "result": "failed"})
        return v or 0.0

    def ok(self, kind: str) -> float:
        v = self.metrics.registry.get_sample_value("milter_reloads_total", {"kind": kind, "result": "ok"})
        return v or 0.0

    async def until(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError("condition not reached")
            await asyncio.sleep(0.02)

    async def settle(self, reloads: int, model: bytes | None = None) -> None:
        """Wait until `reloads` reloads in all have finished, then make one more, real edit and
        wait until it is live: the watcher reports events in order, so every event before it
        has been seen by then (and would have made a reload of its own, or failed one). The
        edit is to the rules ("settled"), or with `model`, a new model file settled.onnx."""
        await self.until(lambda: self.reloader.reloads >= reloads)
        if model is None:
            write_by_rename(self.rules, rules_text("settled"))
            await self.until(lambda: self.daemon.rule_name == "settled")
        else:
            write_by_rename(self.rules.parent.parent / "model" / "settled.onnx", model)
            await self.until(lambda: self.daemon.model_file == "settled.onnx")


def run_live(
    setup: Setup,
    body: Callable[[Live], Awaitable[None]],
    mode: str | None = None,
    notifier: Notifier | None = None,
    max_write_wait: float = 10.0,
    quiet: float = 0.1,
) -> Live:
    async def main() -> Live:
        loader = PolicyLoader(setup.rules, setup.models, pair, mode=mode)
        daemon = Daemon(loader.initial())
        metrics = Metrics()
        reloader = Reloader(
            loader,
            daemon.swap,
            metrics=metrics,
            notifier=notifier,
            quiet=quiet,
            max_wait=max(0.5, 5 * quiet),
            max_write_wait=max_write_wait,
        )
        await reloader.start()
        live = Live(daemon, reloader, metrics, setup.rules)
        try:
            await body(live)
        finally:
            await reloader.stop()
        return live

    return asyncio.run(main())


def test_rules_edits_go_live_in_place_by_rename_and_by_cp(setup: Setup) -> None:
    async def body(live: Live) -> None:
        write(setup.rules, rules_text("in_place"))
        await live.until(lambda: live.daemon.rule_name == "in_place")
        write_by_rename(setup.rules, rules_text("renamed"))
        await live.until(lambda: live.daemon.rule_name == "renamed")
        source = setup.root / "staged.yaml"
        write(source, rules_text("copied"))
        shutil.copy(source, setup.rules)
        await live.until(lambda: live.daemon.rule_name == "copied")

    live = run_live(setup, body)
    assert live.failed("rules") == 0
    assert live.ok("rules") == len(live.daemon.swaps) == 3
    assert all(live.daemon.loop_thread)


def test_a_file_written_in_pieces_is_read_once_whole(setup: Setup) -> None:
    async def body(live: Live) -> None:
        text = rules_text("pieces").encode()
        with setup.rules.open("wb") as f:
            for i in range(0, len(text), 20):  # every piece on its own is invalid YAML or rules
                f.write(text[i : i + 20])
                f.flush()
                await asyncio.sleep(0.03)
        await live.until(lambda: live.daemon.rule_name == "pieces")
        await live.settle(1)

    live = run_live(setup, body)
    assert live.reloader.reloads == 2  # the file written in pieces, and settle's edit
    assert [rules.rules[0].name for rules, _ in live.daemon.swaps] == ["pieces", "settled"]
    assert live.failed("rules") == 0


def test_a_slow_writer_is_waited_for_until_it_closes_the_file(setup: Setup) -> None:
    # Line by line, pausing longer than the quiet period and in all longer than MAX_WAIT: cut at
    # a rule's end, the file is a valid rules file with fewer rules, which must never serve.
    three = rules_text("slow").replace(
        "  - name: default",
        "  - name: middle\n    if: {probability: {min: 0.5}}\n    action: flag\n  - name: default",
    )

    async def body(live: Live) -> None:
        with setup.rules.open("w") as f:
            for line in three.splitlines(keepends=True):
                f.write(line)
                f.flush()
                await asyncio.sleep(0.12)
        await live.until(lambda: live.daemon.rule_name == "slow")
        await live.settle(1)

    live = run_live(setup, body)
    assert [[r.name for r in rules] for rules, _ in live.daemon.swaps] == [
        ["slow", "middle", "default"],
        ["settled", "default"],
    ]
    assert live.failed("rules") == 0


def test_a_write_with_no_open_file_is_not_waited_for(setup: Setup) -> None:
    # truncate(2) by name modifies the file without opening it: there will be no close to wait
    # for, so the change is read after the usual quiet period, not after max_write_wait.
    async def body(live: Live) -> None:
        os.truncate(setup.rules, 10)
        await live.until(lambda: live.failed("rules") == 1)  # within 10 s; max_write_wait is 600

    live = run_live(setup, body, max_write_wait=600)
    assert live.reloader.reloads == 1


def test_a_burst_of_events_is_one_reload(setup: Setup) -> None:
    async def body(live: Live) -> None:
        for i in range(10):
            write_by_rename(setup.rules, rules_text(f"burst{i}"))
        await live.until(lambda: live.daemon.rule_name == "burst9")
        await live.settle(1)

    # A quiet period of 1 s: the ten renames are one burst even when a loaded machine pauses
    # this test between two of them.
    live = run_live(setup, body, quiet=1.0)
    assert live.reloader.reloads == 2  # the burst, and settle's edit
    assert [rules.rules[0].name for rules, _ in live.daemon.swaps] == ["burst9", "settled"]


def test_temporary_and_unrelated_files_are_ignored(
    setup: Setup, model_bytes: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    ignored = (".default.yaml.swp", "default.yaml~", "4913", "other.yaml", "#default.yaml#")
    ignored_models = ("new.onnx.part", ".new.onnx.swp", "README")

    async def body(live: Live) -> None:
        for name in ignored:
            write(setup.rules.parent / name, "garbage: [")
        for name in ignored_models:
            write(setup.models / name, model_bytes[:100])
        # Then a real edit, which must be picked up: the watcher works, and it reports events
        # in order, so every event of the files above has been seen (and ignored) by then.
        write(setup.rules, rules_text("real-edit"))
        await live.until(lambda: live.daemon.rule_name == "real-edit")

    with caplog.at_level(logging.DEBUG, logger="milter.reload"):
        live = run_live(setup, body)
    assert live.reloader.reloads == 1
    assert [rules.rules[0].name for rules, _ in live.daemon.swaps] == ["real-edit"]
    noted = [r.getMessage() for r in caplog.records if r.getMessage().startswith("reload: ")]
    assert any("default.yaml)" in line for line in noted)  # the real edit was noted ...
    assert not [line for line in noted if any(name in line for name in (*ignored, *ignored_models))]


def test_model_dropped_in_goes_live_and_removal_falls_back(
    setup: Setup, variants: Callable[[str], bytes], tmp_path: Path
) -> None:
    async def body(live: Live) -> None:
        staged = tmp_path / "staged.onnx"
        write(staged, variants("b"))
        shutil.copy(staged, setup.model("b.onnx"))  # cp: created, written in pieces, closed
        await live.until(lambda: live.daemon.model_file == "b.onnx")
        # A download finishing with a rename from a temporary name.
        write(setup.model("c.onnx.part"), variants("c"))
        setup.model("c.onnx.part").rename(setup.model("c.onnx"))
        await live.until(lambda: live.daemon.model_file == "c.onnx")
        setup.model("c.onnx").unlink()
        await live.until(lambda: live.daemon.model_file == "b.onnx")

    live = run_live(setup, body)
    assert live.failed("model") == 0
    assert live.ok("model") == 3
    [info] = [s for s in live.metrics.registry.collect() if s.name == "milter_model_info"]
    assert [x.labels["model_id"] for x in info.samples] == [live.daemon.policy[1].id]


# --- refused files: the old policy keeps serving ------------------------------------------------

YAML_BOMB = """\
version: 1
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
rules: *i
"""


def _bomb(setup: Setup, _: bytes) -> Path:
    write_by_rename(setup.rules, YAML_BOMB)
    return setup.rules


def _huge_rules(setup: Setup, _: bytes) -> Path:
    with setup.rules.open("r+b") as f:  # 100 MB (sparse: the size alone must refuse it)
        f.truncate(100 * 1024 * 1024)
    return setup.rules


def _reject_after_queue(setup: Setup, _: bytes) -> Path:
    write(setup.rules, rules_text("x").replace("spam_folder", "reject"))
    return setup.rules


def _truncated_model(setup: Setup, model: bytes) -> Path:
    path = setup.model("truncated.onnx")
    write_by_rename(path, model[: len(model) * 2 // 3])
    return path


def _not_onnx(setup: Setup, _: bytes) -> Path:
    path = setup.model("photo.onnx")
    write_by_rename(path, b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40)
    return path


def _other_text_version(setup: Setup, model: bytes) -> Path:
    path = setup.model("future.onnx")
    write_by_rename(path, with_metadata(model, **{META_TEXT_VERSION: "999"}))
    return path


@pytest.mark.parametrize(
    ("make", "kind", "reason"),
    [
        (_bomb, "rules", "aliases (*a) are not allowed"),
        (_huge_rules, "rules", "file is too large: 104,857,600 bytes"),
        (_reject_after_queue, "rules", '"reject"'),
        (_truncated_model, "model", "not a loadable ONNX model"),
        (_not_onnx, "model", "not a loadable ONNX model"),
        (_other_text_version, "model", "message->text version '999'"),
    ],
    ids=["yaml-bomb", "100MB-rules", "reject-after-queue", "truncated-onnx", "not-onnx", "text-version"],
)
def test_bad_file_is_refused_with_a_clear_line_and_the_old_policy_serves(
    setup: Setup,
    model_bytes: bytes,
    variants: Callable[[str], bytes],
    caplog: pytest.LogCaptureFixture,
    make: Callable[[Setup, bytes], Path],
    kind: str,
    reason: str,
) -> None:
    bad: list[Path] = []
    before: list[tuple[Ruleset, Model]] = []

    async def body(live: Live) -> None:
        before.append(live.daemon.policy)
        bad.append(make(setup, model_bytes))
        await live.until(lambda: live.failed(kind) == 1)
        assert live.daemon.policy is before[0]
        # A valid edit of the other kind goes live beside the refused file, which stays out.
        await live.settle(1, model=variants("settled") if kind == "rules" else None)

    with caplog.at_level(logging.INFO, logger="milter.reload"):
        live = run_live(setup, body, mode="after-queue")
    [(rules, model)] = live.daemon.swaps  # settle's edit alone
    assert (rules is before[0][0]) if kind == "rules" else (model is before[0][1])
    assert live.reloader.reloads == 2 and live.failed(kind) == 1
    [line] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert line.startswith(f"reload: refused {kind} file {bad[0]}")
    assert reason in line
    assert line.endswith(f"the last good {kind} {'keep' if kind == 'rules' else 'keeps'} serving")
    assert "\n" not in line


def test_valid_change_after_a_refused_one_goes_live(setup: Setup) -> None:
    async def body(live: Live) -> None:
        write(setup.rules, "version: 1\nrules:\n  - name: x\n    action: deliver\n    surprise: 1\n")
        await live.until(lambda: live.failed("rules") == 1)
        write(setup.rules, rules_text("fixed"))
        await live.until(lambda: live.daemon.rule_name == "fixed")

    live = run_live(setup, body)
    assert live.ok("rules") == 1 and live.failed("rules") == 1


@pytest.mark.parametrize("kind", ["rules", "model"])
def test_reload_request_after_a_refusal_says_the_file_is_still_the_refused_one(
    setup: Setup, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    """`systemctl reload` to force a refused file in: the log says why nothing changed, again."""
    bad = setup.rules if kind == "rules" else setup.model("b.onnx")
    reports: list[ReloadReport] = []

    async def body(live: Live) -> None:
        write(bad, "rules: {" if kind == "rules" else "not a model")  # newer than a.onnx: tried first
        await live.until(lambda: live.failed(kind) == 1)
        reports.append(await live.reloader.reload())  # SIGHUP, the file unchanged
        if kind == "rules":
            write(bad, rules_text("fixed"))
        else:
            bad.unlink()
        reports.append(await live.reloader.reload())

    with caplog.at_level(logging.INFO, logger="milter.reload"):
        live = run_live(setup, body)
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    refused = next(m for level, m in lines if level == logging.ERROR)
    reason = refused.removeprefix(f"reload: refused {kind} file ").split("; the last good")[0]
    assert reason.startswith(f"{bad}:" if kind == "rules" else f"{bad}: not a loadable ONNX model")
    what = "the rules file is still the one" if kind == "rules" else "model file still"
    verb = "keep" if kind == "rules" else "keeps"
    still = f"reload: nothing changed (all): {what} refused: {reason}; the last good {kind} {verb} serving"
    assert (logging.WARNING, still) in lines
    assert (logging.INFO, "reload: nothing changed (all)") not in lines[
        : lines.index((logging.WARNING, still))
    ]
    forced, fixed = reports
    assert not forced.swapped and forced.refused == () and [r.path for r in forced.still_refused] == [bad]
    assert fixed.still_refused == () and fixed.swapped == (kind == "rules")
    assert live.failed(kind) == 1  # counted once, when it was refused
    assert (live.failed("all"), live.ok("all")) == (1, 1)  # the forced reload did not take it in


# --- SIGHUP and systemd -------------------------------------------------------------------------


def test_request_reloads_without_events_and_notifies_systemd(
    setup: Setup, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rl") as d:
        address = os.path.join(d, "notify")
        systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        systemd.bind(address)
        systemd.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": address})

        async def body(live: Live) -> None:
            report = await live.reloader.reload()  # nothing changed
            assert not report.swapped and report.refused == ()
            # A change the watcher has not seen yet (no debounce wait): SIGHUP reads it at once.
            live.reloader.request()
            write(setup.rules, rules_text("hup"))
            report = await live.reloader.reload()
            assert report.swapped and report.changed == {"rules"}
            assert live.daemon.rule_name == "hup"
            # The watcher's events of that write come too: once the last is noted, one more
            # reload has taken them (alone, or with this request), and systemd heard it.
            await live.until(lambda: "reload: rules (closed default.yaml)" in caplog.text)
            await live.reloader.reload()

        try:
            with caplog.at_level(logging.DEBUG, logger="milter.reload"):
                live = run_live(setup, body, notifier=notifier)
        finally:
            notifier.close()
        messages = []
        systemd.setblocking(False)
        while True:
            try:
                messages.append(dict(x.split("=", 1) for x in systemd.recv(4096).decode().split("\n")))
            except BlockingIOError:
                break
        systemd.close()
    assert live.ok("all") >= 2
    reloading = [m for m in messages if m.get("RELOADING") == "1"]
    ready = [m for m in messages if m.get("READY") == "1"]
    assert len(reloading) == len(ready) == live.reloader.reloads
    assert all(int(m["MONOTONIC_USEC"]) > 0 for m in reloading)
    assert ready[-1]["STATUS"] == f"model {live.daemon.policy[1].id}, 2 rules"
    # RELOADING and READY alternate: systemd sees every reload end.
    assert [("RELOADING" in m) for m in messages] == [True, False] * live.reloader.reloads


def test_refusal_shows_in_the_systemd_status(setup: Setup) -> None:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="rl") as d:
        address = os.path.join(d, "notify")
        systemd = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        systemd.bind(address)
        systemd.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": address})

        async def body(live: Live) -> None:
            write(setup.rules, "rules: {")
            await live.until(lambda: live.failed("rules") == 1)

        try:
            run_live(setup, body, notifier=notifier)
        finally:
            notifier.close()
        systemd.recv(4096)  # RELOADING=1
        ready = dict(x.split("=", 1) for x in systemd.recv(4096).decode().split("\n"))
        systemd.close()
    assert ready["READY"] == "1"
    assert "2 rules; refused " in ready["STATUS"]
    assert "default.yaml" in ready["STATUS"]


# --- through the daemon, under load -------------------------------------------------------------

STATUS_FIELD = re.compile(rb"^X-Spam-Status:(.*?)\r?\n(?![ \t])", re.M | re.S | re.I)
RULE_AND_MODEL = re.compile(r"rule=(\S+)\s+model=(\S+)")


class Sink:
    """The next hop: a real SMTP server recording the X-Spam-Status of every message."""

    def __init__(self) -> None:
        self.statuses: list[list[str]] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        head = bytes(envelope.original_content).split(b"\r\n\r\n", 1)[0] + b"\r\n"
        found = [" ".join(s.decode().split()) for s in STATUS_FIELD.findall(head)]
        with self.lock:
            self.statuses.append(found)
        return "250 2.0.0 Ok"

    def pairs(self) -> list[tuple[str, str] | None]:
        with self.lock:
            statuses = list(self.statuses)
        out: list[tuple[str, str] | None] = []
        for found in statuses:
            m = RULE_AND_MODEL.search(found[0]) if len(found) == 1 else None
            out.append((m.group(1).rpartition("_")[2], m.group(2)) if m else None)
        return out


def test_rule_edits_and_model_swaps_under_load_through_the_daemon(
    setup: Setup, variants: Callable[[str], bytes], model_bytes: bytes
) -> None:
    """A small bench/bench_reload.py: every message scored by one whole, valid policy."""
    from aiosmtpd.controller import Controller

    from milter.config import Config, NextHop
    from milter.server import Daemon

    model_ids = {"a": model_id_of(variants("a"))}
    sink = Sink()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        sink_port = probe.getsockname()[1]
    controller = Controller(sink, hostname="127.0.0.1", port=sink_port)
    controller.start()
    failures: list[str] = []
    accepted = 0

    def versioned(v: str) -> str:
        return f"version: 1\nrules:\n  - name: spam_{v}\n    if: {{probability: {{min: 0.9}}}}\n" \
               f"    action: spam_folder\n  - name: default_{v}\n    action: deliver\n"  # fmt: skip

    async def main() -> tuple[set[tuple[str, str]], set[str], Daemon]:
        nonlocal accepted
        config = Config(
            listen_port=0,
            next_hop=NextHop("smtp", "127.0.0.1", sink_port),
            rules=setup.rules,
            model=setup.models,
            quarantine=setup.root / "quarantine",
            hostname="test.example",
        )
        write(setup.rules, versioned("v0"))
        daemon = Daemon(config, metrics=Metrics(), notifier=Notifier({}))
        await daemon.start()
        assert daemon.reloader is not None and daemon.metrics is not None
        stop = False

        async def client(n: int) -> None:
            nonlocal accepted
            rng = random.Random(n)
            while not stop:
                smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=daemon.port, timeout=30)
                await smtp.connect()
                for i in range(5):
                    try:
                        await smtp.sendmail("a@example.org", ["b@example.net"], _mail(i, i % 2 == 0, rng))
                        accepted += 1
                    except aiosmtplib.SMTPException as e:
                        failures.append(repr(e))
                await smtp.quit()

        def seen(pair: tuple[str, str]) -> bool:
            return pair in sink.pairs()[-20:]

        def failed(kind: str) -> float:
            value = daemon.metrics.registry.get_sample_value(  # type: ignore[union-attr]
                "milter_reloads_total", {"kind": kind, "result": "failed"}
            )
            return value or 0.0

        async def until(condition: Callable[[], bool]) -> None:
            deadline = time.monotonic() + 20  # a hang detector: changes go live in well under 1 s
            while not condition():
                assert time.monotonic() < deadline, "change never went live"
                await asyncio.sleep(0.02)

        clients = [asyncio.create_task(client(n)) for n in range(3)]
        live = {("v0", model_ids["a"])}
        invalid: set[str] = set()
        state = ["v0", model_ids["a"]]
        try:
            await until(lambda: seen(("v0", model_ids["a"])))
            steps: list[tuple[str, str, str]] = [
                ("rules", "v1", "in place"), ("model", "b", "cp"), ("rules", "bad1", "rename"),
                ("rules", "v2", "cp"), ("model", "truncated", "in place"), ("rules", "v3", "rename"),
                ("model", "c", "rename"), ("rules", "bad2", "in place"), ("model", "future", "cp"),
                ("rules", "v4", "in place"),
            ]  # fmt: skip
            for kind, name, how in steps:
                if kind == "rules":
                    text = versioned(name)
                    if name.startswith("bad"):
                        text = text.replace("action: deliver", "action: reject")  # after-queue: refused
                        invalid.add(name)
                    data = text.encode()
                    path = setup.rules
                else:
                    if name == "truncated":
                        data = model_bytes[: len(model_bytes) // 3]
                    elif name == "future":
                        data = with_metadata(model_bytes, **{META_TEXT_VERSION: "999"})
                    else:
                        data = variants(name)
                        model_ids[name] = model_id_of(data)
                    path = setup.model(f"{name}.onnx")
                before = failed(kind)
                await asyncio.to_thread(_place, path, data, how, setup.root)
                if kind == "rules" and not name.startswith("bad"):
                    state[0] = name
                elif kind == "model" and name in model_ids:
                    state[1] = model_ids[name]
                else:
                    if kind == "model":
                        invalid.add(model_id_of(data))
                    await until(functools.partial(lambda k, b: failed(k) > b, kind, before))
                    continue
                pair = (state[0], state[1])
                live.add(pair)
                await until(functools.partial(seen, pair))
        finally:
            stop = True
            await asyncio.gather(*clients)
            await daemon.stop()
        return live, invalid, daemon

    try:
        live, invalid, daemon = asyncio.run(main())
    finally:
        controller.stop()
    found = sink.pairs()
    assert failures == []
    assert len(found) == accepted > 0
    assert None not in found, "a message without exactly one X-Spam-Status naming rule and model"
    pairs = [p for p in found if p is not None]
    assert set(pairs) <= live, f"scored by a mix of policies: {set(pairs) - live}"
    assert not {r for r, m in pairs} & invalid and not {m for r, m in pairs} & invalid
    assert live <= set(pairs)  # every valid change went live
    metrics = daemon.metrics
    assert metrics is not None
    assert (
        metrics.registry.get_sample_value("milter_reloads_total", {"kind": "rules", "result": "failed"}) == 2
    )
    assert (
        metrics.registry.get_sample_value("milter_reloads_total", {"kind": "model", "result": "failed"}) == 2
    )


def _place(path: Path, data: bytes, how: str, root: Path) -> None:
    if how == "in place":
        write(path, data)
    elif how == "cp":
        staged = root / f"staged-{time.monotonic_ns()}"
        staged.write_bytes(data)
        shutil.copyfile(staged, path)
    else:
        write_by_rename(path, data)


def test_a_replaced_model_is_freed_though_closed_sessions_hold_it_in_cycles(
    setup: Setup, variants: Callable[[str], bytes]
) -> None:
    """Closed SMTP sessions sit in reference cycles, with the last policy they used, until the
    cyclic collector runs; the Reloader collects once the swap is past, so a replaced model's
    native memory does not pile up with each swap."""
    import gc
    import weakref

    class ClosedSession:
        def __init__(self, policy: tuple[Ruleset, Model]) -> None:
            self.policy = policy
            self.me = self  # a cycle, as aiosmtpd's protocol and session objects make

    async def main() -> tuple[weakref.ref[Model], bool, bool]:
        loader = PolicyLoader(setup.rules, setup.models, pair)
        daemon = Daemon(loader.initial())
        reloader = Reloader(loader, daemon.swap, quiet=0.05, max_wait=0.2, retire_delays=(0.3, 0.3, 5))
        await reloader.start()
        old = weakref.ref(daemon.policy[1])
        ClosedSession(daemon.policy)  # garbage, but only the cyclic collector can free it
        write(setup.model("b.onnx"), variants("b"))
        report = await reloader.reload()
        assert report.changed == {"model"}
        held_after_swap = old() is not None
        deadline = time.monotonic() + 10
        while old() is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await reloader.stop()
        return old, held_after_swap, gc.isenabled()

    gc.disable()  # no automatic collection: only the Reloader's can free the old model
    try:
        old, held_after_swap, _ = asyncio.run(main())
    finally:
        gc.enable()
    assert held_after_swap  # the cycle kept it at first...
    assert old() is None  # ...and the Reloader's collection freed it


def test_mmap_threshold_is_pinned_where_glibc_is() -> None:
    import platform

    from milter.reload import pin_mmap_threshold

    assert pin_mmap_threshold() == (platform.libc_ver()[0] == "glibc")


def test_unwatchable_directory_is_logged_and_sighup_still_reloads(
    setup: Setup, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> tuple[Daemon, list[str]]:
        loader = PolicyLoader(setup.rules, setup.models, pair)
        daemon = Daemon(loader.initial())
        moved = setup.root / "rules-moved"
        setup.rules.parent.rename(moved)  # the rules directory is gone when watching starts
        reloader = Reloader(loader, daemon.swap)
        with caplog.at_level(logging.ERROR, logger="milter.reload"):
            await reloader.start()
        errors = [r.getMessage() for r in caplog.records]
        moved.rename(setup.rules.parent)
        write(setup.rules, rules_text("after_hup"))
        report = await reloader.reload()  # SIGHUP
        assert report.swapped
        await reloader.stop()
        return daemon, errors

    daemon, errors = asyncio.run(main())
    assert daemon.rule_name == "after_hup"
    [line] = errors
    assert line.startswith("cannot watch ") and str(setup.rules.parent.resolve()) in line
    assert line.endswith("changes take effect on `systemctl reload` (SIGHUP) only")


def test_status_and_refusal_lines_stay_on_one_line() -> None:
    from milter.notify import status_text
    from milter.reload import Refusal

    refusal = Refusal("model", Path("m.onnx"), ModelError("m.onnx", "first line\nsecond line"))
    assert "\n" not in refusal.log_line()
    assert status_text("m", 2, "a\nb") == "model m, 2 rules; a b"
