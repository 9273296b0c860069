"""NATS credentials and TLS from the settings: refused when half given, passed on whole."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from ledger.bus import NatsSecurity, tls_context
from ledger.settings import Settings
from tests.pki import make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_without_nats_settings_the_client_connects_as_before() -> None:
    assert NatsSecurity.from_settings(Settings()).connect_options() == {"inbox_prefix": "_INBOX"}


def test_user_and_password_are_passed_to_nats() -> None:
    settings = Settings(nats_user="risk", nats_password=SecretStr("s3cret"),
                        nats_inbox_prefix="_INBOX.risk")  # fmt: skip

    options = NatsSecurity.from_settings(settings).connect_options()

    assert options == {"user": "risk", "password": "s3cret", "inbox_prefix": "_INBOX.risk"}


def test_the_password_is_never_shown() -> None:
    settings = Settings(nats_user="risk", nats_password=SecretStr("s3cret"))

    assert "s3cret" not in repr(settings)
    assert "s3cret" not in repr(NatsSecurity.from_settings(settings))


def test_seed_and_credentials_files_are_passed_as_paths(tmp_path: Path) -> None:
    seed = tmp_path / "risk.nk"
    seed.write_text("SU...")
    creds = tmp_path / "risk.creds"
    creds.write_text("-----BEGIN NATS USER JWT-----")

    by_seed = NatsSecurity.from_settings(Settings(nats_nkey_seed_file=seed)).connect_options()
    by_creds = NatsSecurity.from_settings(Settings(nats_credentials_file=creds)).connect_options()

    assert by_seed["nkeys_seed"] == str(seed)
    assert by_creds["user_credentials"] == str(creds)


@pytest.mark.parametrize("given", [
    {"nats_user": "risk"},
    {"nats_password": "s3cret"},
])  # fmt: skip
def test_a_user_without_a_password_or_the_reverse_is_refused(given: dict[str, str]) -> None:
    with pytest.raises(ValidationError, match="LEDGER_NATS_USER and LEDGER_NATS_PASSWORD go"):
        Settings.model_validate(given)


def test_two_ways_to_authenticate_are_refused(tmp_path: Path) -> None:
    seed = tmp_path / "risk.nk"
    seed.write_text("SU...")

    with pytest.raises(ValidationError, match="one way to authenticate"):
        Settings(nats_user="risk", nats_password=SecretStr("s3cret"), nats_nkey_seed_file=seed)


def test_a_missing_file_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="nats_tls_ca_file"):
        Settings(nats_tls_ca_file=tmp_path / "no-such-ca.pem")


def test_a_client_certificate_without_its_key_is_refused(pki: dict[str, Path]) -> None:
    with pytest.raises(ValidationError, match="LEDGER_NATS_TLS_CERT_FILE and"):
        Settings(nats_tls_cert_file=pki["client_cert"])


@pytest.mark.parametrize("prefix", ["_INBOX.>", "_INBOX.*", "replies", "_INBOX..risk", ""])
def test_an_inbox_prefix_with_wildcards_or_outside_inbox_is_refused(prefix: str) -> None:
    with pytest.raises(ValidationError, match="nats_inbox_prefix"):
        Settings(nats_inbox_prefix=prefix)


def test_no_tls_settings_leave_tls_to_the_server_and_the_url() -> None:
    assert tls_context(Settings()) is None


def test_a_ca_file_makes_a_context_that_verifies_the_server(pki: dict[str, Path]) -> None:
    context = tls_context(Settings(nats_tls_ca_file=pki["ca"]))

    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert any("ledger-test-ca" in str(ca["subject"]) for ca in context.get_ca_certs())


def test_a_client_certificate_is_loaded_with_its_key(pki: dict[str, Path]) -> None:
    settings = Settings(nats_tls_ca_file=pki["ca"], nats_tls_cert_file=pki["client_cert"],
                        nats_tls_key_file=pki["client_key"],
                        nats_tls_hostname="nats-1")  # fmt: skip

    security = NatsSecurity.from_settings(settings)

    assert isinstance(security.tls, ssl.SSLContext)
    assert security.connect_options()["tls_hostname"] == "nats-1"


def test_a_key_that_does_not_match_the_certificate_is_refused(pki: dict[str, Path]) -> None:
    settings = Settings(nats_tls_cert_file=pki["client_cert"], nats_tls_key_file=pki["server_key"])

    with pytest.raises(ssl.SSLError):
        tls_context(settings)
