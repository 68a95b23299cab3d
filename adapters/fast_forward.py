"""A lean forward pass for Qwen2 decoders on CPU: the model's own weights and operations, without the framework.

A decode step through transformers + peft runs ~1,000 Python-level module calls (masks, hooks,
peft dispatch, seven separate 4-bit matmuls and up to 42 LoRA matmuls per layer). This pass runs
the same arithmetic in the same order and dtypes, so its logits are bit-identical to the model's:
q/k/v and gate/up are one 4-bit matmul each (their packed rows side by side; every output
element is computed as before), a LoRA is two matmuls per input (adapters/lora_fusion.py), and
single-token attention packs the query heads onto their key/value heads (what transformers does
itself when a mask is present; bit-identical to its GQA call and ~10x faster on CPU).
Models or layers it does not know are left to the transformers forward (`build` returns None).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn import functional

from adapters.kv_cache import GrowingLayer, KVCache
from adapters.lora_fusion import FusedLora, fuse_lora


class Unsupported(ValueError):
    """The model has a part this pass does not reproduce exactly."""


def _base(module: Any) -> Any:
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module


class Projection:
    """Linear layers that share an input, as one matmul with their outputs side by side (bias added after)."""

    def __init__(self, modules: Sequence[Any]) -> None:
        bases = [_base(m) for m in modules]
        self.out_features = [int(b.out_features) for b in bases]
        biases = [b.bias for b in bases]
        if any(x is None for x in biases) and not all(x is None for x in biases):
            raise Unsupported("projections of one input with and without bias")
        self.bias = None if biases[0] is None else torch.cat([x.detach() for x in biases]).contiguous()
        kinds = {type(b).__name__ for b in bases}
        if kinds == {"Linear"}:
            # Dense layers stay separate: a stacked dense matmul blocks, and so rounds, differently.
            self._kernel: Any = None
            self._dense = [(b.weight.detach(), None if b.bias is None else b.bias.detach()) for b in bases]
            return
        if kinds != {"Linear4bit"}:
            raise Unsupported(f"projection layers {sorted(kinds)}")
        self._nf4(bases)

    def _nf4(self, bases: list[Any]) -> None:
        """bitsandbytes' CPU layout: [N, K/2] packed rows, absmax [K/blocksize, N]; rows of several layers stack."""
        from bitsandbytes.cextension import lib

        states = [b.weight.quant_state for b in bases]
        if not all(getattr(s, "packing_format_for_cpu", False) for s in states):
            raise Unsupported("4-bit weights not in bitsandbytes' CPU layout (no avx512-bf16, or not warmed up)")
        kinds = {s.quant_type for s in states}
        blocks = {s.blocksize for s in states}
        name = f"gemv_4bit_inference_cpu_{kinds.pop()}_bf16" if len(kinds) == 1 else ""
        if len(blocks) != 1 or not hasattr(lib, name) or any(b.compute_dtype != torch.bfloat16 for b in bases):
            raise Unsupported("4-bit layers of mixed formats, or a bitsandbytes without its CPU kernel")
        self._kernel = getattr(lib, name)
        self.weight = bases[0].weight.data
        if len(bases) > 1:
            # One stacked copy, and the layers' own weights become views of it: no memory is doubled.
            self.weight = torch.cat([b.weight.data for b in bases]).contiguous()
            row = 0
            for base in bases:
                rows = base.weight.data.shape[0]
                base.weight.data = self.weight[row : row + rows]
                row += rows
        self.absmax = torch.cat([s.absmax for s in states], dim=1).contiguous()
        if self.bias is not None:
            self.bias = self.bias.to(torch.bfloat16)
        n, k = self.weight.shape[0], int(bases[0].in_features)
        # The call's fixed arguments, built once: (N, K, blocksize, x row stride, out row stride).
        self._fixed = tuple(ctypes.c_int64(v) for v in (n, k, blocks.pop(), k, n))
        self._pointers = (ctypes.c_void_p(self.weight.data_ptr()), ctypes.c_void_p(self.absmax.data_ptr()))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: (M, K), rows contiguous; returns (M, N)."""
        if self._kernel is None:
            outs = [functional.linear(x, weight, bias) for weight, bias in self._dense]
            return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)
        given = x.dtype  # Linear4bit computes in bf16 and answers in its input's dtype
        if given != torch.bfloat16:
            x = x.to(torch.bfloat16)
        n, k, blocksize, x_stride, out_stride = self._fixed
        weight, absmax = self._pointers
        out = torch.empty(x.shape[0], n.value, dtype=torch.bfloat16)
        self._kernel(
            ctypes.c_int64(x.shape[0]),
            n,
            k,
            ctypes.c_void_p(x.data_ptr()),
            weight,
            absmax,
            ctypes.c_void_p(out.data_ptr()),
            blocksize,
            x_stride,
            out_stride,
        )
        if self.bias is not None:
            out += self.bias  # as bitsandbytes adds it: after the matmul, in place
        return out if given == torch.bfloat16 else out.to(given)


@dataclass
class Layer:
    """One decoder layer's weights, with each adapter's fused LoRA terms."""

    norm_in: Any
    norm_post: Any
    qkv: Projection
    o: Projection
    gate_up: Projection
    down: Projection
    #: adapter -> fused LoRA of (qkv, o, gate_up, down); a None entry: the adapter leaves that one alone
    lora: dict[str, tuple[FusedLora | None, ...]] = field(default_factory=dict)


def _rms(norm: Any, x: torch.Tensor) -> torch.Tensor:
    """Qwen2RMSNorm's own arithmetic (in place on the float32 copy: the same values, fewer allocations)."""
    dtype = x.dtype
    h = x.to(torch.float32, copy=True)
    variance = h.pow(2).mean(-1, keepdim=True)
    h.mul_(variance.add_(norm.variance_epsilon).rsqrt_())
    return norm.weight * h.to(dtype)  # type: ignore[no-any-return]


def _signed_sin(sin: torch.Tensor) -> torch.Tensor:
    """sin with its first half negated: rotate_half(x) * sin == roll(x, half) * this, value for value.

    rotate_half(x) is cat(-x2, x1) and negating before or after a multiply rounds the same.
    """
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


def _project(proj: Projection, lora: FusedLora | None, x: torch.Tensor) -> torch.Tensor:
    out = proj(x)
    return out if lora is None else lora.add_to(out, x)


class FastForward:
    """Logits of the last of some new tokens, appending their keys/values to a KVCache, through a named adapter."""

    def __init__(self, model: Any, adapters: Sequence[str]) -> None:
        config = model.config
        if getattr(config, "model_type", None) != "qwen2" or getattr(config, "use_sliding_window", False):
            raise Unsupported(f"model type {getattr(config, 'model_type', None)!r} (only qwen2 without sliding window)")
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        decoder = inner.model
        if decoder.embed_tokens.weight.device.type != "cpu" or config._attn_implementation != "sdpa":
            raise Unsupported("only the CPU sdpa attention path is reproduced")
        self._embed = decoder.embed_tokens
        self._rotary = decoder.rotary_emb
        self._norm = decoder.norm
        self._head = inner.get_output_embeddings()
        self._heads = int(config.num_attention_heads)
        self._kv_heads = int(config.num_key_value_heads)
        self._head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // self._heads)
        self._scaling = float(decoder.layers[0].self_attn.scaling)
        self.layers = [self._layer(block, adapters) for block in decoder.layers]
        self.pack_single_query = False

    @staticmethod
    def _layer(block: Any, adapters: Sequence[str]) -> Layer:
        attn, mlp = block.self_attn, block.mlp
        if type(mlp.act_fn).__name__ != "SiLUActivation" and type(mlp.act_fn) is not torch.nn.SiLU:
            raise Unsupported(f"activation {type(mlp.act_fn).__name__}")
        groups = [[attn.q_proj, attn.k_proj, attn.v_proj], [attn.o_proj], [mlp.gate_proj, mlp.up_proj], [mlp.down_proj]]
        projections = [Projection(g) for g in groups]
        qkv, o, gate_up, down = projections
        layer = Layer(block.input_layernorm, block.post_attention_layernorm, qkv, o, gate_up, down)
        for name in adapters:
            fused = tuple(fuse_lora(g, p.out_features, name) for g, p in zip(groups, projections, strict=True))
            if any(f is not None for f in fused):
                layer.lora[name] = fused
        return layer

    def __call__(self, ids: torch.Tensor, past: KVCache, adapter: str | None) -> torch.Tensor:
        """Logits (1, vocab) of the last of `ids` (1, T), after the positions `past` holds; `past` grows by T."""
        count = ids.shape[1]
        start = past.length
        x = self._embed(ids)
        positions = torch.arange(start, start + count).unsqueeze(0)
        cos, sin = (t.unsqueeze(1) for t in self._rotary(x, positions))
        sin = _signed_sin(sin)
        mask = None
        if count > 1 and start > 0:  # transformers' causal mask for new positions after kept ones
            mask = (torch.arange(start + count)[None, :] <= positions[0, :, None]).view(1, 1, count, start + count)
        for index, layer in enumerate(self.layers):
            lora = layer.lora.get(adapter) if adapter is not None else None
            x = self._block(layer, x, cos, sin, past.growing[index], mask, lora)
        return self._head(_rms(self._norm, x)[:, -1:])[:, -1, :]  # type: ignore[no-any-return]

    def _block(
        self,
        layer: Layer,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        cache: GrowingLayer,
        mask: torch.Tensor | None,
        lora: tuple[FusedLora | None, ...] | None,
    ) -> torch.Tensor:
        count, width = x.shape[1], x.shape[2]
        fused = lora or (None, None, None, None)
        h = _rms(layer.norm_in, x).view(count, width)
        qkv = _project(layer.qkv, fused[0], h)
        heads, kv_heads, dim = self._heads, self._kv_heads, self._head_dim
        # q and k rotate together: the same elementwise arithmetic as rotating each alone.
        qk = qkv[:, : (heads + kv_heads) * dim].view(1, count, heads + kv_heads, dim).transpose(1, 2)
        qk = (qk * cos) + (torch.roll(qk, dim // 2, dims=-1) * sin)
        q, k = qk[:, :heads], qk[:, heads:]
        v = qkv[:, (heads + kv_heads) * dim :].view(1, count, kv_heads, dim).transpose(1, 2)
        keys, values = cache.update(k, v)
        attn = self._attention(q, keys, values, mask)
        x = x + _project(layer.o, fused[1], attn.reshape(count, heads * dim)).view(1, count, width)
        h = _rms(layer.norm_post, x).view(count, width)
        gate_up = _project(layer.gate_up, fused[2], h)
        inner = gate_up.shape[1] // 2
        act = functional.silu(gate_up[:, :inner]) * gate_up[:, inner:]
        return x + _project(layer.down, fused[3], act.contiguous()).view(1, count, width)

    def _attention(
        self, q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """transformers' sdpa attention, call for call; returns (T, heads, dim) contiguous."""
        count, groups = q.shape[2], self._heads // self._kv_heads
        sdpa = functional.scaled_dot_product_attention
        if count == 1 and self.pack_single_query:  # the query heads packed onto their key/value heads
            packed = q.reshape(1, self._kv_heads, groups, self._head_dim)
            out = sdpa(packed, keys, values, scale=self._scaling)
            out = out.reshape(1, self._heads, 1, self._head_dim)
        elif mask is None:  # one query (it sees every key), or a fresh prompt (causal from the start)
            out = sdpa(q, keys, values, is_causal=count > 1, enable_gqa=groups > 1, scale=self._scaling)
        else:
            if groups > 1:
                keys = keys[:, :, None].expand(1, self._kv_heads, groups, *keys.shape[2:]).flatten(1, 2)
                values = values[:, :, None].expand(1, self._kv_heads, groups, *values.shape[2:]).flatten(1, 2)
            out = sdpa(q, keys, values, attn_mask=mask, scale=self._scaling)
        return out.transpose(1, 2).contiguous()


def build_fast_forward(model: Any, adapters: Sequence[str]) -> tuple[FastForward | None, str]:
    """The fast pass for `model` with `adapters`, or (None, why not)."""
    try:
        return FastForward(model, adapters), "fast forward"
    except (Unsupported, ValueError, AttributeError, ImportError) as exc:
        return None, f"transformers forward ({exc})"
