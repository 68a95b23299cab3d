"""GGUF -> bf16 safetensors checkpoint (+ tokenizer and chat template), re-tying a near-copy output layer."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from pathlib import Path

import torch

#: Tie lm_head to the token embeddings when they differ by less than this (relative Frobenius
#: norm). Two quantizations of one matrix differ by their quantization noise (Q5_0 vs Q8_0:
#: 0.044 on the bundled file); two unrelated matrices differ by about sqrt(2).
TIE_MAX_RELATIVE_DIFF = 0.15
_WEIGHTS = "model.safetensors"


def convert_gguf(gguf: Path, out: Path, say: Callable[[str], None] | None = None) -> dict[str, object]:
    """Write a bf16 safetensors checkpoint + tokenizer (with chat template) of `gguf` into `out`.

    Returns facts about the conversion (tie decision and the measured lm_head/embedding diff);
    `say` gets one line per step.
    """
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    say = say or (lambda _message: None)
    started = time.perf_counter()
    say(f"reading the tokenizer from {gguf.name} (one-time, ~20 s)...")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, trust_remote_code=False)
    say(f"de-quantizing {gguf.name} to bf16 (one-time, ~40 s, ~3 GB RAM)...")
    # dequantize=True: a plain dense model whatever transformers' packed-GGUF support becomes;
    # the conversion below needs ordinary tensors.
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent,
        gguf_file=gguf.name,
        dtype=torch.bfloat16,
        quantization_config=GgufConfig(dequantize=True),
        trust_remote_code=False,
    )
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    config = model.config
    generation_config = model.generation_config
    del model
    gc.collect()

    facts: dict[str, object] = {"tied": bool(getattr(config, "tie_word_embeddings", False))}
    head, embed = state.get("lm_head.weight"), state.get("model.embed_tokens.weight")
    if head is not None and embed is not None and head.shape == embed.shape:
        diff = head.float() - embed.float()
        max_abs = float(diff.abs().max())
        relative = float(diff.norm() / head.float().norm())
        del diff
        facts.update(lm_head_max_abs_diff=max_abs, lm_head_relative_diff=relative)
        say(f"lm_head vs token embeddings: max abs diff {max_abs:.5f}, relative {relative:.4f}")
        if relative < TIE_MAX_RELATIVE_DIFF:
            # Two quantizations of one matrix: keep the output layer (it sets the logits, and
            # llama.cpp stores it at the higher precision) for both roles. Saves one
            # vocab x hidden matrix in memory and in every decode step.
            state["model.embed_tokens.weight"] = head
            del state["lm_head.weight"]
            config.tie_word_embeddings = True
            facts["tied"] = True
    # Written directly rather than via save_pretrained, which refuses GGUF-loaded models.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.dtype = torch.bfloat16
    save_file(state, str(out / _WEIGHTS), metadata={"format": "pt"})
    del state
    gc.collect()
    config.save_pretrained(out)
    eos = generation_config.eos_token_id
    eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
        eos_ids.append(tokenizer.eos_token_id)
    generation_config.eos_token_id = eos_ids[0] if len(eos_ids) == 1 else eos_ids
    generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    facts["convert_seconds"] = round(time.perf_counter() - started, 1)
    say(f"converted in {facts['convert_seconds']} s")
    return facts
