"""Training data: JSONL loading with file:line errors, assistant-only labels, splits and shipped recipes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from adapters.chat_format import IGNORE_INDEX, build_supervised_example
from data.errors import BadInputFile
from data.sft import load_sft_file, sample_from_pair
from tests.tiny_models import build_tiny_tokenizer
from training.config import CONFIG_DIR, TrainConfig, build_config, load_train_config, parse_set
from training.dataset import collate, epoch_batches, split_samples, tokenize

CONVERSATION = [
    {"role": "system", "content": "你是颐家小助手。"},
    {"role": "user", "content": "老人发烧怎么办？"},
    {"role": "assistant", "content": "多喝水，注意体温。"},
    {"role": "user", "content": "What else?"},
    {"role": "assistant", "content": "Rest, and see a doctor if it lasts."},
]


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return build_tiny_tokenizer()


def write(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_both_line_formats_load(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        [
            json.dumps({"prompt": "你好", "response": "你好！"}, ensure_ascii=False),
            "",
            json.dumps({"messages": CONVERSATION}, ensure_ascii=False),
        ],
    )
    samples = load_sft_file(path)
    assert [s.source for s in samples] == ["data.jsonl:1", "data.jsonl:3"]
    assert samples[0].as_messages() == [{"role": "user", "content": "你好"}, {"role": "assistant", "content": "你好！"}]
    assert samples[1].prompt == "老人发烧怎么办？" and samples[1].response.startswith("Rest")


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ('{"prompt": "x", "response": ', "invalid JSON"),
        ('["not", "an", "object"]', "expected a JSON object"),
        ('{"prompt": "x"}', '"response"'),
        ('{"prompt": "", "response": "y"}', '"prompt"'),
        ('{"messages": [{"role": "user", "content": "x"}]}', "no assistant message"),
        ('{"messages": [{"role": "bot", "content": "x"}]}', "role 'bot'"),
        ('{"text": "x"}', "neither"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, bad: str, problem: str) -> None:
    good = json.dumps({"prompt": "a", "response": "b"})
    path = write(tmp_path, [good, good, bad, good])
    with pytest.raises(BadInputFile) as info:
        load_sft_file(path)
    assert info.value.path == str(path) and info.value.line == 3
    assert "data.jsonl:3" in str(info.value) and problem in str(info.value)


def test_empty_and_non_utf8_files_are_rejected(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(BadInputFile, match="no samples"):
        load_sft_file(empty)
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b'{"prompt": "a", "response": "b"}\n\xff\xfe\n')
    with pytest.raises(BadInputFile) as info:
        load_sft_file(binary)
    assert info.value.line == 2


def _assistant_spans(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Reference mask from apply_chat_template alone: 1 for each token of an assistant turn's content + end."""
    ids = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    header = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    mask = [0] * len(ids)
    i = 0
    while i < len(ids):
        if ids[i : i + len(header)] == header:
            j = i + len(header)
            while ids[j] != end:
                mask[j] = 1
                j += 1
            mask[j] = 1  # <|im_end|> is learned: it is how the model stops
            if j + 1 < len(ids):
                mask[j + 1] = 1  # and the newline the template puts after it
            i = j + 1
        else:
            i += 1
    return mask


def test_exactly_the_assistant_tokens_are_labelled(tokenizer: Any) -> None:
    example = build_supervised_example(tokenizer, CONVERSATION)
    reference = tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=False)
    assert example["input_ids"] == list(reference)  # the training text is exactly the chat template's
    labelled = [int(label != IGNORE_INDEX) for label in example["labels"]]
    assert labelled == _assistant_spans(tokenizer, CONVERSATION)
    kept = [t for t in example["labels"] if t != IGNORE_INDEX]
    text = tokenizer.decode(kept)
    assert "多喝水，注意体温。" in text and "Rest, and see a doctor" in text
    assert "老人发烧" not in text and "你是颐家小助手" not in text and "What else" not in text


def test_tokenize_reports_fully_masked_samples(tokenizer: Any) -> None:
    long_prompt = "照护" * 200
    samples = [
        sample_from_pair("你好", "你好呀", "d.jsonl:1"),
        sample_from_pair(long_prompt, "答案", "d.jsonl:2"),  # the prompt alone fills max_length
    ]
    split = tokenize(samples, tokenizer, "你是颐家小助手。", max_length=64)
    assert split.masked == ["d.jsonl:2"]  # reported, not silently trained
    assert split.sources == ["d.jsonl:1"] and len(split) == 1
    assert split.label_tokens() > 0


def test_split_is_per_kind_and_deterministic() -> None:
    domain = [sample_from_pair(f"q{i}", f"a{i}", f"d:{i}") for i in range(40)]
    identity = [sample_from_pair(f"who{i}", "颐家", f"i:{i}", kind="identity") for i in range(20)]
    train, val = split_samples(domain + identity, 0.1, 64, seed=1)
    again = split_samples(domain + identity, 0.1, 64, seed=1)
    assert [s.source for s in val] == [s.source for s in again[1]]
    assert sum(s.kind == "domain" for s in val) == 4 and sum(s.kind == "identity" for s in val) == 2
    assert not {s.source for s in train} & {s.source for s in val}
    assert len(train) + len(val) == 60


def test_batches_cover_every_sample_once_per_epoch(tokenizer: Any) -> None:
    lengths = [5, 50, 7, 30, 9, 11, 60, 2, 4]
    batches = epoch_batches(lengths, 2, seed=3, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert batches == epoch_batches(lengths, 2, seed=3, epoch=0)
    assert batches != epoch_batches(lengths, 2, seed=3, epoch=1)
    split = tokenize([sample_from_pair("a", "bb"), sample_from_pair("ccc dd", "e")], tokenizer, "sys", 64)
    batch = collate(split, [0, 1], pad_id=0)
    assert len(batch.input_ids[0]) == len(batch.input_ids[1])
    for row, mask in zip(batch.labels, batch.attention_mask, strict=True):
        assert all(label == IGNORE_INDEX for label, keep in zip(row, mask, strict=True) if not keep)


def test_every_shipped_config_loads_and_documents_its_command() -> None:
    configs = sorted(CONFIG_DIR.glob("*.yaml"))
    assert configs, "no shipped training configs"
    for path in configs:
        config = load_train_config(path)
        assert isinstance(config, TrainConfig)
        header = path.read_text(encoding="utf-8").split("\n\n")[0]
        assert "python main.py train" in header, f"{path.name}: the header must give the exact command"


def test_default_yaml_documents_every_builtin_default() -> None:
    import yaml

    documented = yaml.safe_load((CONFIG_DIR / "default.yaml").read_text(encoding="utf-8"))
    assert load_train_config() == TrainConfig(), "default.yaml and TrainConfig's defaults disagree"
    assert set(documented) == set(TrainConfig().as_dict()), "default.yaml must list every key"


def test_config_rejects_unknown_keys_and_bad_types(tmp_path: Path) -> None:
    with pytest.raises(BadInputFile, match="unknown key"):
        build_config({"rank": 8}, "x.yaml")
    with pytest.raises(BadInputFile, match="r must be an integer"):
        build_config({"r": "eight"}, "x.yaml")
    with pytest.raises(BadInputFile, match="dropout"):
        build_config({"dropout": 1.5}, "x.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("r: 8\nalpha: [\n", encoding="utf-8")
    with pytest.raises(BadInputFile) as info:
        load_train_config(bad)
    assert info.value.line is not None
    assert parse_set(["patience=5", "target_modules=[q_proj, v_proj]"]) == {
        "patience": 5,
        "target_modules": ["q_proj", "v_proj"],
    }
    assert load_train_config().with_overrides(**parse_set(["learning_rate=1e-4"])).learning_rate == 1e-4
    assert load_train_config().with_overrides(**parse_set(["target_modules=[q_proj]"])).target_modules == ("q_proj",)
