"""The trade service's saga commands over NATS: complete, reject or fail a settlement.

    register_commands(service)   # subjects <service name>.complete, .reject, .fail

Each handler runs in the command helper's unit of work (one transaction, the reply recorded
with the effect, a repeated `command_id` answered from the record). The settlement's row is
locked first, so two outcomes of one settlement queue. The same outcome again (a new
`command_id`: the saga retried after losing its reply) is a no-op that answers the status;
a different outcome after the first is refused `already_final`, an unknown id
`unknown_transfer`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final

from eventstore import UnitOfWork
from ledger.commands import CommandRefused, CommandService
from trade_service import domain, repository
from trade_service.contracts import (
    CompleteSettlement,
    FailSettlement,
    RejectSettlement,
    SettlementOutcome,
    TradeEvent,
)
from trade_service.domain import Settlement, SettlementAlreadyFinal, SettlementError

COMPLETE: Final = "complete"
REJECT: Final = "reject"
FAIL: Final = "fail"

Clock = Callable[[], datetime]
Decision = Callable[[Settlement, datetime], list[TradeEvent]]


def utc_now() -> datetime:
    return datetime.now(UTC)


def register_commands(service: CommandService, clock: Clock = utc_now) -> None:
    """Serve `complete`, `reject` and `fail` on `service` (subjects `<service name>.<name>`)."""

    async def complete(command: CompleteSettlement, unit: UnitOfWork) -> SettlementOutcome:
        return await _decide(unit, command.transfer_id, domain.complete, clock)

    async def reject(command: RejectSettlement, unit: UnitOfWork) -> SettlementOutcome:
        def decision(state: Settlement, now: datetime) -> list[TradeEvent]:
            return domain.reject(state, command.reason, command.detail, now)

        return await _decide(unit, command.transfer_id, decision, clock)

    async def fail(command: FailSettlement, unit: UnitOfWork) -> SettlementOutcome:
        def decision(state: Settlement, now: datetime) -> list[TradeEvent]:
            return domain.fail(state, command.reason, command.detail, now)

        return await _decide(unit, command.transfer_id, decision, clock)

    service.command(COMPLETE, CompleteSettlement, SettlementOutcome)(complete)
    service.command(REJECT, RejectSettlement, SettlementOutcome)(reject)
    service.command(FAIL, FailSettlement, SettlementOutcome)(fail)


async def _decide(
    unit: UnitOfWork, transfer_id: str, decision: Decision, clock: Clock
) -> SettlementOutcome:
    """Lock and load the settlement, decide, append; the status it has now."""
    try:
        state = await repository.require(unit.store, unit.connection, transfer_id,
                                         for_update=True)
        events = decision(state, clock())
    except SettlementError as error:
        details: dict[str, str] = {"transfer_id": transfer_id}
        if isinstance(error, SettlementAlreadyFinal):
            details["status"] = error.status.value
        raise CommandRefused(error.code, str(error), details) from error
    await repository.save(unit, state, events)
    after = domain.fold(events, state)
    assert after is not None, "a loaded settlement stays one"
    return SettlementOutcome(transfer_id=transfer_id, status=after.status)
