"""Tuning the encoder for routing: LoRA on the top layers of a tiny XLM-R, merged, cached per data (fast);
the real bundled encoder behind `slow`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from adapters import routing_encoder
from adapters.cache import COMPLETE_MARKER
from adapters.e5_convert import convert_e5_bin
from adapters.encoder_tuning import LoraLayer, TuningRecipe, merge, tune_layers
from adapters.fast_encoder import FastE5Encoder, mean_pool
from adapters.wiring import search_encoder
from data.labels import Example
from tests.fakes import HashingEncoder
from tests.test_bundled_encoder import write_tiny_bin

# Two "routes" the tiny model's vocabulary can spell: words of a..m letters against words of n..z.
CARE = ["abc def", "gab hike", "bad jam", "lime deck", "each fig", "mild jab", "face kid", "big male"]
OTHER = ["nut sow", "ropy tux", "swop runt", "vow sty", "yurt zoo", "unto rust", "pry wont", "zouk spy"]
EXAMPLES = [Example(t, "caregiving") for t in CARE] + [Example(t, "general") for t in OTHER]
RECIPE = TuningRecipe(layers=1, rank=4, alpha=8.0, epochs=15, learning_rate=1e-2, batch_size=8)


@pytest.fixture
def tiny_encoder(tmp_path: Path) -> FastE5Encoder:
    folder = tmp_path / "tiny-e5"
    folder.mkdir()
    convert_e5_bin(write_tiny_bin(tmp_path / "tiny-q4.bin").read_bytes(), folder)
    return FastE5Encoder(folder, name="tiny", precision="fp32", threads=1)


def separation(vectors: np.ndarray, labels: list[str]) -> float:
    """Mean cosine to the own route's centroid minus mean cosine to the other route's."""
    y = np.array(labels)
    centroids = {r: vectors[y == r].mean(axis=0) for r in set(labels)}
    own = [v @ centroids[r] for v, r in zip(vectors, labels, strict=True)]
    other = [v @ centroids[next(c for c in centroids if c != r)] for v, r in zip(vectors, labels, strict=True)]
    return float(np.mean(own) - np.mean(other))


def test_tuning_pulls_each_route_together_and_leaves_the_base_untouched(tiny_encoder: FastE5Encoder) -> None:
    texts, labels = [e.text for e in EXAMPLES], [e.label for e in EXAMPLES]
    before = tiny_encoder.encode(texts)
    factors = tune_layers(tiny_encoder, texts, labels, RECIPE)
    assert set(factors) == {f"layers.1.{m}.{p}" for m in ("qkv", "out", "up", "down") for p in "ab"}  # top layer only
    tuned = merge(tiny_encoder, factors, RECIPE.scaling, "tiny+routing")
    after = tuned.encode(texts)
    assert separation(after, labels) > max(4 * separation(before, labels), 0.05)
    assert np.array_equal(tiny_encoder.encode(texts), before), "merging must not change the published model"
    assert tuned.untuned is tiny_encoder and search_encoder(tuned) is tiny_encoder
    assert tuned.layer(0) is tiny_encoder.layer(0)  # untouched blocks are shared, not copied


def test_merged_encoder_computes_what_training_computed(tiny_encoder: FastE5Encoder) -> None:
    generator = torch.Generator().manual_seed(1)
    layer = LoraLayer(tiny_encoder.layer(1), rank=4, alpha=8.0, generator=generator)
    for _a, b in layer.lora.values():  # a trained-looking, non-zero low-rank path
        b.data = torch.randn(b.shape, generator=generator) * 0.05
    merged = merge(tiny_encoder, layer.factors(1), layer.scaling, "merged")
    ids = tiny_encoder.token_ids(["abc def", "nut sow zoo"])
    with torch.no_grad():
        x, keep, mask = tiny_encoder.embed_tokens(ids)
        x = tiny_encoder.run_layers(x, mask, 0, 1)
        trained = mean_pool(layer.forward(x, mask, tiny_encoder.heads, tiny_encoder.eps), keep).numpy()
    assert np.sum(trained * merged.encode(["abc def", "nut sow zoo"]), axis=1).min() > 0.99999


def test_tuning_is_deterministic(tiny_encoder: FastE5Encoder) -> None:
    texts, labels = [e.text for e in EXAMPLES], [e.label for e in EXAMPLES]
    recipe = TuningRecipe(layers=2, rank=2, epochs=2, batch_size=4)
    first, second = (tune_layers(tiny_encoder, texts, labels, recipe) for _ in range(2))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    with pytest.raises(ValueError, match="two routes"):
        tune_layers(tiny_encoder, texts[:3], labels[:3], recipe)


def test_tuned_factors_are_cached_per_data_and_rebuilt_when_damaged(
    tiny_encoder: FastE5Encoder, monkeypatch: pytest.MonkeyPatch
) -> None:
    said: list[str] = []
    first = routing_encoder.load_or_tune(tiny_encoder, EXAMPLES, RECIPE, said.append)
    assert "tuning the routing encoder on 16 labelled examples" in "".join(said)
    folder = routing_encoder.tuning_dir(routing_encoder.tuning_facts(tiny_encoder, EXAMPLES, RECIPE))
    assert (folder / routing_encoder.FACTORS).stat().st_size < 100_000
    assert first.name.startswith("tiny+routing-") and first.name != tiny_encoder.name

    def no_tuning(*args: object, **kwargs: object) -> dict[str, torch.Tensor]:
        raise AssertionError("the cached tuning was not reused")

    monkeypatch.setattr(routing_encoder, "tune_layers", no_tuning)
    again = routing_encoder.load_or_tune(tiny_encoder, list(reversed(EXAMPLES)), RECIPE, said.append)
    assert again.name == first.name  # the same data in another order is the same tuning
    assert np.array_equal(again.encode(CARE), first.encode(CARE))

    changed = [*EXAMPLES, Example("kale jade", "caregiving")]
    with pytest.raises(AssertionError, match="not reused"):  # new routing data tunes again
        routing_encoder.load_or_tune(tiny_encoder, changed, RECIPE, said.append)
    (folder / routing_encoder.FACTORS).write_bytes(b"torn")
    with pytest.raises(AssertionError, match="not reused"):  # so does a damaged cache
        routing_encoder.load_or_tune(tiny_encoder, EXAMPLES, RECIPE, said.append)
    assert (folder / COMPLETE_MARKER).is_file()


def test_search_encoder_is_the_published_model_behind_wrappers(tiny_encoder: FastE5Encoder) -> None:
    tuned = merge(tiny_encoder, tune_layers(tiny_encoder, CARE[:2] + OTHER[:2], ["a", "a", "b", "b"], RECIPE), 1.0, "t")

    class Wrapper:  # serve's SerialEncoder holds the encoder as `inner`
        def __init__(self, inner: FastE5Encoder) -> None:
            self.inner = inner
            self.name = inner.name

    assert search_encoder(Wrapper(tuned)) is tiny_encoder  # type: ignore[arg-type]
    plain = HashingEncoder()
    assert search_encoder(plain) is plain and search_encoder(tiny_encoder) is tiny_encoder
    wrapped_plain = Wrapper(tiny_encoder)
    assert search_encoder(wrapped_plain) is wrapped_plain  # type: ignore[arg-type]


@pytest.mark.slow
def test_real_routing_encoder_tunes_routing_and_keeps_search_vectors() -> None:
    """The bundled encoder as `prepare` leaves it: tuned on the routing data (a few minutes the first time)."""
    from adapters.bundled_encoder import prepare_bundled_encoder
    from adapters.wiring import build_encoder
    from assistant.config import Settings

    tuned = build_encoder(Settings())
    assert isinstance(tuned, FastE5Encoder) and "+routing-" in tuned.name
    texts = [
        "我爸吃了二甲双胍老是拉肚子",
        "What are the side effects of metformin?",
        "今天股市怎么样",
        "Can I ask you something?",
    ]
    plain = FastE5Encoder(prepare_bundled_encoder(), threads=1)
    assert np.sum(search_encoder(tuned).encode(texts) * plain.encode(texts), axis=1).min() > 0.99999
    # Tuning moves the routing vectors: the two care questions end up closer to each other than to the others.
    v = tuned.encode(texts)
    assert v[0] @ v[1] > max(v[0] @ v[2], v[0] @ v[3], v[1] @ v[2], v[1] @ v[3])
