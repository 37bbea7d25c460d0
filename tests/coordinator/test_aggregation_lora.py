import pytest
import torch
from torch import nn

from coordinator.aggregation.lora import (
    dense_delta,
    dense_mean,
    ffa_mean,
    lora_modules,
    naive_factor_mean,
    product_space_mean,
)

KEYS = {"q": ("blocks.0.q_proj.lora_A.weight", "blocks.0.q_proj.lora_B.weight")}
FAN_IN, FAN_OUT = 12, 10


def _client(seed: int, rank: int = 2, a: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a_key, b_key = KEYS["q"]
    return {
        a_key: a if a is not None else torch.randn(rank, FAN_IN, generator=g),
        b_key: torch.randn(FAN_OUT, rank, generator=g),
        "blocks.0.norm.weight": torch.randn(FAN_IN, generator=g),  # a plain, non-LoRA parameter
    }


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).norm() / ref.norm())


def test_lora_modules_pairs_factors_by_name():
    state = _client(0)
    assert lora_modules(state) == {"blocks.0.q_proj": KEYS["q"]}
    del state[KEYS["q"][1]]
    with pytest.raises(ValueError, match="no matching"):
        lora_modules(state)


def test_naive_factor_mean_is_wrong_and_product_space_mean_is_exact():
    states, counts, s = [_client(0), _client(1)], [1, 3], 2.0
    truth = dense_mean(states, counts, s)["blocks.0.q_proj"]
    manual = (1 * s * states[0][KEYS["q"][1]] @ states[0][KEYS["q"][0]]
              + 3 * s * states[1][KEYS["q"][1]] @ states[1][KEYS["q"][0]]) / 4  # fmt: skip
    assert torch.allclose(truth, manual, atol=1e-5)

    naive = dense_delta(naive_factor_mean(states, counts), s)["blocks.0.q_proj"]
    assert _rel(naive, truth) > 0.3

    residuals: dict[str, float] = {}
    merged = product_space_mean(states, counts, s, rank=4, residuals=residuals)
    assert merged[KEYS["q"][0]].shape == (4, FAN_IN) and merged[KEYS["q"][1]].shape == (FAN_OUT, 4)
    assert torch.allclose(dense_delta(merged, s)["blocks.0.q_proj"], truth, atol=1e-5)
    assert residuals["blocks.0.q_proj"] == pytest.approx(0.0, abs=1e-6)
    # Non-LoRA parameters are plain example-count means.
    norm = "blocks.0.norm.weight"
    assert torch.allclose(merged[norm], (states[0][norm] + 3 * states[1][norm]) / 4)


def test_product_space_mean_truncation_is_the_best_rank_r_approximation():
    states, counts, s = [_client(0), _client(1)], [2, 1], 1.5
    truth = dense_mean(states, counts, s)["blocks.0.q_proj"]
    residuals: dict[str, float] = {}
    merged = product_space_mean(states, counts, s, residuals=residuals)  # default: client rank 2
    approx = dense_delta(merged, s)["blocks.0.q_proj"]
    u, sigma, vh = torch.linalg.svd(truth.double())
    best = (u[:, :2] * sigma[:2]) @ vh[:2]
    assert torch.allclose(approx.double(), best, atol=1e-5)
    expected = float(sigma[2:].norm() / sigma.norm())
    assert residuals["blocks.0.q_proj"] == pytest.approx(expected, rel=1e-4)
    assert _rel(approx, truth) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("split", ["orthonormal_a", "balanced"])
def test_product_space_mean_heterogeneous_ranks_and_new_scaling(split):
    # Clients with rank 2 and 3 (alpha 8 -> s 4 and 8/3); merged into rank 5 with alpha 8 -> s 1.6.
    states, counts = [_client(0, rank=2), _client(1, rank=3)], [5, 2]
    scalings = [8 / 2, 8 / 3]
    truth = dense_mean(states, counts, scalings)["blocks.0.q_proj"]
    merged = product_space_mean(states, counts, scalings, rank=5, out_scaling=8 / 5, split=split)
    assert torch.allclose(dense_delta(merged, 8 / 5)["blocks.0.q_proj"], truth, atol=1e-5)
    with pytest.raises(ValueError, match="out_scaling"):
        product_space_mean(states, counts, scalings, rank=5)


def test_product_space_mean_loads_into_peft_and_reproduces_the_mean_update():
    from peft import LoraConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj = nn.Linear(FAN_IN, FAN_OUT, bias=False)

        def forward(self, x):
            return self.q_proj(x)

    def lora(rank: int, seed: int):
        torch.manual_seed(seed)
        model = get_peft_model(Tiny(), LoraConfig(r=rank, lora_alpha=8, target_modules=["q_proj"]))
        with torch.no_grad():
            model.base_model.model.q_proj.weight.copy_(base)
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_()  # as if trained: B starts at zero
        return model

    base = torch.randn(FAN_OUT, FAN_IN)
    clients = [lora(2, 1), lora(2, 2)]
    states = [get_peft_model_state_dict(m) for m in clients]
    merged = product_space_mean(states, [1, 2], scaling=8 / 2, rank=4, out_scaling=8 / 4)
    server = lora(4, 3)
    set_peft_model_state_dict(server, merged)
    x = torch.randn(3, FAN_IN)
    delta = dense_mean(states, [1, 2], 8 / 2)["base_model.model.q_proj"]
    with torch.no_grad():
        assert torch.allclose(server(x), x @ (base + delta).T, atol=1e-5)


def test_ffa_mean_is_exact_with_a_shared_frozen_a():
    shared_a = torch.randn(2, FAN_IN, generator=torch.Generator().manual_seed(9))
    states, counts, s = (
        [_client(0, a=shared_a), _client(1, a=shared_a), _client(2, a=shared_a)],
        [1, 2, 3],
        2.0,
    )
    merged = ffa_mean(states, counts)
    assert torch.equal(merged[KEYS["q"][0]], shared_a)
    truth = dense_mean(states, counts, s)["blocks.0.q_proj"]
    assert torch.allclose(dense_delta(merged, s)["blocks.0.q_proj"], truth, atol=1e-5)


def test_ffa_mean_rejects_different_a():
    with pytest.raises(
        ValueError, match=r"client 1 'blocks.0.q_proj.lora_A.weight' differs.*product_space_mean"
    ):
        ffa_mean([_client(0), _client(1)], [1, 1])


def test_lora_bad_inputs():
    good = _client(0)
    nan = {k: v.clone() for k, v in good.items()}
    nan[KEYS["q"][1]][0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        product_space_mean([good, nan], [1, 1], 2.0)
    wrong_in = _client(1)
    wrong_in[KEYS["q"][0]] = torch.randn(2, FAN_IN + 1)
    with pytest.raises(ValueError, match=r"maps 13->10, client 0's maps 12->10"):
        product_space_mean([good, wrong_in], [1, 1], 2.0)
    bad_rank = _client(1)
    bad_rank[KEYS["q"][1]] = torch.randn(FAN_OUT, 3)
    with pytest.raises(ValueError, match="rank 2 but"):
        product_space_mean([good, bad_rank], [1, 1], 2.0)
    with pytest.raises(ValueError, match="no LoRA factors"):
        product_space_mean([{"w": torch.ones(2)}], [1], 2.0)
    with pytest.raises(ValueError, match="scaling"):
        product_space_mean([good], [1], -1.0)


def test_rank_beyond_the_product_pads_b_with_zeros_and_a_with_orthonormal_rows():
    # out=3 < R=4: the SVD yields only 3 directions; the 4th keeps A trainable (non-zero row).
    g = torch.Generator().manual_seed(0)
    states = [{"m.lora_A.weight": torch.randn(2, 4, generator=g), "m.lora_B.weight": torch.randn(3, 2, generator=g)}
              for _ in range(2)]  # fmt: skip
    merged = product_space_mean(states, [1, 2], 2.0, rank=4)
    a, b = merged["m.lora_A.weight"], merged["m.lora_B.weight"]
    assert torch.allclose(a @ a.T, torch.eye(4), atol=1e-5)
    assert torch.equal(b[:, 3], torch.zeros(3))
    assert torch.allclose(dense_delta(merged, 2.0)["m"], dense_mean(states, [1, 2], 2.0)["m"], atol=1e-5)
