"""The gate: a candidate model goes live only when it has proved itself against the live one.

`milter retrain` fits a candidate on all but the latest part of the feedback store and holds
that part back (the latest HOLD_BACK of each label by the time taught: what the site's users
said most recently, which the candidate never saw). The gate then refuses it, with each reason:

- **not enough feedback**: fewer than MIN_PER_LABEL messages of either label in the store;
- **labels flipped**: the live model is sure of the other label (p >= 0.99 against it) for at
  least a third of the store's ham and a third of its spam: a real teacher corrects some of
  its verdicts, and mostly those it was unsure of; a teacher with the labels the wrong way
  round contradicts it everywhere, and surest where it is surest;
- **one user moving everything into Junk**: with several users in the store, one of them taught
  most of its spam, (nearly) nothing but spam, and the live model calls most of that ham;
- **worse on held-back feedback**: it makes more mistakes there than the live model does, by
  the rules' actions (ham in a spam action, spam not), and either a sign test on the messages
  the two decide differently says it is no chance or its log loss is higher too; or it makes
  as many with a log loss higher by more than LOG_LOSS_SLACK;
- **junks more of the site's ham**: more held-back ham in a spam action than the live model;
- **a broken teacher**: it moves a built-in message (CANARIES, written here: obvious spam,
  plain personal and work mail) to the other side where the live model has it right: feedback
  with its labels flipped teaches exactly that.

Everything here is a pure function of the scores and the messages; `milter retrain` does the
scoring and the writing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from milter import retrain_state
from milter.feedback import Feedback
from milter.message import Message
from milter.policy import SPAM_ACTIONS
from milter.rules import Decision, Facts, facts_of

HOLD_BACK = 0.2  # the latest fifth of each label is held back
# Messages of each label the store needs before a retrain is tried: fewer say nothing (two held
# back); the gate's other checks stand whatever the size. A few hundred is where it pays.
MIN_PER_LABEL = 10
# One user "moving everything into Junk": taught more than this share of the store's spam...
POISON_SHARE = 0.5
POISON_SPAM_RATE = 0.95  # ... nearly all of it spam ...
POISON_DISPUTED = 0.5  # ... and the live model calls at least this share of it ham (p < 0.5)
POISON_MIN = 20  # messages a user must have taught before the check looks at them
# As many mistakes and a log loss higher by more than this (nats per message) is worse; less is
# noise: on held-back mail both models get right, a few thousandths either way mean nothing.
LOG_LOSS_SLACK = 0.02
# More mistakes on held-back mail is "worse" when a sign test on the messages the two models
# decide differently says so at this level (5 lost of 5, 7 of 8, ...), or the log loss is higher
# too: on a few dozen held-back messages one or two more spam missed is chance, not evidence,
# and must not keep back a model that takes the site's wanted mail out of Junk.
SIGNIFICANCE = 0.05
SURE = 0.99  # the live model is "sure" of a message past this (or below 1 - SURE)
FLIPPED_SHARE = 1 / 3  # labels flipped: it is sure of the other label for this share of both

REASONS = retrain_state.REASONS

Decide = Callable[[Facts], Decision]


def split(messages: Sequence[Feedback]) -> tuple[list[Feedback], list[Feedback]]:
    """(trained, held back): the latest HOLD_BACK of each label (at least one where there are
    two or more) is held back; `messages` are in the store's order (oldest taught first)."""
    held: set[int] = set()
    for label in ("ham", "spam"):
        ids = [m.id for m in messages if m.label == label]
        count = min(len(ids) - 1, max(1, round(len(ids) * HOLD_BACK))) if len(ids) > 1 else 0
        held.update(ids[len(ids) - count :] if count else [])
    return [m for m in messages if m.id not in held], [m for m in messages if m.id in held]


@dataclass(frozen=True)
class Refusal:
    reason: str  # one of REASONS: the metrics label
    text: str  # what the log and the admin read


@dataclass
class Report:
    """The gate's verdict and the figures behind it (kept in the candidate's metadata)."""

    refusals: list[Refusal] = field(default_factory=list)
    figures: dict[str, object] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.refusals

    def as_dict(self) -> dict[str, object]:
        return {
            "passed": self.passed,
            "refused": [{"reason": r.reason, "text": r.text} for r in self.refusals],
            **self.figures,
        }


def enough(messages: Sequence[Feedback]) -> Refusal | None:
    ham = sum(m.label == "ham" for m in messages)
    spam = len(messages) - ham
    if ham >= MIN_PER_LABEL and spam >= MIN_PER_LABEL:
        return None
    return Refusal(
        "not_enough_feedback",
        f"not enough feedback yet: {ham} ham and {spam} spam in the store; a retrain needs at "
        f"least {MIN_PER_LABEL} of each",
    )


def flipped(messages: Sequence[Feedback], live: Sequence[float]) -> Refusal | None:
    """The live model sure of the other label for much of both kinds: labels flipped."""
    ham = [p for m, p in zip(messages, live, strict=True) if m.label == "ham"]
    spam = [p for m, p in zip(messages, live, strict=True) if m.label == "spam"]
    sure_spam = sum(p >= SURE for p in ham)
    sure_ham = sum(p <= 1 - SURE for p in spam)
    if not ham or not spam or sure_spam < FLIPPED_SHARE * len(ham) or sure_ham < FLIPPED_SHARE * len(spam):
        return None
    return Refusal(
        "labels_flipped",
        f"the feedback looks flipped: the live model is sure the other way (p >= {SURE} against "
        f"the label) of {sure_spam} of the {len(ham)} ham and {sure_ham} of the {len(spam)} spam; "
        "a teacher corrects some verdicts, not most of both kinds (check how the store was filled: "
        "milter learn --stats)",
    )


def one_user(messages: Sequence[Feedback], live: Sequence[float]) -> Refusal | None:
    """One user among several who taught most of the spam, nearly only spam, that the live
    model mostly calls ham: what one user moving everything into Junk looks like."""
    users = {m.user for m in messages}
    if len(users) < 2:
        return None  # one mailbox: its owner's judgement is the site's
    spam_total = sum(m.label == "spam" for m in messages)
    for user in sorted(users, key=lambda u: (u is None, u or "")):
        mine = [(m, p) for m, p in zip(messages, live, strict=True) if m.user == user]
        spam = [p for m, p in mine if m.label == "spam"]
        if len(mine) < POISON_MIN or not spam:
            continue
        disputed = sum(p < 0.5 for p in spam)
        if (
            len(spam) > POISON_SHARE * spam_total
            and len(spam) >= POISON_SPAM_RATE * len(mine)
            and disputed >= POISON_DISPUTED * len(spam)
        ):
            who = f"user {user!r}" if user is not None else "an unknown user"
            return Refusal(
                "one_user",
                f"the feedback looks poisoned: {who} taught {len(spam)} of the store's {spam_total} "
                f"spam and {len(mine) - len(spam)} ham, and the live model calls {disputed} of those "
                "spam ham (p < 0.5): it looks like one user moving everything into Junk; check "
                "their labels (milter learn --stats) or leave them out (--exclude-user)",
            )
    return None


@dataclass(frozen=True)
class Side:
    """One model on the held-back feedback."""

    ham_junked: int  # held-back ham the rules would put in a spam action
    spam_missed: int  # held-back spam they would not
    log_loss: float
    wrong: tuple[bool, ...] = ()  # per held-back message: a mistake by the rules' action

    @property
    def errors(self) -> int:
        return self.ham_junked + self.spam_missed

    def as_dict(self) -> dict[str, object]:
        return {
            "ham_junked": self.ham_junked,
            "spam_missed": self.spam_missed,
            "errors": self.errors,
            "log_loss": round(self.log_loss, 5),
        }


def side(held: Sequence[Feedback], probabilities: Sequence[float], decide: Decide) -> Side:
    ham_junked = spam_missed = 0
    loss = 0.0
    wrong = []
    for message, p in zip(held, probabilities, strict=True):
        junked = decide(facts_of(Message(message.raw), p)).action in SPAM_ACTIONS
        spam = message.label == "spam"
        ham_junked += not spam and junked
        spam_missed += spam and not junked
        wrong.append(junked != spam)
        q = min(max(p, 1e-7), 1 - 1e-7)
        loss -= math.log(q if spam else 1 - q)
    return Side(ham_junked, spam_missed, loss / max(1, len(held)), tuple(wrong))


def sign_test(worse: int, better: int) -> float:
    """One-sided sign test: the chance of at least `worse` of the `worse + better` messages on
    which two models disagree going against the candidate if neither model were better."""
    n = worse + better
    return sum(math.comb(n, k) for k in range(worse, n + 1)) / 2**n if n else 1.0


def worse(live: Side, candidate: Side) -> bool:
    """More mistakes than chance allows (the sign test below SIGNIFICANCE), or more mistakes with
    a higher log loss, or as many with a log loss higher by more than LOG_LOSS_SLACK."""
    higher_loss = candidate.log_loss > live.log_loss + LOG_LOSS_SLACK
    if candidate.errors == live.errors:
        return higher_loss
    if candidate.errors < live.errors:
        return False
    lost = sum(c and not w for w, c in zip(live.wrong, candidate.wrong, strict=True))
    won = sum(w and not c for w, c in zip(live.wrong, candidate.wrong, strict=True))
    return higher_loss or sign_test(lost, won) < SIGNIFICANCE


def compare(held: Sequence[Feedback], live: Side, candidate: Side) -> list[Refusal]:
    refusals = []
    ham = sum(m.label == "ham" for m in held)
    if worse(live, candidate):
        refusals.append(
            Refusal(
                "worse",
                f"worse than the live model on the {len(held)} held-back messages: {candidate.errors} "
                f"mistakes (log loss {candidate.log_loss:.4f}) against {live.errors} "
                f"({live.log_loss:.4f})",
            )
        )
    if candidate.ham_junked > live.ham_junked:
        refusals.append(
            Refusal(
                "junks_more_ham",
                f"junks more of the site's ham: {candidate.ham_junked} of {ham} held-back ham in a "
                f"spam action, against {live.ham_junked} with the live model",
            )
        )
    return refusals


@dataclass(frozen=True)
class Canary:
    """A built-in message whose side no feedback should change."""

    name: str
    label: str  # "spam" or "ham"
    raw: bytes


def _message(sender: str, subject: str, body: str, html: bool = False) -> bytes:
    kind = "text/html" if html else "text/plain"
    return (
        f"From: {sender}\r\nTo: user@example.net\r\nSubject: {subject}\r\n"
        "Date: Tue, 4 Mar 2025 09:30:00 +0000\r\nMessage-ID: <canary@example.org>\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: {kind}; charset=utf-8\r\n\r\n{body}\r\n"
    ).encode()


# Written here, never taken from any corpus: what every model should keep on its side.
CANARIES: tuple[Canary, ...] = (
    Canary("lottery", "spam", _message(
        '"Claims Dept" <claims@winner-notice.example.ru>', "YOU HAVE WON $1,500,000.00 !!!",
        "<html><body><p>CONGRATULATIONS!!! Your email address has WON the international lottery."
        " To claim your prize of ONE MILLION FIVE HUNDRED THOUSAND DOLLARS send your full name,"
        " address and bank account details. <a href='http://claims.winner-notice.example.ru/'>"
        "CLICK HERE TO CLAIM NOW</a></p></body></html>", html=True)),
    Canary("pharmacy", "spam", _message(
        '"Online Pharmacy" <sales@cheap-meds.example.cn>', "Cheap viagra cialis no prescription",
        "<html><body><b>Buy viagra, cialis, xanax online</b> - lowest prices, no prescription"
        " needed, discreet shipping worldwide! 80% OFF today only."
        " <a href='http://cheap-meds.example.cn/buy'>ORDER NOW</a></body></html>", html=True)),
    Canary("phishing", "spam", _message(
        '"PayPal Security" <service@paypal-verify.example.com>', "Your account has been suspended",
        "<html><body>Dear Customer, we detected unusual activity and your account has been"
        " suspended. Verify your identity within 24 hours or your account will be closed:"
        " <a href='http://paypal-verify.example.com/login'>https://www.paypal.com/verify</a>"
        "</body></html>", html=True)),
    Canary("money", "spam", _message(
        '"Dr. James Okoro" <barrister.okoro@example.ng>', "URGENT BUSINESS PROPOSAL",
        "Dear Friend, I am a barrister and I need your assistance to transfer the sum of"
        " US$25,000,000 (twenty five million dollars) from a dormant account. You will receive"
        " 30% of the funds. Reply with your bank details and phone number. Strictly confidential.")),
    Canary("lunch", "ham", _message(
        "Alice Example <alice@example.org>", "lunch on friday?",
        "Hi Bob,\r\n\r\nare we still on for lunch on Friday? I can book the usual place for 12:30."
        "\r\n\r\nAlice")),
    Canary("review", "ham", _message(
        "Carol Dev <carol@example.org>", "Re: patch review for the parser",
        "Thanks for the patch. I left two comments on the error handling in the review; the"
        " tests pass on my machine. Could you rebase on the release branch before Monday?\r\n\r\n"
        "Carol")),
    Canary("meeting", "ham", _message(
        "Dave Manager <dave@example.org>", "agenda for tomorrow's team meeting",
        "Hi all,\r\n\r\nfor tomorrow's meeting: the budget for next quarter, the project schedule"
        " and the draft report. Please send your notes before the call.\r\n\r\nThanks,\r\nDave")),
    Canary("family", "ham", _message(
        "Mum <mum@example.net>", "Sunday",
        "Hello love, are you and the kids coming over on Sunday? Dad wants to make his roast."
        " Let me know so I can get everything in on Saturday. Love, Mum")),
)  # fmt: skip


def canaries(
    live: Sequence[float], candidate: Sequence[float], decide: Decide
) -> tuple[list[Refusal], dict[str, object]]:
    """Refuse a candidate that moves a canary the live model has right to the other side."""
    moved = []
    right = 0
    for canary, p_live, p_candidate in zip(CANARIES, live, candidate, strict=True):
        message = Message(canary.raw)
        spam = canary.label == "spam"
        live_right = (decide(facts_of(message, p_live)).action in SPAM_ACTIONS) == spam
        if not live_right:
            continue
        right += 1
        action = decide(facts_of(message, p_candidate)).action
        if (action in SPAM_ACTIONS) != spam:
            moved.append(f"{canary.name} ({canary.label}: {action}, p {p_candidate:.3f}; live {p_live:.3f})")
    figures: dict[str, object] = {"checked": right, "moved": len(moved)}
    if not moved:
        return [], figures
    return [
        Refusal(
            "broken_teacher",
            "the feedback looks like a broken teacher (labels flipped?): the candidate moves "
            f"built-in message(s) the live model has right to the other side: {'; '.join(moved)}",
        )
    ], figures


def verdict(
    held: Sequence[Feedback],
    live_held: Sequence[float],
    candidate_held: Sequence[float],
    live_canaries: Sequence[float],
    candidate_canaries: Sequence[float],
    decide: Decide,
) -> Report:
    """The gate on a fitted candidate (the store-level checks, `enough` and `one_user`, come
    before fitting)."""
    report = Report()
    live, candidate = side(held, live_held, decide), side(held, candidate_held, decide)
    report.refusals += compare(held, live, candidate)
    refusals, canary_figures = canaries(live_canaries, candidate_canaries, decide)
    report.refusals += refusals
    report.figures = {
        "held_back": {
            "ham": sum(m.label == "ham" for m in held),
            "spam": sum(m.label == "spam" for m in held),
            "live": live.as_dict(),
            "candidate": candidate.as_dict(),
        },
        "canaries": canary_figures,
    }
    return report
