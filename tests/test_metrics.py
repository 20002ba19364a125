"""The Prometheus endpoint, scraped over real HTTP."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from milter.metrics import Metrics, MetricsServer, start_metrics_server


@pytest.fixture
def served() -> Iterator[tuple[Metrics, MetricsServer]]:
    metrics = Metrics()
    server = start_metrics_server(metrics, "127.0.0.1", 0)
    try:
        yield metrics, server
    finally:
        server.close()


def scrape(server: MetricsServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(server.url, timeout=5) as response:
        assert response.status == 200
        body = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_messages_by_action_and_rule_and_score_histogram(served: tuple[Metrics, MetricsServer]) -> None:
    metrics, server = served
    metrics.message_decided("spam_folder", "spam", 0.97, 0.0004)
    metrics.message_decided("spam_folder", "spam", 0.93, 0.0003)
    metrics.message_decided("deliver", "ham", 0.02, 0.0002)
    metrics.message_decided("deliver", "unscored", None)
    s = scrape(server)
    assert s[("milter_messages_total", (("action", "spam_folder"), ("rule", "spam")))] == 2
    assert s[("milter_messages_total", (("action", "deliver"), ("rule", "ham")))] == 1
    assert s[("milter_messages_total", (("action", "deliver"), ("rule", "unscored")))] == 1
    # Three scored messages; an unscored one has no probability to observe.
    assert s[("milter_score_count", ())] == 3
    assert s[("milter_score_bucket", (("le", "0.9"),))] == 1
    assert s[("milter_score_bucket", (("le", "0.95"),))] == 2
    assert s[("milter_score_sum", ())] == pytest.approx(0.97 + 0.93 + 0.02)
    assert s[("milter_scoring_seconds_count", ())] == 3


def test_relay_latency_and_sessions(served: tuple[Metrics, MetricsServer]) -> None:
    metrics, server = served
    metrics.message_relayed(0.004)
    metrics.message_relayed(0.2)
    for _ in range(3):
        metrics.session_opened()
    metrics.session_closed()
    s = scrape(server)
    assert s[("milter_relay_seconds_count", ())] == 2
    assert s[("milter_relay_seconds_bucket", (("le", "0.005"),))] == 1
    assert s[("milter_sessions_open", ())] == 2


def test_reloads_exist_from_start_and_count(served: tuple[Metrics, MetricsServer]) -> None:
    metrics, server = served
    s = scrape(server)
    for kind in ("rules", "model", "all"):
        for result in ("ok", "failed"):
            assert s[("milter_reloads_total", (("kind", kind), ("result", result)))] == 0
    metrics.reload_done("rules", ok=True)
    metrics.reload_done("model", ok=False)
    metrics.reload_done("model", ok=False)
    s = scrape(server)
    assert s[("milter_reloads_total", (("kind", "rules"), ("result", "ok")))] == 1
    assert s[("milter_reloads_total", (("kind", "model"), ("result", "failed")))] == 2
    with pytest.raises(ValueError, match="unknown reload kind 'modle'"):
        metrics.reload_done("modle", ok=True)


def test_active_model_is_one_series(served: tuple[Metrics, MetricsServer]) -> None:
    metrics, server = served
    metrics.policy_active("spam-2026-01", 0.12, 3)
    metrics.policy_active("spam-2026-02", 0.25, 4)
    s = scrape(server)
    infos = {k: v for k, v in s.items() if k[0] == "milter_model_info"}
    assert infos == {("milter_model_info", (("model_id", "spam-2026-02"),)): 1}
    assert s[("milter_model_load_seconds", ())] == 0.25
    assert s[("milter_rules", ())] == 4


def test_registries_are_private() -> None:
    a, b = Metrics(), Metrics()
    a.message_decided("deliver", "ham", 0.1)
    assert b.registry.get_sample_value("milter_messages_total", {"action": "deliver", "rule": "ham"}) is None
    assert a.registry.get_sample_value("milter_messages_total", {"action": "deliver", "rule": "ham"}) == 1


def test_close_frees_the_port() -> None:
    metrics = Metrics()
    server = start_metrics_server(metrics, "127.0.0.1", 0)
    port = server.port
    server.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_port_in_use_is_an_oserror(served: tuple[Metrics, MetricsServer]) -> None:
    _, server = served
    with pytest.raises(OSError):
        start_metrics_server(Metrics(), "127.0.0.1", server.port)
