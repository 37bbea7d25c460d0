"""TLS material for a Flower deployment: a private CA, the SuperLink certificate, SuperNode auth keys.

Formats, as flwr 1.42 reads them:
- `flower-superlink --ssl-ca-certfile ca.crt --ssl-certfile server.pem --ssl-keyfile server.key`
  (PEM files, passed to gRPC); `flower-supernode --root-certificates ca.crt`.
- `flower-supernode --auth-supernode-private-key node-i.key` parses the file with cryptography's
  `load_ssh_private_key`, so it must be an OpenSSH private key ("BEGIN OPENSSH PRIVATE KEY"), not
  PKCS#8 PEM; it must be an EC key.
- `flwr supernode register node-i.pub` parses it with `load_ssh_public_key` and requires an EC key on
  a NIST curve: one OpenSSH line "ecdsa-sha2-nistp384 AAAA...".
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store

DEFAULT_SANS = ("localhost", "127.0.0.1", "::1")
_CURVE = ec.SECP384R1
# Start validity a little in the past so a peer whose clock lags slightly still accepts the cert.
_CLOCK_SKEW = dt.timedelta(minutes=5)

GeneralName = x509.DNSName | x509.IPAddress


@dataclass(frozen=True)
class CertificatePaths:
    """Where `make_certificates` wrote each file."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    node_private_keys: tuple[Path, ...]
    node_public_keys: tuple[Path, ...]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Offsite"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def san_entries(names: Iterable[str]) -> list[GeneralName]:
    """Subject alternative names: IP literals become IPAddress entries, anything else DNSName; deduplicated."""
    out: list[GeneralName] = []
    for name in names:
        name = name.strip()
        if not name:
            continue
        try:
            entry: GeneralName = x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            entry = x509.DNSName(name)
        if entry not in out:
            out.append(entry)
    return out


def make_ca(
    common_name: str = "Offsite CA", days: int = 3650
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA (EC P-384 key, SHA-384) that may sign leaf certificates only."""
    key = ec.generate_private_key(_CURVE())
    name = _name(common_name)
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
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
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA384())
    )
    return key, cert


def make_server_certificate(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    sans: Iterable[str] = (),
    common_name: str = "offsite-superlink",
    days: int = 825,
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A server (TLS serverAuth) certificate signed by the CA, valid for DEFAULT_SANS plus `sans`."""
    key = ec.generate_private_key(_CURVE())
    now = _now()
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(san_entries([*DEFAULT_SANS, *sans])), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    return key, cert


def make_node_key() -> tuple[bytes, bytes]:
    """One SuperNode auth key pair: (OpenSSH private key bytes, OpenSSH public key line) on SECP384R1."""
    key = ec.generate_private_key(_CURVE())
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return private, public + b"\n"


def _write_private(path: Path, data: bytes) -> None:
    # Create with 0600 from the start so the key is never briefly world-readable.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, 0o600)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_certificates(
    out_dir: str | Path, sans: Iterable[str] = (), n_nodes: int = 0, overwrite: bool = False
) -> CertificatePaths:
    """Write ca.crt, ca.key, server.pem, server.key and node-{i}.key / node-{i}.pub (i = 1..n_nodes)."""
    if n_nodes < 0:
        raise ValueError(f"n_nodes must be >= 0, got {n_nodes}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = CertificatePaths(
        ca_cert=out / "ca.crt",
        ca_key=out / "ca.key",
        server_cert=out / "server.pem",
        server_key=out / "server.key",
        node_private_keys=tuple(out / f"node-{i}.key" for i in range(1, n_nodes + 1)),
        node_public_keys=tuple(out / f"node-{i}.pub" for i in range(1, n_nodes + 1)),
    )
    every = [paths.ca_cert, paths.ca_key, paths.server_cert, paths.server_key]
    every += [*paths.node_private_keys, *paths.node_public_keys]
    existing = [p.name for p in every if p.exists()]
    # Replacing a deployed CA silently would lock every node out; make it a deliberate choice.
    if existing and not overwrite:
        raise FileExistsError(f"{out} already has {existing}; pass overwrite=True to replace them")

    ca_key, ca_cert = make_ca()
    server_key, server_cert = make_server_certificate(ca_key, ca_cert, sans)
    paths.ca_cert.write_bytes(_cert_pem(ca_cert))
    _write_private(paths.ca_key, _key_pem(ca_key))
    paths.server_cert.write_bytes(_cert_pem(server_cert))
    _write_private(paths.server_key, _key_pem(server_key))
    for private_path, public_path in zip(paths.node_private_keys, paths.node_public_keys, strict=True):
        private, public = make_node_key()
        _write_private(private_path, private)
        public_path.write_bytes(public)
    return paths


def load_certificate(path: str | Path) -> x509.Certificate:
    """Read a PEM certificate."""
    return x509.load_pem_x509_certificate(Path(path).read_bytes())


def verify_server_certificate(
    server_cert: x509.Certificate, ca_cert: x509.Certificate, hostname: str
) -> None:
    """Raise (cryptography VerificationError) unless `server_cert` chains to `ca_cert` and is valid for `hostname`."""
    try:
        subject: GeneralName = x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        subject = x509.DNSName(hostname)
    verifier = PolicyBuilder().store(Store([ca_cert])).build_server_verifier(subject)
    verifier.verify(server_cert, [])
