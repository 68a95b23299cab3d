"""One adapter's LoRA products for projections that share an input (q/k/v, gate/up), with peft's exact numbers.

peft runs, per projection, a cast, A, B, a scaling multiply and another cast: up to 42 small ops
per layer and token. Here the casts and the scaling happen once per input, and for a single
token the A matrices of an input are one stacked matmul: with one row, each output element is
still the same dot product over the same terms (measured bit-identical on every layer of the
shipped adapter; with several rows the BLAS blocks differently, so prefill keeps one A per
projection). The B matrices stay separate (a block-diagonal B adds its zeros in between and
rounds differently). The scaling multiplies the side-by-side result once, as peft does per
projection. Only the stacked A is a copy; every other matrix is the adapter's own tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional


@dataclass(frozen=True)
class FusedLora:
    """The LoRA terms of several projections of one input, side by side, as peft computes each of them."""

    downs: tuple[torch.Tensor | None, ...]  # each projection's A (rank, in_features); None: not adapted
    ups: tuple[torch.Tensor | None, ...]  # each projection's B (out_features, rank)
    out_features: tuple[int, ...]
    stacked: torch.Tensor  # the A matrices present, stacked: one matmul for a single token
    scaling: float | None  # multiplies B's output, as in peft (None: 1)

    def add_to(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Add the LoRA terms for input `x` (rows, in_features) to `out`, the base projections' output, in place.

        Every element is peft's `result + (B(A(x)) * scaling).to(result.dtype)`.
        """
        wide = x.to(self.stacked.dtype)
        if x.shape[0] > 1:
            # Many rows (prefill): one projection at a time, scaled and added in place, with no
            # side-by-side copy of the large float32 terms.
            start = 0
            for down, up, width in zip(self.downs, self.ups, self.out_features, strict=True):
                if down is not None and up is not None:
                    part = functional.linear(functional.linear(wide, down), up)
                    if self.scaling is not None:
                        part.mul_(self.scaling)
                    out[:, start : start + width] += part.to(out.dtype)
                start += width
            return out
        low = functional.linear(wide, self.stacked)
        parts: list[torch.Tensor] = []
        at = 0
        for up, width in zip(self.ups, self.out_features, strict=True):
            if up is None:
                parts.append(wide.new_zeros(1, width))
                continue
            parts.append(functional.linear(low[:, at : at + up.shape[1]], up))
            at += up.shape[1]
        delta = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        if self.scaling is not None:
            delta.mul_(self.scaling)
        out += delta.to(out.dtype)
        return out


def plain_lora(module: Any, adapter: str) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """(A, B, scaling) of `adapter` on a peft LoRA layer, None when the layer does not carry it.

    Raises ValueError for what a plain product cannot reproduce (DoRA and other variants, LoRA bias).
    """
    lora_a = getattr(module, "lora_A", None)
    if lora_a is None or adapter not in lora_a:
        return None
    if adapter in getattr(module, "lora_variant", {}) or getattr(module, "lora_bias", {}).get(adapter):
        raise ValueError(f"adapter {adapter!r} is not a plain LoRA (DoRA or LoRA bias)")
    a, b = lora_a[adapter].weight, module.lora_B[adapter].weight
    if a.dtype != b.dtype or getattr(lora_a[adapter], "bias", None) is not None:
        raise ValueError(f"adapter {adapter!r} has LoRA layers this fusion does not reproduce")
    return a.detach(), b.detach(), float(module.scaling[adapter])


def fuse_lora(modules: Sequence[Any], out_features: Sequence[int], adapter: str) -> FusedLora | None:
    """The LoRA of `adapter` over `modules` (projections of one input, outputs side by side), or None.

    A projection the adapter does not touch contributes zeros; None when it touches none of them.
    """
    parts = [plain_lora(m, adapter) for m in modules]
    present = [p for p in parts if p is not None]
    if not present:
        return None
    scalings = {p[2] for p in present}
    if len(scalings) > 1:
        raise ValueError(f"adapter {adapter!r} uses different scalings on projections of one input")
    downs = tuple(p[0] if p is not None else None for p in parts)
    ups = tuple(p[1] if p is not None else None for p in parts)
    stacked = present[0][0] if len(present) == 1 else torch.cat([p[0] for p in present], dim=0).contiguous()
    scaling = scalings.pop()
    return FusedLora(downs, ups, tuple(int(n) for n in out_features), stacked, None if scaling == 1.0 else scaling)
