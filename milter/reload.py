"""Live reload: watch the rules and model directories, build a new policy off the loop, swap it whole.

Operators edit rules files and drop `.onnx` files into the model directory while mail flows.
Editors and `cp` replace files by rename, write them in pieces and fire several events per save,
so the `Reloader`

1. watches the *directories* (watchdog), and keeps only events on files that matter: the rules
   file (or `*.yaml`/`*.yml` in a rules directory) and `*.onnx` in the model directory, never
   dotfiles, backups and editors' temporary files (`is_temporary`);
2. debounces: waits for a quiet period (QUIET seconds without a new event), but never longer
   than MAX_WAIT after the first event, so a file written in pieces is read once it is whole and
   a stream of edits still goes live; while a watched file is open for writing (written to, not
   yet closed: inotify tells both) it waits for the close, up to MAX_WRITE_WAIT, so a slow
   writer's half-written file (which may well be a valid, shorter rules file) is never read;
3. loads and validates in a worker thread (`PolicyLoader.reload`, via run_in_executor), never on
   the event loop;
4. swaps the policy as one reference, by calling `swap(policy)` on the loop thread. The daemon
   reads that reference once per message, so a message in flight keeps the policy it started with.

`systemctl reload` / SIGHUP takes the same path (`Reloader.request()`), without the debounce.

Each part keeps its last good version. A file that fails to load or validate is logged with its
reason on one line and counted (`milter_reloads_total{result="failed"}`), and the part it would
have replaced keeps serving. The model is the newest valid `.onnx` in the model directory (by
mtime, then name) or the one file configured: a newer invalid file is skipped; when the active
model's file is removed, the newest valid remaining one takes over; when it is overwritten by an
invalid file, the model already in memory keeps serving. Files are recognised by
(device, inode, size, mtime, ctime), so an unchanged file is never loaded twice and a refused
one is not retried (or logged again) until it changes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from milter.errors import ModelError, RulesError, TextVersionError
from milter.metrics import Metrics
from milter.model import DEFAULT_MAX_SECONDS_PER_MESSAGE, Model, load_model, validate_model
from milter.notify import Notifier, status_text
from milter.paths import SHIPPED_MODEL
from milter.rules import Ruleset, actions_for_mode

log = logging.getLogger(__name__)


def _not_shutdown_race(record: logging.LogRecord) -> bool:
    # watchdog's inotify thread, woken by the observer's stop, logs "queue_events() called when
    # the thread is inactive" at ERROR (watchdog PR 963): a race inside its own shutdown, not a
    # fault; it must not reach the journal as an error at every `systemctl stop`. Its other
    # errors still do.
    return "called when the thread is inactive" not in record.getMessage()


logging.getLogger("watchdog.observers.inotify").addFilter(_not_shutdown_race)

T = TypeVar("T")

QUIET = 0.25  # seconds without a new event before a change is read
MAX_WAIT = 1.0  # seconds after the first event at most, however busy the directory
MAX_WRITE_WAIT = 10.0  # ... unless a file is still open for writing: then up to this long
# After a model swap: when to look whether the old model was freed (collecting if not), in seconds
# after the previous look; messages in flight (bounded by the SMTP timeouts) may still use it.
RETIRE_DELAYS = (2.0, 5.0, 15.0, 60.0, 300.0)
MIN_COLLECT_INTERVAL = 1.0  # seconds: a burst of swaps costs one collection a second at most

MODEL_SUFFIXES = (".onnx",)
RULES_SUFFIXES = (".yaml", ".yml")
# What editors, cp/rsync/curl, package managers and patch leave beside the files they write.
_TEMPORARY_SUFFIXES = (
    "~", ".swp", ".swo", ".swx", ".swpx", ".tmp", ".temp", ".part", ".partial", ".crdownload",
    ".bak", ".orig", ".rej", ".dpkg-new", ".dpkg-old", ".dpkg-dist", ".dpkg-tmp", ".rpmnew",
    ".rpmsave", ".ucf-new", ".ucf-old", ".ucf-dist", ".new", ".old",
)  # fmt: skip
# watchdog event types that mean a file's content or presence changed (not opened/read).
_CHANGE_EVENTS = frozenset({"created", "modified", "moved", "deleted", "closed", "attrib"})


def is_temporary(name: str) -> bool:
    """True for names of files being written or left behind, never of a file to load.

    Dotfiles (rsync's `.x.yaml.AbC123`, vim's `.x.yaml.swp`, emacs' `.#x.yaml`), emacs
    autosaves (`#x.yaml#`), backups (`x.yaml~`, `.bak`, `.orig`), partial downloads (`.part`,
    `.tmp`, `.crdownload`), package managers' `.dpkg-new`/`.rpmnew`, and vim's write test file
    `4913` (all-digit names).
    """
    return (
        not name
        or name.startswith((".", "#"))
        or name.endswith("#")
        or name.isdigit()
        or name.lower().endswith(_TEMPORARY_SUFFIXES)
    )


# --- file identity ---------------------------------------------------------------------------

FileKey = tuple[int, int, int, int, int]


def file_key(path: Path) -> FileKey | None:
    """(device, inode, size, mtime_ns, ctime_ns) of `path` (following links), None if absent.

    Any write changes ctime, and a replacement by rename changes the inode, so an equal key
    means the same content as when it was last loaded.
    """
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def model_candidates(model_path: Path) -> list[Path]:
    """The model files to try, newest first: `*.onnx` in a directory by (mtime, name), or the file."""
    if not model_path.is_dir():
        return [model_path] if model_path.exists() else []
    found: list[tuple[int, str, Path]] = []
    try:
        entries = list(os.scandir(model_path))
    except OSError as e:
        log.error("cannot list the model directory %s: %s", model_path, e.strerror or e)
        return []
    for entry in entries:
        if is_temporary(entry.name) or not entry.name.endswith(MODEL_SUFFIXES):
            continue
        try:
            if not entry.is_file():
                continue
            mtime = entry.stat().st_mtime_ns
        except OSError:
            continue  # removed while we looked
        found.append((mtime, entry.name, Path(entry.path)))
    found.sort(reverse=True)
    return [path for _, _, path in found]


# --- what a reload found ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refusal:
    """A file that was not taken, and why (the error names the file, line and what was expected)."""

    kind: str  # "rules" or "model"
    path: Path
    error: Exception

    @property
    def reason(self) -> str:
        return str(self.error)

    def log_line(self) -> str:
        return f"reload: refused {self.kind} file {self._one_line()}; {self._serving()}"

    def still_line(self) -> str:
        """For a reload that finds this file as it was refused (`systemctl reload` to force it)."""
        what = "the rules file is still the one" if self.kind == "rules" else "model file still"
        return f"{what} refused: {self._one_line()}; {self._serving()}"

    def _one_line(self) -> str:
        return " ".join(self.reason.split())  # one line, whatever the error says

    def _serving(self) -> str:
        if self.kind == "shadow":
            return "the last good shadow model keeps scoring beside the live one, if there is one"
        return f"the last good {self.kind} {'keep' if self.kind == 'rules' else 'keeps'} serving"


# --- the model ---------------------------------------------------------------------------------


class ModelSelector:
    """Chooses the active model among the candidates, keeping the last good one in memory.

    Not thread-safe: used by one reload at a time (PolicyLoader holds a lock).
    """

    def __init__(
        self,
        model_path: Path | str,
        max_seconds_per_message: float = DEFAULT_MAX_SECONDS_PER_MESSAGE,
        *,
        load: Callable[[Path], Model] = load_model,
        validate: Callable[[Model, float], None] = validate_model,
        kind: str = "model",
        keep_when_gone: bool = True,
    ) -> None:
        self.path = Path(model_path)
        # "shadow" for the shadow model (milter.scan), which is dropped when its file goes
        # (`milter promote` moved it live): a shadow scoring like the live model says nothing.
        self.kind = kind
        self.keep_when_gone = keep_when_gone
        self.max_seconds_per_message = max_seconds_per_message
        self._load = load
        self._validate = validate
        self.active: Model | None = None
        self.active_path: Path | None = None
        self.load_seconds: float | None = None
        self._active_key: FileKey | None = None
        self._refused: dict[Path, tuple[FileKey, Refusal]] = {}  # last refused version of each file
        # The refused files the last selection passed over (or whose good model it kept): what
        # serves is not what the directory says, and a reload that changes nothing says why.
        self.standing: tuple[Refusal, ...] = ()

    def select(self) -> list[Refusal]:
        """Bring `active` up to date with the directory; the files newly refused on the way."""
        passed: list[Refusal] = []
        refusals = self._select(passed)
        self.standing = tuple(passed)
        return refusals

    def _select(self, passed: list[Refusal]) -> list[Refusal]:
        refusals: list[Refusal] = []
        candidates = model_candidates(self.path)
        present = set(candidates)
        for path in list(self._refused):
            if path not in present:
                del self._refused[path]  # keeps this map as small as the directory
        for path in candidates:
            key = file_key(path)
            if key is None:
                continue  # removed since listed
            if path == self.active_path and key == self._active_key:
                return refusals  # the newest valid model is the one serving
            refused = self._refused.get(path)
            if refused is not None and refused[0] == key:
                passed.append(refused[1])
                if path == self.active_path:
                    return refusals  # its file was overwritten by an invalid one: keep the good one
                continue
            started = time.perf_counter()
            try:
                model = self._load(path)
                self._validate(model, self.max_seconds_per_message)
            except Exception as e:  # a model file must never take the daemon down
                if not isinstance(e, ModelError):
                    log.debug("unexpected error loading %s", path, exc_info=True)
                    e = ModelError(path, f"cannot load: {type(e).__name__}: {e}")
                refusal = Refusal(self.kind, path, e)
                self._refused[path] = (key, refusal)
                refusals.append(refusal)
                passed.append(refusal)
                if path == self.active_path:
                    return refusals
                continue
            self.active, self.active_path, self._active_key = model, path, key
            self.load_seconds = time.perf_counter() - started
            return refusals
        if self.active is not None and self.active_path not in present and not self.keep_when_gone:
            log.info(
                "reload: the %s model's file %s is gone; no %s model", self.kind, self.active_path, self.kind
            )
            self.active, self.active_path, self._active_key, self.load_seconds = None, None, None, None
            return refusals
        if self.active is not None and self.active_path not in present:
            log.warning(
                "reload: the active model's file %s is gone and no other valid model is in %s; "
                "model %s stays loaded",
                self.active_path,
                self.path,
                self.active.id,
            )
        return refusals


def select_model(
    model_path: Path | str, max_seconds_per_message: float = DEFAULT_MAX_SECONDS_PER_MESSAGE
) -> Model:
    """The newest valid model of a model directory (or the configured file); logs what it skipped.

    Raises ModelError naming every file tried when none is valid.
    """
    selector = ModelSelector(model_path, max_seconds_per_message)
    refusals = selector.select()
    for refusal in refusals:
        log.warning("%s", f"skipping model {refusal.reason}")
    if selector.active is None:
        raise _no_valid_model(Path(model_path), refusals)
    return selector.active


def _no_valid_model(path: Path, refusals: list[Refusal]) -> ModelError:
    if not refusals:
        where = "directory has no *.onnx file" if path.is_dir() else "no such file"
        return ModelError(path, f"{where}; expected a model file written by `milter train`")
    if len(refusals) == 1 and refusals[0].path == path:
        first = refusals[0].error
        error = first if isinstance(first, ModelError) else ModelError(path, "invalid")
    else:
        tried = "; ".join(r.reason for r in refusals)
        error = ModelError(path, f"no valid model among {len(refusals)} file(s): {tried}")
    if all(isinstance(r.error, TextVersionError) for r in refusals):
        # Models of a milter before an upgrade: say where this milter's own model is, so that
        # the fix is one `install` (the newest valid model serves) and not a search.
        target = f"into {path}" if path.is_dir() else f"as {path}"
        return TextVersionError(
            error.path,
            f"{error.message}; the model shipped with this milter is {SHIPPED_MODEL}: install it "
            f"{target} (`install -m 0644 {SHIPPED_MODEL} {path}`) or retrain the site model",
        )
    return error


# --- the rules ---------------------------------------------------------------------------------


class RulesKeeper:
    """Loads the rules file when it changed, keeping the last good Ruleset.

    `mode` ("after-queue", "before-queue") refuses actions the daemon cannot take in it.
    """

    def __init__(self, rules_path: Path | str, mode: str | None = None) -> None:
        self.path = Path(rules_path)
        self.mode = mode
        self.active: Ruleset | None = None
        self._active_key: object = None
        self._refused_key: object = None
        # The file as it is now was refused for this (None: it is the one serving).
        self.refusal: Refusal | None = None

    @property
    def standing(self) -> tuple[Refusal, ...]:
        return (self.refusal,) if self.refusal is not None else ()

    def _key(self) -> object:
        if self.path.is_dir():
            return tuple(
                (p.name, file_key(p))
                for p in sorted(self.path.iterdir())
                if p.name.endswith(RULES_SUFFIXES) and not is_temporary(p.name)
            )
        return file_key(self.path)

    def refresh(self) -> list[Refusal]:
        key = self._key()
        if self.active is not None and key == self._active_key:
            self.refusal = None  # back as it was when it went live (a refused file removed)
            return []
        if key == self._refused_key:
            return []  # refused already, not changed since (self.refusal says why)
        try:
            if self.mode is None:
                rules = Ruleset.load(self.path)
            else:
                rules = Ruleset.load(self.path, allowed_actions=actions_for_mode(self.mode), mode=self.mode)
        except Exception as e:
            if not isinstance(e, RulesError):
                log.debug("unexpected error loading %s", self.path, exc_info=True)
                e = RulesError(self.path, f"cannot load: {type(e).__name__}: {e}")
            self._refused_key, self.refusal = key, Refusal("rules", self.path, e)
            return [self.refusal]
        self.active, self._active_key, self._refused_key, self.refusal = rules, key, None, None
        return []


def rule_count(rules: Ruleset) -> int:
    return len(rules)


# --- the policy --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadResult(Generic[T]):
    """What one reload produced: a new policy (None: nothing changed or nothing usable)."""

    policy: T | None
    changed: frozenset[str]  # kinds that went live: "rules", "model"
    refused: tuple[Refusal, ...]
    model_id: str | None
    rule_count: int | None
    model_load_seconds: float | None = None
    seconds: float = 0.0
    # Files refused by an earlier reload and found unchanged: still not serving, and why.
    still_refused: tuple[Refusal, ...] = ()


class PolicyLoader(Generic[T]):
    """Builds the policy from the rules and the model, each kept at its last good version.

    `make_policy(rules, model)` builds the daemon's immutable Policy (for example
    `lambda rules, model: Policy(config, model, rules)`). `reload()` blocks (file I/O, model load
    and validation): call it from a worker thread, as the Reloader does.
    """

    def __init__(
        self,
        rules_path: Path | str,
        model_path: Path | str,
        make_policy: Callable[[Ruleset, Model], T],
        *,
        mode: str | None = None,
        max_seconds_per_message: float = DEFAULT_MAX_SECONDS_PER_MESSAGE,
        load_model: Callable[[Path], Model] = load_model,
        shadow_path: Path | str | None = None,
    ) -> None:
        self.rules = RulesKeeper(rules_path, mode)
        self.models = ModelSelector(model_path, max_seconds_per_message, load=load_model)
        # The shadow model (config shadow_model): loaded and validated like the live one; with
        # one configured, make_policy is called with shadow= (the model, or None).
        self.shadow = (
            ModelSelector(
                shadow_path, max_seconds_per_message, load=load_model, kind="shadow", keep_when_gone=False
            )
            if shadow_path is not None
            else None
        )
        self._make_policy = make_policy
        self._lock = threading.Lock()
        self.policy: T | None = None
        self._built_from: tuple[Ruleset, Model, Model | None] | None = None

    @property
    def rules_path(self) -> Path:
        return self.rules.path

    @property
    def model_path(self) -> Path:
        return self.models.path

    def watched(self) -> list[tuple[Path, str, Callable[[str], bool]]]:
        """(directory, kind, is this file name relevant) for each directory to watch."""
        specs = [
            _watch_spec(self.rules.path, "rules", RULES_SUFFIXES),
            _watch_spec(self.models.path, "model", MODEL_SUFFIXES),
        ]
        if self.shadow is not None:
            specs.append(_watch_spec(self.shadow.path, "shadow", MODEL_SUFFIXES))
        return specs

    def initial(self) -> T:
        """The first policy, at start-up; raises RulesError/ModelError if either part is unusable."""
        result = self.reload()
        for refusal in result.refused:
            log.warning("%s", f"skipping {refusal.kind} {refusal.reason}")
        errors = self.startup_errors(result)
        if errors:
            raise errors[0]
        assert self.policy is not None
        return self.policy

    def startup_errors(self, result: LoadResult[T]) -> list[Exception]:
        """Why the daemon cannot start after the first `reload()` (empty: it can), rules first.

        `milter check --config` reports these, so its errors are the daemon's own."""
        errors: list[Exception] = []
        if self.rules.active is None:
            rules_refusals = [r for r in result.refused if r.kind == "rules"]
            errors.append(
                rules_refusals[0].error if rules_refusals else RulesError(self.rules.path, "cannot load")
            )
        if self.models.active is None:
            errors.append(_no_valid_model(self.models.path, [r for r in result.refused if r.kind == "model"]))
        return errors

    def reload(self) -> LoadResult[T]:
        """Re-read what changed; never raises for a bad file (it is in `refused`)."""
        with self._lock:
            started = time.perf_counter()
            refused = [*self.rules.refresh(), *self.models.select()]
            standing = (*self.rules.standing, *self.models.standing)
            shadow: Model | None = None
            if self.shadow is not None:
                refused += self.shadow.select()
                standing += self.shadow.standing
                shadow = self.shadow.active
            still = tuple(r for r in standing if r not in refused)
            rules, model = self.rules.active, self.models.active
            changed: set[str] = set()
            policy: T | None = None
            if rules is not None and model is not None:
                before = self._built_from
                if (
                    before is None
                    or before[0] is not rules
                    or before[1] is not model
                    or before[2] is not shadow
                ):
                    if before is None or before[0] is not rules:
                        changed.add("rules")
                    if before is None or before[1] is not model:
                        changed.add("model")
                    if self.shadow is not None and (before is None or before[2] is not shadow):
                        changed.add("shadow")
                    if self.shadow is not None:
                        policy = self._make_policy(rules, model, shadow=shadow)  # type: ignore[call-arg]
                    else:
                        policy = self._make_policy(rules, model)
                    self.policy, self._built_from = policy, (rules, model, shadow)
            return LoadResult(
                policy=policy,
                changed=frozenset(changed),
                refused=tuple(refused),
                model_id=model.id if model is not None else None,
                rule_count=rule_count(rules) if rules is not None else None,
                model_load_seconds=self.models.load_seconds,
                seconds=time.perf_counter() - started,
                still_refused=still,
            )


def _watch_spec(path: Path, kind: str, suffixes: tuple[str, ...]) -> tuple[Path, str, Callable[[str], bool]]:
    if path.is_dir():
        return path, kind, lambda name: name.endswith(suffixes) and not is_temporary(name)
    name = path.name
    return path.parent, kind, lambda candidate: candidate == name


def pin_mmap_threshold(threshold: int = 128 * 1024) -> bool:
    """Keep glibc's malloc from holding on to the memory of replaced models.

    glibc serves large allocations with mmap and returns them to the system when freed, but
    after such a free it raises its mmap threshold to that size, so the next model's buffers
    (a few MB each) come from the heap, where fragmentation keeps them: measured with
    bench/bench_reload.py, RSS grew by about 100 MB in steps over 1,000 reloads with the dynamic
    threshold and stayed flat with it pinned. Setting the threshold explicitly turns the
    adjustment off (mallopt(3)); the cost is a few more mmap calls for large buffers. Returns
    False where there is no glibc (musl, macOS): nothing to do there.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_mmap_threshold = -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, threshold))


# --- the watcher -------------------------------------------------------------------------------


@dataclass(slots=True)
class ReloadReport:
    """The outcome of one reload, for whoever awaited it."""

    kinds: frozenset[str]  # what triggered it: "rules", "model", "all"
    swapped: bool
    changed: frozenset[str]
    refused: tuple[Refusal, ...]
    model_id: str | None
    rule_count: int | None
    seconds: float
    error: str | None = None  # an unexpected failure of the reload itself
    still_refused: tuple[Refusal, ...] = ()  # refused before, unchanged since: still not serving


class _Handler(FileSystemEventHandler):
    """Runs in watchdog's thread: filters events and hands the relevant ones to the loop."""

    def __init__(
        self,
        note: Callable[[str, str, bool, str, bool | None], None],
        specs: Iterable[tuple[Path, str, Callable[[str], bool]]],
    ) -> None:
        self._note = note
        self._specs = [(d.resolve(), kind, relevant) for d, kind, relevant in specs]
        self._open: set[str] = set()  # watched files opened and not closed (this thread only)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory:
            return
        what = event.event_type
        for raw in (event.src_path, event.dest_path):
            if not raw:
                continue
            p = Path(os.fsdecode(raw))
            for directory, kind, relevant in self._specs:
                if p.parent == directory and relevant(p.name):
                    self._file_event(kind, what, str(p))

    def _file_event(self, kind: str, what: str, path: str) -> None:
        # Is a writer still at the file? Written to (IN_MODIFY) after an open (IN_OPEN) and not
        # closed yet (IN_CLOSE_WRITE). A write without an open seen (truncate(2) by name) has
        # no close to wait for; a file renamed into place or deleted is complete (or gone).
        writing: bool | None = None
        if what == "opened":
            self._open.add(path)
            return  # opening (our own reads too) changes nothing
        if what == "closed_no_write":
            self._open.discard(path)
            return
        if what == "modified":
            writing = path in self._open or None
        elif what in ("closed", "moved", "deleted"):
            self._open.discard(path)
            writing = False
        if what in _CHANGE_EVENTS:
            self._note(kind, f"{what} {Path(path).name}", False, path, writing)


@dataclass(slots=True)
class _Retired:
    """A replaced model, to be collected once no message uses it any more."""

    ref: weakref.ref[Model]
    model_id: str
    attempt: int
    due: float


@dataclass(slots=True)
class _Pending:
    kinds: set[str] = field(default_factory=set)
    first: float = 0.0
    last: float = 0.0
    immediate: bool = False
    waiters: list[asyncio.Future[ReloadReport]] = field(default_factory=list)


class Reloader(Generic[T]):
    """Watches the rules and model directories and swaps in each new policy.

    Create and `start()` it on the daemon's event loop; `swap(policy)` is then called on that
    loop's thread with every new policy. `request()` (SIGHUP) and file events share one path;
    reloads never overlap. `stop()` before the loop closes.
    """

    def __init__(
        self,
        loader: PolicyLoader[T],
        swap: Callable[[T], None],
        *,
        metrics: Metrics | None = None,
        notifier: Notifier | None = None,
        quiet: float = QUIET,
        max_wait: float = MAX_WAIT,
        watch: bool = True,
        retire_delays: tuple[float, ...] = RETIRE_DELAYS,
        max_write_wait: float = MAX_WRITE_WAIT,
        on_report: Callable[[ReloadReport], None] | None = None,
    ) -> None:
        self.loader = loader
        self.on_report = on_report  # told of every reload's outcome (the console's history)
        self._swap = swap
        self.metrics = metrics
        self.notifier = notifier
        self.quiet = quiet
        self.max_wait = max_wait
        self.retire_delays = retire_delays
        self.max_write_wait = max_write_wait
        self._writing: set[str] = set()  # watched files written to and not closed yet
        self._watch = watch
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending = _Pending()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._observer: Observer | None = None  # type: ignore[valid-type]
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="milter-reload")
        self._stopping = False
        self._retired: list[_Retired] = []
        self._collector: asyncio.Task[None] | None = None
        self.reloads = 0
        self.last: ReloadReport | None = None

    async def start(self) -> None:
        """Start watching (from the event loop that will run the swaps)."""
        pin_mmap_threshold()
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="milter-reloader")
        if self._watch:
            specs = self.loader.watched()
            directories = sorted({d.resolve() for d, _, _ in specs})
            observer = Observer()
            observer.daemon = True
            handler = _Handler(self._from_thread, specs)
            try:
                for directory in directories:
                    observer.schedule(handler, str(directory), recursive=False)
                observer.start()
            except OSError as e:  # a directory gone, or the inotify limits reached
                # Mail must flow all the same: SIGHUP still reloads.
                log.error(
                    "cannot watch %s: %s; changes take effect on `systemctl reload` (SIGHUP) only",
                    ", ".join(map(str, directories)),
                    e.strerror or e,
                )
            else:
                self._observer = observer
                log.info("watching %s", ", ".join(map(str, directories)))

    async def stop(self) -> None:
        if self._observer is not None:
            observer, self._observer = self._observer, None
            observer.stop()
            await asyncio.get_running_loop().run_in_executor(None, observer.join, 5)
        if self._task is not None:
            # A reload under way finishes (so systemd hears its READY=1); a pending one is dropped.
            self._stopping = True
            if self._wake is not None:
                self._wake.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for waiter in self._pending.waiters:
            waiter.cancel()
        if self._collector is not None:
            self._collector.cancel()
        self._executor.shutdown(wait=True)

    def request(self, kind: str = "all") -> None:
        """Reload now, without the debounce (SIGHUP, `systemctl reload`). Safe from any thread."""
        self._from_thread(kind, "requested", True)

    async def reload(self, kind: str = "all") -> ReloadReport:
        """Request a reload and wait for its report."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[ReloadReport] = loop.create_future()
        self._pending.waiters.append(waiter)
        self._note(kind, "requested", immediate=True)
        return await waiter

    def _from_thread(
        self, kind: str, why: str, immediate: bool = False, path: str = "", writing: bool | None = None
    ) -> None:
        loop = self._loop
        if loop is None:
            return
        # RuntimeError: the loop is closing, there is nothing left to reload for.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._note, kind, why, immediate, path, writing)

    def _note(
        self, kind: str, why: str, immediate: bool = False, path: str = "", writing: bool | None = None
    ) -> None:
        """On the loop: record a change (or request) and wake the reload task."""
        now = time.monotonic()
        if writing is True:
            self._writing.add(path)
        elif writing is False:
            self._writing.discard(path)
        p = self._pending
        if not p.kinds:
            p.first = now
        p.kinds.add(kind)
        p.last = now
        p.immediate = p.immediate or immediate
        log.debug("reload: %s (%s)", kind, why)
        if self._wake is not None:
            self._wake.set()

    async def _run(self) -> None:
        assert self._wake is not None
        wake = self._wake
        while not self._stopping:
            await wake.wait()
            while not self._pending.immediate and not self._stopping:  # debounce
                now = time.monotonic()
                if self._writing:  # a file still open for writing: wait for it to be closed
                    due = self._pending.first + self.max_write_wait
                else:
                    due = min(self._pending.last + self.quiet, self._pending.first + self.max_wait)
                if now >= due:
                    break
                wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), due - now)
            wake.clear()
            if self._stopping:
                break
            batch, self._pending = self._pending, _Pending()
            self._writing.clear()  # a writer that never closed: its next write marks it again
            report = await self._reload_once(frozenset(batch.kinds))
            for waiter in batch.waiters:
                if not waiter.done():
                    waiter.set_result(report)

    async def _reload_once(self, kinds: frozenset[str]) -> ReloadReport:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        if self.notifier is not None:
            self.notifier.reloading(f"reloading {', '.join(sorted(kinds))}")
        previous = self.loader.models.active
        try:
            result = await loop.run_in_executor(self._executor, self.loader.reload)
        except Exception as e:  # a bug, not a bad file: keep serving, say so loudly
            log.exception("reload failed unexpectedly; the current policy keeps serving")
            report = ReloadReport(
                kinds, False, frozenset(), (), None, None, time.perf_counter() - started, repr(e)
            )
            self._count(report)
            self._announce(report)
            return report
        swapped = False
        if result.policy is not None:
            try:
                self._swap(result.policy)
                swapped = True
            except Exception as e:
                log.exception("reload: swapping in the new policy failed; the current policy keeps serving")
                report = ReloadReport(
                    kinds, False, frozenset(), result.refused, result.model_id, result.rule_count,
                    time.perf_counter() - started, repr(e),
                )  # fmt: skip
                self._count(report)
                self._announce(report)
                return report
        report = ReloadReport(
            kinds=kinds,
            swapped=swapped,
            changed=result.changed if swapped else frozenset(),
            refused=result.refused,
            model_id=result.model_id,
            rule_count=result.rule_count,
            seconds=time.perf_counter() - started,
            still_refused=result.still_refused,
        )
        for refusal in result.refused:
            log.error("%s", refusal.log_line())
        if swapped:
            parts = []
            if "model" in report.changed:
                parts.append(
                    f"model {result.model_id} from {self.loader.models.active_path} "
                    f"(loaded and validated in {result.model_load_seconds or 0:.2f} s)"
                )
            if "rules" in report.changed:
                parts.append(f"{result.rule_count} rules from {self.loader.rules_path}")
            shadow = self.loader.shadow
            if "shadow" in report.changed and shadow is not None:
                if shadow.active is not None:
                    parts.append(
                        f"shadow model {shadow.active.id} from {shadow.active_path} (scores, never acts)"
                    )
                else:
                    parts.append(f"no shadow model (none valid in {shadow.path})")
            log.info("reload: now serving %s", " and ".join(parts))
        elif not result.refused:
            nothing = f"reload: nothing changed ({', '.join(sorted(kinds))})"
            if not result.still_refused:
                log.info("%s", nothing)
            # An admin who runs `systemctl reload` to force a refused file in learns why it is not.
            for refusal in result.still_refused:
                log.warning("%s", f"{nothing}: {refusal.still_line()}")
        if swapped and "all" in kinds:
            for refusal in result.still_refused:
                log.warning("%s", f"reload: {refusal.still_line()}")
        self.reloads += 1
        self.last = report
        if swapped and previous is not None and "model" in report.changed:
            self._retire(previous)
        self._count(report)
        if self.metrics is not None and swapped and result.model_id is not None:
            self.metrics.policy_active(result.model_id, result.model_load_seconds, result.rule_count or 0)
        self._announce(report)
        return report

    def _retire(self, model: Model) -> None:
        """Make sure a replaced model's memory is given back once no message uses it.

        Sessions of closed SMTP connections sit in reference cycles until the cyclic garbage
        collector runs, and the last policy such a session used (with its model, tens of MB of
        native memory Python does not see) stays alive with them: without a collection, every
        model swap under load would add its model's size to the process. So once the messages
        in flight have had time to finish, collect until the old model is gone: one task for
        all replaced models, at most one collection per MIN_COLLECT_INTERVAL.
        """
        due = time.monotonic() + (self.retire_delays[0] if self.retire_delays else 0.0)
        self._retired.append(_Retired(weakref.ref(model), model.id, 0, due))
        if self._collector is None or self._collector.done():
            self._collector = asyncio.create_task(self._collect_retired(), name="milter-retire")

    async def _collect_retired(self) -> None:
        last_collection = 0.0
        while True:
            self._retired = [r for r in self._retired if r.ref() is not None]
            if not self._retired:
                return
            now = time.monotonic()
            due = max(min(r.due for r in self._retired), last_collection + MIN_COLLECT_INTERVAL)
            if due > now:
                await asyncio.sleep(due - now)
                continue
            started = time.perf_counter()
            gc.collect()
            last_collection = time.monotonic()
            log.debug("collected replaced models in %.3f s", time.perf_counter() - started)
            for r in self._retired:
                if r.ref() is None or r.due > now:
                    continue
                r.attempt += 1
                if r.attempt >= len(self.retire_delays):
                    # An idle client connection can keep the policy of its last message.
                    log.info(
                        "replaced model %s still in use after %.0f s", r.model_id, sum(self.retire_delays)
                    )
                    r.due = float("inf")
                else:
                    r.due = now + self.retire_delays[r.attempt]
            self._retired = [r for r in self._retired if r.due != float("inf")]

    def _count(self, report: ReloadReport) -> None:
        if self.metrics is None:
            return
        for refusal in report.refused:
            self.metrics.reload_done(refusal.kind, ok=False)
        for kind in report.changed:
            self.metrics.reload_done(kind, ok=True)
        if "all" in report.kinds:
            ok = not report.refused and not report.still_refused and report.error is None
            self.metrics.reload_done("all", ok=ok)

    def _announce(self, report: ReloadReport) -> None:
        if self.on_report is not None:
            try:
                self.on_report(report)
            except Exception:  # the console's bookkeeping must never break a reload
                log.exception("reload: reporting the outcome failed")
        if self.notifier is None:
            return
        note = ""
        if report.error is not None:
            note = f"reload failed: {report.error}"
        elif refused := (*report.refused, *report.still_refused):
            note = f"refused {refused[0].reason}"
            if len(refused) > 1:
                note += f" (and {len(refused) - 1} more)"
        model_id = self.loader.models.active.id if self.loader.models.active is not None else "none"
        rules = self.loader.rules.active
        self.notifier.ready(status_text(model_id, rule_count(rules) if rules is not None else 0, note))
