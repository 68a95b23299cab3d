"""Fine-tunes the top layers of a FastE5Encoder for routing: LoRA on each block's matrices, a classification loss.

Only the top `layers` blocks are tuned, so the blocks below run once per text (their outputs are
cached for every epoch) and each training step costs a third of a full forward/backward. The
training forward is the encoder's own (same bf16 products, same masks), with a low-rank path
beside each frozen matrix; `merge` adds the learnt deltas into a copy of the encoder, so routing
costs exactly what it cost before.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from adapters.fast_encoder import FastE5Encoder, Layer, mean_pool, padding_masks


@dataclass(frozen=True)
class TuningRecipe:
    """How the routing LoRA is trained (chosen by cross-validation on the routing data)."""

    layers: int = 8  # top blocks tuned; the ones below stay frozen and run once per text
    rank: int = 8
    alpha: float = 16.0
    epochs: int = 2
    learning_rate: float = 2e-3
    batch_size: int = 32
    scale: float = 20.0  # cosine-classifier temperature: logits = scale * cos(vector, route prototype)
    seed: int = 0

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


class LoraLayer(Layer):
    """A frozen block plus a trainable low-rank path beside each weight matrix: W x + (alpha/r) B A x."""

    def __init__(self, base: Layer, rank: int, alpha: float, generator: torch.Generator) -> None:
        super().__init__(base.t)
        self.scaling = alpha / rank  # TuningRecipe.scaling
        self.lora: dict[str, tuple[torch.nn.Parameter, torch.nn.Parameter]] = {}
        for name in Layer.MATRICES:
            out_dim, in_dim = base.t[name + ".w"].shape
            bound = 1.0 / math.sqrt(in_dim)  # B starts at zero, so training starts from the frozen encoder
            a = (torch.rand(rank, in_dim, generator=generator) * 2 - 1) * bound
            self.lora[name] = (torch.nn.Parameter(a), torch.nn.Parameter(torch.zeros(out_dim, rank)))

    def linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        a, b = self.lora[name]
        return super().linear(x, name) + (x.float() @ a.T @ b.T) * self.scaling

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for pair in self.lora.values() for p in pair]

    def factors(self, index: int) -> dict[str, torch.Tensor]:
        """The learnt low-rank factors, keyed `layers.INDEX.MATRIX.a|b` (what `merge` reads)."""
        out: dict[str, torch.Tensor] = {}
        for name, (a, b) in self.lora.items():
            out[f"layers.{index}.{name}.a"] = a.detach().clone()
            out[f"layers.{index}.{name}.b"] = b.detach().clone()
        return out


def tune_layers(
    encoder: FastE5Encoder,
    texts: Sequence[str],
    labels: Sequence[str],
    recipe: TuningRecipe,
    progress: Callable[[str], None] = lambda s: None,
) -> dict[str, torch.Tensor]:
    """LoRA factors for the top blocks, learnt so that each text's vector lies near its label's prototype."""
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError("tuning the encoder needs examples of at least two routes")
    y = torch.tensor([classes.index(label) for label in labels])
    counts = torch.bincount(y, minlength=len(classes)).float()
    weight = len(labels) / (len(classes) * counts)  # each route counts as much as the others
    generator = torch.Generator().manual_seed(recipe.seed)
    first = max(encoder.num_layers - recipe.layers, 0)
    top = range(first, encoder.num_layers)
    tuned = {i: LoraLayer(encoder.layer(i), recipe.rank, recipe.alpha, generator) for i in top}
    prototypes = torch.nn.Parameter(torch.randn(len(classes), encoder.dim, generator=generator) * 0.01)
    params = [p for layer in tuned.values() for p in layer.parameters()] + [prototypes]

    started = time.perf_counter()
    # Every core torch has: unlike a query, a training step is big enough to share out.
    frozen = _frozen_states(encoder, texts, first, progress)
    rng = np.random.default_rng(recipe.seed)
    steps_per_epoch = math.ceil(len(texts) / recipe.batch_size)
    total = recipe.epochs * steps_per_epoch
    optimizer = torch.optim.AdamW(params, lr=recipe.learning_rate, weight_decay=0.01)
    warmup = max(1, total // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, (total - s) / total)
    )
    step = 0
    for _ in range(recipe.epochs):
        for batch in _batches(rng, [len(s) for s in frozen], recipe.batch_size):
            vectors = _forward(encoder, tuned, [frozen[i] for i in batch])
            logits = recipe.scale * vectors @ F.normalize(prototypes, dim=1).T
            loss = F.cross_entropy(logits, y[batch], weight=weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step % 10 == 0 or step == total:
                elapsed = time.perf_counter() - started
                progress(f"\rtuning the routing encoder: step {step}/{total}, loss {loss.item():.3f}, {elapsed:.0f} s")
    progress("\n")
    return {key: value for i, layer in tuned.items() for key, value in layer.factors(i).items()}


def merge(encoder: FastE5Encoder, factors: Mapping[str, torch.Tensor], scaling: float, name: str) -> FastE5Encoder:
    """A copy of `encoder` with scaling * B A added into each matrix named in `factors` (other tensors shared)."""
    deltas: dict[int, dict[str, torch.Tensor]] = {}
    for key, a in factors.items():
        layer, index, matrix, part = key.split(".")
        if layer != "layers" or part not in ("a", "b"):
            raise ValueError(f"unexpected LoRA tensor {key!r}")
        if part == "a":
            b = factors[f"layers.{index}.{matrix}.b"]
            deltas.setdefault(int(index), {})[matrix] = (b.float() @ a.float()) * scaling
    replaced = {i: encoder.layer(i).with_deltas(d) for i, d in deltas.items()}
    return encoder.with_layers(replaced, name)


def _frozen_states(
    encoder: FastE5Encoder, texts: Sequence[str], stop: int, progress: Callable[[str], None], batch: int = 64
) -> list[torch.Tensor]:
    """Each text's hidden states (tokens x dim) after the frozen blocks, computed once for every epoch."""
    ids = encoder.token_ids(texts)
    out: list[torch.Tensor] = [torch.empty(0)] * len(ids)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    with torch.inference_mode():
        for start in range(0, len(order), batch):
            chunk = order[start : start + batch]
            x, _, mask = encoder.embed_tokens([ids[i] for i in chunk])
            x = encoder.run_layers(x, mask, 0, stop)
            for row, i in enumerate(chunk):
                out[i] = x[row, : len(ids[i])].clone()
            progress(f"\rtuning the routing encoder: encoding {min(start + batch, len(ids))}/{len(ids)}")
    progress("\n")
    return out


def _batches(rng: np.random.Generator, lengths: Sequence[int], size: int) -> list[np.ndarray]:
    """Shuffled batches of similar lengths, so little is padded: shuffle, sort pools of 8 batches, shuffle batches."""
    perm = rng.permutation(len(lengths))
    batches: list[np.ndarray] = []
    pool = size * 8
    for start in range(0, len(perm), pool):
        chunk = sorted(perm[start : start + pool], key=lambda i: lengths[i])
        batches += [np.array(chunk[i : i + size]) for i in range(0, len(chunk), size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _forward(encoder: FastE5Encoder, tuned: Mapping[int, Layer], states: Sequence[torch.Tensor]) -> torch.Tensor:
    """Unit vectors of a batch from its frozen states through the tuned blocks (with gradients)."""
    lengths = [len(s) for s in states]
    x = torch.zeros(len(states), max(lengths), encoder.dim)
    for row, s in enumerate(states):
        x[row, : len(s)] = s
    keep, mask = padding_masks(lengths)
    for i in sorted(tuned):
        x = tuned[i].forward(x, mask, encoder.heads, encoder.eps)
    return mean_pool(x, keep)
