"""The ServerApp's round loop and the ClientApp's handlers, wired through an in-process Flower Grid."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from flwr.app import ConfigRecord, Message, RecordDict

from client.cache import StandinCache
from client.client_app import app as client_app
from coordinator.config import ConfigError, FederationConfig
from coordinator.federation.checkpoint import list_checkpoints, load_latest
from coordinator.federation.inprocess_grid import InProcessGrid
from coordinator.federation.loop import run_federation
from coordinator.federation.run import load_adapter
from protocols import schema as S
from protocols.signing import SignatureError


def _nodes(n: int, cache: Path, **extra) -> dict[int, dict]:
    return {
        1000 + i: {"partition-id": i, "num-partitions": n, "cache-dir": str(cache), **extra} for i in range(n)
    }


def run(overrides: dict, tmp_path: Path, n_nodes: int = 2, client=client_app, silent=(), node_extra=None):
    """Run the federation on an in-process grid; return (report, grid)."""
    cfg = FederationConfig.from_run_config(overrides)
    nodes = _nodes(n_nodes, tmp_path / "cache", **(node_extra or {}))
    grid = InProcessGrid(client, nodes, cfg.to_run_config(), silent=silent)
    return run_federation(grid, cfg), grid


def test_two_rounds_whole_blocks(small_run, tmp_path):
    report, grid = run(small_run, tmp_path)
    run_dir = Path(report["run_dir"])
    rounds = report["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and all(r["updated"] for r in rounds)
    # The stand-in goes to every node in round 1 and to nobody afterwards.
    assert [c["standin_sent"] for c in rounds[0]["clients"]] == [True, True]
    assert [c["standin_sent"] for c in rounds[1]["clients"]] == [False, False]
    b = report["bytes"]
    assert b["down_per_client_with_standin"] > b["standin_bytes"] > 10 * b["down_per_client_without_standin"]
    assert b["up_per_client"] > 0 and b["total_up"] == sum(
        c["bytes_up"] for r in rounds for c in r["clients"]
    )
    for c in rounds[0]["clients"]:
        assert (
            c["status"] == "ok"
            and c[S.NUM_EXAMPLES] == 48
            and c[S.TRAIN_SECONDS] > 0
            and c[S.PEAK_MEM_MB] > 0
        )
    five = report["five_numbers"]
    assert set(five) == {
        "full zero-shot",
        "emulator zero-shot",
        "emulator FT",
        "plug-in",
        "full FT (centralised)",
    }
    assert all(0 <= v <= 100 for k, v in five.items() if k != "full FT (centralised)")
    assert report["client_eval"]["clients"] == 2 and 0 <= report["client_eval"][S.EVAL_ACCURACY] <= 100
    assert report["timing"]["round_wall_mean_s"] > 0
    # Run store: report, checkpoints (two newest), final adapter, keys, stand-in.
    assert json.loads((run_dir / "report.json").read_text())["five_numbers"] == five
    assert [p.name for p in list_checkpoints(run_dir)] == ["round-0001.pt", "round-0002.pt"]
    adapter = load_adapter(run_dir)
    assert sorted({k.split(".")[1] for k in adapter}) == ["0", "5"]
    assert torch.equal(
        load_latest(run_dir)["adapter"]["blocks.0.mlp.up_proj.weight"], adapter["blocks.0.mlp.up_proj.weight"]
    )
    assert (run_dir / "keys" / "coordinator.pub").exists() and (
        run_dir / "standin" / "manifest.json"
    ).exists()
    # Client-side evaluation got the final (aggregated) adapter, not the last round's input.
    eval_msgs = [m for m in grid.sent if m.metadata.message_type == "evaluate"]
    assert len(eval_msgs) == 2
    for m in eval_msgs:
        S.check_message("evaluate-ins", m.content)
        sent = m.content["adapter"]
        assert all(torch.equal(torch.from_numpy(sent[k].numpy()), v.half()) for k, v in adapter.items())
    # Train messages followed the schema; only round-1 ones carried the stand-in.
    train_msgs = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert sum(S.STANDIN_RECORD in m.content.array_records for m in train_msgs) == 2
    for m in train_msgs:
        S.check_message("train-ins", m.content)


def test_resume_after_crash_equals_uninterrupted_fedadam(small_run, tmp_path):
    base = {**small_run, "rounds": 3, "strategy": "fedadam", "server-lr": 0.01, "client-eval": "none"}
    full_run, _ = run({**base, "run-name": "straight"}, tmp_path)
    stopped, _ = run({**base, "run-name": "crashy", "stop-after": 1}, tmp_path)
    assert stopped is None
    run_dir = Path(small_run["out-dir"]) / "crashy"
    state = load_latest(run_dir)
    assert state["round"] == 1 and set(state["strategy"]) == {"m_t", "v_t"}
    resumed, _ = run({**base, "run-name": "crashy", "resume": True}, tmp_path)
    a, b = load_adapter(full_run["run_dir"]), load_adapter(resumed["run_dir"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["round"] for r in resumed["rounds"]] == [1, 2, 3]
    assert [r["plug-in"] for r in resumed["rounds"]] == [r["plug-in"] for r in full_run["rounds"]]
    # Resuming with a changed learning rate would silently change the result: refused.
    with pytest.raises(ConfigError, match="lr"):
        run({**base, "run-name": "crashy", "resume": True, "lr": 0.5}, tmp_path)


def test_eval_every_skips_server_evaluation_but_never_the_last_round(small_run, tmp_path):
    report, _ = run({**small_run, "rounds": 3, "eval-every": 2, "client-eval": "none"}, tmp_path)
    per_round = [(r["plug-in"], r["emulator FT"]) for r in report["rounds"]]
    assert per_round[0] == (None, None)
    assert all(isinstance(a, float) and isinstance(e, float) for a, e in per_round[1:])
    assert report["five_numbers"]["plug-in"] == per_round[2][0]
    assert report["five_numbers"]["emulator FT"] == per_round[2][1]
    with pytest.raises(ConfigError, match="eval-every"):
        FederationConfig.from_run_config({"eval-every": -1})


def test_ffa_lora_keeps_a_and_moves_b(small_run, tmp_path):
    report, grid = run({**small_run, "rounds": 1, "lora-rank": 2, "client-eval": "none"}, tmp_path)
    state = load_latest(Path(report["run_dir"]))
    adapter = state["adapter"]
    first = next(m for m in grid.sent if m.metadata.message_type == "train")
    sent = {k: torch.from_numpy(v.numpy().astype("float32")) for k, v in first.content["adapter"].items()}
    a_keys = [k for k in adapter if ".lora_A" in k]
    b_keys = [k for k in adapter if ".lora_B" in k]
    assert a_keys and b_keys
    assert all(torch.equal(adapter[k].half().float(), sent[k]) for k in a_keys)  # A frozen
    assert any(adapter[k].abs().sum() > 0 for k in b_keys)  # B learned (it starts at zero)
    assert report["five_numbers"]["plug-in"] >= 0


def test_product_space_lora_trains_a_and_refactorises(small_run, tmp_path):
    overrides = {
        **small_run,
        "rounds": 1,
        "lora-rank": 2,
        "lora-aggregation": "product",
        "client-eval": "none",
    }
    report, grid = run(overrides, tmp_path)
    assert all(c["status"] == "ok" for c in report["rounds"][0]["clients"])
    first = next(m for m in grid.sent if m.metadata.message_type == "train")
    sent = {k: torch.from_numpy(v.numpy().astype("float32")) for k, v in first.content["adapter"].items()}
    adapter = load_latest(Path(report["run_dir"]))["adapter"]
    a_keys = [k for k in adapter if ".lora_A" in k]
    assert any(not torch.allclose(adapter[k], sent[k], atol=1e-3) for k in a_keys)  # A re-factorised
    # A's rows are orthonormal after the SVD split ("orthonormal_a").
    a = adapter[a_keys[0]]
    assert torch.allclose(a @ a.T, torch.eye(a.shape[0]), atol=1e-4)


def test_dare_upload_and_ties_merge(small_run, tmp_path, caplog):
    # lr 0.05 makes deltas far larger than DARE tolerates: the coordinator must say so.
    with caplog.at_level("INFO", logger="offsite"):
        report, _ = run({**small_run, "rounds": 1, "codec": "dare", "dare-p": 0.5, "aggregator": "ties",
                         "client-eval": "none", "lr": 0.05}, tmp_path)  # fmt: skip
    assert report["rounds"][0]["train"]["max-abs-delta"] > 0.005
    assert any("DARE's drop-and-rescale is unreliable" in r.getMessage() for r in caplog.records)
    rows = report["rounds"][0]["clients"]
    assert all(r["status"] == "ok" for r in rows)
    fp16, _ = run({**small_run, "rounds": 1, "run-name": "fp16", "client-eval": "none"}, tmp_path)
    assert rows[0]["bytes_up"] < 0.75 * fp16["rounds"][0]["clients"][0]["bytes_up"]


def test_silent_and_failing_nodes_do_not_stall_a_round(small_run, tmp_path):
    def flaky(message: Message, context):
        if context.node_config["partition-id"] == 1 and message.metadata.message_type == "train":
            raise RuntimeError("disk on fire")
        return client_app(message, context)

    overrides = {**small_run, "rounds": 1, "clients-per-round": 3, "client-eval": "none"}
    report, _ = run(overrides, tmp_path, n_nodes=3, client=flaky, silent={1002})
    rows = {r["node"]: r for r in report["rounds"][0]["clients"]}
    assert rows[1000]["status"] == "ok"
    assert rows[1001]["status"] == "failed" and "disk on fire" in rows[1001]["reason"]
    assert rows[1002]["status"] == "timeout"
    assert report["rounds"][0]["updated"]


def test_no_nodes_is_an_error_not_a_hang(small_run, tmp_path):
    from coordinator.federation.strategy import NoNodesError

    with pytest.raises(NoNodesError, match="0 node"):
        run({**small_run, "node-timeout": 0.5}, tmp_path, n_nodes=0)


def test_bad_updates_are_dropped_and_min_clients_holds_the_adapter(small_run, tmp_path):
    def poisoned(message: Message, context):
        reply = client_app(message, context)
        if message.metadata.message_type == "train":
            arrays = reply.content["adapter"]
            name = next(iter(arrays))
            arrays["blocks.99.bogus"] = arrays.pop(name)  # a tensor no adapter has
        return reply

    report, _ = run({**small_run, "rounds": 1, "client-eval": "none"}, tmp_path, client=poisoned)
    rnd = report["rounds"][0]
    assert not rnd["updated"] and all(c["status"] == "dropped" for c in rnd["clients"])
    assert "update" in rnd["clients"][0]["reason"] or "names" in rnd["clients"][0]["reason"]


def test_pinned_key_verifies_and_a_wrong_key_is_refused(small_run, tmp_path):
    from protocols.signing import generate_signing_key, save_public_key

    one = {**small_run, "rounds": 1, "client-eval": "none", "signing-key": str(tmp_path / "coordinator.pem")}
    from protocols.signing import save_private_key

    key = generate_signing_key()
    save_private_key(key, tmp_path / "coordinator.pem")
    right = save_public_key(key, tmp_path / "coordinator.pub")
    ok, _ = run({**one, "run-name": "k1"}, tmp_path,
                node_extra={"coordinator-key": str(right), "require-signature": True})  # fmt: skip
    assert all(c["status"] == "ok" for c in ok["rounds"][0]["clients"])
    wrong = save_public_key(generate_signing_key(), tmp_path / "other.pub")
    with pytest.raises(ConfigError):  # same run-name, no resume: refused before anything is sent
        run({**one, "run-name": "k1"}, tmp_path)
    bad, _ = run({**one, "run-name": "k2"}, tmp_path, node_extra={"coordinator-key": str(wrong)})
    rows = bad["rounds"][0]["clients"]
    assert all(c["status"] == "failed" and "signature" in c["reason"] for c in rows)


def test_query_and_cache(small_run, tmp_path):
    report, _ = run({**small_run, "rounds": 1, "client-eval": "none"}, tmp_path)
    digest = report["standin"]["hash"]
    cache = StandinCache(tmp_path / "cache")
    assert cache.has(digest) and not cache.has("0" * 64)
    grid = InProcessGrid(client_app, _nodes(1, tmp_path / "cache"))
    ask = ConfigRecord(S.new_config({S.STANDIN_HASH: digest}))
    (reply,) = grid.send_and_receive([Message(RecordDict({S.CONFIG_RECORD: ask}), 1000, "query")])
    S.check_message("query-res", reply.content)
    assert reply.content[S.CONFIG_RECORD][S.HAS_STANDIN] is True
    # A bundle that does not hash to the name it is stored under is refused.
    from protocols.tensors import directory_to_array_record

    bundle = directory_to_array_record(Path(report["run_dir"]) / "standin")
    with pytest.raises(S.ProtocolError, match="refusing"):
        StandinCache(tmp_path / "other-cache").store(bundle, "f" * 64)


def test_unsigned_adapter_is_refused(small_run, tmp_path):
    from client.trust import check_payload

    with pytest.raises(SignatureError, match="unsigned"):
        check_payload({}, '{"content-sha256":"' + "a" * 64 + '","kind":"adapter","lineage":"x","protocol-version":1,"round":1}',
                      b"", "a" * 64, "adapter")  # fmt: skip


def test_local_data_file(small_run, tmp_path):
    from emulator.data import load_task

    rows = load_task("wn-category", "train")[:20]
    data = tmp_path / "site.jsonl"
    data.write_text(
        "".join(
            json.dumps({"prompt": r.prompt, "choices": list(r.choices), "answer": r.answer}) + "\n"
            for r in rows
        )
    )
    overrides = {**small_run, "rounds": 1, "clients-per-round": 1}
    report, _ = run(overrides, tmp_path, n_nodes=1, node_extra={"data-path": str(data)})
    # A data-path alone: a seeded 20 % of the site's file is held out for its evaluation.
    assert report["rounds"][0]["clients"][0][S.NUM_EXAMPLES] == 16
    assert report["client_eval"][S.NUM_EXAMPLES] == 4


def test_run_config_is_checked():
    with pytest.raises(ConfigError, match="unknown"):
        FederationConfig.from_run_config({"roundz": 3})
    with pytest.raises(ConfigError, match="must be int"):
        FederationConfig.from_run_config({"rounds": "3"})
    with pytest.raises(ConfigError, match="strategy"):
        FederationConfig.from_run_config({"strategy": "fedprox"})
    assert FederationConfig.from_run_config({"lr": 1}).lr == 1.0


def test_pyproject_app_config_matches_defaults():
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    app_config = pyproject["tool"]["flwr"]["app"]["config"]
    assert app_config == FederationConfig().to_run_config()
