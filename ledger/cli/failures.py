"""How the operator commands fail: one line on stderr and an exit code, never a traceback.

Exit codes: 1 the work could not be done (a server does not answer, a check found
differences), 2 bad arguments or settings.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final, NoReturn

import asyncpg
import nats.errors
import typer
from pydantic import ValidationError
from rich.console import Console
from rich.text import Text

from eventstore import EventStoreError
from ledger.embedded import EmbeddedServerError
from ledger.settings import Settings

FAILED: Final = 1
BAD_ARGUMENTS: Final = 2

err = Console(stderr=True)


class OperatorError(Exception):
    """A failure the operator can act on; its message is the whole story."""


def fail(message: str, code: int = FAILED) -> NoReturn:
    """Print `error: message` on one line of stderr and exit with `code`."""
    err.print(Text.assemble(("error:", "bold red"), f" {message}"), soft_wrap=True)
    raise typer.Exit(code)


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type when it has none)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def settings_or_exit() -> Settings:
    """The settings from the environment; a bad one is a bad argument (exit 2)."""
    try:
        return Settings()
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        message = str(problem["msg"]).removeprefix("Value error, ")
        if not where:  # a check of several settings together names them itself
            fail(f"bad settings: {message}", BAD_ARGUMENTS)
        fail(f"bad setting LEDGER_{where.upper()}: {message}", BAD_ARGUMENTS)


@contextmanager
def reported_failures() -> Iterator[None]:
    """Turn every failure a person can act on, raised in the block, into one line."""
    try:
        yield
    except OperatorError as error:
        fail(str(error))
    except EmbeddedServerError as error:
        fail(f"could not start the embedded servers: {first_line(error)}")
    except EventStoreError as error:
        fail(first_line(error))
    except asyncpg.PostgresError as error:
        fail(f"PostgreSQL refused: {first_line(error)}")
    except (OSError, asyncpg.InterfaceError, nats.errors.Error) as error:
        # Connections are opened with their own message (ledger.cli.connections); this is
        # a server that stopped answering midway. TimeoutError is an OSError.
        fail(f"a server stopped answering: {first_line(error)}")
