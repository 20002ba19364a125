"""The rules: an ordered table turning a probability and message facts into an action.

A rules file (docs/rules.md) is a list of rules; the first rule whose conditions all hold
decides the action. Everything a rule needs is parsed, checked and compiled when the file is
loaded (`Ruleset.load`), so `Ruleset.decide` is a pure function of the facts: no I/O, no
parsing, linear-time regexes (RE2). A file that fails any check is refused whole with
`path:line: what was wrong; what was expected`, so a bad edit never replaces a good policy.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import ipaddress
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol, overload

import re2

from milter.errors import RulesError
from milter.message import Message
from milter.yamlfile import Checker, KeyPath, LineMap, load_yaml, parse_yaml, shown, wrong_type_message

# The rules file shipped with milter, used when the config names none.

# Rules files are short; anything this large is a mistake (or an attack) and is refused unread.
MAX_RULES_BYTES = 1_000_000


class Action(enum.StrEnum):
    DELIVER = "deliver"
    FLAG = "flag"
    SPAM_FOLDER = "spam_folder"
    QUARANTINE = "quarantine"
    REJECT = "reject"
    TEMPFAIL = "tempfail"
    DISCARD = "discard"


# What each filter mode can do. After the queue, Postfix has already accepted the message:
# a 5xx there would make Postfix bounce it to a sender that is most likely forged (backscatter),
# so `reject` is only possible before the queue, while the client is still connected.
MODE_ACTIONS: dict[str, frozenset[Action]] = {
    "after-queue": frozenset(Action) - {Action.REJECT},
    "before-queue": frozenset(Action),
}


def actions_for_mode(mode: str) -> frozenset[Action]:
    """The actions a rules file may use in filter `mode` ("after-queue" or "before-queue")."""
    try:
        return MODE_ACTIONS[mode]
    except KeyError:
        raise ValueError(f"unknown mode {mode!r}; expected one of: {', '.join(MODE_ACTIONS)}") from None


@dataclass(frozen=True, slots=True)
class Facts:
    """Everything a rule may look at; built without I/O from a Message and its Score."""

    probability: float | None  # None: the message could not be scored
    mail_from: str
    rcpt_tos: tuple[str, ...]
    client_address: str | None
    size: int
    headers: Sequence[tuple[str, str]]  # (name, unfolded value), in message order


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    rule: str  # the name of the rule that matched
    required: float | None = None  # the probability threshold of that rule, for X-Spam-Status
    reason: str = ""  # for `rules test`: why this rule matched


def facts_of(message: Message, probability: float | None) -> Facts:
    """The facts rules look at, from a message and its probability (None: unscored)."""
    env = message.envelope
    return Facts(
        probability=probability,
        mail_from=env.mail_from,
        rcpt_tos=env.rcpt_tos,
        client_address=env.client_address,
        size=message.size,
        headers=_Headers(message),
    )


class _Headers(Sequence[tuple[str, str]]):
    """A message's header fields, parsed only if a rule reads them: most rulesets never do,
    and the parse costs about as much as the model."""

    __slots__ = ("_message",)

    def __init__(self, message: Message) -> None:
        self._message = message

    @overload
    def __getitem__(self, index: int) -> tuple[str, str]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[tuple[str, str]]: ...
    def __getitem__(self, index: int | slice) -> tuple[str, str] | Sequence[tuple[str, str]]:
        return self._message.headers[index]

    def __len__(self) -> int:
        return len(self._message.headers)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._message.headers)

    def __repr__(self) -> str:
        return repr(self._message.headers)


# When no rule matches, the message is delivered. Deliver is the one action that can never lose
# or bounce mail, and a rules file without a catch-all is allowed (`milter check` points it out)
# so that a file of exceptions alone still works.
FALLBACK_RULE = "no-rule-matched"
FALLBACK = Decision(Action.DELIVER, FALLBACK_RULE, None, "no rule matched; delivered by default")


# --- conditions --------------------------------------------------------------------------------


class Regex(Protocol):
    """A compiled RE2 pattern (re2 ships no type hints)."""

    def search(self, text: str) -> object: ...

    def fullmatch(self, text: str) -> object: ...


class Condition(Protocol):
    def matches(self, facts: Facts) -> bool: ...

    def explain(self, facts: Facts) -> str:
        """Why the condition holds or not for `facts`, in a few words."""
        ...

    def describe(self) -> str:
        """The condition itself, for `milter check`."""
        ...


def _p(value: float) -> str:
    """A threshold as written: 0.90, 0.5, 0.925."""
    return f"{value:.2f}" if round(value, 2) == value else f"{value:g}"


@dataclass(frozen=True, slots=True)
class ProbabilityRange:
    """min <= p < max; an unscored message (p is None) never matches."""

    low: float | None
    high: float | None

    def matches(self, facts: Facts) -> bool:
        p = facts.probability
        if p is None:
            return False
        return (self.low is None or p >= self.low) and (self.high is None or p < self.high)

    def explain(self, facts: Facts) -> str:
        p = facts.probability
        if p is None:
            return "no probability (unscored)"
        if self.low is not None and p < self.low:
            return f"probability {p:.4f} < {_p(self.low)} (min)"
        if self.high is not None and p >= self.high:
            return f"probability {p:.4f} >= {_p(self.high)} (max)"
        return f"probability {p:.4f} {self.describe().removeprefix('probability ')}"

    def describe(self) -> str:
        if self.high is None:
            return f"probability >= {_p(self.low or 0.0)}"
        if self.low is None:
            return f"probability < {_p(self.high)}"
        return f"probability in [{_p(self.low)}, {_p(self.high)})"


@dataclass(frozen=True, slots=True)
class Unscored:
    """unscored: true matches a message the model could not score; false, one it scored."""

    unscored: bool

    def matches(self, facts: Facts) -> bool:
        return (facts.probability is None) is self.unscored

    def explain(self, facts: Facts) -> str:
        if facts.probability is None:
            return "message is unscored"
        return f"message is scored (probability {facts.probability:.4f})"

    def describe(self) -> str:
        return "unscored" if self.unscored else "scored"


def _normal_address(address: str) -> str:
    return address.strip().strip("<>").lower()


class AddressPatterns:
    """Address patterns: `user@example.com` (exact), `example.com` or `@example.com` (domain),
    globs with `*` and `?` (`*@*.example.com`, `*.example.com`, `bounce-*@*`), `<>` (null sender).
    A pattern with `@` and a local part is matched against the whole address; one without,
    against the domain. Matching ignores case."""

    __slots__ = ("_addresses", "_domains", "_each", "_globs", "patterns")

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = tuple(patterns)
        self._addresses: set[str] = set()
        self._domains: set[str] = set()
        self._globs: list[tuple[bool, Regex]] = []  # (against the whole address?, regex)
        # Each pattern on its own, to name the one that matched (`rules test`, Decision.reason).
        self._each: list[tuple[str, bool, str | Regex]] = []
        for pattern in self.patterns:
            p = pattern.strip().lower()
            whole = "@" in p.lstrip("@") or p == "<>"
            target: str | Regex
            if p == "<>":
                target = ""
                self._addresses.add(target)
            elif "*" in p or "?" in p:
                target = _compile_glob(p if whole else p.lstrip("@"))
                self._globs.append((whole, target))
            elif whole:
                target = p
                self._addresses.add(target)
            else:
                target = p.lstrip("@")
                self._domains.add(target)
            self._each.append((pattern, whole, target))

    def matches(self, address: str) -> bool:
        a = _normal_address(address)
        domain = a.rpartition("@")[2] if "@" in a else ""
        if a in self._addresses or (domain and domain in self._domains):
            return True
        return any(regex.fullmatch(a if whole else domain) for whole, regex in self._globs)

    def match(self, address: str) -> str | None:
        """The first pattern (as written) that `address` matches, or None."""
        a = _normal_address(address)
        domain = a.rpartition("@")[2] if "@" in a else ""
        for pattern, whole, target in self._each:
            subject = a if whole else domain
            if isinstance(target, str):
                if subject == target and (whole or domain):
                    return pattern
            elif target.fullmatch(subject):
                return pattern
        return None

    def __str__(self) -> str:
        return ", ".join(f'"{p}"' for p in self.patterns)


def _compile_glob(glob: str) -> Regex:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re2.escape(c) for c in glob)
    compiled: Regex = re2.compile(regex, _RE2_OPTIONS)
    return compiled


@dataclass(frozen=True, slots=True)
class SenderIs:
    patterns: AddressPatterns

    def matches(self, facts: Facts) -> bool:
        return self.patterns.matches(facts.mail_from)

    def explain(self, facts: Facts) -> str:
        sender = _normal_address(facts.mail_from) or "<>"
        hit = self.patterns.match(facts.mail_from)
        if hit is not None:
            return f'sender "{sender}" matches "{hit}"'
        return f'sender "{sender}" matches none of {self.patterns}'

    def describe(self) -> str:
        return f"sender is {self.patterns}"


@dataclass(frozen=True, slots=True)
class AnyRecipientIs:
    patterns: AddressPatterns

    def matches(self, facts: Facts) -> bool:
        return any(self.patterns.matches(r) for r in facts.rcpt_tos)

    def explain(self, facts: Facts) -> str:
        for r in facts.rcpt_tos:
            hit = self.patterns.match(r)
            if hit is not None:
                return f'recipient "{_normal_address(r)}" matches "{hit}"'
        return f"no recipient of {len(facts.rcpt_tos)} matches {self.patterns}"

    def describe(self) -> str:
        return f"any recipient is {self.patterns}"


@dataclass(frozen=True, slots=True)
class AllRecipientsAre:
    """Every recipient matches; a message with no recipients does not."""

    patterns: AddressPatterns

    def matches(self, facts: Facts) -> bool:
        return bool(facts.rcpt_tos) and all(self.patterns.matches(r) for r in facts.rcpt_tos)

    def explain(self, facts: Facts) -> str:
        if not facts.rcpt_tos:
            return "no recipients"
        for r in facts.rcpt_tos:
            if not self.patterns.matches(r):
                return f'recipient "{_normal_address(r)}" matches none of {self.patterns}'
        return f"all {len(facts.rcpt_tos)} recipients match {self.patterns}"

    def describe(self) -> str:
        return f"all recipients are {self.patterns}"


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


# Parsing an address costs microseconds and the same clients come back all the time.
@functools.lru_cache(maxsize=4096)
def parse_client_address(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The client's IP from what Postfix reports: `1.2.3.4`, `2001:db8::1`, `IPv6:2001:db8::1`
    (XFORWARD's form), `[1.2.3.4]`; IPv4-mapped IPv6 as IPv4; None for `[UNAVAILABLE]` etc."""
    if not text:
        return None
    t = text.strip().strip("[]")
    if t[:5].lower() == "ipv6:":
        t = t[5:]
    try:
        addr = ipaddress.ip_address(t.partition("%")[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


@dataclass(frozen=True, slots=True)
class ClientIn:
    networks: tuple[Network, ...]

    def matches(self, facts: Facts) -> bool:
        return self._hit(facts) is not None

    def _hit(self, facts: Facts) -> Network | None:
        addr = parse_client_address(facts.client_address)
        if addr is None:
            return None
        for net in self.networks:
            if addr.version == net.version and addr in net:
                return net
        return None

    def explain(self, facts: Facts) -> str:
        addr = parse_client_address(facts.client_address)
        if addr is None:
            return f"client address unknown ({facts.client_address or 'none given'})"
        hit = self._hit(facts)
        if hit is not None:
            return f"client {addr} is in {hit}"
        return f"client {addr} is in none of {self.describe().removeprefix('client in ')}"

    def describe(self) -> str:
        return "client in " + ", ".join(str(n) for n in self.networks)


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # errors are reported as RulesError, not printed to stderr by RE2


@dataclass(frozen=True, slots=True)
class HeaderMatches:
    """Some header `name` (any case) has a value in which one of the regexes is found."""

    name: str  # as written in the rules file
    key: str  # lower case, for comparison
    sources: tuple[str, ...]
    regexes: tuple[Regex, ...]

    def matches(self, facts: Facts) -> bool:
        key = self.key
        for name, value in facts.headers:
            if name.lower() == key:
                for regex in self.regexes:
                    if regex.search(value):
                        return True
        return False

    def explain(self, facts: Facts) -> str:
        values = [v for n, v in facts.headers if n.lower() == self.key]
        if not values:
            return f"no {self.name} header"
        for value in values:
            for source, regex in zip(self.sources, self.regexes, strict=True):
                if regex.search(value):
                    return f"header {self.name} {shown(value, 60)} matches /{source}/"
        return f"no {self.name} header matches {self._patterns()}"

    def _patterns(self) -> str:
        return ", ".join(f"/{s}/" for s in self.sources)

    def describe(self) -> str:
        return f"header {self.name} matches {self._patterns()}"


@dataclass(frozen=True, slots=True)
class SizeRange:
    """min <= size in bytes < max."""

    low: int | None
    high: int | None

    def matches(self, facts: Facts) -> bool:
        s = facts.size
        return (self.low is None or s >= self.low) and (self.high is None or s < self.high)

    def explain(self, facts: Facts) -> str:
        s = facts.size
        if self.low is not None and s < self.low:
            return f"size {s:,} bytes < {self.low:,} (min)"
        if self.high is not None and s >= self.high:
            return f"size {s:,} bytes >= {self.high:,} (max)"
        return f"size {s:,} bytes {self.describe().removeprefix('size ')}"

    def describe(self) -> str:
        if self.high is None:
            return f"size >= {self.low or 0:,}"
        if self.low is None:
            return f"size < {self.high:,}"
        return f"size in [{self.low:,}, {self.high:,})"


# --- rules -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    action: Action
    conditions: tuple[Condition, ...]  # all must hold; none: matches every message
    line: int | None = None
    description: str = ""

    @property
    def required(self) -> float | None:
        """The rule's minimum probability, if it has one."""
        for c in self.conditions:
            if isinstance(c, ProbabilityRange):
                return c.low
        return None

    @property
    def catch_all(self) -> bool:
        return not self.conditions

    def matches(self, facts: Facts) -> bool:
        for c in self.conditions:  # noqa: SIM110 - per message, per rule: a plain loop beats all(genexpr)
            if not c.matches(facts):
                return False
        return True

    def explain(self, facts: Facts) -> tuple[tuple[bool, str], ...]:
        """(holds, why) for every condition, in order."""
        if not self.conditions:
            return ((True, "no conditions: matches every message"),)
        return tuple((c.matches(facts), c.explain(facts)) for c in self.conditions)

    def describe(self) -> str:
        return " and ".join(c.describe() for c in self.conditions) or "always"


@dataclass(frozen=True, slots=True)
class Trace:
    """How one rule fared against one message (`milter rules test --all`)."""

    rule: Rule
    matched: bool
    chosen: bool  # the first matching rule: the one that decides
    conditions: tuple[tuple[bool, str], ...]


@dataclass(frozen=True, eq=False)
class Ruleset:
    """An immutable, validated, compiled rules file."""

    rules: tuple[Rule, ...]
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.rules)

    def __iter__(self) -> Iterator[Rule]:
        return iter(self.rules)

    @property
    def thresholds(self) -> tuple[tuple[str, float], ...]:
        """(rule name, minimum probability) of each rule with one, in file order."""
        return tuple((r.name, r.required) for r in self.rules if r.required is not None)

    @property
    def catch_all(self) -> Rule | None:
        """The rule that matches every message, if the file has one (it is then the last)."""
        return self.rules[-1] if self.rules and self.rules[-1].catch_all else None

    def decide(self, facts: Facts) -> Decision:
        """The action of the first rule that matches `facts` (FALLBACK, deliver, if none does)."""
        for rule in self.rules:
            if rule.matches(facts):
                reason = "; ".join(why for _, why in rule.explain(facts))
                return Decision(rule.action, rule.name, rule.required, reason)
        return FALLBACK

    def explain(self, facts: Facts) -> tuple[Trace, ...]:
        """Every rule evaluated against `facts`, the deciding one marked `chosen`."""
        traces = []
        chosen = False
        for rule in self.rules:
            conditions = rule.explain(facts)
            matched = all(ok for ok, _ in conditions)
            traces.append(Trace(rule, matched, matched and not chosen, conditions))
            chosen = chosen or matched
        return tuple(traces)

    @classmethod
    def load(
        cls,
        path: Path | str,
        *,
        allowed_actions: frozenset[Action] = frozenset(Action),
        mode: str | None = None,
    ) -> Ruleset:
        """Read, validate and compile a rules file. Raises RulesError (file, line, expected).

        `allowed_actions` refuses actions the daemon cannot take; `mode` only names the reason in
        the message ("not possible in after-queue mode").
        """
        data, lines = load_yaml(path, max_bytes=MAX_RULES_BYTES, error=RulesError)
        return _Parser(Path(path), lines, allowed_actions, mode).ruleset(data)

    @classmethod
    def from_yaml_text(
        cls,
        text: str | bytes,
        path: Path | str | None = None,
        *,
        allowed_actions: frozenset[Action] = frozenset(Action),
        mode: str | None = None,
    ) -> Ruleset:
        """As `load`, from text in memory; `path` only names it in errors."""
        data, lines = parse_yaml(text, path, max_bytes=MAX_RULES_BYTES, error=RulesError)
        return _Parser(Path(path) if path is not None else None, lines, allowed_actions, mode).ruleset(data)


# --- parsing -----------------------------------------------------------------------------------

TOP_KEYS = ("rules", "version")
RULE_KEYS = ("name", "description", "if", "action")
CONDITION_KEYS = (
    "probability",
    "unscored",
    "sender",
    "recipient",
    "all_recipients",
    "client",
    "header",
    "size",
)
RANGE_KEYS = ("min", "max")
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")
MAX_NAME = 64
MAX_REGEX = 1000
# RFC 5322 field names: printable ASCII except space and colon.
HEADER_NAME_CHARS = frozenset(chr(c) for c in range(33, 127)) - {":"}


class _Parser:
    VERSION: ClassVar[int] = 1

    def __init__(
        self, path: Path | None, lines: LineMap, allowed: frozenset[Action], mode: str | None
    ) -> None:
        self.check = Checker(path, lines, RulesError)
        self.path = path
        self.allowed = allowed
        self.mode = mode

    def fail(self, at: KeyPath, what: str, message: str) -> RulesError:
        return RulesError(self.path, f"{what}: {message}" if what else message, self.check.line(at))

    def ruleset(self, data: object) -> Ruleset:
        if data is None:
            raise self.fail((), "", 'the file is empty; expected a mapping with a "rules" list')
        if isinstance(data, list):
            raise self.fail(
                (),
                "",
                'expected a mapping with a "rules" list at the top, got a list (write "rules:" above it)',
            )
        top = self.check.mapping(data, (), "top level")
        self.check.keys(top, (), "top level", TOP_KEYS, required=("rules",))
        if "version" in top and top["version"] != self.VERSION:
            raise self.fail(
                ("version",), "version", f"unsupported version {shown(top['version'])}; expected 1"
            )
        items = top["rules"]
        if items is None or items == []:
            raise self.fail(("rules",), "rules", "the list is empty; expected at least one rule")
        items = self.check.sequence(items, ("rules",), "rules")
        rules: list[Rule] = []
        seen: dict[str, int | None] = {}
        for i, item in enumerate(items):
            rule = self.rule(item, ("rules", i), i)
            if rule.name in seen:
                first = seen[rule.name]
                where = f" (first at line {first})" if first is not None else ""
                raise self.fail(
                    ("rules", i, "name"),
                    f'rule "{rule.name}"',
                    f"duplicate rule name{where}; names must be unique",
                )
            seen[rule.name] = rule.line
            if rules and rules[-1].catch_all:
                prev = rules[-1]
                raise self.fail(
                    ("rules", i),
                    f'rule "{rule.name}"',
                    f'can never match: rule "{prev.name}" (line {prev.line}) before it matches every message;'
                    " move the catch-all rule to the end",
                )
            rules.append(rule)
        return Ruleset(tuple(rules), self.path)

    def rule(self, item: object, at: KeyPath, index: int) -> Rule:
        what = f"rule {index + 1}"
        if isinstance(item, dict) and isinstance(item.get("name"), str) and item["name"].strip():
            what = f'rule "{item["name"]}"'
        raw = self.check.mapping(item, at, what)
        self.check.keys(raw, at, what, RULE_KEYS, required=("name", "action"))
        name = self.check.string(raw["name"], (*at, "name"), what + ": name")
        bad = sorted(set(name) - NAME_CHARS)
        if bad or len(name) > MAX_NAME:
            raise self.fail(
                (*at, "name"),
                what,
                f"name {shown(name)} is not allowed; expected at most {MAX_NAME} letters, digits,"
                " '_', '.' or '-' (it goes into the X-Spam-Status header and the logs)",
            )
        description = ""
        if "description" in raw:
            description = self.check.string(
                raw["description"], (*at, "description"), what + ": description", empty=True
            )
        action = self.action(raw["action"], (*at, "action"), what)
        conditions: tuple[Condition, ...] = ()
        if "if" in raw:
            conditions = self.conditions(raw["if"], (*at, "if"), what)
        return Rule(name, action, conditions, self.check.line(at), description)

    def action(self, value: object, at: KeyPath, what: str) -> Action:
        names = [a.value for a in Action]
        name = self.check.choice(value, at, what + ": action", names)
        action = Action(name)
        if action not in self.allowed:
            allowed = ", ".join(a.value for a in Action if a in self.allowed)
            where = f" in {self.mode} mode" if self.mode else " here"
            raise self.fail(at, what, f'action "{name}" is not possible{where}; allowed: {allowed}')
        return action

    def conditions(self, value: object, at: KeyPath, what: str) -> tuple[Condition, ...]:
        if value is None or value == {}:
            raise self.fail(at, what, '"if" is empty; leave "if" out for a rule that matches every message')
        raw = self.check.mapping(value, at, what + ": if")
        self.check.keys(raw, at, what + ": if", CONDITION_KEYS)
        out: list[Condition] = []
        for key, v in raw.items():
            here = (*at, key)
            label = f"{what}: {key}"
            if key == "probability":
                low, high = self.range(v, here, label, floats=True)
                out.append(ProbabilityRange(low, high))
            elif key == "unscored":
                flag = self.check.boolean(v, here, label)
                if flag and "probability" in raw:
                    raise self.fail(here, what, '"unscored: true" and "probability" can never both hold')
                out.append(Unscored(flag))
            elif key == "sender":
                out.append(SenderIs(self.addresses(v, here, label)))
            elif key == "recipient":
                out.append(AnyRecipientIs(self.addresses(v, here, label)))
            elif key == "all_recipients":
                out.append(AllRecipientsAre(self.addresses(v, here, label)))
            elif key == "client":
                out.append(ClientIn(self.networks(v, here, label)))
            elif key == "header":
                out.extend(self.headers(v, here, label))
            elif key == "size":
                low_s, high_s = self.range(v, here, label, floats=False)
                out.append(
                    SizeRange(None if low_s is None else int(low_s), None if high_s is None else int(high_s))
                )
        # Cheapest and most selective first: a rule is tried on every message that reaches it.
        order = (
            Unscored,
            ProbabilityRange,
            SizeRange,
            SenderIs,
            AnyRecipientIs,
            AllRecipientsAre,
            ClientIn,
            HeaderMatches,
        )
        out.sort(key=lambda c: order.index(type(c)))
        return tuple(out)

    def range(
        self, value: object, at: KeyPath, what: str, *, floats: bool
    ) -> tuple[float | None, float | None]:
        expected = (
            "a mapping like {min: 0.9} or {min: 0.5, max: 0.9}"
            if floats
            else "a mapping like {min: 1000000} or {max: 50000} (bytes)"
        )
        if not isinstance(value, dict):
            raise self.fail(at, what, wrong_type_message(value, expected))
        raw = self.check.mapping(value, at, what)
        if not raw:
            raise self.fail(at, what, f"expected {expected}, got an empty mapping")
        self.check.keys(raw, at, what, RANGE_KEYS)
        bounds: dict[str, float] = {}
        for key in RANGE_KEYS:
            if key in raw:
                if floats:
                    bounds[key] = self.check.number(raw[key], (*at, key), f"{what}: {key}", low=0.0, high=1.0)
                else:
                    bounds[key] = self.check.integer(raw[key], (*at, key), f"{what}: {key}", low=0)
        low, high = bounds.get("min"), bounds.get("max")
        if low is not None and high is not None and low >= high:
            raise self.fail(
                (*at, "max"),
                what,
                f"min ({low:g}) must be less than max ({high:g}): min is inclusive, max exclusive",
            )
        return low, high

    def strings(self, value: object, at: KeyPath, what: str, expected: str) -> list[tuple[str, KeyPath]]:
        """A string or a non-empty list of strings, each with its own path (for its line)."""
        if isinstance(value, str):
            items: list[tuple[object, KeyPath]] = [(value, at)]
        elif isinstance(value, list) and value:
            items = [(v, (*at, i)) for i, v in enumerate(value)]
        elif value == []:
            raise self.fail(at, what, f"expected {expected}, got an empty list")
        else:
            raise self.fail(at, what, wrong_type_message(value, expected))
        out = []
        for v, here in items:
            if not isinstance(v, str) or not v.strip():
                raise self.fail(
                    here, what, wrong_type_message(v, expected) if not isinstance(v, str) else "empty pattern"
                )
            out.append((v.strip(), here))
        return out

    def addresses(self, value: object, at: KeyPath, what: str) -> AddressPatterns:
        forms = '"user@example.com", "@example.com", "example.com", "*@*.example.com", "<>"'
        expected = f"an address pattern or a list of them ({forms})"
        patterns = []
        for p, here in self.strings(value, at, what, expected):
            local, at_sign, domain = p.rpartition("@")
            malformed = (
                any(c.isspace() or c in ",;\"'()[]\\" or ord(c) < 32 for c in p)
                or (p != "<>" and ("<" in p or ">" in p))
                or "@" in local
                or (at_sign and not domain)
            )
            if malformed:
                raise self.fail(
                    here, what, f"{shown(p)} is not an address pattern; expected one of the forms {forms}"
                )
            patterns.append(p)
        return AddressPatterns(patterns)

    def networks(self, value: object, at: KeyPath, what: str) -> tuple[Network, ...]:
        expected = (
            'an IP address or network, or a list of them ("192.0.2.0/24", "2001:db8::/32", "127.0.0.1")'
        )
        nets: list[Network] = []
        for text, here in self.strings(value, at, what, expected):
            try:
                net = ipaddress.ip_network(text, strict=True)
            except ValueError as e:
                hint = ""
                with contextlib.suppress(ValueError):
                    hint = f" (did you mean {ipaddress.ip_network(text, strict=False)}?)"
                raise self.fail(
                    here, what, f"{shown(text)} is not an IP network: {e}{hint}; expected {expected}"
                ) from None
            nets.append(net)
        return tuple(nets)

    def headers(self, value: object, at: KeyPath, what: str) -> list[HeaderMatches]:
        expected = 'a mapping of header name to regex, like {Subject: "(?i)viagra"}'
        if not isinstance(value, dict) or not value:
            raise self.fail(
                at,
                what,
                wrong_type_message(value, expected)
                if value != {}
                else f"expected {expected}, got an empty mapping",
            )
        out = []
        for name, regexes in self.check.mapping(value, at, what).items():
            here = (*at, name)
            if not name or set(name) - HEADER_NAME_CHARS:
                raise self.fail(
                    here,
                    what,
                    f"{shown(name)} is not a header name; expected printable ASCII without spaces or ':'",
                )
            sources: list[str] = []
            compiled: list[Regex] = []
            for source, rhere in self.strings(
                regexes, here, f"{what}: {name}", "a regex or a list of regexes"
            ):
                if len(source) > MAX_REGEX:
                    raise self.fail(
                        rhere,
                        f"{what}: {name}",
                        f"regex is {len(source):,} characters long; the limit is {MAX_REGEX:,}",
                    )
                try:
                    compiled.append(re2.compile(source, _RE2_OPTIONS))
                except re2.error as e:
                    detail = (
                        e.args[0].decode("utf-8", "replace")
                        if e.args and isinstance(e.args[0], bytes)
                        else str(e)
                    )
                    raise self.fail(
                        rhere,
                        f"{what}: {name}",
                        f"invalid regex /{source}/: {detail} (RE2 syntax: no lookaround or backreferences)",
                    ) from None
                sources.append(source)
            out.append(HeaderMatches(name, name.lower(), tuple(sources), tuple(compiled)))
        return out


def describe_rules(ruleset: Ruleset) -> Iterable[str]:
    """One line per rule: `name: action if conditions`, for `milter check`."""
    for rule in ruleset:
        when = f"if {rule.describe()}" if rule.conditions else "(catch-all)"
        yield f"{rule.name}: {rule.action.value} {when}"
