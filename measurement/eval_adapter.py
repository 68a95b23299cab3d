"""`eval adapter NAME --data FILE`: held-out loss and perplexity with the adapter vs the base, answers side by side."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from adapters.offline import force_offline

force_offline()  # before torch/peft pull in bitsandbytes, whose import-time kernel warning it silences

import torch  # noqa: E402

from adapters.chat_format import IGNORE_INDEX, build_supervised_example  # noqa: E402
from assistant.config import Settings  # noqa: E402
from assistant.errors import UsageError  # noqa: E402


@dataclass(frozen=True)
class LossResult:
    """Mean loss over every assistant token (token-weighted), its perplexity, and per-example losses."""

    loss: float
    tokens: int
    per_example: tuple[float, ...]

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    def as_dict(self) -> dict[str, float | int]:
        return {"loss": self.loss, "perplexity": self.perplexity, "tokens": self.tokens}


def assistant_token_loss(model: Any, examples: Sequence[dict[str, list[int]]]) -> LossResult:
    """Cross-entropy of the next token at every position whose label is not IGNORE_INDEX (assistant tokens only)."""
    total, count, per_example = 0.0, 0, []
    for example in examples:
        labels = torch.tensor(example["labels"][1:])
        mask = labels != IGNORE_INDEX
        if not bool(mask.any()):
            continue
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([example["input_ids"]])).logits[0, :-1]
            # Only the scored rows go to fp32: full-vocabulary logits for every position are large.
            nll = torch.nn.functional.cross_entropy(logits[mask].float(), labels[mask], reduction="sum")
        total += float(nll)
        count += int(mask.sum())
        per_example.append(float(nll) / int(mask.sum()))
    if not count:
        raise UsageError(
            "no assistant tokens to score: every example's answer is missing or cut off by --max-length",
            "raise --max-length (examples with knowledge passages need ~1400 tokens), and give each line an answer",
        )
    return LossResult(total / count, count, tuple(per_example))


def engine_answer(
    engine: Any, messages: Sequence[dict[str, str]], system: str | None, adapter: str | None, max_new_tokens: int
) -> str:
    """The greedy answer as the product gives it: the engine's own decode loop and serving tuning."""
    from assistant.engine import GenerationParams, Message

    turns = ([Message("system", system)] if system else []) + [Message(m["role"], m["content"]) for m in messages]  # type: ignore[arg-type]
    params = GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0)
    return "".join(engine.stream(turns, adapter, params)).strip()


def _find_adapter(settings: Settings, name: str) -> Any:
    from adapters.wiring import installed_adapters

    adapters = installed_adapters(settings)
    for adapter in adapters:
        if adapter.name == name:
            return adapter
    raise UsageError(
        f"unknown adapter {name!r}",
        f"installed in {', '.join(map(str, settings.adapter_dirs))}: {', '.join(a.name for a in adapters) or 'none'}",
    )


def evaluate_adapter(
    engine: Any,
    adapter: str,
    tokenizer: Any,
    samples: Sequence[Any],
    system: str | None,
    max_length: int,
    n_answers: int,
    max_new_tokens: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Loss/perplexity through the adapter and through the plain base, plus sample answers, all on the engine."""
    examples = [build_supervised_example(tokenizer, s.as_messages(), system, max_length) for s in samples]
    log(f"scoring {len(examples)} held-out examples with the adapter...")
    with engine.scoped_model(adapter) as model:
        with_adapter = assistant_token_loss(model, examples)
    log("scoring them with the base...")
    with engine.scoped_model(None) as model:
        base = assistant_token_loss(model, examples)
    better = sum(a < b for a, b in zip(with_adapter.per_example, base.per_example, strict=True))
    answers = []
    for i, sample in enumerate(samples[:n_answers], start=1):
        messages = sample.as_messages()
        last = max(j for j, m in enumerate(messages) if m["role"] == "assistant")
        prompt = messages[:last]
        log(f"answering sample {i}/{min(n_answers, len(samples))}...")
        answer = engine_answer(engine, prompt, system, adapter, max_new_tokens)
        plain = engine_answer(engine, prompt, system, None, max_new_tokens)
        answers.append(
            {
                "source": sample.source,
                "prompt": prompt[-1]["content"],
                "reference": messages[last]["content"],
                "adapter": answer,
                "base": plain,
            }
        )
    return {
        "examples": len(examples),
        "adapter_scores": with_adapter.as_dict(),
        "base": base.as_dict(),
        "loss_change": with_adapter.loss - base.loss,
        "adapter_better_on": better,
        "samples": answers,
    }


def format_result(result: dict[str, Any]) -> str:
    """Plain text for a terminal."""
    name, a, b = result["adapter"], result["adapter_scores"], result["base"]
    width = max(len(name), 4)
    lines = [
        f"adapter {name} vs base on {result['file']}: {result['examples']} examples, {a['tokens']} assistant tokens",
        "",
        f"{'':<{width}}  {'loss':>7}  {'perplexity':>10}",
        f"{'base':<{width}}  {b['loss']:7.3f}  {b['perplexity']:10.2f}",
        f"{name:<{width}}  {a['loss']:7.3f}  {a['perplexity']:10.2f}",
        "",
        f"the adapter has the lower loss on {result['adapter_better_on']}/{result['examples']} examples",
    ]
    pad = max(len(name), len("reference")) + 3
    for i, s in enumerate(result["samples"], start=1):
        lines += [
            "",
            f"--- sample {i} ({s['source']}): {s['prompt']}",
            f"{'[base]':<{pad}}{s['base']}",
            f"{f'[{name}]':<{pad}}{s['adapter']}",
            f"{'[reference]':<{pad}}{s['reference']}",
        ]
    return "\n".join(lines)


def run_adapter_eval(args: Any, settings: Settings, log: Callable[[str], None]) -> int:
    """`eval adapter NAME --data FILE [--samples N]`."""
    from adapters.wiring import build_engine_parts, system_prompt
    from data.sft import load_sft_file

    if args.samples < 0 or args.max_length < 8 or args.limit < 0:
        raise UsageError("--samples and --limit must be >= 0, --max-length >= 8")
    adapter = _find_adapter(settings, args.name)
    samples = load_sft_file(args.data)  # BadInputFile (exit 2, file:line) on a malformed line
    if args.knowledge is not None:  # the passages the product would give, laid out as in training
        from data.knowledge import load_knowledge
        from training.grounding import ground_samples

        samples = ground_samples(samples, load_knowledge([args.knowledge]), settings.knowledge_passages)
    elif any(s.grounded for s in samples):
        raise UsageError(f"{args.data} has grounded lines (question, answer, entries)", "pass --knowledge DIR")
    if args.limit and len(samples) > args.limit:
        log(f"scoring the first {args.limit} of {len(samples)} examples (--limit)")
        samples = samples[: args.limit]
    system = args.system or system_prompt(settings)
    built = build_engine_parts(settings, log)  # the product's engine: the same tuning and decode loop as `ask`
    loaded, engine = built.loaded, built.engine
    if adapter.name not in [a.name for a in engine.adapters()]:
        raise UsageError(
            f"adapter {args.name!r} did not load on this base (trained on {adapter.base_model})",
            "evaluate it with --base pointing at the base it was trained on, or retrain it on this one",
        )
    max_new = args.max_new_tokens or 128
    result = evaluate_adapter(
        engine, adapter.name, loaded.tokenizer, samples, system, args.max_length, args.samples, max_new, log
    )
    result = {
        "adapter": adapter.name,
        "file": str(args.data),
        "base_model": loaded.model_id,
        "quantization": loaded.info.quantization,
        **result,
    }
    print(json.dumps(result, ensure_ascii=False) if args.json else format_result(result))
    return 0
