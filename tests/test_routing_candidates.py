"""The routing-candidates comparison on the hashing encoder: its splits, its scoring and its prior shift."""

from __future__ import annotations

import numpy as np
import pytest

from data.labels import Example
from measurement.routing_candidates import (
    CANDIDATES,
    LOFO_FILE,
    Scores,
    Vectors,
    best_shift,
    held_out_slices,
    markdown,
    run,
    splits_of,
)
from tests.fakes import HashingEncoder

CARE = ["my mother has a fever", "dad fell and hurt his hip", "grandma cannot swallow pills", "insulin dose help"]
OTHER = ["book a train ticket", "write a poem about rain", "what is the weather", "play some music"]


def examples() -> list[Example]:
    """Two routes, each in a seed-like file and in the file `lofo` holds out."""
    out = []
    for i in range(6):
        for text in CARE:
            out.append(Example(f"{text} {i}", "caregiving", "seed.txt" if i < 4 else f"{LOFO_FILE}:{i}"))
        for text in OTHER:
            out.append(Example(f"{text} {i}", "general", "seed.txt" if i < 4 else f"{LOFO_FILE}:{i}"))
    return out


def held_out() -> dict[str, list[dict[str, str]]]:
    rows = [{"text": f"{t} now", "label": "caregiving", "lang": "en"} for t in CARE]
    rows += [{"text": f"{t} now", "label": "general", "lang": "en"} for t in OTHER]
    return {"set.jsonl": rows}


def test_lofo_holds_out_the_real_user_file_whole_and_cv5_covers_every_example_once() -> None:
    data = examples()
    splits = splits_of(data, ("cv5", "lofo"))
    ((train, test),) = splits["lofo"]
    assert {data[i].source.split(":")[0] for i in test} == {LOFO_FILE}
    assert not {data[i].source.split(":")[0] for i in train} & {LOFO_FILE}
    tested = np.concatenate([t for _, t in splits["cv5"]])
    assert sorted(tested.tolist()) == list(range(len(data)))
    assert all(not set(tr) & set(te) for tr, te in splits["cv5"])


def test_untuned_candidates_are_scored_on_both_splits_and_the_held_out_set() -> None:
    data, rows = examples(), held_out()
    vectors = Vectors([e.text for e in data] + [r["text"] for r in rows["set.jsonl"]], HashingEncoder(), lambda s: None)
    untuned = [c for c in CANDIDATES if not c.tuned]
    results = run(data, rows, vectors, ("cv5", "lofo"), untuned)
    assert set(results["candidates"]) == {c.name for c in untuned}
    for scores in results["candidates"].values():
        assert scores["cv5"]["accuracy"] > 0.9 and scores["lofo"]["accuracy"] > 0.9
        assert scores["set.jsonl"]["all"] > 0.8
    table = markdown(results, "set.jsonl")
    assert all(f"| {c.name} |" in table for c in untuned)


def test_tuned_candidates_need_a_tuning() -> None:
    data = examples()
    vectors = Vectors([e.text for e in data], HashingEncoder(), lambda s: None)
    with pytest.raises(ValueError, match="no tuning"):
        run(data, {}, vectors, ("lofo",), [c for c in CANDIDATES if c.tuned])


def test_prior_shift_moves_borderline_questions_to_caregiving_only_when_that_helps() -> None:
    probs = np.array([[0.4, 0.6], [0.45, 0.55], [0.1, 0.9], [0.9, 0.1]])  # columns: caregiving, general
    scores = Scores(("caregiving", "general"), probs, ["general"] * 4)
    assert scores.routes("argmax") == ["general", "general", "general", "caregiving"]
    assert scores.routes("shift", 1.0)[:2] == ["caregiving", "caregiving"]
    assert best_shift(["caregiving", "caregiving", "general", "caregiving"], scores) > 0
    assert best_shift(["general", "general", "general", "caregiving"], scores) == 0.0


def test_held_out_slices_split_by_language_and_route() -> None:
    rows = [
        {"text": "a", "label": "caregiving", "lang": "zh"},
        {"text": "b", "label": "general", "lang": "zh"},
        {"text": "c", "label": "caregiving", "lang": "en"},
        {"text": "d", "label": "general", "lang": "en"},
    ]
    out = held_out_slices(rows, ["caregiving", "caregiving", "caregiving", "general"])
    assert out["all"] == 0.75 and out["zh"] == 0.5 and out["en"] == 1.0
    assert out["caregiving"] == 1.0 and out["general"] == 0.5 and out["zh general"] == 0.0


def test_a_held_out_name_joined_by_plus_is_one_set_of_both_files() -> None:
    from measurement.routing_candidates import read_held_out

    zh, en = "real-public-zh-test.jsonl", "real-public-en-test.jsonl"
    sets = read_held_out([zh, en, f"{zh}+{en}"])
    assert sets[f"{zh}+{en}"] == sets[zh] + sets[en]
    assert {r["lang"] for r in sets[zh]} == {"zh"} and {r["lang"] for r in sets[en]} == {"en"}
