"""What an audit finds: a break of the store's rules, located by service, stream and version."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from eventstore import ChainBreak


@dataclass(frozen=True, slots=True)
class Finding:
    """One break: where (service, stream, version; no stream for a ledger-wide total), which
    rule (`check`) and why, in words a person can act on."""

    service: str
    stream_id: str | None
    stream_version: int | None
    check: str
    reason: str

    @property
    def place(self) -> str:
        """`account-42 version 3`, or the service when the break has no single stream."""
        if self.stream_id is None:
            return f"service {self.service}"
        if self.stream_version is None:
            return self.stream_id
        return f"{self.stream_id} version {self.stream_version}"

    def as_json(self) -> dict[str, Any]:
        """The finding as a JSON object."""
        return asdict(self)


def chain_finding(service: str, chain_break: ChainBreak) -> Finding:
    """A break of the hash chain; a missing version is a break of gap-free versions."""
    check = "versions" if "version missing" in chain_break.reason else "chain"
    return Finding(service, chain_break.stream_id, chain_break.stream_version, check,
                   chain_break.reason)  # fmt: skip
