"""The router's encoder: the bundled E5 with its top layers tuned on the routing data, tuned once per data and cached.

The tuning (adapters/encoder_tuning.py) takes a few minutes on two cores, so its LoRA factors
(~2 MB) are kept under the user cache dir, keyed by the base model, the recipe and a checksum of
every routing example: new routing data (an adapter's route examples included) tunes again.
Vectors of the tuned copy serve routing only; similarity search keeps the published model
(`FastE5Encoder.untuned`), whose neighbourhoods the tuning would blur.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from adapters.cache import atomic_dir, cache_path, check_cache
from adapters.encoder_tuning import TuningRecipe, merge, tune_layers
from adapters.fast_encoder import FastE5Encoder
from assistant.errors import ModelUnavailable
from data.labels import Example

#: Bumped when the tuning procedure changes, so cached factors are retrained.
TUNING_VERSION = 1
FACTORS = "routing-lora.safetensors"
DEFAULT_RECIPE = TuningRecipe()


def data_checksum(examples: Sequence[Example]) -> str:
    """sha256 of the labelled examples, independent of file order and sources."""
    digest = hashlib.sha256()
    for ex in sorted(examples, key=lambda e: (e.label, e.text)):
        digest.update(f"{ex.label}\x01{ex.text}\x00".encode())
    return digest.hexdigest()


def tuning_facts(base: FastE5Encoder, examples: Sequence[Example], recipe: TuningRecipe) -> dict[str, object]:
    """What a cached tuning was made from; any difference means it is stale."""
    return {
        "tuning_version": TUNING_VERSION,
        "base": base.name,
        "precision": base.precision,
        "recipe": recipe.as_dict(),
        "data_sha256": data_checksum(examples),
        "examples": len(examples),
    }


def tuning_dir(facts: dict[str, object]) -> Path:
    key = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()
    return cache_path("encoders", f"routing-lora-{key[:16]}")


def load_or_tune(
    base: FastE5Encoder,
    examples: Sequence[Example],
    recipe: TuningRecipe = DEFAULT_RECIPE,
    progress: Callable[[str], None] | None = None,
) -> FastE5Encoder:
    """`base` with the routing LoRA merged in: from the cache when it matches, else tuned now and cached."""
    log = progress or (lambda s: print(s, end="", file=sys.stderr, flush=True))
    facts = tuning_facts(base, examples, recipe)
    folder = tuning_dir(facts)
    name = f"{base.name}+routing-{folder.name.rsplit('-', 1)[-1]}"
    check = check_cache(folder, facts)
    if check.ok:
        return merge(base, load_file(str(folder / FACTORS)), recipe.scaling, name)
    check.announce_rebuild()
    log(
        f"tuning the routing encoder on {len(examples)} labelled examples "
        f"(once per change of the routing data; a few minutes) -> {folder}\n"
    )
    started = time.perf_counter()
    factors = tune_layers(base, [e.text for e in examples], [e.label for e in examples], recipe, log)
    try:
        with atomic_dir(folder, facts) as tmp:
            save_file({k: v.contiguous() for k, v in factors.items()}, str(tmp / FACTORS))
    except OSError as exc:
        raise ModelUnavailable(
            f"could not write the tuned routing encoder to {folder}: {exc}",
            "it needs a few MB of free disk space; XDG_CACHE_HOME moves the cache elsewhere",
        ) from exc
    log(f"routing encoder tuned in {time.perf_counter() - started:.0f} s\n")
    return merge(base, {k: v.to(torch.float32) for k, v in factors.items()}, recipe.scaling, name)
