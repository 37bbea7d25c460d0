"""TLS material: the chain verifies for the right names, node keys load the way Flower loads them."""

from __future__ import annotations

import argparse
import ipaddress
import stat
from concurrent import futures

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from cryptography.x509.verification import VerificationError

from protocols import tls


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    out = tmp_path_factory.mktemp("certs")
    return tls.make_certificates(out, sans=["superlink.offsite.test", "10.1.2.3", "localhost"], n_nodes=2)


def test_files_written_and_private_keys_restricted(certs):
    for path in (certs.ca_cert, certs.ca_key, certs.server_cert, certs.server_key):
        assert path.read_bytes().startswith(b"-----BEGIN ")
    assert [p.name for p in certs.node_private_keys] == ["node-1.key", "node-2.key"]
    for path in (certs.ca_key, certs.server_key, *certs.node_private_keys):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_server_certificate_carries_sans(certs):
    cert = tls.load_certificate(certs.server_cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "superlink.offsite.test"]
    assert set(san.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("10.1.2.3"),
    }


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "::1", "superlink.offsite.test", "10.1.2.3"])
def test_server_certificate_verifies_against_ca(certs, host):
    tls.verify_server_certificate(
        tls.load_certificate(certs.server_cert), tls.load_certificate(certs.ca_cert), host
    )


def test_server_certificate_fails_for_other_host_or_other_ca(certs, tmp_path):
    server, ca = tls.load_certificate(certs.server_cert), tls.load_certificate(certs.ca_cert)
    with pytest.raises(VerificationError):
        tls.verify_server_certificate(server, ca, "evil.example")
    other_ca = tls.make_ca("Someone else")[1]
    with pytest.raises(VerificationError):
        tls.verify_server_certificate(server, other_ca, "localhost")


def test_node_keys_load_as_ec_p384_pairs(certs):
    for priv_path, pub_path in zip(certs.node_private_keys, certs.node_public_keys, strict=True):
        priv = load_ssh_private_key(priv_path.read_bytes(), None)
        pub = load_ssh_public_key(pub_path.read_bytes())
        assert isinstance(priv, ec.EllipticCurvePrivateKey) and isinstance(pub, ec.EllipticCurvePublicKey)
        assert pub.curve.name == "secp384r1"
        assert priv.public_key().public_numbers() == pub.public_numbers()
    pubs = [p.read_bytes() for p in certs.node_public_keys]
    assert pubs[0] != pubs[1]


def test_flower_accepts_node_keys(certs):
    # The exact loaders flwr 1.42 uses for --auth-supernode-private-key and `flwr supernode register`.
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

    args = argparse.Namespace(
        auth_supernode_private_key=str(certs.node_private_keys[0]), auth_supernode_public_key=None
    )
    priv, pub = _try_setup_client_authentication(args)
    assert isinstance(priv, ec.EllipticCurvePrivateKey)
    assert try_load_public_key(certs.node_public_keys[0]).startswith(b"-----BEGIN PUBLIC KEY-----")


def test_grpc_tls_handshake(certs):
    grpc = pytest.importorskip("grpc")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    creds = grpc.ssl_server_credentials(
        [(certs.server_key.read_bytes(), certs.server_cert.read_bytes())],
        root_certificates=certs.ca_cert.read_bytes(),
    )
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        for host in ("localhost", "127.0.0.1"):
            channel = grpc.secure_channel(
                f"{host}:{port}", grpc.ssl_channel_credentials(certs.ca_cert.read_bytes())
            )
            grpc.channel_ready_future(channel).result(timeout=10)
            channel.close()
    finally:
        server.stop(0)


def test_existing_files_are_not_overwritten_silently(certs):
    before = certs.ca_cert.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        tls.make_certificates(certs.ca_cert.parent)
    assert certs.ca_cert.read_bytes() == before


def test_san_entries_dedupe_and_classify():
    entries = tls.san_entries(["localhost", "localhost", "::1", "a.b", " "])
    assert entries == [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("::1")),
        x509.DNSName("a.b"),
    ]
