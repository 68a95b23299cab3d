"""`eval adapter`: the assistant-token loss on a hand-checked example, and the command on a tiny model + LoRA."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from adapters.chat_format import IGNORE_INDEX
from measurement.eval_adapter import assistant_token_loss
from tests.tiny_models import build_tiny_lora, build_tiny_qwen2


class FixedLogits:
    """A 'model' whose next-token logits are the same table row at every position."""

    def __init__(self, row: list[float]) -> None:
        self.row = torch.tensor(row)

    def __call__(self, input_ids: torch.Tensor) -> Any:
        return SimpleNamespace(logits=self.row.expand(1, input_ids.shape[1], len(self.row)).clone())


def test_loss_counts_only_assistant_tokens_hand_checked() -> None:
    # log-softmax of [ln 1, ln 2, ln 1] = probabilities [1/4, 1/2, 1/4]
    model = FixedLogits([0.0, math.log(2.0), 0.0])
    examples = [
        # positions 1..3 predict tokens 1, 0, 2; only the last two are assistant tokens
        {"input_ids": [0, 1, 0, 2], "labels": [IGNORE_INDEX, IGNORE_INDEX, 0, 2]},
        # one assistant token (1): probability 1/2
        {"input_ids": [2, 1], "labels": [IGNORE_INDEX, 1]},
        {"input_ids": [2, 2], "labels": [IGNORE_INDEX, IGNORE_INDEX]},  # nothing to score: skipped
    ]
    result = assistant_token_loss(model, examples)
    expected = (2 * math.log(4) + math.log(2)) / 3  # token-weighted, not example-weighted
    assert result.tokens == 3
    assert result.loss == pytest.approx(expected)
    assert result.perplexity == pytest.approx(math.exp(expected))
    assert result.per_example == (pytest.approx(math.log(4)), pytest.approx(math.log(2)))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval-adapter")
    base = build_tiny_qwen2(root / "base")
    adapters = root / "adapters"
    adapters.mkdir()
    build_tiny_lora(base, adapters / "alpha", "alpha", "caregiving", seed=3)
    data = root / "heldout.jsonl"
    rows = [
        {"prompt": "老人不想吃饭怎么办？", "response": "可以少量多餐，做些软烂好消化的饭菜。"},
        {"messages": [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！我是小助手。"}]},
        {"prompt": "How to help my father sleep?", "response": "Keep a regular routine."},
    ]
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return {"base": base, "adapters": adapters, "data": data}


def test_eval_adapter_reports_loss_perplexity_and_samples(
    tiny: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    import main

    common = ["--base", str(tiny["base"]), "--adapters-dir", str(tiny["adapters"]), "--bf16", "--threads", "1"]
    code = main.main(
        [
            "eval",
            "adapter",
            "alpha",
            "--data",
            str(tiny["data"]),
            "--samples",
            "2",
            "--max-new-tokens",
            "4",
            "--json",
            "--system",
            "你是小助手。",  # the product's prompt alone is ~1000 tiny-tokenizer tokens
            *common,
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["examples"] == 3 and len(result["samples"]) == 2
    for side in ("base", "adapter_scores"):
        assert result[side]["loss"] > 0 and result[side]["tokens"] > 0
        assert result[side]["perplexity"] == pytest.approx(math.exp(result[side]["loss"]))
    assert result["base"]["tokens"] == result["adapter_scores"]["tokens"]
    assert result["adapter_scores"]["loss"] != pytest.approx(result["base"]["loss"])  # random B: a real change
    assert {"prompt", "reference", "base", "adapter", "source"} <= set(result["samples"][0])

    code = main.main(["eval", "adapter", "nope", "--data", str(tiny["data"]), *common])
    assert code == 2 and "unknown adapter 'nope'" in capsys.readouterr().err


def test_eval_adapter_bad_data_names_file_and_line(
    tiny: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "response": "hello"}\n{"prompt": "no answer"}\n', encoding="utf-8")
    code = main.main(
        [
            "eval",
            "adapter",
            "alpha",
            "--data",
            str(bad),
            "--base",
            str(tiny["base"]),
            "--adapters-dir",
            str(tiny["adapters"]),
        ]
    )
    assert code == 2 and f"{bad}:2" in capsys.readouterr().err
