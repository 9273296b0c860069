"""The request context that travels with a transfer: correlation, causation, trace, actor.

HTTP headers, NATS headers and event metadata all carry the same four values, so one
transfer is one trace across every service. The W3C `traceparent` header is the trace
context (the format OpenTelemetry propagates); spans are not recorded here.
"""

from __future__ import annotations

import contextvars
import re
import secrets
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Final

CORRELATION_HEADER: Final = "X-Correlation-Id"
CAUSATION_HEADER: Final = "X-Causation-Id"
TRACEPARENT_HEADER: Final = "traceparent"
ACTOR_HEADER: Final = "X-Actor"

_TRACEPARENT: Final = re.compile(
    r"^00-(?!0{32}-)([0-9a-f]{32})-(?!0{16}-)([0-9a-f]{16})-([0-9a-f]{2})$"
)
"""Version 00 of W3C Trace Context; an all-zero trace id or parent id is invalid there, and a
receiver must start a trace of its own rather than carry it on."""
_MAX_ID_LENGTH: Final = 128


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Who asked, on behalf of which chain of causes, under which trace."""

    correlation_id: str
    causation_id: str | None
    traceparent: str
    actor: str | None = None

    @property
    def trace_id(self) -> str:
        """The trace id part of the traceparent."""
        return self.traceparent.split("-")[1]

    def as_headers(self) -> dict[str, str]:
        """Headers for an outgoing HTTP request or NATS message."""
        headers = {CORRELATION_HEADER: self.correlation_id, TRACEPARENT_HEADER: self.traceparent}
        if self.causation_id:
            headers[CAUSATION_HEADER] = self.causation_id
        if self.actor:
            headers[ACTOR_HEADER] = self.actor
        return headers

    def as_metadata(self) -> dict[str, Any]:
        """Metadata for an event appended in this context."""
        metadata: dict[str, Any] = {
            "correlation_id": self.correlation_id,
            "traceparent": self.traceparent,
        }
        if self.causation_id:
            metadata["causation_id"] = self.causation_id
        if self.actor:
            metadata["actor"] = self.actor
        return metadata

    def caused_by(self, cause_id: str) -> RequestContext:
        """The context of work caused by `cause_id` (an event or command id), in a new span."""
        return replace(self, causation_id=cause_id, traceparent=_child_span(self.traceparent))


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "ledger_request_context", default=None
)


def new_context(actor: str | None = None) -> RequestContext:
    """A context for work that starts here: a fresh correlation id and trace."""
    traceparent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
    return RequestContext(str(uuid.uuid4()), None, traceparent, actor)


def from_headers(headers: Mapping[str, str] | None) -> RequestContext:
    """The context carried by incoming headers (case-insensitive), completed where missing.

    For headers from the ledger's own services (NATS), which may carry the actor; an HTTP
    client's headers go through `from_client_headers`.
    """
    lowered = {key.lower(): value for key, value in (headers or {}).items()}
    fresh = new_context(_bounded(lowered.get(ACTOR_HEADER.lower())))
    given_trace = lowered.get(TRACEPARENT_HEADER, "")
    is_traced = _TRACEPARENT.match(given_trace) is not None
    return RequestContext(
        correlation_id=_bounded(lowered.get(CORRELATION_HEADER.lower())) or fresh.correlation_id,
        causation_id=_bounded(lowered.get(CAUSATION_HEADER.lower())),
        traceparent=_child_span(given_trace) if is_traced else fresh.traceparent,
        actor=fresh.actor,
    )


def from_client_headers(headers: Mapping[str, str] | None) -> RequestContext:
    """The context of a request from outside (HTTP): as `from_headers`, but with no actor.

    A client's `X-Actor` is a claim, not an identity; authentication sets the actor. Only
    the ledger's own services, over NATS, are trusted to pass it on.
    """
    return replace(from_headers(headers), actor=None)


def from_metadata(metadata: Mapping[str, Any], event_id: str) -> RequestContext:
    """The context in which to handle an event: its correlation and actor (whoever asked for
    what follows from it), caused by the event itself."""
    headers = {
        CORRELATION_HEADER: str(metadata.get("correlation_id", "")),
        TRACEPARENT_HEADER: str(metadata.get("traceparent", "")),
        ACTOR_HEADER: str(metadata.get("actor") or ""),
    }
    return from_headers(headers).caused_by(event_id)


def current() -> RequestContext:
    """The context of the work in progress (a fresh one outside any)."""
    return _current.get() or new_context()


def bound_context() -> RequestContext | None:
    """The context bound by the caller, if any (logs use it; they invent none)."""
    return _current.get()


@contextmanager
def bound(context: RequestContext) -> Iterator[RequestContext]:
    """Make `context` current for the block (logs and outgoing messages pick it up)."""
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


def _child_span(traceparent: str) -> str:
    match = _TRACEPARENT.match(traceparent)
    assert match is not None, "only a valid traceparent has children"
    return f"00-{match[1]}-{secrets.token_hex(8)}-{match[3]}"


def _bounded(value: str | None) -> str | None:
    if not value:
        return None
    return value[:_MAX_ID_LENGTH]
