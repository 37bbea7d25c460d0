"""`offsite certs`: a CA, a SuperLink certificate with the asked-for SANs, EC node keys, a signing key."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from typer.testing import CliRunner

from coordinator.cli import app
from protocols.signing import load_private_key
from protocols.tls import load_certificate, verify_server_certificate


def test_certs_command_writes_usable_material(tmp_path):
    out = tmp_path / "certs"
    result = CliRunner().invoke(
        app, ["certs", "--out", str(out), "--san", "link.example.org", "--nodes", "2"]
    )
    assert result.exit_code == 0, result.output
    server, ca = load_certificate(out / "server.pem"), load_certificate(out / "ca.crt")
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "link.example.org" in sans.get_values_for_type(x509.DNSName)
    verify_server_certificate(server, ca, "link.example.org")
    for i in (1, 2):
        assert (out / f"node-{i}.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
        load_ssh_public_key((out / f"node-{i}.pub").read_bytes())
        load_ssh_private_key((out / f"node-{i}.key").read_bytes(), password=None)
    load_private_key(out / "coordinator.pem")
    again = CliRunner().invoke(app, ["certs", "--out", str(out)])  # never overwrites silently
    assert again.exit_code == 2 and "overwrite" in again.output
