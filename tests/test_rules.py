# ruff: noqa: E501  (expected error messages are written out whole, one per line)
"""The rules engine: loading, validation messages (file, line, expected), matching, decisions."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from milter.errors import RulesError
from milter.message import Envelope, Message
from milter.paths import SHIPPED_RULES
from milter.rules import (
    FALLBACK_RULE,
    MODE_ACTIONS,
    Action,
    Decision,
    Facts,
    Ruleset,
    actions_for_mode,
    describe_rules,
    facts_of,
    parse_client_address,
)


def facts(
    probability: float | None = 0.1,
    *,
    sender: str = "alice@example.org",
    rcpts: tuple[str, ...] = ("bob@example.net",),
    client: str | None = "192.0.2.10",
    size: int = 2_000,
    headers: tuple[tuple[str, str], ...] = (("Subject", "Hello"), ("From", "Alice <alice@example.org>")),
) -> Facts:
    return Facts(probability, sender, rcpts, client, size, headers)


def rules(text: str, **kwargs: object) -> Ruleset:
    return Ruleset.from_yaml_text(textwrap.dedent(text), "r.yaml", **kwargs)  # type: ignore[arg-type]


def one_rule(condition: str) -> Ruleset:
    """A ruleset whose rule "hit" (action flag) has `condition` (YAML, under `if:`), then a catch-all."""
    body = textwrap.indent(textwrap.dedent(condition).strip(), " " * 6)
    return rules(
        f"rules:\n  - name: hit\n    if:\n{body}\n    action: flag\n  - name: rest\n    action: deliver\n"
    )


def hits(ruleset: Ruleset, f: Facts) -> bool:
    return ruleset.decide(f).rule == "hit"


# --- the shipped rules -------------------------------------------------------------------------


def test_shipped_rules_are_the_seed_business_rule() -> None:
    ruleset = Ruleset.load(SHIPPED_RULES)
    assert ruleset.path == SHIPPED_RULES
    assert len(ruleset) == 3
    assert ruleset.thresholds == (("spam", 0.90), ("suspicious", 0.50))
    assert [(r.name, r.action) for r in ruleset] == [
        ("spam", Action.SPAM_FOLDER),
        ("suspicious", Action.FLAG),
        ("default", Action.DELIVER),
    ]
    assert ruleset.catch_all is not None and ruleset.catch_all.name == "default"
    assert list(describe_rules(ruleset)) == [
        "spam: spam_folder if probability >= 0.90",
        "suspicious: flag if probability >= 0.50",
        "default: deliver (catch-all)",
    ]


@pytest.mark.parametrize(
    ("p", "action", "rule", "required"),
    [
        (1.0, Action.SPAM_FOLDER, "spam", 0.90),
        (0.90, Action.SPAM_FOLDER, "spam", 0.90),
        (0.8999, Action.FLAG, "suspicious", 0.50),
        (0.50, Action.FLAG, "suspicious", 0.50),
        (0.4999, Action.DELIVER, "default", None),
        (0.0, Action.DELIVER, "default", None),
        (None, Action.DELIVER, "default", None),
    ],
)
def test_shipped_rules_decide(p: float | None, action: Action, rule: str, required: float | None) -> None:
    d = Ruleset.load(SHIPPED_RULES).decide(facts(p))
    assert (d.action, d.rule, d.required) == (action, rule, required)


@given(st.floats(min_value=0.0, max_value=1.0))
def test_shipped_rules_are_the_thresholds_for_every_probability(p: float) -> None:
    expected = Action.SPAM_FOLDER if p >= 0.9 else Action.FLAG if p >= 0.5 else Action.DELIVER
    assert SHIPPED.decide(facts(p)).action == expected


SHIPPED = Ruleset.load(SHIPPED_RULES)


def test_decision_reason_says_why() -> None:
    assert SHIPPED.decide(facts(0.934)).reason == "probability 0.9340 >= 0.90"
    assert SHIPPED.decide(facts(0.2)).reason == "no conditions: matches every message"


def test_explain_traces_every_rule_and_marks_the_deciding_one() -> None:
    traces = SHIPPED.explain(facts(0.6))
    assert [(t.rule.name, t.matched, t.chosen) for t in traces] == [
        ("spam", False, False),
        ("suspicious", True, True),
        ("default", True, False),
    ]
    assert traces[0].conditions == ((False, "probability 0.6000 < 0.90 (min)"),)
    assert traces[1].conditions == ((True, "probability 0.6000 >= 0.50"),)


# --- fallback and order ------------------------------------------------------------------------


def test_no_catch_all_falls_back_to_deliver() -> None:
    ruleset = rules(
        """
        rules:
          - name: spam
            if: {probability: {min: 0.9}}
            action: quarantine
        """
    )
    assert ruleset.catch_all is None
    assert ruleset.decide(facts(0.95)).action == Action.QUARANTINE
    d = ruleset.decide(facts(0.2))
    assert d == Decision(Action.DELIVER, FALLBACK_RULE, None, "no rule matched; delivered by default")


def test_first_matching_rule_wins() -> None:
    ruleset = rules(
        """
        rules:
          - name: partner
            if: {sender: "@partner.example"}
            action: deliver
          - name: spam
            if: {probability: {min: 0.5}}
            action: spam_folder
        """
    )
    assert ruleset.decide(facts(0.99, sender="x@partner.example")).rule == "partner"
    assert ruleset.decide(facts(0.99, sender="x@other.example")).rule == "spam"


def test_all_conditions_of_a_rule_must_hold() -> None:
    ruleset = one_rule(
        """
        probability: {min: 0.5}
        sender: "@example.org"
        size: {max: 10000}
        """
    )
    assert hits(ruleset, facts(0.6))
    assert not hits(ruleset, facts(0.4))
    assert not hits(ruleset, facts(0.6, sender="a@example.com"))
    assert not hits(ruleset, facts(0.6, size=10_000))
    reason = ruleset.decide(facts(0.6)).reason
    assert (
        reason
        == 'probability 0.6000 >= 0.50; size 2,000 bytes < 10,000; sender "alice@example.org" matches "@example.org"'
    )


# --- conditions --------------------------------------------------------------------------------


def test_probability_range_min_inclusive_max_exclusive() -> None:
    ruleset = one_rule("probability: {min: 0.5, max: 0.9}")
    assert not hits(ruleset, facts(0.4999))
    assert hits(ruleset, facts(0.5))
    assert hits(ruleset, facts(0.8999))
    assert not hits(ruleset, facts(0.9))
    assert not hits(ruleset, facts(None))
    assert ruleset.rules[0].required == 0.5
    assert ruleset.decide(facts(0.7)).reason == "probability 0.7000 in [0.50, 0.90)"
    assert ruleset.rules[0].conditions[0].explain(facts(0.95)) == "probability 0.9500 >= 0.90 (max)"
    assert ruleset.rules[0].conditions[0].explain(facts(None)) == "no probability (unscored)"


def test_probability_max_only_has_no_threshold() -> None:
    ruleset = one_rule("probability: {max: 0.01}")
    assert hits(ruleset, facts(0.0))
    assert not hits(ruleset, facts(0.01))
    assert ruleset.thresholds == ()
    assert ruleset.decide(facts(0.0)).required is None


def test_unscored() -> None:
    ruleset = one_rule("unscored: true")
    assert hits(ruleset, facts(None))
    assert not hits(ruleset, facts(0.0))
    assert ruleset.decide(facts(None)).reason == "message is unscored"
    scored = one_rule("unscored: false")
    assert hits(scored, facts(0.0))
    assert not hits(scored, facts(None))


@pytest.mark.parametrize(
    ("pattern", "address", "matched"),
    [
        ("alice@example.org", "alice@example.org", True),
        ("alice@example.org", "ALICE@Example.ORG", True),
        ("alice@example.org", "<alice@example.org>", True),
        ("alice@example.org", "bob@example.org", False),
        ("@example.org", "anyone@example.org", True),
        ("@example.org", "anyone@sub.example.org", False),
        ("example.org", "anyone@EXAMPLE.org", True),
        ("example.org", "example.org", False),  # no @: no domain
        ("*.example.org", "x@sub.example.org", True),
        ("*.example.org", "x@example.org", False),
        ("@*.example.org", "x@a.b.example.org", True),
        ("*@*.example.org", "x@a.example.org", True),
        ("bounce-*@*", "bounce-123@lists.example", True),
        ("bounce-*@*", "news@lists.example", False),
        ("user?@example.org", "user1@example.org", True),
        ("user?@example.org", "user12@example.org", False),
        ("a.b@example.org", "axb@example.org", False),  # dots are literal, not regex
        ("<>", "", True),
        ("<>", "<>", True),
        ("<>", "x@example.org", False),
    ],
)
def test_sender_patterns(pattern: str, address: str, matched: bool) -> None:
    ruleset = one_rule(f"sender: '{pattern}'")
    assert hits(ruleset, facts(sender=address)) is matched


def test_sender_list_and_reason() -> None:
    ruleset = one_rule('sender: ["@a.example", "*@b.example"]')
    assert hits(ruleset, facts(sender="x@b.example"))
    assert ruleset.decide(facts(sender="x@b.example")).reason == 'sender "x@b.example" matches "*@b.example"'
    explained = ruleset.rules[0].explain(facts(sender="x@c.example"))
    assert explained == ((False, 'sender "x@c.example" matches none of "@a.example", "*@b.example"'),)
    assert (
        ruleset.rules[0].explain(facts(sender=""))[0][1]
        == 'sender "<>" matches none of "@a.example", "*@b.example"'
    )


def test_recipient_is_any_recipient() -> None:
    ruleset = one_rule('recipient: "@sales.example"')
    assert hits(ruleset, facts(rcpts=("a@other.example", "b@sales.example")))
    assert not hits(ruleset, facts(rcpts=("a@other.example",)))
    assert not hits(ruleset, facts(rcpts=()))
    assert (
        ruleset.decide(facts(rcpts=("a@other.example", "b@sales.example"))).reason
        == 'recipient "b@sales.example" matches "@sales.example"'
    )


def test_all_recipients_need_every_recipient_and_at_least_one() -> None:
    ruleset = one_rule('all_recipients: ["@sales.example", "boss@example.com"]')
    assert hits(ruleset, facts(rcpts=("a@sales.example", "boss@example.com")))
    assert not hits(ruleset, facts(rcpts=("a@sales.example", "c@example.com")))
    assert not hits(ruleset, facts(rcpts=()))
    cond = ruleset.rules[0].conditions[0]
    assert cond.explain(facts(rcpts=("a@sales.example", "c@example.com"))) == (
        'recipient "c@example.com" matches none of "@sales.example", "boss@example.com"'
    )
    assert cond.explain(facts(rcpts=())) == "no recipients"
    assert cond.explain(facts(rcpts=("a@sales.example",))) == (
        'all 1 recipients match "@sales.example", "boss@example.com"'
    )


@pytest.mark.parametrize(
    ("client", "matched"),
    [
        ("10.1.2.3", True),
        ("11.0.0.1", False),
        ("2001:db8::1", True),
        ("IPv6:2001:db8::1", True),  # as Postfix's XFORWARD writes it
        ("2001:db9::1", False),
        ("::ffff:10.0.0.1", True),  # IPv4-mapped
        ("[192.168.1.1]", True),
        ("192.168.2.1", False),
        ("[UNAVAILABLE]", False),
        (None, False),
        ("", False),
        ("not an ip", False),
    ],
)
def test_client_networks(client: str | None, matched: bool) -> None:
    ruleset = one_rule('client: ["10.0.0.0/8", "2001:db8::/32", "192.168.1.1"]')
    assert hits(ruleset, facts(client=client)) is matched


def test_client_reasons() -> None:
    cond = one_rule('client: ["10.0.0.0/8", "2001:db8::/32"]').rules[0].conditions[0]
    assert cond.explain(facts(client="10.9.9.9")) == "client 10.9.9.9 is in 10.0.0.0/8"
    assert cond.explain(facts(client="8.8.8.8")) == "client 8.8.8.8 is in none of 10.0.0.0/8, 2001:db8::/32"
    assert cond.explain(facts(client=None)) == "client address unknown (none given)"


def test_parse_client_address() -> None:
    assert str(parse_client_address("IPV6:::1")) == "::1"
    assert str(parse_client_address("fe80::1%eth0")) == "fe80::1"
    assert parse_client_address("unknown") is None


def test_header_regex_search_any_case_name() -> None:
    ruleset = one_rule(
        """
        header:
          subject: ["(?i)\\\\bviagra\\\\b", "^\\\\[SPAM\\\\]"]
        """
    )
    assert hits(ruleset, facts(headers=(("Subject", "Buy VIAGRA now"),)))
    assert hits(ruleset, facts(headers=(("SUBJECT", "[SPAM] hi"),)))
    assert not hits(ruleset, facts(headers=(("Subject", "viagrax"),)))
    assert not hits(ruleset, facts(headers=(("X-Subject", "viagra"),)))
    assert not hits(ruleset, facts(headers=()))
    # Any of several headers of the same name.
    assert hits(ruleset, facts(headers=(("Subject", "hi"), ("Subject", "viagra"))))
    cond = ruleset.rules[0].conditions[0]
    assert cond.explain(facts(headers=(("Subject", "Buy VIAGRA"),))) == (
        'header subject "Buy VIAGRA" matches /(?i)\\bviagra\\b/'
    )
    assert cond.explain(facts(headers=())) == "no subject header"
    assert cond.explain(facts(headers=(("Subject", "hi"),))) == (
        "no subject header matches /(?i)\\bviagra\\b/, /^\\[SPAM\\]/"
    )


def test_several_headers_must_all_match() -> None:
    ruleset = one_rule(
        """
        header:
          X-Mailer: "^BulkMail"
          Precedence: "bulk"
        """
    )
    assert hits(ruleset, facts(headers=(("X-Mailer", "BulkMail 3"), ("Precedence", "bulk"))))
    assert not hits(ruleset, facts(headers=(("X-Mailer", "BulkMail 3"),)))


def test_header_regex_is_linear_time() -> None:
    # The classic catastrophic-backtracking pattern: exponential in `re`, linear in RE2. This
    # finishes at once with RE2; with a backtracking engine it would not finish at all.
    ruleset = one_rule('header: {Subject: "^(a+)+$"}')
    assert not hits(ruleset, facts(headers=(("Subject", "a" * 5_000 + "!"),)))


def test_header_regex_handles_non_ascii() -> None:
    ruleset = one_rule('header: {Subject: "(?i)café|число"}')
    assert hits(ruleset, facts(headers=(("Subject", "Un CAFÉ ?"),)))
    assert hits(ruleset, facts(headers=(("Subject", "число"),)))


def test_size_range() -> None:
    ruleset = one_rule("size: {min: 1000, max: 5000}")
    assert not hits(ruleset, facts(size=999))
    assert hits(ruleset, facts(size=1000))
    assert hits(ruleset, facts(size=4999))
    assert not hits(ruleset, facts(size=5000))
    cond = ruleset.rules[0].conditions[0]
    assert cond.explain(facts(size=999)) == "size 999 bytes < 1,000 (min)"
    assert cond.explain(facts(size=5000)) == "size 5,000 bytes >= 5,000 (max)"
    assert cond.explain(facts(size=1234)) == "size 1,234 bytes in [1,000, 5,000)"


def test_description_is_kept() -> None:
    ruleset = rules(
        """
        rules:
          - name: all
            description: everything goes through
            action: deliver
        """
    )
    assert ruleset.rules[0].description == "everything goes through"


# --- validation errors: file, line, expected ---------------------------------------------------

ACTIONS = "deliver, flag, spam_folder, quarantine, reject, tempfail, discard"
CONDITIONS = "all_recipients, client, header, probability, recipient, sender, size, unscored"
ADDRESS_FORMS = '"user@example.com", "@example.com", "example.com", "*@*.example.com", "<>"'
NET_FORMS = '"192.0.2.0/24", "2001:db8::/32", "127.0.0.1"'


def rule_with(condition: str) -> str:
    """A file whose one rule "a" has `condition` under `if:` starting at line 4."""
    body = textwrap.indent(textwrap.dedent(condition).strip(), " " * 6)
    return f"rules:\n  - name: a\n    if:\n{body}\n    action: deliver\n"


ERRORS = [
    # (file text, expected message)
    ("", 'r.yaml: the file is empty; expected a mapping with a "rules" list'),
    ("# nothing but a comment\n", 'r.yaml: the file is empty; expected a mapping with a "rules" list'),
    (
        "- name: a\n  action: deliver\n",
        'r.yaml:1: expected a mapping with a "rules" list at the top, got a list (write "rules:" above it)',
    ),
    ("hello\n", 'r.yaml:1: top level: expected a mapping (key: value), got a string "hello"'),
    ("version: 1\n", 'r.yaml:1: top level: missing key "rules"'),
    ("rules: []\n", "r.yaml:1: rules: the list is empty; expected at least one rule"),
    ("rules:\n", "r.yaml:1: rules: the list is empty; expected at least one rule"),
    ("rules:\n  name: a\n", "r.yaml:1: rules: expected a list, got a mapping"),
    (
        "rules:\n  - {name: a, action: deliver}\nrule: []\n",
        'r.yaml:3: top level: unknown key "rule"; did you mean "rules"? expected one of: rules, version',
    ),
    (
        "version: 2\nrules:\n  - {name: a, action: deliver}\n",
        'r.yaml:1: version: unsupported version "2"; expected 1',
    ),
    ("rules:\n  - spam\n", 'r.yaml:2: rule 1: expected a mapping (key: value), got a string "spam"'),
    ("rules:\n  - action: deliver\n", 'r.yaml:2: rule 1: missing key "name"'),
    ("rules:\n  - name: a\n", 'r.yaml:2: rule "a": missing key "action"'),
    (
        "rules:\n  - name: 12\n    action: deliver\n",
        'r.yaml:2: rule 1: name: expected a string, got an integer "12"',
    ),
    (
        "rules:\n  - name: my rule\n    action: deliver\n",
        'r.yaml:2: rule "my rule": name "my rule" is not allowed; expected at most 64 letters, digits, \'_\','
        " '.' or '-' (it goes into the X-Spam-Status header and the logs)",
    ),
    (
        "rules:\n  - name: a\n    iff: {unscored: true}\n    action: deliver\n",
        'r.yaml:3: rule "a": unknown key "iff"; did you mean "if"? expected one of: action, description, if, name',
    ),
    (
        "rules:\n  - name: a\n    action: spam-folder\n",
        f'r.yaml:3: rule "a": action: unknown value "spam-folder"; did you mean "spam_folder"? expected one of: {ACTIONS}',
    ),
    (
        "rules:\n  - name: a\n    action: 3\n",
        f'r.yaml:3: rule "a": action: unknown value "3"; expected one of: {ACTIONS}',
    ),
    (
        "rules:\n  - name: a\n    if: {unscored: true}\n    action: deliver\n  - name: a\n    action: flag\n",
        'r.yaml:5: rule "a": duplicate rule name (first at line 2); names must be unique',
    ),
    (
        "rules:\n  - name: a\n    action: deliver\n  - name: b\n    action: flag\n",
        'r.yaml:4: rule "b": can never match: rule "a" (line 2) before it matches every message;'
        " move the catch-all rule to the end",
    ),
    (
        "rules:\n  - name: a\n    if: {}\n    action: deliver\n",
        'r.yaml:3: rule "a": "if" is empty; leave "if" out for a rule that matches every message',
    ),
    (
        "rules:\n  - name: a\n    if:\n    action: deliver\n",
        'r.yaml:3: rule "a": "if" is empty; leave "if" out for a rule that matches every message',
    ),
    (
        "rules:\n  - name: a\n    if: [unscored]\n    action: deliver\n",
        'r.yaml:3: rule "a": if: expected a mapping (key: value), got a list',
    ),
    (
        rule_with("probabilty: {min: 0.9}"),
        f'r.yaml:4: rule "a": if: unknown key "probabilty"; did you mean "probability"? expected one of: {CONDITIONS}',
    ),
    (
        rule_with("probability: 0.9"),
        'r.yaml:4: rule "a": probability: expected a mapping like {min: 0.9} or {min: 0.5, max: 0.9},'
        ' got a number "0.9"',
    ),
    (
        rule_with("probability: {}"),
        'r.yaml:4: rule "a": probability: expected a mapping like {min: 0.9} or {min: 0.5, max: 0.9},'
        " got an empty mapping",
    ),
    (
        rule_with("probability: {min: 1.5}"),
        'r.yaml:4: rule "a": probability: min: 1.5 is out of range; expected a number between 0 and 1',
    ),
    (
        rule_with("probability:\n  max: -0.1"),
        'r.yaml:5: rule "a": probability: max: -0.1 is out of range; expected a number between 0 and 1',
    ),
    (
        rule_with("probability: {min: high}"),
        'r.yaml:4: rule "a": probability: min: expected a number, got a string "high"',
    ),
    (
        rule_with("probability: {min: yes}"),
        'r.yaml:4: rule "a": probability: min: expected a number, got a boolean "true"',
    ),
    (
        rule_with("probability: {min: .nan}"),
        'r.yaml:4: rule "a": probability: min: expected a number, got .nan',
    ),
    (
        rule_with("probability:\n  min: 0.9\n  max: 0.5"),
        'r.yaml:6: rule "a": probability: min (0.9) must be less than max (0.5): min is inclusive, max exclusive',
    ),
    (
        rule_with("probability: {min: 0.5, max: 0.5}"),
        'r.yaml:4: rule "a": probability: min (0.5) must be less than max (0.5): min is inclusive, max exclusive',
    ),
    (
        rule_with("probability: {minimum: 0.5}"),
        'r.yaml:4: rule "a": probability: unknown key "minimum"; did you mean "min"? expected one of: max, min',
    ),
    (
        rule_with("unscored: maybe"),
        'r.yaml:4: rule "a": unscored: expected true or false, got a string "maybe"',
    ),
    (
        rule_with("probability: {min: 0.5}\nunscored: true"),
        'r.yaml:5: rule "a": "unscored: true" and "probability" can never both hold',
    ),
    (
        rule_with("sender: 5"),
        f'r.yaml:4: rule "a": sender: expected an address pattern or a list of them ({ADDRESS_FORMS}),'
        ' got an integer "5"',
    ),
    (
        rule_with("sender: []"),
        f'r.yaml:4: rule "a": sender: expected an address pattern or a list of them ({ADDRESS_FORMS}),'
        " got an empty list",
    ),
    (
        rule_with("sender:\n  - ok@example.com\n  - 'a b@c'"),
        f'r.yaml:6: rule "a": sender: "a b@c" is not an address pattern; expected one of the forms {ADDRESS_FORMS}',
    ),
    (
        rule_with("sender: 'bob@'"),
        f'r.yaml:4: rule "a": sender: "bob@" is not an address pattern; expected one of the forms {ADDRESS_FORMS}',
    ),
    (
        rule_with("recipient: 'a@b@c'"),
        f'r.yaml:4: rule "a": recipient: "a@b@c" is not an address pattern; expected one of the forms {ADDRESS_FORMS}',
    ),
    (rule_with("sender: ''"), 'r.yaml:4: rule "a": sender: empty pattern'),
    (
        rule_with("all_recipients: {x: 1}"),
        f'r.yaml:4: rule "a": all_recipients: expected an address pattern or a list of them ({ADDRESS_FORMS}),'
        " got a mapping",
    ),
    (
        rule_with("client: 10.0.0.300/8"),
        'r.yaml:4: rule "a": client: "10.0.0.300/8" is not an IP network: \'10.0.0.300/8\' does not appear'
        f" to be an IPv4 or IPv6 network; expected an IP address or network, or a list of them ({NET_FORMS})",
    ),
    (
        rule_with("client:\n  - 10.0.0.0/8\n  - 10.1.2.3/8"),
        'r.yaml:6: rule "a": client: "10.1.2.3/8" is not an IP network: 10.1.2.3/8 has host bits set'
        f" (did you mean 10.0.0.0/8?); expected an IP address or network, or a list of them ({NET_FORMS})",
    ),
    (
        rule_with("header: Subject"),
        'r.yaml:4: rule "a": header: expected a mapping of header name to regex, like {Subject: "(?i)viagra"},'
        ' got a string "Subject"',
    ),
    (
        rule_with("header:\n  Subject: '(?i)(viagra'"),
        'r.yaml:5: rule "a": header: Subject: invalid regex /(?i)(viagra/: missing ): (?i)(viagra'
        " (RE2 syntax: no lookaround or backreferences)",
    ),
    (
        rule_with("header:\n  Subject:\n    - ok\n    - 'a(?=b)'"),
        'r.yaml:7: rule "a": header: Subject: invalid regex /a(?=b)/: invalid perl operator: (?='
        " (RE2 syntax: no lookaround or backreferences)",
    ),
    (
        rule_with("header:\n  From: '(\\w+)\\1'"),
        'r.yaml:5: rule "a": header: From: invalid regex /(\\w+)\\1/: invalid escape sequence: \\1'
        " (RE2 syntax: no lookaround or backreferences)",
    ),
    (
        rule_with("header:\n  Subject: " + "a" * 1001),
        'r.yaml:5: rule "a": header: Subject: regex is 1,001 characters long; the limit is 1,000',
    ),
    (
        rule_with("header:\n  'Sub ject': x"),
        'r.yaml:5: rule "a": header: "Sub ject" is not a header name; expected printable ASCII without spaces or \':\'',
    ),
    (
        rule_with("header:\n  Subject: 3"),
        'r.yaml:5: rule "a": header: Subject: expected a regex or a list of regexes, got an integer "3"',
    ),
    (rule_with("size: {min: 1.5}"), 'r.yaml:4: rule "a": size: min: expected an integer, got a number "1.5"'),
    (
        rule_with("size: {max: -1}"),
        'r.yaml:4: rule "a": size: max: -1 is out of range; expected an integer at least 0',
    ),
    (
        rule_with("size: 10MB"),
        'r.yaml:4: rule "a": size: expected a mapping like {min: 1000000} or {max: 50000} (bytes), got a string "10MB"',
    ),
]


@pytest.mark.parametrize(("text", "message"), ERRORS, ids=[m.split(": ", 1)[1][:40] for _, m in ERRORS])
def test_rules_file_errors(text: str, message: str) -> None:
    with pytest.raises(RulesError) as info:
        Ruleset.from_yaml_text(text, "r.yaml")
    assert str(info.value) == message


def test_errors_from_a_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(rule_with("probability: {min: 2}"))
    with pytest.raises(RulesError) as info:
        Ruleset.load(path)
    assert str(info.value) == (
        f'{path}:4: rule "a": probability: min: 2 is out of range; expected a number between 0 and 1'
    )
    assert info.value.path == path
    assert info.value.line == 4


def test_action_the_mode_cannot_do_is_refused_naming_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("rules:\n  - name: bad\n    if: {probability: {min: 0.99}}\n    action: reject\n")
    with pytest.raises(RulesError) as info:
        Ruleset.load(path, allowed_actions=actions_for_mode("after-queue"), mode="after-queue")
    assert str(info.value) == (
        f'{path}:4: rule "bad": action "reject" is not possible in after-queue mode;'
        " allowed: deliver, flag, spam_folder, quarantine, tempfail, discard"
    )
    with pytest.raises(RulesError, match=r'action "reject" is not possible here; allowed: deliver, flag$'):
        Ruleset.load(path.parent / "r.yaml", allowed_actions=frozenset({Action.DELIVER, Action.FLAG}))
    assert (
        Ruleset.load(path, allowed_actions=actions_for_mode("before-queue")).rules[0].action == Action.REJECT
    )


def test_modes() -> None:
    assert Action.REJECT not in MODE_ACTIONS["after-queue"]
    assert MODE_ACTIONS["before-queue"] == frozenset(Action)
    with pytest.raises(ValueError, match="unknown mode 'inline'; expected one of: after-queue, before-queue"):
        actions_for_mode("inline")


def test_yaml_bomb_rules_file_is_refused(tmp_path: Path) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{b}: &{b} [{', '.join(['*' + a] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi", strict=True)]
    lines += ["rules:", "  - name: x", "    if: {header: {Subject: *i}}", "    action: deliver"]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(RulesError) as info:
        Ruleset.load(path)
    assert (
        str(info.value)
        == f"{path}:2: invalid YAML: aliases (*a) are not allowed; write the value out in full"
    )


def test_100_mb_rules_file_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as f:
        f.write(b"rules:\n")
        f.truncate(100 * 1024 * 1024)
    with pytest.raises(RulesError) as info:
        Ruleset.load(path)
    assert str(info.value) == f"{path}: file is too large: 104,857,600 bytes; the limit is 1,000,000"


def test_invalid_utf8_rules_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(
        "rules:\n  - name: a\n    if: {header: {Subject: 'café'}}\n    action: flag\n".encode("latin-1")
    )
    with pytest.raises(RulesError) as info:
        Ruleset.load(path)
    assert str(info.value) == f"{path}:3: not valid UTF-8 (byte 0xe9); save the file as UTF-8"


def test_tab_indented_rules_file(tmp_path: Path) -> None:
    path = tmp_path / "tabs.yaml"
    path.write_text("rules:\n\t- name: a\n\t  action: flag\n")
    with pytest.raises(RulesError) as info:
        Ruleset.load(path)
    assert str(info.value).startswith(
        f"{path}:2: invalid YAML: found character '\\t' that cannot start any token"
    )
    assert str(info.value).endswith("(tabs are not allowed for indentation in YAML; use spaces)")


def test_duplicate_key_in_a_rule(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("rules:\n  - name: a\n    action: flag\n    action: deliver\n")
    with pytest.raises(RulesError) as info:
        Ruleset.load(path)
    assert str(info.value) == f'{path}:4: invalid YAML: duplicate key "action" (first at line 3)'


def test_missing_rules_file(tmp_path: Path) -> None:
    with pytest.raises(RulesError) as info:
        Ruleset.load(tmp_path / "nope.yaml")
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}: no such file"


# --- facts from a message ----------------------------------------------------------------------


def test_facts_of_a_message_feed_the_rules() -> None:
    raw = (
        b"From: Bulk <news@bulk.example>\r\nSubject: =?utf-8?q?Gro=C3=9Fe?=\r\n  Rabatte\r\n"
        b"X-Mailer: BulkMail 3\r\n\r\nbody\r\n"
    )
    message = Message(raw, Envelope("news@bulk.example", ("a@x.example", "b@y.example"), "IPv6:2001:db8::5"))
    f = facts_of(message, 0.7)
    assert f.size == len(raw)
    assert f.rcpt_tos == ("a@x.example", "b@y.example")
    ruleset = one_rule(
        """
        sender: "@bulk.example"
        recipient: "*@y.example"
        client: "2001:db8::/32"
        header: {X-Mailer: "^BulkMail", Subject: "Rabatte"}
        """
    )
    d = ruleset.decide(f)
    assert d.rule == "hit", d.reason


def test_headers_are_parsed_only_when_a_rule_reads_them() -> None:
    raw = b"Subject: cheap pills\r\n\r\nbody\r\n"
    message = Message(raw, Envelope("a@x.example", ("b@y.example",)))
    assert one_rule("size: {max: 1000}").decide(facts_of(message, 0.5)).rule == "hit"
    assert "headers" not in message.__dict__  # no header condition: the fields were never parsed
    facts = facts_of(message, 0.5)
    assert one_rule('header: {Subject: "pills"}').decide(facts).rule == "hit"
    assert list(facts.headers) == [("Subject", "cheap pills")] and len(facts.headers) == 1
    assert facts.headers[0] == ("Subject", "cheap pills")
