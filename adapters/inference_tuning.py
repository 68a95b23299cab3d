"""What the product does to a freshly loaded base before serving it; shared by main.py and the bench."""

from __future__ import annotations

from typing import Any

from assistant.config import Settings
from assistant.engine import EngineInfo


def tune_for_inference(model: Any, info: EngineInfo, settings: Settings) -> dict[str, Any]:
    """Apply the serving-only changes in place, before adapters attach; returns what was done.

    Never call this on a model that will be trained: the int8 head has no gradient path.
    """
    done: dict[str, Any] = {}
    # The converted GGUF carries no generation config; without a penalty greedy answers loop.
    model.generation_config.repetition_penalty = settings.repetition_penalty
    done["repetition_penalty"] = settings.repetition_penalty
    if info.device == "cpu" and settings.quantization == "4bit":
        from adapters.int8_head import use_int8_output_layer

        # The bf16 output layer is half of every CPU decode step; int8 rows measured 1.36x faster
        # decode with the same greedy answer (docs/benchmarks).
        done["int8_output_layer"] = use_int8_output_layer(model)
    return done
