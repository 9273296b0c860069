"""The request context: what a client may set, and what only the ledger's services may."""

from __future__ import annotations

from ledger import context

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_an_http_client_sets_correlation_and_trace_but_not_the_actor() -> None:
    headers = {"x-correlation-id": "corr-1", "traceparent": TRACEPARENT, "x-actor": "mallory"}

    given = context.from_client_headers(headers)

    assert given.correlation_id == "corr-1"
    assert given.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert given.actor is None
    assert "actor" not in given.as_metadata()


def test_a_service_passes_the_actor_on_over_nats() -> None:
    sent = context.new_context(actor="teller-7")

    received = context.from_headers(sent.as_headers())

    assert received.actor == "teller-7"
    assert received.correlation_id == sent.correlation_id


def test_an_all_zero_trace_or_parent_id_is_not_carried_on() -> None:
    # W3C Trace Context: both are invalid; every client sending them would share one trace.
    zero_trace = f"00-{'0' * 32}-00f067aa0ba902b7-01"
    zero_parent = f"00-4bf92f3577b34da6a3ce929d0e0e4736-{'0' * 16}-01"

    for traceparent in (zero_trace, zero_parent):
        given = context.from_client_headers({"traceparent": traceparent})

        assert given.trace_id != "0" * 32
        assert given.trace_id != "4bf92f3577b34da6a3ce929d0e0e4736"
        assert given.caused_by("e-1").trace_id == given.trace_id
