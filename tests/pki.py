"""Certificates for TLS tests: a CA, a server certificate for localhost, a client one."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
                 issuer_key: ec.EllipticCurvePrivateKey | None, *, is_ca: bool
                 ) -> x509.Certificate:  # fmt: skip
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if not is_ca:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        ), critical=False)  # fmt: skip
    return builder.sign(issuer_key or key, hashes.SHA256())


def _write(directory: Path, name: str, certificate: x509.Certificate,
           key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:  # fmt: skip
    cert_file, key_file = directory / f"{name}.pem", directory / f"{name}-key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return cert_file, key_file


def make_pki(directory: Path, ca_name: str = "ledger-test-ca") -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca = _certificate(ca_name, ca_key, None, None, is_ca=True)
    ca_file, _ = _write(directory, "ca", ca, ca_key)
    server = _certificate("nats", server_key, ca, ca_key, is_ca=False)
    client_cert = _certificate("ledger", client_key, ca, ca_key, is_ca=False)
    server_cert_file, server_key_file = _write(directory, "server", server, server_key)
    client_cert_file, client_key_file = _write(directory, "client", client_cert, client_key)
    return {"ca": ca_file, "server_cert": server_cert_file, "server_key": server_key_file,
            "client_cert": client_cert_file, "client_key": client_key_file}  # fmt: skip
