"""QLoRA training on a tiny random 4-bit Qwen2: one step, reload, resume, Ctrl-C, bad data, routing (seconds)."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path
from typing import Any

import pytest
import torch

from adapters.base_model import load_base, warm_up
from adapters.registry import ROUTE_EXAMPLES, read_manifest, scan_adapters
from adapters.wiring import routing_files
from assistant.config import Settings
from assistant.errors import UsageError
from assistant.router import Router
from assistant.router_fit import load_or_fit_router
from data.errors import BadInputFile
from data.labels import load_labelled
from tests.fakes import HashingEncoder
from tests.tiny_models import build_tiny_lora, build_tiny_qwen2, tiny_base_checksum
from training import adapter_job, router_refit
from training.adapter_job import AdapterJob, run_adapter_job
from training.checkpoints import CheckpointStore, trainable_state
from training.config import TrainConfig
from training.dataset import TokenizedSplit, iterate_batches, tokenize
from training.identity_data import identity_samples
from training.lora_run import lora_model
from training.loss import evaluation, repacked, row_losses, shared_prefix, to_tensors
from training.sft import Interrupted, SFTLoop

SYSTEM = "你是颐家小助手。"
FAST = TrainConfig(
    max_steps=2,
    batch_size=2,
    grad_accumulation=1,
    max_length=160,
    system_prompt=SYSTEM,
    identity_samples=6,
    eval_every=1,
    save_every=1,
    val_max=4,
    probe=False,
    learning_rate=5e-3,
)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen2(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture
def settings(tmp_path: Path, tiny_base: Path) -> Settings:
    routing = tmp_path / "routing"
    routing.mkdir()
    lines = [{"text": f"今天的新闻{i}：股市和体育", "label": "general"} for i in range(12)]
    lines += [{"text": f"糖尿病老人{i}的照护要点", "label": "caregiving"} for i in range(12)]
    (routing / "seed.jsonl").write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), "utf-8")
    (tmp_path / "adapters").mkdir()
    return Settings(base=str(tiny_base), adapter_dirs=(tmp_path / "adapters",), routing_data=(routing,))


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    """A user's smallest useful data file: 20 lines of JSONL."""
    path = tmp_path / "pets.jsonl"
    rows = [{"prompt": f"我家小狗{i}岁了，该怎么喂？", "response": f"{i}岁的小狗每天喂两次。"} for i in range(20)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _loop(settings: Settings, config: TrainConfig, data_file: Path, folder: Path) -> tuple[SFTLoop, Any]:
    """A fresh 4-bit base + LoRA + loop, as run_adapter_job builds them."""
    from data.sft import load_sft_file

    loaded = load_base(settings, progress=False)
    samples = load_sft_file(data_file) + identity_samples(config.identity_samples)
    train = tokenize(samples[:-4], loaded.tokenizer, SYSTEM, config.max_length)
    val = tokenize(samples[-4:], loaded.tokenizer, SYSTEM, config.max_length)
    model = lora_model(loaded, config)
    pad = loaded.tokenizer.pad_token_id
    loop = SFTLoop(model, train, val, config, CheckpointStore(folder), pad, "cpu", lambda m: None, progress=False)
    return loop, loaded


def _logits(model: Any, loop: SFTLoop) -> torch.Tensor:
    batch = next(iterate_batches(loop.val_split, 4, loop.pad_id))
    tensors = to_tensors(batch, "cpu")
    with evaluation(model):
        return model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"]).logits


def test_one_step_loss_is_finite_and_adapter_reloads_with_the_same_outputs(
    settings: Settings, data_file: Path, tmp_path: Path
) -> None:
    from peft import PeftModel

    loop, _ = _loop(settings, FAST.with_overrides(max_steps=1), data_file, tmp_path / "ckpt")
    held_out, loop.val_split = loop.val_split, TokenizedSplit()  # no validation: the one step is kept, not rolled back
    outcome = loop.run(resume=False, fingerprint="x")
    loop.val_split = held_out
    assert outcome.state.step == 1 and not outcome.best_restored
    assert all(math.isfinite(loss) for _, loss in outcome.state.train_losses)
    assert not repacked(loop.model), "validation must not repack the 4-bit weights"
    trained = _logits(loop.model, loop)
    with loop.model.disable_adapter():
        base = _logits(loop.model, loop)
    assert not torch.allclose(trained, base), "one step at lr 5e-3 must change the outputs"
    loop.model.save_pretrained(str(tmp_path / "saved"))

    # Reloaded onto a fresh base prepared the same way (fp32 norms/head): bit-for-bit the trained model.
    from peft import prepare_model_for_kbit_training

    fresh = prepare_model_for_kbit_training(load_base(settings, progress=False).model, use_gradient_checkpointing=False)
    reloaded = PeftModel.from_pretrained(fresh, str(tmp_path / "saved"), is_trainable=False)
    torch.testing.assert_close(_logits(reloaded, loop), trained)
    # As the engine serves it (bf16 base, untouched): the same up to bf16 rounding.
    served = PeftModel.from_pretrained(load_base(settings, progress=False).model, str(tmp_path / "saved"))
    torch.testing.assert_close(_logits(served, loop).float(), trained, atol=0.05, rtol=0.05)


def test_validation_between_steps_keeps_training_working(settings: Settings, data_file: Path, tmp_path: Path) -> None:
    # docs/MODELS.md: a no-grad forward in eval mode repacks bnb's 4-bit weights and the next
    # training step crashes. eval_every=1 validates between every pair of steps.
    loop, _ = _loop(settings, FAST.with_overrides(max_steps=3), data_file, tmp_path / "ckpt")
    outcome = loop.run(resume=False, fingerprint="x")
    assert outcome.state.step == 3 and len(outcome.state.val_losses) == 4  # base + after every step
    assert not repacked(loop.model)


def test_a_model_that_served_inference_is_refused(settings: Settings, data_file: Path, tmp_path: Path) -> None:
    loop, loaded = _loop(settings, FAST, data_file, tmp_path / "ckpt")
    warm_up(loaded.model, loaded.tokenizer)
    with pytest.raises(RuntimeError, match="served inference"):
        loop.run(resume=False, fingerprint="x")


def test_ctrl_c_saves_a_checkpoint_and_resume_matches_an_unbroken_run(
    settings: Settings, data_file: Path, tmp_path: Path
) -> None:
    config = FAST.with_overrides(max_steps=4, eval_every=2, save_every=10, dropout=0.1)
    unbroken, _ = _loop(settings, config, data_file, tmp_path / "a")
    expected = unbroken.run(resume=False, fingerprint="job")

    broken, _ = _loop(settings, config, data_file, tmp_path / "b")
    broken.on_step = lambda state: os.kill(os.getpid(), signal.SIGINT) if state.step == 2 else None
    with pytest.raises(Interrupted) as info:
        broken.run(resume=False, fingerprint="job")
    assert info.value.checkpoint is not None and info.value.checkpoint.name == "step-000002"

    resumed, _ = _loop(settings, config, data_file, tmp_path / "b")
    with pytest.raises(UsageError, match="different job"):
        resumed.run(resume=True, fingerprint="another job")
    outcome = resumed.run(resume=True, fingerprint="job")
    assert outcome.state.step == 4
    assert [s for s, _ in outcome.state.train_losses] == [1, 2, 3, 4]
    assert [v for _, v in outcome.state.train_losses] == pytest.approx([v for _, v in expected.state.train_losses])
    got, want = trainable_state(resumed.model), trainable_state(unbroken.model)
    for name in want:
        torch.testing.assert_close(got[name], want[name])


def test_loss_counts_only_labelled_tokens(settings: Settings, data_file: Path, tmp_path: Path) -> None:
    loop, _ = _loop(settings, FAST, data_file, tmp_path / "ckpt")
    batch = next(iterate_batches(loop.train_split, 2, loop.pad_id))
    tensors = to_tensors(batch, "cpu")
    with evaluation(loop.model):
        sums, counts = row_losses(loop.model, tensors)
        logits = loop.model(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"]).logits
    reference = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), tensors["labels"][:, 1:].reshape(-1), reduction="sum"
    )
    assert int(counts.sum()) == batch.label_tokens
    torch.testing.assert_close(sums.sum(), reference, rtol=1e-4, atol=1e-3)
    # The shared system prompt encoded once as a key/value cache gives the same forward.
    prefix = shared_prefix(loop.train_split.input_ids, loop.train_split.labels)
    assert prefix >= 16 and loop.prefix == prefix
    with evaluation(loop.model):
        cached, cached_counts = row_losses(loop.model, tensors, prefix)
    torch.testing.assert_close(cached, sums, rtol=1e-4, atol=1e-4)
    assert torch.equal(cached_counts, counts)


def test_train_adapter_on_20_lines_gives_a_listed_routed_adapter(
    settings: Settings, data_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = AdapterJob(
        name="pets",
        data_file=data_file,
        config=FAST.with_overrides(probe=True, probe_max_new_tokens=2),
        route="pets",
        progress=False,
    )
    logs: list[str] = []
    manifest = run_adapter_job(job, settings, logs.append, encoder_factory=lambda s: HashingEncoder())
    folder = settings.adapters_dir / "pets"
    assert {"adapter_model.safetensors", "adapter_config.json", "manifest.json", "loss.png", ROUTE_EXAMPLES} <= {
        p.name for p in folder.iterdir()
    }
    assert not (folder / "checkpoints").exists()
    assert manifest == read_manifest(folder)
    assert manifest["route"] == "pets" and manifest["base_checksum"] == tiny_base_checksum(Path(settings.base))
    assert manifest["data"]["samples"] == 20 and manifest["data"]["checksum"]
    assert manifest["steps"] == 2 and manifest["wall_time_s"] > 0 and manifest["peak_memory_mb"] > 0
    assert math.isfinite(manifest["val_loss"]["base"]) and math.isfinite(manifest["val_loss"]["adapter"])
    assert set(manifest["metrics"]["identity_probe"]) == {"general", "pets"}
    assert manifest["config"]["r"] == 8 and "created" in manifest
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == manifest["base_model"]

    # Listed by the registry (what `main.py adapters --json` prints) ...
    [info] = scan_adapters(settings.adapters_dir)[0]
    assert (info.name, info.route) == ("pets", "pets")
    # ... and routed: the app's router, fitted on the same files, is already cached and sends the examples there.
    examples = load_labelled(routing_files(settings))
    assert sum(e.label == "pets" for e in examples) == 20
    fitted = load_or_fit_router(HashingEncoder(), examples, lambda m: None)
    assert fitted.from_cache
    router = Router(HashingEncoder(), fitted.stored, {"general": None, "pets": "pets"})
    assert router.route("我家小狗3岁了，该怎么喂？").adapter == "pets"
    assert any("router accuracy on the existing labelled data" in m for m in logs)

    # `train identity --into pets` rebuilds the same job from the manifest (identity forced on).
    from argparse import Namespace

    from training.identity_commands import identity_jobs

    args = Namespace(into="all", train_config=None, force=False, resume=False, no_progress=True)
    [again] = identity_jobs(args, settings, {"identity_samples": 10}, lambda m: None)
    assert (again.name, again.route, again.data_file.resolve()) == ("pets", "pets", data_file.resolve())
    assert again.config.identity and again.config.identity_samples == 10 and again.config.max_steps == 2
    assert again.route_texts is not None and len(again.route_texts) == 20


def test_malformed_data_is_rejected_with_file_and_line_and_nothing_is_trained(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": "d"}\n{"prompt": "e"\n', "utf-8")

    def no_model(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a model was loaded for bad data")

    monkeypatch.setattr("adapters.base_model.load_base", no_model)
    argv = f"train adapter --name bad --data {bad} --base {settings.base} --adapters-dir {settings.adapters_dir}"
    code = main.main(argv.split())
    assert code == 2
    assert f"{bad}:3" in capsys.readouterr().err
    assert not (settings.adapters_dir / "bad").exists()
    with pytest.raises(BadInputFile):
        run_adapter_job(AdapterJob("bad", bad, FAST), settings, lambda m: None)


def test_route_that_hurts_existing_routing_is_refused_unless_forced(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Route examples worded exactly like the general headlines: the existing data can only get worse.
    confusing = tmp_path / "confusing.txt"
    confusing.write_text("".join(f"今天的新闻{i}：股市和体育\n" for i in range(12, 36)), encoding="utf-8")
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "x", "response": "y"}\n', encoding="utf-8")
    trained: list[str] = []
    monkeypatch.setattr(adapter_job, "train_and_install", lambda job, *a, **k: trained.append(job.name) or {})
    monkeypatch.setattr(router_refit, "refit_and_store", lambda *a, **k: (None, None))
    job = AdapterJob("news2", data, FAST, route="news2", route_examples=confusing)
    with pytest.raises(UsageError, match="drops routing accuracy"):
        run_adapter_job(job, settings, lambda m: None, encoder_factory=lambda s: HashingEncoder())
    assert trained == []
    logs: list[str] = []
    try:
        run_adapter_job(
            AdapterJob("news2", data, FAST, route="news2", route_examples=confusing, force=True),
            settings,
            logs.append,
            encoder_factory=lambda s: HashingEncoder(),
        )
    except AttributeError:
        pass  # the stubbed refit returns None; only the guard is under test
    assert trained == ["news2"] and any("--force" in m for m in logs)


def test_a_route_served_by_another_adapter_is_refused(settings: Settings, data_file: Path) -> None:
    build_tiny_lora(Path(settings.base), settings.adapters_dir / "other", "other", "pets")
    with pytest.raises(UsageError, match="already served by adapter 'other'"):
        run_adapter_job(AdapterJob("pets", data_file, FAST, route="pets"), settings, lambda m: None)


def test_train_router_prints_cv_accuracy_and_caches_the_router(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from training import commands

    monkeypatch.setattr("adapters.wiring.build_encoder", lambda s: HashingEncoder())
    args = type("Args", (), {"train_command": "router", "data": None})()
    assert commands.run(args, settings) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "confusion" in out
    examples = load_labelled(routing_files(settings))
    assert load_or_fit_router(HashingEncoder(), examples, lambda m: None).from_cache


def test_eval_identity_reports_every_route(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from measurement.eval_identity import PROBE_FILE, register_identity_eval, run_identity_eval

    build_tiny_lora(Path(settings.base), settings.adapters_dir / "care", "care", "caregiving")
    parser = argparse.ArgumentParser()
    register_identity_eval(parser.add_subparsers(dest="eval_command"), lambda p: None)
    assert parser.parse_args(["identity"]).probe == PROBE_FILE
    probe = tmp_path / "probe.jsonl"
    probe.write_text('{"question": "你是谁呀？", "lang": "zh"}\n{"question": "Who are you?", "lang": "en"}\n', "utf-8")
    monkeypatch.setattr("adapters.wiring.build_encoder", lambda s: HashingEncoder())
    common = ["identity", "--probe", str(probe), "--max-new-tokens", "2"]
    code = run_identity_eval(parser.parse_args([*common, "--models-only", "--json"]), settings)
    report = json.loads(capsys.readouterr().out)
    assert code == 1  # a random tiny model alone does not know who it is
    assert [r["route"] for r in report["routes"]] == ["general", "caregiving"]
    assert [r["total"] for r in report["routes"]] == [2, 2]

    # As `ask` answers: both questions are recognised, so every answer starts in character.
    code = run_identity_eval(parser.parse_args([*common, "--json"]), settings)
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    for route in report["routes"]:
        zh, en = (a["answer"] for a in route["answers"])
        assert zh.startswith("我是颐家小助手，") and en.startswith("I am Yijia Assistant,")

    args = parser.parse_args([*common, "--models-only", "--route", "caregiving"])
    assert run_identity_eval(args, settings) == 1
    assert "general" not in capsys.readouterr().out.split("FAIL")[0]


def test_many_cut_answers_are_a_warning_a_few_a_note() -> None:
    from training.lora_run import cut_report

    few = cut_report(["a.jsonl:3"], 20, 512)
    assert few.startswith("note: 1 of 20") and "a.jsonl:3" in few and "--max-length" not in few
    many = cut_report([f"a.jsonl:{i}" for i in range(1, 8)], 20, 256)
    assert many.startswith("warning: 7 of 20") and "--max-length" in many and many.count("a.jsonl:") == 5
