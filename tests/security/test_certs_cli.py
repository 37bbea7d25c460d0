"""`offsite certs`: a CA, a SuperLink certificate with the asked-for SANs, EC node keys, a signing key."""

from __future__ import annotations

import os

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


def test_offsite_run_has_simulated_sites_pin_an_explicit_signing_key(tmp_path, monkeypatch):
    from coordinator.cli.run import _trust_the_signing_key
    from coordinator.config import FederationConfig
    from protocols.signing import generate_signing_key, load_public_key, save_private_key

    monkeypatch.setenv("OFFSITE_COORDINATOR_KEY", "")  # restored after the test, whatever it sets
    key = generate_signing_key()
    cfg = FederationConfig().replace(signing_key=str(save_private_key(key, tmp_path / "owner.pem")))
    _trust_the_signing_key(cfg, tmp_path / "run")
    pinned = load_public_key(os.environ["OFFSITE_COORDINATOR_KEY"])
    assert pinned.public_bytes_raw() == key.public_key().public_bytes_raw()


def test_certs_makes_site_update_keys_and_their_verify_folder(tmp_path):
    from typer.testing import CliRunner

    from coordinator.cli import app
    from protocols.site_signing import load_site_keys

    result = CliRunner().invoke(app, ["certs", "--out", str(tmp_path / "c"), "--nodes", "2"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c" / "site-1.pem").is_file() and (tmp_path / "c" / "site-2.pem").is_file()
    assert len(load_site_keys(str(tmp_path / "c" / "site-keys"))) == 2
    assert "site-keys=" in result.output and "site-key=" in result.output
    again = CliRunner().invoke(
        app, ["certs", "--out", str(tmp_path / "c"), "--nodes", "2", "--no-signing-key"]
    )
    assert again.exit_code != 0 and "exists" in again.output
