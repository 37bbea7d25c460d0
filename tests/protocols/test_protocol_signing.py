"""Ed25519 manifests: valid signatures pass; unsigned, tampered or foreign ones fail clearly."""

from __future__ import annotations

import hashlib
import stat

import pytest

from protocols import signing
from protocols.signing import SignatureError, make_manifest, sign_manifest, verify_manifest

CONTENT = hashlib.sha256(b"stand-in bytes").hexdigest()


@pytest.fixture(scope="module")
def key():
    return signing.generate_signing_key()


def manifest(**over):
    m = make_manifest(CONTENT, "standin", "zoo:base@crash-2-8-2", 0)
    m.update(over)
    return m


def test_valid_signature_verifies(key):
    m = manifest()
    sig = sign_manifest(m, key)
    assert len(sig) == 64
    assert verify_manifest(m, sig, key.public_key(), content_sha256=CONTENT, kind="standin") is None
    # Key order does not matter: the signed bytes are canonical JSON.
    assert verify_manifest(dict(reversed(list(m.items()))), sig, key.public_key()) is None


@pytest.mark.parametrize(
    "field,value",
    [("round", 1), ("lineage", "zoo:base@uniform"), ("kind", "adapter"), ("content-sha256", "0" * 64)],
)
def test_tampered_manifest_rejected(key, field, value):
    sig = sign_manifest(manifest(), key)
    with pytest.raises(SignatureError, match="tampered with or signed by another key"):
        verify_manifest(manifest(**{field: value}), sig, key.public_key())


def test_tampered_signature_rejected(key):
    sig = bytearray(sign_manifest(manifest(), key))
    sig[10] ^= 0x01
    with pytest.raises(SignatureError, match="tampered"):
        verify_manifest(manifest(), bytes(sig), key.public_key())


def test_wrong_key_rejected(key):
    other = signing.generate_signing_key()
    with pytest.raises(SignatureError, match="another key"):
        verify_manifest(manifest(), sign_manifest(manifest(), other), key.public_key())


@pytest.mark.parametrize("sig", [None, b""])
def test_unsigned_rejected(key, sig):
    with pytest.raises(SignatureError, match="unsigned"):
        verify_manifest(manifest(), sig, key.public_key())
    with pytest.raises(SignatureError, match="no manifest"):
        verify_manifest(None, sign_manifest(manifest(), key), key.public_key())


def test_signed_manifest_for_other_content_or_kind_rejected(key):
    sig = sign_manifest(manifest(), key)
    other = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(SignatureError, match="does not match the signed manifest"):
        verify_manifest(manifest(), sig, key.public_key(), content_sha256=other)
    with pytest.raises(SignatureError, match="expected 'adapter'"):
        verify_manifest(manifest(), sig, key.public_key(), kind="adapter")


def test_malformed_manifests_rejected(key):
    with pytest.raises(SignatureError, match="unexpected fields \\['note'\\]"):
        sign_manifest(manifest(note="x"), key)
    with pytest.raises(SignatureError, match="kind"):
        make_manifest(CONTENT, "model", "x", 0)
    with pytest.raises(SignatureError, match="64 lowercase hex"):
        make_manifest(CONTENT.upper(), "adapter", "x", 0)
    with pytest.raises(SignatureError, match="not valid JSON"):
        signing.manifest_from_json("{not json")


def test_pem_round_trip_and_json_transport(tmp_path, key):
    priv = signing.save_private_key(key, tmp_path / "keys" / "signing.pem")
    pub = signing.save_public_key(key, tmp_path / "keys" / "signing.pub.pem")
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert pub.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    loaded = signing.load_private_key(priv)
    m = manifest()
    text = signing.manifest_to_json(m)
    sig = sign_manifest(m, loaded)
    verify_manifest(signing.manifest_from_json(text), sig, signing.load_public_key(pub))


def test_loading_a_non_ed25519_key_is_a_clear_error(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "ec.pem"
    path.write_bytes(
        ec_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(SignatureError, match="not an Ed25519 private key"):
        signing.load_private_key(path)
