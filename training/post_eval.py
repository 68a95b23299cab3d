"""After training, on a freshly loaded base: validation loss with and without the adapter, identity probe, samples."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from data.errors import BadInputFile
from data.files import read_json_objects
from training.dataset import TokenizedSplit, iterate_batches
from training.generation import generate_answers
from training.identity_probe import GENERAL, ProbeQuestion, RouteResult, run_probe
from training.loss import mean_loss


@dataclass
class PostEval:
    """Numbers measured on a fresh model instance (never the one that was trained)."""

    val_loss_base: float = float("nan")
    val_loss_adapter: float = float("nan")
    val_by_kind_base: dict[str, float] = field(default_factory=dict)
    val_by_kind_adapter: dict[str, float] = field(default_factory=dict)
    probe: list[RouteResult] = field(default_factory=list)
    samples: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0


def load_questions(path: Path, count: int) -> list[dict[str, str]]:
    """`count` held-out questions spread evenly over the file (prompt/question/text, or the first user message)."""
    found: list[dict[str, str]] = []
    for number, obj in read_json_objects(path):
        question = obj.get("prompt") or obj.get("question") or obj.get("text")
        reference = obj.get("response") or obj.get("answer") or ""
        if not question and isinstance(obj.get("messages"), list):
            turns = [m for m in obj["messages"] if isinstance(m, dict)]
            question = next((m.get("content") for m in turns if m.get("role") == "user"), None)
            reference = next((m.get("content") for m in turns if m.get("role") == "assistant"), "")
        if not isinstance(question, str) or not question.strip():
            raise BadInputFile(str(path), number, "no prompt/question/text or user message")
        found.append({"question": question.strip(), "reference": str(reference or "").strip()})
    if count >= len(found):
        return found
    # Evenly spaced rather than the first few: held-out files are usually grouped by topic.
    return [found[i * len(found) // count] for i in range(count)]


def evaluate_fresh(
    load_fresh: Callable[[], Any],
    adapter_dir: Path,
    adapter_name: str,
    route: str,
    val: TokenizedSplit,
    pad_id: int,
    batch_size: int,
    system_prompt: str | None,
    probe_questions: Sequence[ProbeQuestion],
    probe_tokens: int,
    sample_questions: Sequence[dict[str, str]],
    sample_tokens: int,
    log: Callable[[str], None],
    repetition_penalty: float | None = None,
) -> PostEval:
    """Load the base fresh, attach the new adapter, and measure; the model is dropped afterwards."""
    import time

    from peft import PeftModel

    started = time.perf_counter()
    loaded = load_fresh()
    model = PeftModel.from_pretrained(loaded.model, str(adapter_dir), adapter_name=adapter_name, is_trainable=False)
    model.eval()
    device = next(model.parameters()).device
    result = PostEval()
    if len(val):
        with torch.no_grad():
            result.val_loss_adapter, result.val_by_kind_adapter = mean_loss(
                model, iterate_batches(val, batch_size, pad_id), device
            )
            with model.disable_adapter():
                result.val_loss_base, result.val_by_kind_base = mean_loss(
                    model, iterate_batches(val, batch_size, pad_id), device
                )
        log(f"validation loss on a fresh model: base {result.val_loss_base:.4f}, adapter {result.val_loss_adapter:.4f}")
    tokenizer = loaded.tokenizer

    def answer(questions: Sequence[str], adapter: str | None) -> list[str]:
        log(f"[probe] {len(questions)} identity questions on {'general (base)' if adapter is None else adapter}")
        return generate_answers(
            model, tokenizer, questions, system_prompt, adapter, probe_tokens, repetition_penalty=repetition_penalty
        )

    if probe_questions:
        result.probe = run_probe(answer, [(GENERAL, None), (route, adapter_name)], probe_questions)
    if sample_questions:
        texts = [q["question"] for q in sample_questions]
        log(f"[samples] {len(texts)} held-out questions, base vs adapter")
        base = generate_answers(model, tokenizer, texts, system_prompt, None, sample_tokens, 5, repetition_penalty)
        tuned = generate_answers(
            model, tokenizer, texts, system_prompt, adapter_name, sample_tokens, 5, repetition_penalty
        )
        result.samples = [{**q, "base": b, "adapter": t} for q, b, t in zip(sample_questions, base, tuned, strict=True)]
    result.seconds = time.perf_counter() - started
    return result


def _cell(text: str) -> str:
    """One table cell: pipes escaped, line breaks as <br> (a Markdown row is one line)."""
    rows = [line.strip().replace("|", "\\|") for line in text.splitlines() if line.strip()]
    return "<br>".join(rows) or "(empty)"


def samples_markdown(
    name: str, samples: Sequence[dict[str, str]], max_new_tokens: int, system_note: str, penalty: float | None = None
) -> str:
    """samples.md: each held-out question answered by the base and by the adapter, side by side."""
    lines = [
        f"# {name}: held-out questions, base vs adapter",
        "",
        f"Greedy decoding{f' with repetition penalty {penalty}' if penalty else ''}, at most {max_new_tokens} new "
        f"tokens, {system_note}. "
        "Base = the same 4-bit model with the adapter disabled. Questions were never trained on.",
        "",
    ]
    for i, s in enumerate(samples, start=1):
        lines += [f"## {i}. {s['question']}", "", "| base | adapter |", "| --- | --- |"]
        cell = [_cell(s[k]) for k in ("base", "adapter")]
        lines += [f"| {cell[0]} | {cell[1]} |", ""]
        if s.get("reference"):
            lines += [
                "<details><summary>reference answer (held-out data)</summary>",
                "",
                s["reference"],
                "",
                "</details>",
                "",
            ]
    return "\n".join(lines)
