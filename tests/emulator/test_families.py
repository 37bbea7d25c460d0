"""Every model family bench.coverage found covered: a tiny random instance through each emulator check.

The families come from the committed bench/results/coverage.json (rerun `python -m bench.coverage`
after a transformers upgrade); each family is built once and shared by its tests.
"""

from __future__ import annotations

import pytest

from bench import coverage as cov
from emulator.blocks import UnsupportedArchitectureError, get_blocks, layer_count, text_config
from tests.conftest import single_thread

COVERED = cov.covered_families()
REFUSED = cov.refused_families()
INSTALLED = set(cov.families())


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread, also while a family is built (exact-logit checks compare bit for bit)."""
    yield from single_thread()


@pytest.fixture(scope="module", params=COVERED)
def fam(request) -> cov.Family:
    """The family's tiny model with its uniform and CRaSh emulators (module scope: pytest groups by family)."""
    _installed(request.param)
    return cov.Family(request.param)


def _installed(family: str) -> None:
    if family not in INSTALLED:
        pytest.skip(f"{family} is not in this transformers' causal-LM mapping")


def test_enough_families_are_covered():
    assert len(COVERED) >= 30


@pytest.mark.parametrize("method", ["uniform", "crash"])
def test_untouched_adapter_plugs_in_exactly(fam, method):
    cov.check_plug_in(fam, method)


def test_emulator_config_follows_the_layout(fam):
    for emu in fam.emulators.values():
        layout, config = emu.manifest.layout, text_config(emu.model.config)
        assert layer_count(emu.model.config) == len(layout) == len(get_blocks(emu.model))
        source = getattr(text_config(fam.full.config), "layer_types", None)
        if source is not None:
            assert list(config.layer_types) == [source[b] for b in layout]


def test_lora_plugs_in_and_merges(fam):
    cov.check_lora(fam)


def test_config_describes_each_position(fam):
    note = cov.check_config_per_position(fam)
    if note:
        pytest.skip(note)


def test_save_load_round_trip(fam):
    cov.check_save_load(fam)


def test_cached_decoding_equals_recomputation(fam):
    note = cov.check_cached_decoding(fam)
    if note:
        pytest.skip(note)


@pytest.mark.parametrize("family", REFUSED)
def test_refused_family_gets_a_named_reason(family):
    _installed(family)
    with pytest.raises(UnsupportedArchitectureError) as refused:
        cov.Family(family)
    config = cov.tiny_config(family)
    names = {config.model_type, text_config(config).model_type}
    assert any(repr(name) in str(refused.value) for name in names) and "not supported" in str(refused.value)
