"""The egress proxy's certificate authority (issue 30): for a host the proxy adds a secret
for, the server ends the sandbox's TLS with a certificate for that host signed by this CA.

One CA per server, made on first use and kept under `<state>/egress-ca/` (the key readable by
the server's user only). Only the CA's certificate is given to sandboxes, which trust it; its
key never leaves the server. Leaf certificates (one key, a certificate per host, valid for a
week) are kept in memory as ready server contexts.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
LEAF_DAYS = 7
MAX_CACHED = 1024


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


class EgressCA:
    """The server's CA and the TLS contexts it serves sandboxes with."""

    def __init__(self, folder: Path, name: str = "Insien egress CA") -> None:
        self.folder = folder
        self._name = name
        self._key: ec.EllipticCurvePrivateKey | None = None
        self._cert: x509.Certificate | None = None
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self._contexts: dict[str, ssl.SSLContext] = {}

    def _load(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        if self._key is not None and self._cert is not None:
            return self._key, self._cert
        key_path, cert_path = self.folder / "ca-key.pem", self.folder / "ca.pem"
        if key_path.exists() and cert_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{key_path} is not an EC key")
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        else:
            key, cert = self._make()
            self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            _write_private(
                key_path,
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            )
            cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self._key, self._cert = key, cert
        return key, cert

    def _make(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Insien"),
                x509.NameAttribute(NameOID.COMMON_NAME, self._name[:64]),
            ]
        )
        now = datetime.datetime.now(datetime.UTC)
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        return key, cert

    def certificate_pem(self) -> str:
        """The CA's certificate: all a sandbox is given."""
        return self._load()[1].public_bytes(serialization.Encoding.PEM).decode()

    def _leaf(self, host: str) -> x509.Certificate:
        ca_key, ca_cert = self._load()
        now = datetime.datetime.now(datetime.UTC)
        try:
            alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            alt = x509.DNSName(host)
        public = self._leaf_key.public_key()
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(ca_cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
            .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )

    def server_context(self, host: str) -> ssl.SSLContext:
        """A TLS server context presenting a certificate for `host` (made once, then kept)."""
        context = self._contexts.get(host)
        if context is not None:
            return context
        leaf = self._leaf(host)
        _, ca_cert = self._load()
        chain = leaf.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(
            serialization.Encoding.PEM
        )
        key = self._leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.set_alpn_protocols(["http/1.1"])
        # ssl loads a chain only from files: a private one that is gone once loaded.
        with tempfile.TemporaryDirectory(prefix="insien-leaf-") as folder:
            path = Path(folder) / "leaf.pem"
            _write_private(path, key + chain)
            context.load_cert_chain(path)
        if len(self._contexts) >= MAX_CACHED:
            self._contexts.pop(next(iter(self._contexts)))
        self._contexts[host] = context
        return context


def upstream_context(extra_ca: Path | None) -> ssl.SSLContext:
    """How the proxy checks the real host: the system's CAs (plus the operator's file),
    the host's name, HTTP/1.1."""
    context = ssl.create_default_context()
    if extra_ca is not None:
        context.load_verify_locations(cafile=str(extra_ca))
    context.set_alpn_protocols(["http/1.1"])
    return context
