"""Type names for what asyncpg hands out: connections, pooled or not, and SQL executors."""

from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

Connection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"
Executor: TypeAlias = "Connection | asyncpg.Pool[Any]"
