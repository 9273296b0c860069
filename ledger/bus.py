"""The NATS connection every service shares, and the JetStream stream the relay fills."""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass, field
from typing import Any, Final

import nats.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from ledger.settings import Settings

EVENTS_SUBJECT_PREFIX: Final = "ledger"
DEAD_LETTER_PREFIX: Final = "ledger_dead"
_STREAM_NAME_IN_USE: Final = 10058
"""JetStream's error code for "stream name already in use with a different configuration"."""
_ENSURE_ATTEMPTS: Final = 3
"""Looks at a stream whose create or update went unanswered (see `_ensure`)."""
_AUTHORIZATION_VIOLATION: Final = "authorization violation"
"""How a server says it refuses the credentials (nats-py raises a plain Error with it)."""
_CERTIFICATE_ALERTS: Final = ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA",
                              "CERTIFICATE_UNKNOWN", "CERTIFICATE_EXPIRED", "CERTIFICATE_REVOKED")
"""TLS alerts by which a server refuses our client certificate (or its absence)."""

_log = logging.getLogger(__name__)


def event_subject(service: str, category: str, event_type: str) -> str:
    """`ledger.<service>.<category>.<EventType>`: the subject of one published event."""
    return f"{EVENTS_SUBJECT_PREFIX}.{service}.{category}.{event_type}"


def dead_letter_subject(consumer: str) -> str:
    """Where a consumer parks the messages it could not handle within `max_deliver`."""
    return f"{DEAD_LETTER_PREFIX}.{consumer}"


@dataclass(frozen=True, slots=True)
class NatsSecurity:
    """How a client proves to NATS who it is, and how it checks the servers (TLS).

    Built from the settings by `from_settings`; the default is no credentials and TLS only
    when a server asks for it (or a `tls://` URL), checked against the system's CAs.
    """

    user: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a log line
    nkeys_seed_file: str | None = None
    credentials_file: str | None = None
    tls: ssl.SSLContext | None = None
    tls_hostname: str | None = None
    inbox_prefix: str = "_INBOX"
    """Replies to this client's requests (commands, JetStream API, acks of publishes, pulled
    messages) arrive under it; NATS permissions grant each service only its own."""

    @classmethod
    def from_settings(cls, settings: Settings) -> NatsSecurity:
        """The credentials and TLS the `LEDGER_NATS_*` settings name.

        Raises OSError or ssl.SSLError when a certificate, key or CA file cannot be loaded.
        """
        password = settings.nats_password
        return cls(
            user=settings.nats_user,
            password=None if password is None else password.get_secret_value(),
            nkeys_seed_file=_path_or_none(settings.nats_nkey_seed_file),
            credentials_file=_path_or_none(settings.nats_credentials_file),
            tls=tls_context(settings),
            tls_hostname=settings.nats_tls_hostname,
            inbox_prefix=settings.nats_inbox_prefix,
        )

    def connect_options(self) -> dict[str, Any]:
        """The keyword arguments of `nats.connect` that carry these credentials and TLS."""
        options: dict[str, Any] = {
            "user": self.user, "password": self.password, "nkeys_seed": self.nkeys_seed_file,
            "user_credentials": self.credentials_file, "tls": self.tls,
            "tls_hostname": self.tls_hostname, "inbox_prefix": self.inbox_prefix,
        }  # fmt: skip
        return {key: value for key, value in options.items() if value is not None}


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """A client TLS context from `LEDGER_NATS_TLS_*`, or None when none of them is set.

    The servers' certificates are verified (hostname included) against the CA file; a client
    certificate is presented when one is configured. Raises OSError or ssl.SSLError when a
    file cannot be loaded.
    """
    ca_file, cert_file = settings.nats_tls_ca_file, settings.nats_tls_cert_file
    if ca_file is None and cert_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=_path_or_none(ca_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        key_file = settings.nats_tls_key_file
        assert key_file is not None, "the settings refuse a certificate without its key"
        context.load_cert_chain(str(cert_file), str(key_file))
    return context


def _path_or_none(path: object | None) -> str | None:
    return None if path is None else str(path)


class NatsRefused(Exception):
    """NATS refused this client's credentials or certificate: retrying will not help."""


async def connect(servers: list[str], name: str, security: NatsSecurity | None = None) -> Client:
    """Connect to the seed servers with `security`'s credentials and TLS when given.

    Until the first connection the client waits for a server to answer, and once connected it
    reconnects forever, across any of them. Raises NatsRefused when, before the first
    connection, a server refuses the credentials or the client certificate, or the server's
    certificate fails verification: a configuration error that no wait would mend.
    """
    client = Client()
    refused: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()
    is_connected_once = False

    async def on_disconnect() -> None:
        _log.warning("NATS %s disconnected", name)

    async def on_reconnect() -> None:
        _log.info("NATS %s reconnected", name)

    async def on_error(error: Exception) -> None:
        _log.warning("NATS %s: %s", name, error)
        if not is_connected_once and _is_refusal(error) and not refused.done():
            refused.set_result(error)

    connecting = asyncio.ensure_future(client.connect(
        servers=servers, name=name, max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,  # type: ignore[arg-type]  # a float sleep; typed int upstream
        allow_reconnect=True, disconnected_cb=on_disconnect, reconnected_cb=on_reconnect,
        error_cb=on_error, **(security or NatsSecurity()).connect_options(),
    ))  # fmt: skip
    first: set[asyncio.Future[Any]] = {connecting, refused}
    try:
        await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        await _abandon(client, connecting)
        raise
    if refused.done():
        await _abandon(client, connecting)
        raise NatsRefused(f"NATS refused the connection of {name}: {refused.result()}"
                          " (check LEDGER_NATS_USER/PASSWORD, the nkey or .creds file and"
                          " LEDGER_NATS_TLS_*)")  # fmt: skip
    connecting.result()  # raises what the first connection raised
    is_connected_once = True
    return client


async def _abandon(client: Client, connecting: asyncio.Future[None]) -> None:
    """Stop a first connection still trying, and close whatever it opened."""
    connecting.cancel()
    await asyncio.gather(connecting, return_exceptions=True)
    await client.close()


def _is_refusal(error: BaseException) -> bool:
    """A refusal of who we are, or of whom the server claims to be, not an outage."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return True  # we do not trust the server's certificate
    if isinstance(error, ssl.SSLError):
        reason = error.reason or ""
        return any(alert in reason for alert in _CERTIFICATE_ALERTS)  # it refuses ours
    return isinstance(error, nats.errors.Error) and _AUTHORIZATION_VIOLATION in str(error).lower()


async def ensure_streams(js: JetStreamContext, settings: Settings) -> None:
    """Create or update the events stream and the dead-letter stream to match the settings."""
    await _ensure(
        js,
        StreamConfig(
            name=settings.events_stream,
            subjects=[f"{EVENTS_SUBJECT_PREFIX}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            num_replicas=settings.events_stream_replicas,
            # Longer than the relay's longest retry, so a re-publish is always recognised.
            duplicate_window=settings.relay_duplicate_window_s,
            max_age=settings.events_stream_max_age_s,
        ),
    )
    await _ensure(
        js,
        StreamConfig(
            name=f"{settings.events_stream}_DEAD",
            subjects=[f"{DEAD_LETTER_PREFIX}.>"],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            discard=DiscardPolicy.OLD,
            num_replicas=settings.events_stream_replicas,
            max_age=settings.dead_letter_max_age_s,
        ),
    )


async def _ensure(js: JetStreamContext, config: StreamConfig) -> None:
    """Create the stream, or update it to `config` when it exists (or another replica
    starting at the same time created it first).

    On a JetStream cluster the meta leader answers only the first of several identical
    creates in flight at once; the others time out although the stream now exists, so a
    timed-out attempt looks again, up to `_ENSURE_ATTEMPTS` times.
    """
    for attempt in range(1, _ENSURE_ATTEMPTS + 1):
        try:
            await _create_or_update(js, config)
            return
        except nats.errors.TimeoutError:
            if attempt == _ENSURE_ATTEMPTS:
                raise
            _log.info("stream %s: JetStream did not answer in time; looking again", config.name)


async def _create_or_update(js: JetStreamContext, config: StreamConfig) -> None:
    name = config.name or ""
    try:
        await js.stream_info(name)
    except NotFoundError:
        try:
            await js.add_stream(config)
            return
        except BadRequestError as error:
            if error.err_code != _STREAM_NAME_IN_USE:
                raise
            _log.info("stream %s was created meanwhile; updating it to our settings", name)
    await js.update_stream(config)
