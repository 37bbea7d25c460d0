"""Offline merge (`offsite merge`): config checks, task vectors, merge maths, and the CLI end to end."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from coordinator.aggregation.merge import (
    MergeConfigError,
    MergeSource,
    MergeSpec,
    apply_vector,
    load_spec,
    merge_vectors,
    parse_spec,
    task_vector,
)
from coordinator.cli import app
from emulator.blocks import get_blocks
from emulator.plugin import add_lora, lora_state, plug_in, plug_in_lora
from tests.conftest import tiny_model


def _whole_block_adapter(full, blocks: list[int], scale: float, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for b in blocks:
        for name, t in get_blocks(full)[b].state_dict().items():
            out[f"blocks.{b}.{name}"] = t.float() + scale * torch.randn(t.shape, generator=gen)
    return out


def _spec(method: str, n: int = 2, **params) -> MergeSpec:
    return MergeSpec(method, "zoo:base", [MergeSource(f"a{i}.safetensors") for i in range(n)], params)


def test_whole_block_task_vector_is_adapter_minus_base():
    full = tiny_model("llama", layers=4)
    adapter = _whole_block_adapter(full, [0, 3], 0.01, seed=1)
    vec = task_vector(full, adapter)
    base = get_blocks(full)[3].state_dict()
    assert set(vec) == set(adapter)
    name = next(k for k in vec if k.startswith("blocks.3."))
    assert torch.allclose(vec[name], adapter[name] - base[name.split(".", 2)[2]].float())


def test_disjoint_adapters_summed_equal_plugging_both_in(token_batch):
    full = tiny_model("llama", layers=4)
    a = _whole_block_adapter(full, [0], 0.02, seed=1)
    b = _whole_block_adapter(full, [3], 0.02, seed=2)
    merged = merge_vectors(_spec("task_arithmetic"), [task_vector(full, a), task_vector(full, b)])
    model = apply_vector(copy.deepcopy(full), merged)
    both = plug_in(full, {**a, **b})
    ids, mask = token_batch
    with torch.no_grad():
        got = model(input_ids=ids, attention_mask=mask).logits
        want = both(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(got, want, atol=1e-5)


def test_normalize_gives_the_weighted_mean_and_lambda_scales():
    v1, v2 = {"blocks.0.w": torch.ones(3)}, {"blocks.0.w": 3 * torch.ones(3)}
    spec = MergeSpec("task_arithmetic", "x", [MergeSource("a", 1.0), MergeSource("b", 3.0)],
                     {"normalize": True, "lambda": 2.0})  # fmt: skip
    assert torch.allclose(merge_vectors(spec, [v1, v2])["blocks.0.w"], 2.0 * 2.5 * torch.ones(3))
    spec = MergeSpec("task_arithmetic", "x", [MergeSource("a", 1.0), MergeSource("b", 1.0)])
    assert torch.allclose(merge_vectors(spec, [v1, v2])["blocks.0.w"], 4 * torch.ones(3))  # a sum


def test_ties_keeps_a_lone_contribution_whole():
    # Where only one source changed a tensor, TIES' disjoint mean keeps its value (no halving).
    v1 = {"blocks.0.w": torch.tensor([1.0, -2.0, 0.5])}
    v2 = {"blocks.1.w": torch.tensor([0.3, 0.3, 0.3])}
    merged = merge_vectors(_spec("ties", density=1.0, normalize=True), [v1, v2])
    assert torch.allclose(merged["blocks.0.w"], v1["blocks.0.w"])
    assert torch.allclose(merged["blocks.1.w"], v2["blocks.1.w"])


def test_lora_task_vector_matches_merged_peft_weights():
    full = tiny_model("llama", layers=4)
    peft_model = add_lora(copy.deepcopy(full), [1, 2], rank=2)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    state = lora_state(peft_model)
    vec = task_vector(full, state)
    merged = apply_vector(copy.deepcopy(full), vec)
    reference = plug_in_lora(full, state, rank=2).merge_and_unload()
    want, got = reference.state_dict(), merged.state_dict()
    assert any(".lora" not in k for k in vec) and len(vec) > 0
    assert all(torch.allclose(got[k], want[k], atol=1e-6) for k in want)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "must be a mapping"),
        ({"merge_method": "avg", "base_model": "zoo:base", "models": []}, "merge_method must be one of"),
        ({"merge_method": "ties", "base_model": "zoo:base", "models": [{"model": "a"}]}, "at least two"),
        ({"merge_method": "ties", "base_model": "", "models": [{"model": "a"}] * 2}, "base_model"),
        ({"merge_method": "ties", "base_model": "b", "models": [{"model": "a"}, {"path": "b"}]}, "models[1]"),
        ({"merge_method": "ties", "base_model": "b", "models": [{"model": "a", "parameters": {"weight": "x"}}] * 2},
         "finite number"),
        ({"merge_method": "ties", "base_model": "b", "models": [{"model": "a"}] * 2, "parameters": {"k": 1}},
         "unknown key"),
        ({"merge_method": "ties", "base_model": "b", "models": [{"model": "a"}] * 2, "slices": []}, "unknown key"),
    ],
)  # fmt: skip
def test_bad_configs_get_clear_errors(data, message):
    with pytest.raises(MergeConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_spec(data)


def test_bad_yaml_and_missing_adapter(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("merge_method: [ties\n")
    with pytest.raises(MergeConfigError, match="not valid YAML"):
        load_spec(bad)
    full = tiny_model("llama", layers=4)
    from coordinator.aggregation.merge import read_adapter

    with pytest.raises(MergeConfigError, match="no adapter"):
        read_adapter(tmp_path / "missing-run")
    with pytest.raises(MergeConfigError, match="names no block"):
        task_vector(full, {"blocks.9.mlp.up_proj.weight": torch.zeros(1)})


def test_offsite_merge_cli_writes_a_loadable_checkpoint(tiny_checkpoint, tmp_path):
    full = AutoModelForCausalLM.from_pretrained(tiny_checkpoint)
    a = _whole_block_adapter(full, [0, 5], 0.01, seed=1)
    b = _whole_block_adapter(full, [0, 5], 0.01, seed=2)
    (tmp_path / "run-a").mkdir()
    save_file(a, str(tmp_path / "run-a" / "adapter.safetensors"))
    save_file(b, str(tmp_path / "b.safetensors"))
    task = tmp_path / "task.jsonl"
    task.write_text(
        "\n".join(
            json.dumps({"prompt": f"word {i} is a", "choices": [" noun", " verb"], "answer": i % 2})
            for i in range(8)
        )
        + "\n"
    )
    config = tmp_path / "merge.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "merge_method": "dare_ties",
                "base_model": str(tiny_checkpoint),
                "models": [{"model": "run-a"}, {"model": "b.safetensors", "parameters": {"weight": 0.5}}],
                "parameters": {"p": 0.5, "seed": 3},
                "evaluate": [str(task)],
            }
        )
    )
    out = tmp_path / "merged"
    result = CliRunner().invoke(app, ["merge", str(config), "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "merge.json").read_text())
    assert report["method"] == "dare_ties" and 0 <= report["accuracy"][str(task)] <= 100
    merged = AutoModelForCausalLM.from_pretrained(out)
    changed = [k for k, v in merged.state_dict().items() if not torch.equal(v, full.state_dict()[k])]
    assert changed and all(".layers.0." in k or ".layers.5." in k for k in changed)

    config.write_text(config.read_text().replace("dare_ties", "averaging"))
    result = CliRunner().invoke(app, ["merge", str(config), "--out", str(out)])
    assert result.exit_code == 2 and "merge_method must be one of" in result.output
