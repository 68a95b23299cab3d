"""QLoRA training cost on the base: seconds per step and peak RSS, in a fresh process on a fresh model.

Run as `python -m measurement.bench.training_cost`: bitsandbytes' CPU repack makes a model that has
served inference untrainable (docs/MODELS.md), so this never shares a process with generation.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from assistant.config import Settings
from measurement.bench.machine import peak_rss_mib, rss_mib
from measurement.bench.stats import median
from measurement.bench.worker import worker_main

TEXT = (
    "老人居家照护要注意饮食清淡、按时服药、预防跌倒和压疮，家属应多陪伴、多沟通。"
    "Caregivers should keep a daily routine, check medication and watch for warning signs. "
)


def measure_training(settings: Settings, options: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """A few optimizer steps of the training recipe's LoRA (r 8, alpha 16, all linear, AdamW) at batch x seq_len."""
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from adapters.base_model import INFERENCE_ONLY_ATTR, load_base

    seq_len, batch = int(options.get("seq_len", 256)), int(options.get("batch", 2))
    steps, warmup = int(options.get("steps", 3)), int(options.get("warmup", 1))
    loaded = load_base(settings.with_overrides(quantization="4bit"), progress=False)
    if getattr(loaded.model, INFERENCE_ONLY_ATTR, False):
        raise RuntimeError("refusing to train a model that has served inference")
    rss_loaded = rss_mib()
    model = prepare_model_for_kbit_training(loaded.model, use_gradient_checkpointing=False)
    torch.manual_seed(0)
    model = get_peft_model(
        model,
        LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear", bias="none", task_type="CAUSAL_LM"
        ),
    )
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=2e-4)
    ids = loaded.tokenizer.encode(TEXT * (seq_len // 8 + 1), add_special_tokens=False)[:seq_len]
    input_ids = torch.tensor([ids] * batch)
    seconds: list[float] = []
    losses: list[float] = []
    for step in range(warmup + steps):
        started = time.perf_counter()
        loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - started
        losses.append(float(loss.detach()))
        if step >= warmup:  # the first step allocates optimizer state and autograd buffers
            seconds.append(elapsed)
        log(f"[bench] training step {step + 1}/{warmup + steps}: {elapsed:.2f} s, loss {losses[-1]:.3f}")
    per_step = median(seconds)
    return {
        "seq_len": len(ids),
        "batch": batch,
        "steps_timed": len(seconds),
        "s_per_step": per_step,
        "s_per_step_runs": [round(s, 3) for s in seconds],
        "tokens_per_s": batch * len(ids) / per_step if per_step else 0.0,
        "rss_after_load_mib": rss_loaded,
        "peak_rss_mib": peak_rss_mib(),
        "trainable_params": sum(p.numel() for p in trainable),
        "threads": torch.get_num_threads(),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "recipe": "QLoRA r=8 alpha=16 dropout 0.05 all-linear, AdamW lr 2e-4, fp32 LoRA math, "
        "prepare_model_for_kbit_training, no gradient checkpointing",
    }


if __name__ == "__main__":
    worker_main(measure_training)
