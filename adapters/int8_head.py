"""A weight-only int8 output layer (lm_head) for CPU decode: half the bytes of the bf16 head, same greedy answers.

The profile shows the bf16 lm_head (vocab x hidden, 136M weights on Qwen2.5-0.5B) taking about
half of every decode step; torch's int8 weight-only kernel reads half the bytes and keeps the
activations in bf16 (no input quantization), so greedy answers stay the same in practice.
"""

from __future__ import annotations

from typing import Any

import torch


class Int8OutputLayer(torch.nn.Module):
    """y = x @ (q * scale)^T with int8 rows `q` and one bf16 scale per output row."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        w = weight.detach().float()
        scales = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        self.register_buffer("qweight", torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8).contiguous())
        self.register_buffer("scales", scales.to(torch.bfloat16))
        self.out_features, self.in_features = w.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).to(torch.bfloat16)
        out = torch.ops.aten._weight_int8pack_mm(flat, self.qweight, self.scales)
        return out.reshape(*x.shape[:-1], self.out_features)


def use_int8_output_layer(model: Any) -> dict[str, Any]:
    """Swap `model.lm_head` for Int8OutputLayer in place; returns how far its logits move on a probe input."""
    head = model.get_output_embeddings()
    weight: torch.Tensor = head.weight
    new = Int8OutputLayer(weight)
    probe = torch.randn(4, weight.shape[1], generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    with torch.inference_mode():
        ref = torch.nn.functional.linear(probe, weight.to(torch.bfloat16)).float()
        got = new.forward(probe).float()
    model.set_output_embeddings(new)
    # A tied model would otherwise re-tie lm_head to the embeddings on the next tie_weights() call.
    model.config.tie_word_embeddings = False
    return {
        "lm_head_relative_error": float((got - ref).norm() / ref.norm()),
        "argmax_agrees": bool((got.argmax(dim=-1) == ref.argmax(dim=-1)).all()),
        "int8_mib": new.out_features * new.in_features / 2**20,
    }
