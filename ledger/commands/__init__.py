"""Commands over NATS request/reply: idempotent handlers on the server, retrying sends.

    service = CommandService(nc, store, name="account", version="0.1.0")

    @service.command("reserve", ReserveFunds, Reserved)  # subject "account.reserve"
    async def reserve(command: ReserveFunds, unit: UnitOfWork) -> Reserved: ...

    reply = await CommandClient(nc, 2.0, 3).send("account.reserve", command, Reserved)

    @service.batch_command("post", PostFunds, Posted)   # many commands, one transaction
    async def post(batch: Sequence[Incoming[PostFunds]], unit) -> list[Posted | CommandRefused]:

A handler runs in a unit of work with the request's context bound (`ledger.context.current()`
is the sender's correlation, caused by the command id), so it appends its events with
`metadata=current().as_metadata()`. Its reply is recorded with its effect in one transaction,
and a repeated `command_id` is answered with that recorded reply, never applied twice; the
same id sent to another endpoint is an error reply ("400"), and nothing is applied.

On the wire a reply is a JSON envelope: `{"status": "ok", "reply": {...}}`,
`{"status": "refused", "code", "message", "details"}` (recorded like a success), or
`{"status": "error", "code", "message"}` (not recorded, so a later retry may succeed).
Replies and refusal details are JSON without floats (money is integers in minor units). A
reply's headers carry the context the command was handled in: the sender's correlation and
trace, caused by the command id (docs/causation.md).
"""

from ledger.commands.client import CommandClient
from ledger.commands.envelope import (
    BatchHandler,
    Command,
    CommandFailed,
    CommandNotReady,
    CommandRefused,
    Incoming,
    decide_each,
    one_at_a_time,
)
from ledger.commands.service import CommandService

__all__ = [
    "BatchHandler",
    "Command",
    "CommandClient",
    "CommandFailed",
    "CommandNotReady",
    "CommandRefused",
    "CommandService",
    "Incoming",
    "decide_each",
    "one_at_a_time",
]
