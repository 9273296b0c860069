"""Prometheus metrics of every service, in one registry served at `/metrics`."""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY: Final = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS_S: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

http_request_seconds: Final = Histogram(
    "ledger_http_request_seconds",
    "HTTP request latency by route, method and status.",
    ["route", "method", "status"],
    buckets=_LATENCY_BUCKETS_S,
    registry=REGISTRY,
)
relay_published_events: Final = Counter(
    "ledger_relay_published_events_total",
    "Events the relay published to JetStream and saw acknowledged.",
    ["service"],
    registry=REGISTRY,
)
relay_lag_events: Final = Gauge(
    "ledger_relay_lag_events",
    "Committed events not yet acknowledged by JetStream.",
    ["service"],
    registry=REGISTRY,
)
relay_lag_seconds: Final = Gauge(
    "ledger_relay_lag_seconds",
    "Age of the oldest event the relay published in its last batch, at acknowledgement.",
    ["service"],
    registry=REGISTRY,
)
consumer_handled_messages: Final = Counter(
    "ledger_consumer_handled_messages_total",
    "Messages a durable consumer handled, by outcome (applied, duplicate, failed, dead_lettered).",
    ["consumer", "outcome"],
    registry=REGISTRY,
)
consumer_redeliveries: Final = Counter(
    "ledger_consumer_redeliveries_total",
    "Messages that arrived more than once.",
    ["consumer"],
    registry=REGISTRY,
)
consumer_lag_messages: Final = Gauge(
    "ledger_consumer_lag_messages",
    "Messages waiting for a durable consumer in its stream.",
    ["consumer"],
    registry=REGISTRY,
)
command_seconds: Final = Histogram(
    "ledger_command_seconds",
    "Time to handle a command, by endpoint and outcome (ok, refused, error, replayed).",
    ["endpoint", "outcome"],
    buckets=_LATENCY_BUCKETS_S,
    registry=REGISTRY,
)
commands_per_commit: Final = Histogram(
    "ledger_commands_per_commit",
    "Commands a participant decided and recorded in one transaction, by endpoint.",
    ["endpoint"],
    buckets=(1, 2, 4, 8, 16, 32, 64),
    registry=REGISTRY,
)
saga_records_per_commit: Final = Histogram(
    "ledger_saga_records_per_commit",
    "Saga records (one saga's events each) written by one transaction of the saga log.",
    buckets=(1, 2, 4, 8, 16, 32, 64),
    registry=REGISTRY,
)
background_task_up: Final = Gauge(
    "ledger_background_task_up",
    "1 while a background task (relay, consumer) runs, 0 while it waits to restart or ended.",
    ["task"],
    registry=REGISTRY,
)
