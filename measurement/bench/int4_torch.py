"""Prototype measured by the bench: torch's own int4 weight-only CPU kernel in place of bitsandbytes NF4.

Every nn.Linear of a bf16 model becomes Int4Linear (asymmetric 4-bit, groups of 64 along the
input, bf16 scale and zero per group), run by `aten._weight_int4pack_mm_for_cpu`, the tinygemm
kernel gpt-fast uses. It answers "how fast can this stack decode without bitsandbytes?".
"""

from __future__ import annotations

from typing import Any

import torch

GROUP = 64


class Int4Linear(torch.nn.Module):
    """y = x W^T + b with W stored as packed int4 groups; activations stay bf16."""

    def __init__(self, linear: torch.nn.Linear, group: int = GROUP) -> None:
        super().__init__()
        w = linear.weight.detach().float()
        n, k = w.shape
        groups = w.reshape(n, k // group, group)
        low, high = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
        scale = (high - low).clamp(min=1e-8) / 15
        q = torch.round((groups - low) / scale).clamp(0, 15).to(torch.int32).reshape(n, k)
        zero = low + 8 * scale  # the kernel computes (q - 8) * scale + zero
        packed_scales = torch.stack([scale.squeeze(-1), zero.squeeze(-1)], dim=-1).transpose(0, 1).contiguous()
        self.register_buffer("packed", torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 2))
        self.register_buffer("scales_zeros", packed_scales.to(torch.bfloat16))
        self.bias = None if linear.bias is None else torch.nn.Parameter(linear.bias.detach().to(torch.bfloat16), False)
        self.group = group
        self.in_features, self.out_features = k, n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, self.group, self.scales_zeros)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def convert_to_int4(model: Any, include_head: bool = True) -> dict[str, Any]:
    """Replace the linear layers of a dense (bf16/fp32) model in place; returns what was converted."""
    converted = 0
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if type(child) is not torch.nn.Linear or child.in_features % GROUP:
                continue
            if child_name == "lm_head" and not include_head:
                continue
            setattr(module, child_name, Int4Linear(child))
            converted += 1
    if include_head:
        model.config.tie_word_embeddings = False  # the head is now its own int4 copy
    return {"int4_linear_layers": converted, "group_size": GROUP, "kernel": "aten._weight_int4pack_mm_for_cpu"}
