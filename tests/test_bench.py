"""`bench` end to end on a tiny random Qwen2 (and its GGUF for the llama.cpp peer when installed)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import HashingEncoder
from tests.tiny_models import build_tiny_gguf, build_tiny_qwen2

TRAIN = [
    ("糖尿病患者的照护内容有哪些", 1),
    ("脑卒中老人怎么护理", 1),
    ("卧床老人怎么翻身防压疮", 1),
    ("阿尔茨海默病老人的照护", 1),
    ("梅西率迈阿密国际夺队史首冠", 0),
    ("今天股市大涨", 0),
    ("信用卡怎么还款", 0),
    ("明天天气怎么样", 0),
]

#: Fields every bench JSON has as positive numbers (quick mode included).
POSITIVE = [
    "router.single_ms_p50",
    "router.single_ms_p95",
    "router.encode_ms_p50",
    "router.classify_ms_p50",
    "router.batch_qps",
    "router.batch_ms_per_query",
    "router.single_ms_p50_by_threads.1",
    "router.classify_ms_p50_fp32_examples",
    "router.prototype.single_ms_p50",
    "router.prototype.classify_ms_p50",
    "router.prototype.same_route_share",
    "adapters.adapter_file_mib",
    *(
        f"generation.variants.{v}.{f}"
        for v in ("nf4", "nf4_lora", "bf16")
        for f in ("ttft_s", "decode_tok_s", "total_s", "new_tokens")
    ),
    "generation.ratios.nf4_vs_bf16_decode",
    "generation.ratios.nf4_lora_vs_nf4_decode",
    "generation.ratios.nf4_vs_bf16_ttft",
    "generation.threads",
    "generation.prompt_tokens",
    "adapters.base_delta_mib",
    "adapters.ten_adapters_mib",
    "adapters.bf16_model_mib",
    "adapters.ten_merged_mib",
    "adapters.ten_merged_nf4_mib",
    "adapters.ten_merged_vs_ten_adapters",
    "adapters.switch_ms_p50",
    "adapters.switch_ms_p95",
    "adapters.route_share_of_answer",
    "adapters.footprint_mib",
    "adapters.lora_modules",
    "machine.cores_logical",
    "machine.cores_physical",
    "machine.ram_gib",
    "product.context_tokens",
    "product.conversation.last_vs_first_ttft",
    "product.answers.tok_s.ours.general",
    "product.long_paste.first_token_s",
    "product.long_paste.prompt_tokens",
    "seconds",
]
#: Only in a full run (and the peer only where llama-cpp-python is installed).
FULL_ONLY = [
    *(f"generation.variants.nf4_base_route.{f}" for f in ("ttft_s", "decode_tok_s")),
    "training.s_per_step",
    "training.tokens_per_s",
    "training.peak_rss_mib",
    "training.trainable_params",
    "generation.profile.step_ms",
    "generation.profile.op_ms_per_step",
    "generation.thread_sweep_decode_tok_s.nf4.1",
    "generation.nf4_ttft_s_by_prompt_tokens.256",
]
PEER = [
    "generation.variants.llama_cpp.decode_tok_s",
    "generation.variants.llama_cpp.ttft_s",
    "generation.ratios.nf4_vs_llama_cpp_decode",
    "generation.ratios.nf4_vs_llama_cpp_decode_paired_median",
    "product.answers.tok_s.llama_cpp.general",
    "product.answers.vs_llama_cpp.ours.general",
]
FILES = ["latest.json", "latest.md", "README-snippet.md", "decode.png", "memory.png", "router.png"]


def field(data: dict[str, Any], dotted: str) -> Any:
    value: Any = data
    for key in dotted.split("."):
        assert isinstance(value, dict) and key in value, f"missing {dotted}"
        value = value[key]
    return value


def assert_positive(data: dict[str, Any], fields: list[str]) -> None:
    for name in fields:
        value = field(data, name)
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{name} = {value!r}"
        assert math.isfinite(value) and value > 0, f"{name} = {value!r}"


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Tiny base, a dozen routing lines, no installed adapters, and the hashing encoder instead of E5."""

    monkeypatch.setattr("adapters.wiring.build_encoder", lambda settings: HashingEncoder())
    train = tmp_path / "train.txt"
    train.write_text("".join(f"{label} {text}\n" for text, label in TRAIN), encoding="utf-8")
    (tmp_path / "adapters").mkdir()
    config = tmp_path / "config.toml"
    config.write_text(f'routing_data = ["{train}"]\nadapter_dirs = ["{tmp_path / "adapters"}"]\n', encoding="utf-8")
    return {"root": tmp_path, "config": config, "base": build_tiny_qwen2(tmp_path / "base")}


def run_bench(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    import main

    code = main.main(argv)
    out = capsys.readouterr().out
    assert code == 0
    result: dict[str, Any] = json.loads(out)
    return result


def test_quick_bench_on_tiny_model_reports_every_field(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    out = setup["root"] / "out"
    result = run_bench(
        [
            "bench",
            "--quick",
            "--json",
            "--base",
            str(setup["base"]),
            "--config",
            str(setup["config"]),
            "--threads",
            "1",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert result["quick"] is True and result["generation"]["prompt_tokens"] == 64
    assert_positive(result, POSITIVE)
    assert [c["adapters"] for c in result["adapters"]["configurations"]] == [0, 2]
    assert all(c["delta_mib"] > 0 for c in result["adapters"]["configurations"])
    # a tiny model's adapter is ~0.1 MiB: below RSS noise between two processes, so only finite is asserted
    assert math.isfinite(result["adapters"]["per_adapter_mib"])
    assert "skipped" in result["training"] and "quick" in result["training"]["skipped"]
    product = result["product"]
    turns = product["conversation"]["turns"]
    assert len(turns) == 10 and all(t["cached_tokens"] > 0 for t in turns)  # each turn reuses the one before
    paste = product["long_paste"]
    assert paste["prompt_tokens"] <= product["context_tokens"] and 0 < paste["kept_chars"] < paste["characters"]
    peer = result["generation"]["variants"]["llama_cpp"]
    assert "GGUF" in peer["skipped"]  # a folder base has no same-file llama.cpp peer, and the output says so
    assert any("quick mode" in n for n in result["notes"])
    machine = result["machine"]
    assert isinstance(machine["avx512_bf16"], bool) and machine["versions"]["torch"] and machine["date"]
    assert {"start", "end"} <= set(machine["load_average"])
    for name in FILES:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert json.loads((out / "latest.json").read_text(encoding="utf-8"))["schema"] == 1
    assert "| ours NF4 |" in (out / "latest.md").read_text(encoding="utf-8")


def test_full_bench_on_tiny_gguf_includes_peer_training_and_profile(
    setup: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from measurement.bench.peer import llama_cpp_version

    gguf = build_tiny_gguf(setup["root"] / "tiny.gguf")
    out = setup["root"] / "full"
    result = run_bench(
        [
            "bench",
            "--json",
            "--base",
            str(gguf),
            "--config",
            str(setup["config"]),
            "--threads",
            "1",
            "--out",
            str(out),
            "--repeats",
            "2",
            "--new-tokens",
            "16",
            "--adapters",
            "3",
            "--train-steps",
            "1",
            "--train-seq-len",
            "32",
        ],
        capsys,
    )
    assert result["quick"] is False
    assert_positive(result, POSITIVE + FULL_ONLY)
    assert result["adapters"]["ten_adapters_method"].startswith("extrapolated")  # 3 measured, not 10
    assert [c["adapters"] for c in result["adapters"]["configurations"]] == [0, 1, 3]
    # the speed prototype is measured next to the product path
    assert_positive(
        result, ["generation.variants.int4_torch.decode_tok_s", "generation.ratios.int4_torch_vs_nf4_decode"]
    )
    if llama_cpp_version() is not None:
        assert_positive(result, ["generation.thread_sweep_decode_tok_s.llama_cpp.1"])
    if llama_cpp_version() is None:
        assert "not installed" in result["generation"]["variants"]["llama_cpp"]["skipped"]
    else:
        assert_positive(result, PEER)
        assert result["generation"]["variants"]["llama_cpp"]["new_tokens"] == 16
        replay = result["product"]["answers"]["llama_cpp_replay"]
        assert replay["prompts"] == 6 and 0 <= replay["same"] <= 6
    assert len(result["product"]["conversation"]["agreed_chars_replayed"]) == 10
    report = (out / "latest.md").read_text(encoding="utf-8")
    assert "Where decode time goes" in report and "As users meet it" in report
    # The product's answers against the engine before this change and the packed-attention prototype.
    assert set(result["product"]["answers"]["same_answers_as_product"]) >= {"transformers_forward", "packed_attention"}
    assert result["product"]["answers"]["same_answers_as_product"]["transformers_forward"] == 1.0


def test_bench_options_reject_nonsense(capsys: pytest.CaptureFixture[str]) -> None:
    import main

    assert main.main(["bench", "--repeats", "0"]) == 2
    assert "--repeats must be positive" in capsys.readouterr().err


def test_bench_writes_a_new_run_folder_unless_asked_to_update_the_report(tmp_path: Path) -> None:
    from argparse import Namespace

    from assistant.config import REPO_ROOT, data_dir
    from measurement.bench_command import DOCS_DIR, output_folder

    first = output_folder(Namespace(out=None, update_report=False), quick=True)
    second = output_folder(Namespace(out=None, update_report=False), quick=False)
    assert first.parent == second.parent == data_dir() / "bench-runs"
    assert first != second and first.name.endswith("-quick")
    assert REPO_ROOT not in first.parents
    assert output_folder(Namespace(out=None, update_report=True), quick=False) == DOCS_DIR
    assert output_folder(Namespace(out=tmp_path, update_report=False), quick=True) == tmp_path


def test_shared_chars_counts_the_common_start_of_two_answers() -> None:
    from measurement.bench.conversation import shared_chars

    assert shared_chars("我不能确定她是否真的失眠", "我不能确定她是否真的睡不好") == 10
    assert shared_chars("same", "same") == 4
    assert shared_chars("abc", "abcdef") == 3
    assert shared_chars("", "x") == 0


def test_router_bench_queries_spread_over_the_held_out_set(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from measurement.bench.router_bench import bench_queries

    lines = [json.dumps({"text": f"question {i}", "label": "general"}) for i in range(10)]
    (tmp_path / "set.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    router = SimpleNamespace(stored=SimpleNamespace(example_texts=["trained one", "trained two"]))
    assert bench_queries(router, 5, tmp_path) == [f"question {i}" for i in (0, 2, 4, 6, 8)]
    # a short held-out set is filled in with training examples
    assert bench_queries(router, 12, tmp_path)[10:] == ["trained one", "trained two"]
