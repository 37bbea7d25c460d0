"""PM-MinED token maps: exact, prefix/extension by minimum Levenshtein, ties, specials, coverage, files."""

from __future__ import annotations

import random

import pytest
import torch

from emulator.control.token_map import (
    APPROX,
    EXACT,
    SPECIAL,
    UNMAPPED,
    build_token_map,
    load_token_map,
    map_tokenizers,
)
from emulator.control.vocab import Vocab, vocab_from_tokenizer


def levenshtein(a: str, b: str) -> int:
    """Plain dynamic-programming edit distance (the reference for the prefix shortcut)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def test_exact_prefix_extension_ties_and_unmapped():
    control = Vocab([" cat", " ca", " catalog", " cats", "x", " dog"], name="control")
    target = Vocab([" cat", " catal", " cattle", " ca", "zzz", " do", " dogs"], name="target")
    m = build_token_map(target, control)
    # " catal": prefix " cat" (distance 2) vs extension " catalog" (2): tie -> lowest id (0).
    # " cattle": prefix " cat" (3); extension none. " do": extension " dog" (1). " dogs": prefix " dog" (1).
    assert m.index.tolist() == [0, 0, 0, 1, -1, 5, 5]
    assert m.kind.tolist() == [EXACT, APPROX, APPROX, EXACT, UNMAPPED, APPROX, APPROX]
    assert m.stats["exact"] == 2 and m.stats["approximate"] == 4 and m.stats["unmapped"] == 1
    assert m.stats["unmapped_share"] == pytest.approx(1 / 7)


def test_specials_match_by_role_then_by_name_never_by_id():
    control = Vocab(
        ["", "", "a", ""], special_ids={0, 1, 3}, roles={"eos": 0, "bos": 1}, special_names={3: "<x>"}
    )
    target = Vocab(
        ["", "", "", "a"], special_ids={0, 1, 2}, roles={"bos": 0, "eos": 1}, special_names={2: "<x>"}
    )
    m = build_token_map(target, control)
    assert m.index.tolist() == [1, 0, 3, 2]
    assert m.kind.tolist() == [SPECIAL, SPECIAL, SPECIAL, EXACT]


def test_whitespace_markers_are_normalised(bpe_tok, sp_tok):
    bpe, sp = vocab_from_tokenizer(bpe_tok), vocab_from_tokenizer(sp_tok)
    assert bpe.surfaces[bpe_tok.convert_tokens_to_ids("Ġplant")] == " plant"
    assert sp.surfaces[sp_tok.convert_tokens_to_ids("▁plant")] == " plant"
    assert bpe.roles["eos"] == bpe_tok.eos_token_id and sp.roles["eos"] == sp_tok.eos_token_id


def test_zoo_map_is_min_levenshtein_among_prefix_relatives(bpe_tok, sp_tok):
    """The O(length) look-up equals a brute-force search over all prefix-related control tokens."""
    target, control = vocab_from_tokenizer(sp_tok), vocab_from_tokenizer(bpe_tok)
    m = map_tokenizers(sp_tok, bpe_tok)
    assert m.stats["exact_share"] > 0.7 and m.stats["unmapped"] + m.stats["exact"] + m.stats[
        "approximate"
    ] + m.stats["special"] == len(sp_tok)
    assert m.index[sp_tok.eos_token_id] == bpe_tok.eos_token_id  # by role, though the ids could differ
    approx = [j for j in range(len(target)) if int(m.kind[j]) == APPROX]
    cands = [(cid, s) for cid, s in enumerate(control.surfaces) if s and cid not in control.special_ids]
    for j in random.Random(0).sample(approx, 40):
        t = target.surfaces[j]
        related = [
            (levenshtein(t, s), cid) for cid, s in cands if s != t and (t.startswith(s) or s.startswith(t))
        ]
        assert min(related) == (levenshtein(t, control.surfaces[int(m.index[j])]), int(m.index[j]))


def test_same_vocabulary_is_the_identity(bpe_tok):
    assert map_tokenizers(bpe_tok, bpe_tok).is_identity


def test_save_and_load_keep_index_and_stats(bpe_tok, sp_tok, tmp_path):
    m = map_tokenizers(sp_tok, bpe_tok)
    back = load_token_map(m.save(tmp_path / "map.safetensors"))
    assert torch.equal(back.index, m.index) and torch.equal(back.kind, m.kind)
    assert back.stats == m.stats and back.control_size == len(bpe_tok)
    assert torch.equal(back.sized(len(sp_tok) + 2)[-2:], torch.tensor([-1, -1]))


def test_loading_something_else_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not a token map"):
        load_token_map(tmp_path / "x.safetensors")
    with pytest.raises(FileNotFoundError):
        load_token_map(tmp_path / "missing.safetensors")


def test_a_lone_space_is_no_prefix_for_visible_text():
    control = Vocab([" ", "=", " u", "  "], name="control")
    target = Vocab([" =", " uv", "   ", " "], name="target")
    m = build_token_map(target, control)
    # " =": the lone space ' ' is refused as its prefix; no other candidate -> unmapped.
    # " uv": prefix " u" (1). "   ": all whitespace, so the whitespace prefix "  " (1) is allowed.
    assert m.index.tolist() == [-1, 2, 3, 0]
    assert m.kind.tolist() == [UNMAPPED, APPROX, APPROX, EXACT]
