"""Choosing each next token the way transformers' generate() would: its processors, sampling, stop ids."""

from __future__ import annotations

from typing import Any

import torch
from transformers import LogitsProcessorList
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from assistant.engine import GenerationParams

IM_END = "<|im_end|>"


def stop_ids(tokenizer: Any, generation_config: Any) -> frozenset[int]:
    """Token ids that end an answer: end-of-text, padding, the config's eos ids and ChatML's <|im_end|>."""
    candidates: list[Any] = [tokenizer.eos_token_id, tokenizer.pad_token_id]
    if generation_config is not None:
        candidates.append(generation_config.eos_token_id)
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    # convert_tokens_to_ids answers unk (or None) for a token the vocabulary lacks.
    if isinstance(im_end, int) and tokenizer.convert_ids_to_tokens(im_end) == IM_END:
        candidates.append(im_end)
    stop: set[int] = set()
    for item in candidates:
        for token in item if isinstance(item, (list, tuple)) else [item]:
            if token is not None:
                stop.add(int(token))
    return frozenset(stop)


def processors_for(generation_config: Any, params: GenerationParams) -> LogitsProcessorList:
    """The model's own repetition penalty (and top-k/top-p when sampling), as generate() would apply them."""
    processors = LogitsProcessorList()
    penalty = getattr(generation_config, "repetition_penalty", None)
    if penalty is not None and penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(float(penalty)))
    if params.temperature > 0:
        processors.append(TemperatureLogitsWarper(float(params.temperature)))
        top_k = getattr(generation_config, "top_k", None)
        if top_k:
            processors.append(TopKLogitsWarper(int(top_k)))
        top_p = params.top_p if params.top_p is not None else getattr(generation_config, "top_p", None)
        if top_p is not None and top_p < 1.0:
            processors.append(TopPLogitsWarper(float(top_p)))
    return processors


def pick(
    logits: torch.Tensor,
    sequence: torch.Tensor,
    processors: LogitsProcessorList,
    params: GenerationParams,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """The next token (shape (1, 1)) from the last position's logits (1, vocab) after `sequence`'s ids."""
    scores = logits.float()
    if processors:
        scores = processors(sequence, scores)  # type: ignore[arg-type]  # an int64 tensor is a LongTensor
    if params.temperature > 0:
        return torch.multinomial(torch.softmax(scores, dim=-1), num_samples=1, generator=generator)
    return torch.argmax(scores, dim=-1, keepdim=True)
