"""Settings from `LEDGER_...` environment variables: every bound and address in one place."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final, Literal, Self

from pydantic import (
    Field,
    FilePath,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from ledger.money import DEFAULT_MAX_AMOUNT_MINOR, DEFAULT_SCALES, Assets

ServiceName = Literal["account", "risk", "trade", "saga"]
SERVICES: tuple[ServiceName, ...] = ("account", "risk", "trade", "saga")
MIN_DB_POOL_SIZE: Final = 4
"""The smallest pool with room for requests beside the connections a service holds for long:
its append listener, a busy relay, and a busy event consumer (docs/connection-pool.md)."""


class Settings(BaseSettings):
    """The ledger's configuration. Unset servers mean embedded ones under `data_dir`."""

    model_config = SettingsConfigDict(env_prefix="LEDGER_", extra="ignore", frozen=True)

    environment: Literal["development", "production"] = "development"

    database_url: str | None = None
    account_database_url: str | None = None
    risk_database_url: str | None = None
    trade_database_url: str | None = None
    saga_database_url: str | None = None
    db_pool_size: int = Field(
        default=10, ge=MIN_DB_POOL_SIZE, le=1000,
        description="Connections per service pool. One listens for appends all the time, and"
        " a busy relay and each busy event consumer hold one each, so fewer than"
        f" {MIN_DB_POOL_SIZE} would leave HTTP requests and commands waiting for a connection.",
    )  # fmt: skip
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

    # NATS credentials and TLS (docs/nats-permissions.md): at most one way to authenticate.
    nats_user: str | None = Field(default=None, min_length=1, max_length=256)
    nats_password: SecretStr | None = Field(default=None, description="With nats_user.")
    nats_nkey_seed_file: FilePath | None = Field(
        default=None, description="A file holding the user's nkey seed (SU...)."
    )
    nats_credentials_file: FilePath | None = Field(
        default=None, description="A `.creds` file: the user's JWT and nkey seed."
    )
    nats_tls_ca_file: FilePath | None = Field(
        default=None, description="CA bundle that signed the servers' certificates (TLS on)."
    )
    nats_tls_cert_file: FilePath | None = Field(
        default=None, description="Client certificate, for servers that verify clients."
    )
    nats_tls_key_file: FilePath | None = Field(
        default=None, description="The client certificate's private key."
    )
    nats_tls_hostname: str | None = Field(
        default=None, min_length=1, max_length=253,
        description="The name the servers' certificates carry, when the URLs name others.",
    )
    nats_inbox_prefix: str = Field(
        default="_INBOX", pattern=r"^_INBOX(\.[A-Za-z0-9_-]{1,64}){0,3}$",
        description="Subject prefix of this client's replies; one per service (`_INBOX.account`)"
        " lets NATS permissions keep each service from reading the others' replies.",
    )

    @model_validator(mode="after")
    def _nats_security_is_consistent(self) -> Self:
        """Refuse half-given NATS credentials at start, not as a refused connection later."""
        if (self.nats_user is None) != (self.nats_password is None):
            raise ValueError("LEDGER_NATS_USER and LEDGER_NATS_PASSWORD go together")
        ways = [name for name, value in (
            ("LEDGER_NATS_USER", self.nats_user),
            ("LEDGER_NATS_NKEY_SEED_FILE", self.nats_nkey_seed_file),
            ("LEDGER_NATS_CREDENTIALS_FILE", self.nats_credentials_file),
        ) if value is not None]  # fmt: skip
        if len(ways) > 1:
            raise ValueError(f"NATS takes one way to authenticate; got {' and '.join(ways)}")
        if (self.nats_tls_cert_file is None) != (self.nats_tls_key_file is None):
            raise ValueError("LEDGER_NATS_TLS_CERT_FILE and LEDGER_NATS_TLS_KEY_FILE go together")
        return self

    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8000, ge=0, le=65535)
    data_dir: Path = Path(".ledger")

    # Access control and request limits (docs/auth.md).
    auth: Literal["on", "off"] = Field(
        default="on", description="`off` skips token checks: local experiments only, never"
        " in production.",
    )
    auth_jwt_secret: SecretStr | None = Field(
        default=None, description="HS256 secret (32 bytes or more); unset in development: one"
        " kept in the data directory.",
    )
    auth_public_keys: dict[
        Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")], str
    ] = Field(
        default_factory=dict,
        description='RS256/ES256 public keys by key id (`kid`), each a PEM or a path to one:'
        ' {"2025-01": "/keys/2025-01.pem"}.',
    )
    auth_issuer: str | None = Field(default=None, max_length=256,
                                    description="Required `iss` of tokens, when set.")
    auth_audience: str | None = Field(default=None, max_length=256,
                                      description="Required `aud` of tokens, when set.")
    auth_token_ttl_s: int = Field(default=3600, ge=1, le=366 * 86_400,
                                  description="Lifetime of tokens `ledger token create` makes.")
    auth_clock_skew_s: int = Field(default=30, ge=0, le=600,
                                   description="Leeway when checking `exp`, `nbf` and `iat`.")
    rate_limit_per_s: float = Field(
        default=100.0, ge=0, le=1_000_000, description="Requests per second per token subject"
        " (per client address without a valid token), per replica; 0: no limit.",
    )
    rate_limit_burst: PositiveInt = Field(default=200, le=1_000_000,
                                          description="Requests a subject may make at once.")
    max_body_bytes: PositiveInt = Field(default=65_536, le=64 * 1024 * 1024,
                                        description="Largest request body accepted (413 above).")

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
        description='Assets beyond the default currencies, with their decimals: {"ACME": 0}.'
        " A default currency may be named only with its own scale.",
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
        description="Attempts of a step before the pivot before the saga compensates; steps"
        " from the pivot on and compensations are retried until they are answered.",
    )
    saga_backoff_first_s: PositiveFloat = Field(
        default=0.5, description="Pause after a step's first failed attempt (doubles, jittered)."
    )
    saga_backoff_max_s: PositiveFloat = Field(
        default=30.0, description="Longest pause between attempts of a saga step, and after"
        " turns of a saga that fail unexpectedly in a row.",
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

    @field_validator("instrument_scales")
    @classmethod
    def _keeps_the_currencies_scales(cls, scales: dict[str, int]) -> dict[str, int]:
        """Refuse a default currency given another scale: its stored amounts are integers
        of its minor units, so a new scale would silently multiply or divide every balance,
        hold and limit already recorded in it (found in review)."""
        rescaled = [f"{code} has {DEFAULT_SCALES[code]} decimals, not {scale}"
                    for code, scale in sorted(scales.items())
                    if code in DEFAULT_SCALES and DEFAULT_SCALES[code] != scale]  # fmt: skip
        if rescaled:
            raise ValueError("LEDGER_INSTRUMENT_SCALES may not change the scale of a default"
                             f" currency: {'; '.join(rescaled)}")
        return scales

    @model_validator(mode="after")
    def _timings_are_consistent(self) -> Self:
        """Refuse at start the combinations that fail later, mid-run or with a traceback:
        each bound checked here is one a component relies on (found in review)."""
        problems = [message for is_wrong, message in (
            (self.saga_lease_s <= self.saga_step_timeout_s,
             "LEDGER_SAGA_LEASE_S must exceed LEDGER_SAGA_STEP_TIMEOUT_S: a lease outlives a"
             " step, or another orchestrator takes a saga whose step is still in flight"),
            (self.saga_deadline_s <= self.saga_step_timeout_s,
             "LEDGER_SAGA_DEADLINE_S must exceed LEDGER_SAGA_STEP_TIMEOUT_S"),
            (self.saga_backoff_first_s > self.saga_backoff_max_s,
             "LEDGER_SAGA_BACKOFF_FIRST_S may not exceed LEDGER_SAGA_BACKOFF_MAX_S"),
            (self.task_restart_first_s > self.task_restart_max_s,
             "LEDGER_TASK_RESTART_FIRST_S may not exceed LEDGER_TASK_RESTART_MAX_S"),
            (self.consumer_max_deliver <= len(self.consumer_backoff_s),
             "LEDGER_CONSUMER_MAX_DELIVER must exceed the number of LEDGER_CONSUMER_BACKOFF_S"
             " steps"),
            (self.events_stream_max_age_s < self.relay_duplicate_window_s,
             "LEDGER_EVENTS_STREAM_MAX_AGE_S may not be below LEDGER_RELAY_DUPLICATE_WINDOW_S"
             " (JetStream refuses such a stream)"),
        ) if is_wrong]  # fmt: skip
        if problems:
            raise ValueError("; ".join(problems))
        return self

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
