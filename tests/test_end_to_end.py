"""End to end on the real bundled models (slow): `ask` over stdin, and routing on held-out data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict

import pytest

from data.labels import HELDOUT_DIR, load_labelled_file
from tests.conftest import REPO

pytestmark = pytest.mark.slow

QUESTIONS = ["糖尿病患者的照护内容有哪些？", "你是谁", "梅西率迈阿密国际夺队史首冠"]


def run_main(*args: str, stdin: str = "", timeout: int = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run(
        [sys.executable, "main.py", *args],
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def test_ask_json_over_stdin_routes_and_answers() -> None:
    result = run_main("ask", "--json", "--max-new-tokens", "40", stdin="\n".join(QUESTIONS) + "\n")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["query"] for r in rows] == QUESTIONS
    assert [r["route"] for r in rows] == ["caregiving", "caregiving", "general"]
    assert rows[2]["adapter"] is None
    for row in rows:
        assert row["answer"].strip() and row["new_tokens"] > 0
    identity = rows[1]["answer"]
    assert "颐家" in identity, identity
    assert "阿里" not in identity and "Qwen" not in identity and "通义" not in identity


def test_bad_utf8_line_is_reported_and_the_rest_answered() -> None:
    proc = subprocess.run(
        [sys.executable, "main.py", "ask", "--json", "--max-new-tokens", "8"],
        cwd=REPO,
        input=b"\xff\xfe\n" + "你好\n".encode(),
        capture_output=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 1
    assert b"line 1" in proc.stderr
    rows = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    assert rows[0]["error"] and rows[1]["answer"]


def routing_accuracy(*names: str) -> dict[str, float]:
    """The product's routes (`route --json`) on held-out files, scored overall, per language and per route."""
    rows = [
        json.loads(line)
        for name in names
        for line in (HELDOUT_DIR / name).read_text("utf-8").splitlines()
        if line.strip()
    ]
    result = run_main("route", "--json", stdin="\n".join(r["text"].replace("\n", " ") for r in rows) + "\n")
    assert result.returncode == 0, result.stderr[-2000:]
    predicted = [json.loads(line)["route"] for line in result.stdout.splitlines()]
    assert len(predicted) == len(rows)
    groups: dict[str, list[bool]] = defaultdict(list)
    for row, route in zip(rows, predicted, strict=True):
        ok = row["label"] == route
        for key in ("all", row["lang"], row["label"]):
            groups[key].append(ok)
    return {k: sum(v) / len(v) for k, v in groups.items()}


def test_routing_on_real_public_questions_meets_the_goal() -> None:
    """Real users' questions sampled from public datasets, the halves nobody reads to write training lines.

    Measured (2026-12-02): all 97.5%, zh 98.5%, en 96.5%, caregiving 96.3%, general 98.6% (398
    questions). The floors sit a few questions under that, because the encoder's tuning on a fresh
    machine is not bit-reproducible (CV figures moved by up to 0.8 points between identical runs).
    """
    accuracy = routing_accuracy("real-public-zh-test.jsonl", "real-public-en-test.jsonl")
    assert accuracy["all"] >= 0.96, accuracy
    assert min(accuracy.values()) >= 0.945, accuracy


def test_routing_on_real_user_like_questions_does_not_regress() -> None:
    """The router on the held-out set written like real users' questions (never trained on).

    Floors under the measured level (all 96.5%, zh 97.3%, en 95.6%, caregiving 96.4%, general
    96.7%): a guard against regressions. The older validation.jsonl is not used here: its misses
    chose later training lines, so its figure no longer measures.
    """
    accuracy = routing_accuracy("real-users-validation.jsonl")
    assert accuracy["all"] >= 0.955, accuracy
    assert min(accuracy.values()) >= 0.945, accuracy


def test_questions_about_the_assistant_are_recognised_and_others_rarely() -> None:
    """The detector that starts identity answers in character, on the real encoder (measured: 36/36, 1.9%)."""
    probe = [
        json.loads(line)["question"]
        for line in (REPO / "data" / "identity_probe.jsonl").read_text("utf-8").splitlines()
    ]
    heldout = [e.text for e in load_labelled_file(HELDOUT_DIR / "validation.jsonl")]
    result = run_main("route", "--json", stdin="\n".join(probe + heldout) + "\n")
    assert result.returncode == 0, result.stderr[-2000:]
    flags = [json.loads(line)["about_assistant"] for line in result.stdout.splitlines()]
    recognised, flagged = sum(flags[: len(probe)]), sum(flags[len(probe) :])
    assert recognised >= 0.9 * len(probe), recognised
    # The held-out routing set has a few real questions about the assistant (你是哪位, What are you?)
    # among 465 lines; anything much above them means everyday questions get an identity start.
    assert flagged <= 0.03 * len(heldout), flagged
