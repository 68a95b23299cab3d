"""The lean forward pass (adapters/fast_forward.py) against the model's own forward, on tiny fp32 and NF4 models."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from adapters.fast_forward import FastForward, build_fast_forward
from adapters.hf_engine import TransformersEngine
from adapters.kv_cache import KVCache
from adapters.lora_fusion import fuse_lora
from assistant.engine import EngineInfo
from tests.tiny_models import build_tiny_engine_files, tiny_base_checksum

PROMPT = [3, 17, 42, 9, 77, 5, 120, 64, 33, 8, 91, 2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_tiny_engine_files(tmp_path_factory.mktemp("tiny-fast"), ("alpha",))


def engine_for(tiny: dict[str, Path], quantized: bool) -> TransformersEngine:
    kwargs: dict[str, Any] = {}
    if quantized:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
        )
    model = AutoModelForCausalLM.from_pretrained(tiny["base"], dtype=torch.float32, **kwargs)
    info = EngineInfo("tiny-qwen2", "nf4" if quantized else "fp32", "cpu")
    tokenizer = AutoTokenizer.from_pretrained(tiny["base"])
    return TransformersEngine(model, tokenizer, info, tiny_base_checksum(tiny["base"]), tiny["adapters"])


KINDS = [
    False,
    pytest.param(True, marks=pytest.mark.skipif(not importlib.util.find_spec("bitsandbytes"), reason="bnb")),
]


def reference(engine: TransformersEngine, adapter: str | None, split: int, steps: list[int]) -> list[torch.Tensor]:
    """The model's own logits: PROMPT[:split], then PROMPT[split:], then one token at a time."""
    out = []
    with torch.inference_mode(), engine.scoped_model(adapter) as model:
        past = DynamicCache(config=model.config)
        if split:
            model(input_ids=torch.tensor([PROMPT[:split]]), past_key_values=past, use_cache=True)
        ids = PROMPT[split:]
        for chunk in [ids, *[[t] for t in steps]]:
            # The last position only, as the engine asks for it (the head on one row rounds as on one row).
            logits = model(
                input_ids=torch.tensor([chunk]), past_key_values=past, use_cache=True, logits_to_keep=1
            ).logits
            out.append(logits[:, -1, :])
    return out


def fast_logits(engine: TransformersEngine, adapter: str | None, split: int, steps: list[int]) -> list[torch.Tensor]:
    fast = engine._fast
    assert isinstance(fast, FastForward)
    past = KVCache(engine._layers, len(PROMPT) + len(steps))
    out = []
    with torch.inference_mode():
        if split:
            fast(torch.tensor([PROMPT[:split]]), past, adapter)
        for chunk in [PROMPT[split:], *[[t] for t in steps]]:
            out.append(fast(torch.tensor([chunk]), past, adapter))
    return out


@pytest.mark.parametrize("quantized", KINDS)
@pytest.mark.parametrize("adapter", [None, "alpha"])
def test_prefill_logits_are_bit_identical_to_the_models_own(
    tiny: dict[str, Path], quantized: bool, adapter: Any
) -> None:
    engine = engine_for(tiny, quantized)
    assert engine.forward_path == "fast forward"
    for split in (0, 5):  # a fresh prompt, and new tokens after kept ones (a causal mask is needed)
        ours = fast_logits(engine, adapter, split, [])
        theirs = reference(engine, adapter, split, [])
        assert torch.equal(ours[0], theirs[0])


@pytest.mark.parametrize("quantized", KINDS)
@pytest.mark.parametrize("adapter", [None, "alpha"])
def test_single_token_steps_are_bit_identical_too(tiny: dict[str, Path], quantized: bool, adapter: Any) -> None:
    engine = engine_for(tiny, quantized)
    steps = [11, 12, 13, 99, 4, 6]
    ours = fast_logits(engine, adapter, 5, steps)
    theirs = reference(engine, adapter, 5, steps)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_packing_single_queries_is_faster_arithmetic_not_the_same(tiny: dict[str, Path]) -> None:
    engine = engine_for(tiny, False)
    fast = engine.fast_forward
    assert fast is not None and not fast.pack_single_query  # answers keep transformers' own arithmetic
    fast.pack_single_query = True
    try:
        packed = fast_logits(engine, None, 5, [11, 12, 13])
    finally:
        fast.pack_single_query = False
    exact = reference(engine, None, 5, [11, 12, 13])
    for a, b in zip(packed, exact, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_fused_lora_equals_peft_per_projection(tiny: dict[str, Path]) -> None:
    engine = engine_for(tiny, False)
    with engine.scoped_model("alpha") as model:
        attn = model.get_base_model().model.layers[1].self_attn
        group = [attn.q_proj, attn.k_proj, attn.v_proj]
        fused = fuse_lora(group, [m.out_features for m in group], "alpha")
        assert fused is not None
        generator = torch.Generator().manual_seed(0)
        for rows in (1, 3, 17):
            x = torch.randn(rows, group[0].in_features, generator=generator)
            with torch.inference_mode():
                expected = torch.cat([m(x) - m.get_base_layer()(x) for m in group], dim=-1)
                ours = fused.add_to(torch.cat([m.get_base_layer()(x) for m in group], dim=-1), x)
                theirs = torch.cat([m(x) for m in group], dim=-1)
            assert torch.equal(ours, theirs)
            assert expected.abs().sum() > 0  # the adapter does change these projections


def test_unknown_models_fall_back_to_the_transformers_forward(tiny: dict[str, Path]) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny["base"], dtype=torch.float32)
    model.config.model_type = "llama"
    fast, why = build_fast_forward(model, [])
    assert fast is None and "llama" in why
