"""Settings from `LEDGER_...` environment variables: every bound and address in one place."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PositiveFloat, PositiveInt
from pydantic_settings import BaseSettings, SettingsConfigDict

from ledger.money import DEFAULT_MAX_AMOUNT_MINOR, DEFAULT_SCALES, Assets

ServiceName = Literal["account", "risk", "trade", "saga"]
SERVICES: tuple[ServiceName, ...] = ("account", "risk", "trade", "saga")


class Settings(BaseSettings):
    """The ledger's configuration. Unset servers mean embedded ones under `data_dir`."""

    model_config = SettingsConfigDict(env_prefix="LEDGER_", extra="ignore", frozen=True)

    environment: Literal["development", "production"] = "development"

    database_url: str | None = None
    account_database_url: str | None = None
    risk_database_url: str | None = None
    trade_database_url: str | None = None
    saga_database_url: str | None = None
    db_pool_size: PositiveInt = 10
    schema_prefix: str = Field(
        default="", pattern=r"^[a-z_][a-z0-9_]{0,30}$|^$",
        description="Prefixed to each service's schema name (tests, several ledgers per server).",
    )

    nats_url: str | None = Field(
        default=None, description="One or more seed servers, comma-separated."
    )
    events_stream: str = "LEDGER_EVENTS"
    events_stream_replicas: PositiveInt = 1
    events_stream_max_age_s: PositiveFloat = Field(
        default=30 * 86_400.0,
        description="How long the events stream keeps a message; consumers must read it sooner.",
    )
    dead_letter_max_age_s: PositiveFloat = Field(
        default=90 * 86_400.0, description="How long a parked (dead-lettered) message is kept."
    )

    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=0, le=65535)
    data_dir: Path = Path(".ledger")

    relay_batch_events: PositiveInt = 500
    relay_ack_timeout_s: PositiveFloat = 5.0
    relay_duplicate_window_s: PositiveFloat = 120.0
    subscription_poll_interval_s: PositiveFloat = 1.0

    consumer_fetch_batch: PositiveInt = 100
    consumer_ack_wait_s: PositiveFloat = 30.0
    consumer_max_deliver: PositiveInt = 5
    consumer_backoff_s: tuple[PositiveFloat, ...] = (0.5, 2.0, 10.0)

    command_timeout_s: PositiveFloat = 2.0
    command_max_retries: int = Field(default=3, ge=0, le=100)

    instrument_scales: dict[
        Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9]{1,11}$")], Annotated[int, Field(ge=0, le=18)]
    ] = Field(
        default_factory=dict,
        description='Assets beyond the default currencies, with their decimals: {"ACME": 0}.',
    )
    max_amount_minor: int = Field(
        default=DEFAULT_MAX_AMOUNT_MINOR, gt=0, le=10**18,
        description="The largest amount one request may move, in minor units.",
    )
    write_conflict_attempts: int = Field(
        default=5, ge=1, le=100,
        description="Attempts of an HTTP write whose append meets a concurrent writer.",
    )

    risk_default_max_transfer_minor: int | None = Field(
        default=None, ge=0, le=10**18,
        description="Largest single movement out of an account without its own limit"
        " (minor units of the account's currency; unset: no limit).",
    )
    risk_default_daily_outflow_minor: int | None = Field(
        default=None, ge=0, le=10**18,
        description="Most that may leave an account in 24 hours without its own limit"
        " (minor units; unset: no limit).",
    )
    risk_default_max_open_exposure_minor: int | None = Field(
        default=None, ge=0, le=10**18,
        description="Most an account may have approved but not yet settled without its own"
        " limit (minor units; unset: no limit).",
    )
    risk_max_movements_per_minute: int | None = Field(
        default=600, ge=1, le=100_000,
        description="Approvals per account per minute without its own limit (unset: no limit).",
    )

    trade_wait_recheck_s: PositiveFloat = Field(
        default=1.0, le=30.0,
        description="While a `?wait=N` read waits for the outcome, the longest pause between"
        " two looks at it when no append was announced (a lost LISTEN costs this latency).",
    )

    saga_step_timeout_s: PositiveFloat = Field(
        default=5.0, description="How long the saga waits for one attempt of a step's reply."
    )
    saga_step_max_attempts: int = Field(
        default=5, ge=1, le=100,
        description="Attempts of a step before the pivot (or of a compensation) before the"
        " saga compensates (or parks); steps from the pivot on are retried until they succeed.",
    )
    saga_backoff_first_s: PositiveFloat = Field(
        default=0.5, description="Pause after a step's first failed attempt (doubles, jittered)."
    )
    saga_backoff_max_s: PositiveFloat = Field(
        default=30.0, description="Longest pause between attempts of a saga step."
    )
    saga_deadline_s: PositiveFloat = Field(
        default=300.0, description="Time from a saga's start after which, before the pivot,"
        " it compensates and fails.",
    )
    saga_lease_s: PositiveFloat = Field(
        default=30.0, description="How long an orchestrator holds a saga it advances (renewed"
        " before each step; must exceed saga_step_timeout_s).",
    )
    saga_worker_batch: int = Field(
        default=20, ge=1, le=1000, description="Sagas one orchestrator claims at once."
    )
    saga_poll_interval_s: PositiveFloat = Field(
        default=0.2, description="Pause of an orchestrator that found no saga due."
    )

    task_restart_first_s: PositiveFloat = Field(
        default=0.5, description="Pause before restarting a crashed background task (doubles)."
    )
    task_restart_max_s: PositiveFloat = Field(
        default=30.0, description="Longest pause before restarting a crashed background task."
    )
    shutdown_grace_s: PositiveFloat = 10.0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = True

    def database_url_for(self, service: str) -> str | None:
        """The service's own database URL, else the shared one (None: run an embedded one)."""
        own: str | None = getattr(self, f"{service}_database_url", None)
        return own or self.database_url

    def schema_for(self, service: str) -> str:
        """The PostgreSQL schema that holds the service's streams and read models."""
        return f"{self.schema_prefix}{service}"

    def assets(self) -> Assets:
        """The assets the ledger accepts: the default currencies plus `instrument_scales`."""
        return Assets({**DEFAULT_SCALES, **self.instrument_scales}, self.max_amount_minor)

    @property
    def nats_servers(self) -> list[str]:
        """The NATS seed servers (empty: run an embedded one)."""
        if not self.nats_url:
            return []
        return [server.strip() for server in self.nats_url.split(",") if server.strip()]
