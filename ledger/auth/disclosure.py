"""What a reader may learn of who did what: the request identity in an event's metadata.

An event's metadata names the request that caused it: its actor (a token's subject), its
correlation id (which the client may choose), its trace context and causation. The audit
trail keeps all of it, and a reader bound to no owner (the back office, auditors) reads all
of it. A token bound to an owner reads it only for events its own subject caused: on the
payee's account, the events of a transfer name the payer's token, and a customer must not
learn another's identity, nor the back office's, from its own account (docs/auth.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from ledger.auth.scopes import Principal

NAMELESS_METADATA: Final = frozenset({"schema_version"})
"""Metadata that tells no one's identity (the event's shape, `eventstore.upcasting`): shown to
every reader. A key not listed here is withheld from foreign events, so a key added later
stays private until someone decides otherwise."""


def metadata_for(reader: Principal, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The part of an event's `metadata` that `reader` may see: all of it, unless the reader
    is bound to an owner and the event's actor is not the reader's own subject; then only the
    `NAMELESS_METADATA`."""
    if reader.owner is None or metadata.get("actor") == reader.subject:
        return dict(metadata)
    return {key: value for key, value in metadata.items() if key in NAMELESS_METADATA}
