"""Split, tokenize (with assistant-only labels) and batch SFT samples, using `datasets`."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from adapters.chat_format import IGNORE_INDEX, build_supervised_example
from data.sft import SFTSample


@dataclass
class TokenizedSplit:
    """Tokenized samples of one split: parallel lists, plus what had to be dropped and why."""

    input_ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    masked: list[str] = field(default_factory=list)  # sources whose labels were all masked (dropped)
    truncated: list[str] = field(default_factory=list)  # sources whose answer was cut by max_length

    def __len__(self) -> int:
        return len(self.input_ids)

    def label_tokens(self) -> int:
        return sum(sum(t != IGNORE_INDEX for t in row) for row in self.labels)


def split_samples(
    samples: Sequence[SFTSample], val_fraction: float, val_max: int, seed: int
) -> tuple[list[SFTSample], list[SFTSample]]:
    """Train/validation split per kind (domain, identity), so validation measures both; deterministic."""
    from datasets import Dataset

    kinds = sorted({s.kind for s in samples})
    sizes = {k: sum(s.kind == k for s in samples) for k in kinds}
    wanted = {k: round(n * val_fraction) if n >= 2 else 0 for k, n in sizes.items()}
    for k, n in sizes.items():  # at least one of each kind when there are a few to spare
        if n >= 5 and wanted[k] == 0:
            wanted[k] = 1
    total = sum(wanted.values())
    if total > val_max:
        wanted = {k: max(1 if v else 0, math.floor(v * val_max / total)) for k, v in wanted.items()}
    train: list[SFTSample] = []
    val: list[SFTSample] = []
    for kind in kinds:
        members = [s for s in samples if s.kind == kind]
        if wanted[kind] == 0:
            train += members
            continue
        table = Dataset.from_dict({"i": list(range(len(members)))})
        parts = table.train_test_split(test_size=wanted[kind], seed=seed, shuffle=True)
        train += [members[i] for i in parts["train"]["i"]]
        val += [members[i] for i in parts["test"]["i"]]
    return train, val


def tokenize(
    samples: Sequence[SFTSample], tokenizer: Any, system_prompt: str | None, max_length: int
) -> TokenizedSplit:
    """Chat-format each sample with the shared function; report (and drop) samples with no labelled token."""
    from datasets import Dataset

    def encode(row: dict[str, Any]) -> dict[str, Any]:
        messages = [{"role": r, "content": c} for r, c in zip(row["roles"], row["contents"], strict=True)]
        full = build_supervised_example(tokenizer, messages, system_prompt)
        cut = {k: v[:max_length] for k, v in full.items()}
        labelled = sum(t != IGNORE_INDEX for t in cut["labels"])
        return {
            "input_ids": cut["input_ids"],
            "labels": cut["labels"],
            "n_labels": labelled,
            "truncated": labelled < sum(t != IGNORE_INDEX for t in full["labels"]),
        }

    out = TokenizedSplit()
    if not samples:
        return out
    table = Dataset.from_dict(
        {
            "roles": [[r for r, _ in s.messages] for s in samples],
            "contents": [[c for _, c in s.messages] for s in samples],
            "kind": [s.kind for s in samples],
            "source": [s.source for s in samples],
        }
    )
    encoded = table.map(encode, remove_columns=["roles", "contents"], desc="tokenizing")
    for row in encoded:
        if row["n_labels"] == 0:
            out.masked.append(row["source"])
            continue
        if row["truncated"]:
            out.truncated.append(row["source"])
        out.input_ids.append(row["input_ids"])
        out.labels.append(row["labels"])
        out.kinds.append(row["kind"])
        out.sources.append(row["source"])
    return out


@dataclass(frozen=True)
class Batch:
    """Right-padded tensors-to-be: plain lists so the data layer stays torch-free."""

    input_ids: list[list[int]]
    attention_mask: list[list[int]]
    labels: list[list[int]]
    kinds: list[str]

    @property
    def label_tokens(self) -> int:
        # Labels are shifted by one inside the loss: the first position's label is never predicted.
        return sum(sum(t != IGNORE_INDEX for t in row[1:]) for row in self.labels)


def collate(split: TokenizedSplit, indices: Sequence[int], pad_id: int) -> Batch:
    """Pad the chosen samples to the longest one."""
    width = max(len(split.input_ids[i]) for i in indices)
    ids, mask, labels = [], [], []
    for i in indices:
        n = len(split.input_ids[i])
        ids.append(split.input_ids[i] + [pad_id] * (width - n))
        mask.append([1] * n + [0] * (width - n))
        labels.append(split.labels[i] + [IGNORE_INDEX] * (width - n))
    return Batch(ids, mask, labels, [split.kinds[i] for i in indices])


def epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int, group: int = 8) -> list[list[int]]:
    """One epoch's micro-batches: shuffled, then grouped by length within windows (less padding on CPU).

    Depends only on (seed, epoch), so a resumed run sees exactly the batches the crashed one would have.
    """
    order = list(range(len(lengths)))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    window = batch_size * group
    batches: list[list[int]] = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start : start + window], key=lambda i: lengths[i])
        batches += [chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size)]
    random.Random(seed * 7_919 + epoch).shuffle(batches)  # grouped batches in random order
    return batches


def iterate_batches(split: TokenizedSplit, batch_size: int, pad_id: int) -> Iterator[Batch]:
    """Validation batches in a fixed order (sorted by length: least padding)."""
    order = sorted(range(len(split)), key=lambda i: len(split.input_ids[i]))
    for start in range(0, len(order), batch_size):
        yield collate(split, order[start : start + batch_size], pad_id)
