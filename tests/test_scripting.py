"""The stdin/JSON contract of `ask` and `route` (CLI.md), on fakes."""

from __future__ import annotations

import io
import json

from assistant.scripting import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, queries_from_stream, run_ask, run_route
from assistant.session import ChatSession
from tests.fakes import ScriptedEngine, adapter_info
from tests.test_session import KeywordRouter


def session(keep_history: bool = False) -> ChatSession:
    return ChatSession(
        KeywordRouter(), ScriptedEngine([adapter_info("caregiving", "caregiving")]), keep_history=keep_history
    )


def test_stdin_skips_blank_lines_and_reports_bad_utf8_by_line() -> None:
    raw = "糖尿病老人的护理\n\n   \n".encode() + b"\xff\xfe bad\n" + "你好\n".encode()
    queries = list(queries_from_stream(io.BytesIO(raw)))
    assert [(q.line, q.text) for q in queries] == [(1, "糖尿病老人的护理"), (4, None), (5, "你好")]
    assert "line 4" in (queries[1].error or "")


def test_ask_json_lines_have_contract_fields() -> None:
    out, err = io.StringIO(), io.StringIO()
    queries = queries_from_stream(io.BytesIO("糖尿病患者的照护内容有哪些？\n梅西率迈阿密国际夺队史首冠\n".encode()))
    code = run_ask(session(), queries, True, out, err)
    assert code == EXIT_OK
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["route"] for r in rows] == ["caregiving", "general"]
    assert [r["adapter"] for r in rows] == ["caregiving", None]
    for row in rows:
        assert set(row) >= {"query", "route", "adapter", "confidence", "answer", "new_tokens", "latency_ms"}
        assert row["answer"] and 0 <= row["confidence"] <= 1 and row["new_tokens"] > 0 and row["latency_ms"] >= 0


def test_bad_line_is_reported_and_others_answered_exit_1() -> None:
    out, err = io.StringIO(), io.StringIO()
    queries = queries_from_stream(io.BytesIO(b"\xc3\x28\n" + "你好\n".encode()))
    code = run_ask(session(), queries, True, out, err)
    assert code == EXIT_FAILED
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert rows[0]["error"] and rows[0]["line"] == 1
    assert rows[1]["answer"].startswith("answer from base")
    assert "line 1" in err.getvalue()


def test_plain_ask_streams_answer_to_stdout_and_route_to_stderr() -> None:
    out, err = io.StringIO(), io.StringIO()
    run_ask(session(), queries_from_stream(io.BytesIO("老人护理\n".encode())), False, out, err)
    assert out.getvalue().startswith("answer from caregiving")
    assert "caregiving" in err.getvalue() and "answer" not in err.getvalue()


def test_missing_adapter_warns_on_stderr_and_json_adapter_is_null() -> None:
    out, err = io.StringIO(), io.StringIO()
    bare = ChatSession(KeywordRouter(), ScriptedEngine([]))
    run_ask(bare, queries_from_stream(io.BytesIO("老人护理\n".encode())), True, out, err)
    row = json.loads(out.getvalue())
    assert row["route"] == "caregiving" and row["adapter"] is None
    assert "warning" in err.getvalue()


def test_ctrl_c_keeps_partial_and_exits_130() -> None:
    class InterruptingEngine(ScriptedEngine):
        def stream(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            yield "部分"
            yield "回答"
            raise KeyboardInterrupt

    out, err = io.StringIO(), io.StringIO()
    s = ChatSession(KeywordRouter(), InterruptingEngine())
    code = run_ask(s, queries_from_stream(io.BytesIO("你好\n再来\n".encode())), False, out, err)
    assert code == EXIT_INTERRUPTED
    assert out.getvalue().startswith("部分回答")
    assert "interrupted" in err.getvalue()


def test_route_json_has_margin_and_candidates() -> None:
    out, err = io.StringIO(), io.StringIO()
    code = run_route(KeywordRouter(), queries_from_stream(io.BytesIO("老人护理\n你好\n".encode())), True, out, err)
    assert code == EXIT_OK
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert rows[0]["route"] == "caregiving" and rows[1]["adapter"] is None
    for row in rows:
        assert {"query", "route", "adapter", "confidence", "margin", "candidates"} <= set(row)
        assert abs(sum(c["score"] for c in row["candidates"]) - 1.0) < 1e-3
