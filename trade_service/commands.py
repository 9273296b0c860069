"""The trade service's saga commands over NATS: complete, reject or fail a settlement.

    register_commands(service)   # subjects <service name>.complete, .reject, .fail

Each endpoint decides the commands that queued up while its last batch was served in the
command helper's unit of work (one transaction, the replies recorded with the effects, a
repeated `command_id` answered from the record; docs/command-batching.md). The settlements'
rows are locked first, in id order, so two outcomes of one settlement queue. The same
outcome again (a new `command_id`: the saga retried after losing its reply) is a no-op that
answers the status; a different outcome after the first is refused `already_final`, an
unknown id `unknown_transfer`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Final, TypeAlias, TypeVar

from eventstore import NewEvent, UnitOfWork
from ledger.commands import CommandRefused, CommandService, Incoming, decide_each
from trade_service import domain, repository
from trade_service.contracts import (
    CompleteSettlement,
    FailSettlement,
    RejectSettlement,
    SettlementOutcome,
    TradeEvent,
)
from trade_service.domain import (
    Settlement,
    SettlementAlreadyFinal,
    SettlementError,
    SettlementNotFound,
)
from trade_service.events import to_new_event

COMPLETE: Final = "complete"
REJECT: Final = "reject"
FAIL: Final = "fail"

Clock = Callable[[], datetime]
OutcomeT = TypeVar("OutcomeT", CompleteSettlement, RejectSettlement, FailSettlement)
Decision: TypeAlias = Callable[[OutcomeT, Settlement], list[TradeEvent]]
"""The events an outcome command decides for its settlement (the domain's rules)."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def register_commands(service: CommandService, clock: Clock = utc_now) -> None:
    """Serve `complete`, `reject` and `fail` on `service` (subjects `<service name>.<name>`),
    each deciding the commands that queue up together in one transaction."""

    async def complete(
        batch: Sequence[Incoming[CompleteSettlement]], unit: UnitOfWork
    ) -> list[SettlementOutcome | CommandRefused]:
        return await decide_batch(unit, batch, lambda command, state: domain.complete(
            state, clock()))  # fmt: skip

    async def reject(
        batch: Sequence[Incoming[RejectSettlement]], unit: UnitOfWork
    ) -> list[SettlementOutcome | CommandRefused]:
        return await decide_batch(unit, batch, lambda command, state: domain.reject(
            state, command.reason, command.detail, clock()))  # fmt: skip

    async def fail(
        batch: Sequence[Incoming[FailSettlement]], unit: UnitOfWork
    ) -> list[SettlementOutcome | CommandRefused]:
        return await decide_batch(unit, batch, lambda command, state: domain.fail(
            state, command.reason, command.detail, clock()))  # fmt: skip

    service.batch_command(COMPLETE, CompleteSettlement, SettlementOutcome)(complete)
    service.batch_command(REJECT, RejectSettlement, SettlementOutcome)(reject)
    service.batch_command(FAIL, FailSettlement, SettlementOutcome)(fail)


async def decide_batch(
    unit: UnitOfWork, batch: Sequence[Incoming[OutcomeT]], decision: Decision[OutcomeT]
) -> list[SettlementOutcome | CommandRefused]:
    """Lock and load the batch's settlements, decide each command in turn on the state the
    earlier ones left, append every settlement's events in one round trip; each command's
    result is the status its settlement has after it, or its refusal."""
    ids = [incoming.command.transfer_id for incoming in batch]
    loaded = await repository.load_many(unit.store, unit.connection, ids)
    states: dict[str, Settlement] = dict(loaded)
    decided: dict[str, list[NewEvent]] = {transfer_id: [] for transfer_id in loaded}

    def decide(command: OutcomeT) -> SettlementOutcome:
        transfer_id = command.transfer_id
        try:
            if transfer_id not in states:
                raise SettlementNotFound(transfer_id)
            events = decision(command, states[transfer_id])
        except SettlementError as error:
            raise _refusal(error, transfer_id) from error
        decided[transfer_id].extend(to_new_event(event) for event in events)
        after = domain.fold(events, states[transfer_id])
        assert after is not None, "a loaded settlement stays one"
        states[transfer_id] = after
        return SettlementOutcome(transfer_id=transfer_id, status=after.status)

    results = decide_each(batch, decide)
    await repository.save_many(unit, [(loaded[transfer_id], decided[transfer_id])
                                      for transfer_id in sorted(decided)])  # fmt: skip
    return results


def _refusal(error: SettlementError, transfer_id: str) -> CommandRefused:
    """The typed refusal of a domain error, saying which settlement refused."""
    details: dict[str, str] = {"transfer_id": transfer_id}
    if isinstance(error, SettlementAlreadyFinal):
        details["status"] = error.status.value
    return CommandRefused(error.code, str(error), details)
