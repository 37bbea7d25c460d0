"""Every update is checked (names, shapes, dtype, finite values, norm bound); bad ones are dropped,
logged and counted, the round goes on with the rest, and the signed lineage names the ones merged."""

from __future__ import annotations

from pathlib import Path

import pytest

from coordinator.federation.lineage import FILENAME, verify_lineage
from protocols.signing import SignatureError, load_public_key

from .harness import run, statuses
from .poison import malicious_sites, nan_update, norm_update, wrong_dtype_update, wrong_shape_update

BAD = {
    1: (nan_update, "NaN or inf"),
    2: (wrong_shape_update, "update shapes do not match"),
    3: (norm_update(1e3), "exceeds max-update-norm"),
    4: (wrong_dtype_update, "expected torch.float16"),
}


def test_bad_updates_are_dropped_counted_and_left_out_of_the_lineage(quick_run, pinned_key, tmp_path):
    private, public = pinned_key
    overrides = {**quick_run, "signing-key": private, "clients-per-round": 5, "max-update-norm": 100.0}
    client = malicious_sites({i: edit for i, (edit, _) in BAD.items()})
    report, _ = run(overrides, tmp_path, n=5, client=client, node_extra={"coordinator-key": public})
    rows = statuses(report)
    assert rows[1000][0] == "ok"
    for i, (_, reason) in BAD.items():
        assert rows[1000 + i][0] == "dropped" and reason in rows[1000 + i][1], (i, rows[1000 + i])
    rnd = report["rounds"][0]
    assert rnd["rejected"] == 4 and rnd["updated"] and rnd["train"]["clients"] == 1
    assert report["rounds"][0]["clients"][0]["update-norm"] < 100.0

    run_dir = Path(report["run_dir"])
    (record,) = verify_lineage(run_dir, load_public_key(public))
    assert record["round"] == 1 and [u["node"] for u in record["updates"]] == [1000]
    # The lineage is signed: an edited record no longer verifies.
    path = run_dir / FILENAME
    path.write_text(path.read_text().replace('"node": 1000', '"node": 1004'))
    with pytest.raises(SignatureError, match="not signed"):
        verify_lineage(run_dir, load_public_key(public))
