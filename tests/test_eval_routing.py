"""`eval routing`: metrics on a hand-checked example, JSON/text output, file errors (fake encoder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assistant.router import GENERAL, Candidate, RouteChoice
from data.labels import Example
from measurement.eval_routing import evaluate_routing, percentile
from tests.fakes import HashingEncoder


class TableRouter:
    """Answers from a fixed table: text -> (route, abstained); each call 'takes' a scripted latency."""

    classes = ("caregiving", GENERAL)

    def __init__(self, table: dict[str, tuple[str, bool]], latencies: list[float]) -> None:
        self.table = table
        self.latencies = iter(latencies)

    def timed_route(self, text: str) -> tuple[RouteChoice, float]:
        route, abstained = self.table[text]
        other = GENERAL if route == "caregiving" else "caregiving"
        choice = RouteChoice(
            route,
            None if route == GENERAL else route,
            0.8,
            0.6,
            (Candidate(route, 0.8), Candidate(other, 0.2)),
            (),
            abstained,
            "caregiving" if abstained else route,
        )
        return choice, next(self.latencies)


def test_metrics_abstention_and_latency_match_hand_computation() -> None:
    examples = [
        Example("a", "caregiving", "f:1"),  # right
        Example("b", "caregiving", "f:2"),  # right
        Example("c", "caregiving", "f:3"),  # abstained -> general: wrong
        Example("d", GENERAL, "f:4"),  # right
        Example("e", GENERAL, "f:5"),  # wrong
    ]
    table = {
        "a": ("caregiving", False),
        "b": ("caregiving", False),
        "c": (GENERAL, True),
        "d": (GENERAL, False),
        "e": ("caregiving", False),
    }
    # first value is the warm-up call, which is not counted
    router = TableRouter(table, [99.0, 1.0, 2.0, 3.0, 4.0, 10.0])
    result = evaluate_routing(router, examples)
    assert result.report.accuracy == pytest.approx(3 / 5)
    assert result.report.confusion == ((2, 1), (1, 1))
    care = result.report.per_route["caregiving"]
    assert (care.precision, care.recall, care.support) == (pytest.approx(2 / 3), pytest.approx(2 / 3), 3)
    assert result.report.per_route[GENERAL].f1 == pytest.approx(0.5)
    assert result.abstained == 1 and result.abstention_rate == pytest.approx(0.2)
    assert result.latency_p50_ms == pytest.approx(3.0)
    assert result.latency_p95_ms == pytest.approx(4.0 + 0.8 * 6.0)  # rank 3.8 between 4 and 10
    assert [e.source for e in result.errors] == ["f:3", "f:5"]
    text = result.format(show_errors=True)
    assert "abstained from caregiving" in text and "f:5" in text and "abstention: 1/5 (20.0%)" in text
    data = result.as_dict(show_errors=True)
    assert data["misrouted"] == 2 and len(data["errors"]) == 2  # type: ignore[arg-type]


def test_percentile_matches_numpy_linear() -> None:
    import numpy as np

    values = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0]
    for q in (0, 50, 90, 95, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


TRAIN = [
    ("糖尿病患者的照护内容有哪些", 1),
    ("脑卒中老人怎么护理", 1),
    ("卧床老人怎么翻身防压疮", 1),
    ("阿尔茨海默病老人的照护", 1),
    ("高血压老人的日常护理", 1),
    ("老人吞咽困难怎么喂饭", 1),
    ("梅西率迈阿密国际夺队史首冠", 0),
    ("今天股市大涨", 0),
    ("信用卡怎么还款", 0),
    ("python怎么读取文件", 0),
    ("明天天气怎么样", 0),
    ("给我讲个笑话", 0),
]


@pytest.fixture
def fake_encoder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A hashing encoder and a settings file that fits the router on a dozen lines (seconds, not minutes)."""

    monkeypatch.setattr("adapters.wiring.build_encoder", lambda settings: HashingEncoder())
    train = tmp_path / "train.txt"
    train.write_text("".join(f"{label} {text}\n" for text, label in TRAIN), encoding="utf-8")
    config = tmp_path / "config.toml"
    config.write_text(f'routing_data = ["{train}"]\nadapter_dirs = ["{tmp_path / "none"}"]\n', encoding="utf-8")
    return config


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    import main

    code = main.main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_eval_routing_cli_json(tmp_path: Path, fake_encoder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "heldout.jsonl"
    rows = [
        {"text": "卧床老人怎么翻身防压疮", "label": "caregiving"},
        {"text": "今天股市大涨", "label": 0},
        {"text": "老年痴呆老人晚上不睡觉怎么照护", "label": 1},
        {"text": "推荐一部电影", "label": "general"},
    ]
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    code, out, _ = run_main(
        ["eval", "routing", str(data), "--json", "--show-errors", "--config", str(fake_encoder)], capsys
    )
    assert code == 0
    report = json.loads(out)
    assert report["queries"] == 4 and 0.0 <= report["accuracy"] <= 1.0
    assert set(report["per_route"]) <= {"caregiving", GENERAL} and report["labels"]
    assert report["latency_ms"]["p50"] > 0 and report["latency_ms"]["p95"] >= report["latency_ms"]["p50"]
    assert 0.0 <= report["abstention_rate"] <= 1.0
    assert len(report["errors"]) == report["misrouted"]
    code, out, _ = run_main(["eval", "routing", str(data), "--config", str(fake_encoder)], capsys)
    assert code == 0 and "accuracy" in out and "p50" in out


def test_eval_routing_bad_file_exits_2_naming_file_and_line(
    tmp_path: Path, fake_encoder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"text": "ok", "label": "general"}\n{"text": "no label"}\n', encoding="utf-8")
    code, out, err = run_main(["eval", "routing", str(data), "--config", str(fake_encoder)], capsys)
    assert code == 2 and out == ""
    assert f"{data}:2" in err
    missing = tmp_path / "missing.jsonl"
    code, _, err = run_main(["eval", "routing", str(missing), "--config", str(fake_encoder)], capsys)
    assert code == 2 and str(missing) in err
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    code, _, err = run_main(["eval", "routing", str(empty), "--config", str(fake_encoder)], capsys)
    assert code == 2 and "no labelled examples" in err
