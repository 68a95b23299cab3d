"""Batched greedy answers from an in-memory (peft) model, for the post-training probe and samples.md."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

import torch

from adapters.chat_format import render_prompt_ids

IM_END = "<|im_end|>"


def stop_ids(tokenizer: Any, model: Any) -> list[int]:
    """EOS ids of the tokenizer and generation config, plus ChatML's <|im_end|> when the vocabulary has it."""
    found: list[int] = []
    config = getattr(model, "generation_config", None)
    for item in (tokenizer.eos_token_id, getattr(config, "eos_token_id", None)):
        for token in item if isinstance(item, list | tuple) else [item]:
            if token is not None and int(token) not in found:
                found.append(int(token))
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    if isinstance(im_end, int) and tokenizer.convert_ids_to_tokens(im_end) == IM_END and im_end not in found:
        found.append(im_end)
    return found


@contextmanager
def adapter_scope(model: Any, adapter: str | None) -> Iterator[None]:
    """Generate through `adapter`, or through the plain base for None (peft's disable_adapter)."""
    if not hasattr(model, "peft_config"):
        if adapter is not None:
            raise ValueError(f"model has no adapters, cannot use {adapter!r}")
        yield
        return
    if adapter is None:
        with model.disable_adapter():
            yield
        return
    model.set_adapter(adapter)
    yield


def generate_answers(
    model: Any,
    tokenizer: Any,
    questions: Sequence[str],
    system_prompt: str | None,
    adapter: str | None = None,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    repetition_penalty: float | None = None,
) -> list[str]:
    """Greedy answers, a batch at a time (left-padded), formatted exactly as the engine formats prompts.

    `repetition_penalty` None keeps the model's own generation config (what the engine uses).
    Only for a model that will not be trained afterwards: the no-grad forward lets bitsandbytes
    repack its CPU weights (docs/MODELS.md).
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids(tokenizer, model)[0]
    device = next(model.parameters()).device
    answers: list[str] = []
    model.eval()
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        prompts = [render_prompt_ids(tokenizer, [{"role": "user", "content": q}], system_prompt) for q in chunk]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        with adapter_scope(model, adapter), torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                pad_token_id=pad,
                eos_token_id=stop_ids(tokenizer, model),
                **({"repetition_penalty": repetition_penalty} if repetition_penalty else {}),
            )
        for row in out[:, width:]:
            answers.append(str(tokenizer.decode(row, skip_special_tokens=True)).strip())
    return answers


def autocast_context(device: str, setting: str = "auto") -> Any:
    """bf16 autocast for training forwards (the QLoRA recipe's compute dtype), or nothing.

    'auto' uses it on CUDA and on CPUs with AVX512-BF16, where bf16 matmuls are native (measured
    23% less CPU time per step than fp32 on the bundled base); without that instruction set bf16
    is not native on CPU and may well be slower than fp32, so 'auto' stays in fp32 there.
    """
    if setting == "off":
        return nullcontext()
    if device == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if setting == "bf16" or _cpu_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def _cpu_bf16() -> bool:
    from adapters.device import cpu_has_avx512_bf16

    return cpu_has_avx512_bf16()
