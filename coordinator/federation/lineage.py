"""A signed lineage of the global adapter: which client updates made each round's adapter.

`lineage.jsonl` in the run directory holds one line per finished round: a record naming the round,
the stand-in, the previous and the new global adapter (SHA-256 of the fp32 master copy, and of the
fp16 wire copy that clients verify next round), how they were merged, and every merged update
(node, SHA-256 of its decoded delta, weight), plus the coordinator's Ed25519 signature over the
record's canonical JSON. Each record names its predecessor's adapter hash, so the file is a chain:
`verify_lineage` checks every signature and every link.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocols.hashing import hash_state_dict
from protocols.signing import SignatureError

FILENAME = "lineage.jsonl"


def _canonical(record: Mapping[str, Any]) -> bytes:
    return json.dumps(dict(record), sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def adapter_hashes(adapter: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """SHA-256 of the fp32 master adapter and of its fp16 wire copy (the signed adapter manifest's hash)."""
    master = {k: v.detach().float().contiguous() for k, v in adapter.items()}
    return {
        "adapter_sha256": hash_state_dict(master),
        "wire_sha256": hash_state_dict({k: v.half() for k, v in master.items()}),
    }


def read_lineage(run_dir: str | Path) -> list[dict]:
    """Every line of the run's lineage file as {"record", "signature"} (empty if none)."""
    path = Path(run_dir) / FILENAME
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_round(run_dir: str | Path, key: Ed25519PrivateKey, record: Mapping[str, Any]) -> dict:
    """Sign and append one round's record; a record for this round or later (a crash replay) is replaced."""
    lines = [e for e in read_lineage(run_dir) if e["record"]["round"] < record["round"]]
    entry = {"record": dict(record), "signature": key.sign(_canonical(record)).hex()}
    lines.append(entry)
    path = Path(run_dir) / FILENAME
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in lines))
    tmp.replace(path)  # atomic: a crash leaves the old file or the new one, never half of one
    return entry


def round_record(
    server_round: int,
    standin_sha256: str,
    previous: Mapping[str, torch.Tensor],
    adapter: Mapping[str, torch.Tensor],
    updated: bool,
    aggregator: str,
    merged: list[tuple],
    privacy: dict | None = None,
) -> dict:
    """The lineage record of one round (see the module docstring)."""
    return {
        "round": server_round,
        "standin_sha256": standin_sha256,
        "previous_sha256": adapter_hashes(previous)["adapter_sha256"],
        **adapter_hashes(adapter),
        "updated": updated,
        "aggregator": aggregator,
        # (node, delta SHA-256, weight[, signing site key id]): the site key is None where sites do not sign
        "updates": [{"node": int(n), "delta_sha256": h, "weight": float(w), "site_key": k[0] if k else None}
                    for n, h, w, *k in merged],  # fmt: skip
        "privacy": privacy,
    }


def verify_lineage(run_dir: str | Path, public_key: Ed25519PublicKey) -> list[dict]:
    """The verified records, oldest first; SignatureError on a bad signature or a broken chain."""
    records: list[dict] = []
    for entry in read_lineage(run_dir):
        record = entry["record"]
        try:
            public_key.verify(bytes.fromhex(entry["signature"]), _canonical(record))
        except (InvalidSignature, ValueError):
            raise SignatureError(
                f"lineage record of round {record.get('round')} is not signed by this key"
            ) from None
        if records and record["previous_sha256"] != records[-1]["adapter_sha256"]:
            raise SignatureError(
                f"lineage broken at round {record['round']}: it does not follow the previous adapter"
            )
        records.append(record)
    return records
