"""`offsite certs`: the TLS and key material of a deployment (protocols.tls, protocols.signing)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from coordinator.cli.common import console, fail
from protocols.signing import generate_signing_key, save_private_key, save_public_key
from protocols.tls import make_certificates


def certs(
    out: Annotated[
        Path, typer.Option(help="Directory for the files (created; existing files are kept).")
    ] = Path("certs"),
    san: Annotated[
        list[str] | None,
        typer.Option(
            help="Extra name or IP of the SuperLink (repeatable); localhost/127.0.0.1/::1 are always in."
        ),
    ] = None,
    nodes: Annotated[
        int, typer.Option(min=0, help="SuperNode auth key pairs to make (node-1 .. node-N).")
    ] = 2,
    signing_key: Annotated[
        bool,
        typer.Option(help="Also make the coordinator's Ed25519 payload signing key (coordinator.pem/.pub)."),
    ] = True,
    sites: Annotated[
        int | None,
        typer.Option(
            min=0, help="Ed25519 site keys to make for signed updates (site-1 .. site-N; default: --nodes)."
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace existing files (locks out nodes using the old CA).")
    ] = False,
) -> None:
    """Make a CA, the SuperLink's TLS certificate (with its SANs), EC SuperNode keys for node auth, the
    coordinator's payload signing key and the sites' update signing keys."""
    signer = out / "coordinator.pem"
    if signing_key and signer.exists() and not overwrite:
        fail(f"{signer} exists; pass --overwrite to replace it")
    site_files = [
        (out / f"site-{i}.pem", out / "site-keys" / f"site-{i}.pub")
        for i in range(1, 1 + (nodes if sites is None else sites))
    ]
    taken = [p for pair in site_files for p in pair if p.exists()]
    if taken and not overwrite:
        fail(f"{taken[0]} exists; pass --overwrite to replace it")
    try:
        paths = make_certificates(out, sans=san or (), n_nodes=nodes, overwrite=overwrite)
    except FileExistsError as exc:
        fail(str(exc))
    rows = [
        ("CA certificate", paths.ca_cert, "SuperLink --ssl-ca-certfile; SuperNode/flwr --root-certificates"),
        ("CA key", paths.ca_key, "keep offline"),
        ("SuperLink certificate", paths.server_cert, "flower-superlink --ssl-certfile"),
        ("SuperLink key", paths.server_key, "flower-superlink --ssl-keyfile"),
    ]
    for private, public in zip(paths.node_private_keys, paths.node_public_keys, strict=True):
        rows.append((f"{private.stem} private key", private, "flower-supernode --auth-supernode-private-key"))
        rows.append((f"{public.stem} public key", public, "flwr supernode register"))
    if signing_key:
        key = generate_signing_key()
        save_private_key(key, signer)
        save_public_key(key, out / "coordinator.pub")
        rows.append(("payload signing key", signer, "run-config signing-key"))
        rows.append(("payload verify key", out / "coordinator.pub", "SuperNode node-config coordinator-key"))
    for private, public in site_files:
        key = generate_signing_key()
        save_private_key(key, private)
        save_public_key(key, public)
        rows.append((f"{private.stem} update signing key", private, "SuperNode node-config site-key"))
    if site_files:
        rows.append(("site verify keys", out / "site-keys", "run-config site-keys"))
    table = Table(title=f"Deployment material in {out}")
    for column in ("what", "file", "use with"):
        table.add_column(column)
    for what, path, use in rows:
        table.add_row(what, str(path), use)
    console.print(table)
    console.print(next_steps(out, paths, signer), highlight=False)


def next_steps(out: Path, paths, signer: Path | None = None) -> str:
    """The commands that put the files to use, spelled out (a wheel install carries no docs)."""
    first = paths.node_private_keys[0].name if paths.node_private_keys else "node-1.key"
    first_pub = paths.node_public_keys[0].name if paths.node_public_keys else "node-1.pub"
    signer = signer or out / "coordinator.pem"
    return (
        "Next:\n"
        f"  1. coordinator: flower-superlink --ssl-ca-certfile {paths.ca_cert} --ssl-certfile {paths.server_cert} "
        f"--ssl-keyfile {paths.server_key} --enable-supernode-auth\n"
        f"  2. register each site's public key: flwr supernode register {out / first_pub} <federation>\n"
        f"  3. at each site (give it only ca.crt, its own node and site keys and coordinator.pub): flower-supernode "
        f"--root-certificates ca.crt --auth-supernode-private-key {first} --superlink HOST:9092 "
        f"--node-config \"coordinator-key='coordinator.pub' site-key='site-1.pem'\"\n"
        f"  4. run: flwr run . <federation> --run-config \"signing-key='{signer}' site-keys='{out / 'site-keys'}'\""
    )
