"""Prometheus metrics: what the filter did, how fast, and which policy it did it with.

Everything lives in a private CollectorRegistry owned by one `Metrics` object, so tests (and
several daemons in one process) never share counters, and the endpoint shows only milter's
series. The HTTP endpoint is opt-in (`start_metrics_server`), and is meant for loopback
(`127.0.0.1:9125`): it has no authentication.

Series (all prefixed `milter_`):

- `messages_total{action, rule}`        messages decided, by the action taken and the rule that chose it
- `score`                               histogram of spam probabilities (unscored messages are not observed)
- `scoring_seconds`                     histogram: message -> text -> probability -> decision
- `relay_seconds`                       histogram: handing the message to the next hop
- `reloads_total{kind, result}`         reloads by kind (`rules`, `model`, `all`) and result (`ok`, `failed`)
- `model_info{model_id}`                1 for the active model, 0 for none (one series at a time)
- `model_load_seconds`                  how long the active model took to load and validate
- `rules`                               number of rules in the active ruleset
- `sessions_open`                       SMTP sessions currently open
- `shadow_messages_total{action, live_action}`  messages the shadow model scored: the action it
                                        would have taken and the one taken
- `shadow_disagreements_total`          of those, where the two actions differ (each one is logged)
- `shadow_agreement_ratio`              share of agreeing actions since the shadow model went live
- `shadow_errors_total`                 shadow scorings that failed (the message unaffected)
- `shadow_model_info{model_id}`         1 for the shadow model scoring (no series: none yet)
- `retrain_runs_total{result}`          `milter retrain` runs (written, refused, not_enough_feedback)
- `retrain_refusals_total{reason}`      the gate's refusals by reason
- `retrain_last_run_timestamp_seconds`  when the last run ended; `retrain_last_passed`: 1 if it wrote a model

The retrain series come from the file `milter retrain` keeps (config key retrain_state, see
milter.retrain_state), read at each scrape: it runs as a process of its own, from a timer.
- `history_dropped_total`               decisions the console's history dropped (its writer fell behind)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from milter import retrain_state

RELOAD_KINDS = ("rules", "model", "shadow", "all")

# Probabilities: fine near the rule thresholds people use (0.5, 0.9) and at the ends.
SCORE_BUCKETS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
# Scoring is in-process: tens of microseconds to a few milliseconds.
SCORING_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
# Relaying is a network round trip to the next hop: milliseconds to its timeout.
RELAY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The daemon's metrics, in a registry of their own; every method is thread-safe."""

    def __init__(self, registry: CollectorRegistry | None = None, retrain_state: Path | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages = Counter(
            "milter_messages", "Messages decided, by action and rule.", ("action", "rule"), registry=r
        )
        self.score = Histogram(
            "milter_score", "Spam probability of scored messages.", buckets=SCORE_BUCKETS, registry=r
        )
        self.scoring_seconds = Histogram(
            "milter_scoring_seconds",
            "Time to decide a message: text extraction, scoring and rules.",
            buckets=SCORING_BUCKETS,
            registry=r,
        )
        self.relay_seconds = Histogram(
            "milter_relay_seconds",
            "Time for the next hop to accept (or refuse) a message.",
            buckets=RELAY_BUCKETS,
            registry=r,
        )
        self.reloads = Counter(
            "milter_reloads", "Policy reloads, by kind and result.", ("kind", "result"), registry=r
        )
        for kind in RELOAD_KINDS:  # every series exists from the start, so rate() works at once
            for result in ("ok", "failed"):
                self.reloads.labels(kind, result)
        self.model_info = Gauge(
            "milter_model_info", "The active model (1) by its id.", ("model_id",), registry=r
        )
        self.model_load_seconds = Gauge(
            "milter_model_load_seconds", "Seconds the active model took to load and validate.", registry=r
        )
        self.rules = Gauge("milter_rules", "Rules in the active ruleset.", registry=r)
        self.sessions_open = Gauge("milter_sessions_open", "SMTP sessions currently open.", registry=r)
        self.history_dropped = Counter(
            "milter_history_dropped",
            "Decisions the history dropped: its writer fell behind.",
            registry=r,
        )
        self._model_lock = threading.Lock()
        self._model_id: str | None = None
        self.shadow_messages = Counter(
            "milter_shadow_messages",
            "Messages the shadow model scored, by the action it would have taken and the one taken.",
            ("action", "live_action"),
            registry=r,
        )
        self.shadow_disagreements = Counter(
            "milter_shadow_disagreements", "Messages where the shadow model's action differs.", registry=r
        )
        self.shadow_errors = Counter(
            "milter_shadow_errors", "Shadow scorings that failed (the message was not affected).", registry=r
        )
        self.shadow_agreement = Gauge(
            "milter_shadow_agreement_ratio",
            "Share of messages where the shadow model's action agrees, since it went live.",
            registry=r,
        )
        self.shadow_info = Gauge(
            "milter_shadow_model_info", "The shadow model (1) by its id.", ("model_id",), registry=r
        )
        self._shadow_id: str | None = None
        self._shadow_counts = [0, 0]  # scored, agreed: for the ratio of the current shadow model
        if retrain_state is not None:
            r.register(RetrainCollector(retrain_state))

    def message_decided(
        self,
        action: str,
        rule: str,
        probability: float | None,
        scoring_seconds: float | None = None,
    ) -> None:
        """Count one message's decision (probability None: unscored)."""
        self.messages.labels(action, rule).inc()
        if probability is not None:
            self.score.observe(probability)
        if scoring_seconds is not None:
            self.scoring_seconds.observe(scoring_seconds)

    def message_relayed(self, seconds: float) -> None:
        self.relay_seconds.observe(seconds)

    def reload_done(self, kind: str, ok: bool) -> None:
        """Count a reload of `kind` (one of RELOAD_KINDS) that succeeded or was refused."""
        if kind not in RELOAD_KINDS:
            raise ValueError(f"unknown reload kind {kind!r}; expected one of {', '.join(RELOAD_KINDS)}")
        self.reloads.labels(kind, "ok" if ok else "failed").inc()

    def policy_active(self, model_id: str, load_seconds: float | None, rule_count: int) -> None:
        """Record the policy now serving: its model (one series only) and rule count."""
        with self._model_lock:
            if self._model_id is not None and self._model_id != model_id:
                self.model_info.remove(self._model_id)
            self._model_id = model_id
            self.model_info.labels(model_id).set(1)
        if load_seconds is not None:
            self.model_load_seconds.set(load_seconds)
        self.rules.set(rule_count)

    def shadow_scored(self, model_id: str, action: str, live_action: str, agree: bool) -> None:
        """Count one message the shadow model `model_id` scored."""
        self.shadow_messages.labels(action, live_action).inc()
        if not agree:
            self.shadow_disagreements.inc()
        with self._model_lock:
            if model_id != self._shadow_id:
                if self._shadow_id is not None:
                    self.shadow_info.remove(self._shadow_id)
                self._shadow_id, self._shadow_counts = model_id, [0, 0]
                self.shadow_info.labels(model_id).set(1)
            self._shadow_counts[0] += 1
            self._shadow_counts[1] += agree
            self.shadow_agreement.set(self._shadow_counts[1] / self._shadow_counts[0])

    def shadow_failed(self) -> None:
        self.shadow_errors.inc()

    def session_opened(self) -> None:
        self.sessions_open.inc()

    def session_closed(self) -> None:
        self.sessions_open.dec()


class RetrainCollector(Collector):
    """The retrain series, read from `milter retrain`'s record file at each scrape."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        state = retrain_state.read(self.path)
        runs = CounterMetricFamily(
            "milter_retrain_runs", "milter retrain runs, by result.", labels=["result"]
        )
        for result in sorted(state["runs"]):
            runs.add_metric([result], state["runs"][result])
        yield runs
        refusals = CounterMetricFamily(
            "milter_retrain_refusals", "Candidates the gate refused, by reason.", labels=["reason"]
        )
        for reason in sorted(state["refusals"]):
            refusals.add_metric([reason], state["refusals"][reason])
        yield refusals
        last = state["last"]
        if isinstance(last, dict) and isinstance(last.get("time"), int | float):
            yield GaugeMetricFamily(
                "milter_retrain_last_run_timestamp_seconds",
                "When the last milter retrain run ended (Unix time).",
                value=float(last["time"]),
            )
            yield GaugeMetricFamily(
                "milter_retrain_last_passed",
                "1 if the last milter retrain run wrote a model, else 0.",
                value=1.0 if last.get("result") == "written" else 0.0,
            )


@dataclass
class MetricsServer:
    """A running metrics endpoint; `close()` stops it and frees the port."""

    host: str
    port: int
    _httpd: WSGIServer
    _thread: threading.Thread

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)


def start_metrics_server(metrics: Metrics, host: str = "127.0.0.1", port: int = 9125) -> MetricsServer:
    """Serve `metrics` over HTTP at http://host:port/metrics from a daemon thread.

    Port 0 picks a free port (see `.port`). Raises OSError if the address cannot be bound.
    """
    httpd, thread = start_http_server(port, addr=host, registry=metrics.registry)
    return MetricsServer(host, int(httpd.server_port), httpd, thread)
