"""load_base on tiny models (folder, .gguf; NF4, bf16), device picking, cache rebuilds; one slow real-model test."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from adapters import base_model, device
from adapters.base_model import INFERENCE_ONLY_ATTR, LoadedBase, load_base, warm_up
from adapters.base_source import folder_checksum, resolve_source
from adapters.bundled_gguf import GGUF_SHA256
from adapters.cache import COMPLETE_MARKER, cache_path, check_cache, sha256_file
from adapters.device import cpu_has_avx512_bf16, kernel_description, pick_device
from assistant.config import Settings
from assistant.errors import ModelUnavailable
from tests.tiny_models import build_tiny_gguf, build_tiny_qwen2, tiny_base_checksum

needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_qwen2(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny-qwen2.gguf")


def next_token_logits(loaded: LoadedBase, text: str = "你好, who are you?") -> torch.Tensor:
    ids = loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.no_grad():
        return loaded.model(input_ids=ids).logits[0, -1].float()


def nf4_dirs() -> list[Path]:
    return sorted(p for p in cache_path("models").glob("*-nf4-*") if p.is_dir())


# ------------------------------------------------------------------ device, kernel, identity


def test_force_offline_sets_defaults_but_keeps_user_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging
    import os

    from adapters.offline import OFFLINE_ENV, force_offline

    for name in OFFLINE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    force_offline()
    assert all(os.environ[name] == "1" for name in OFFLINE_ENV)
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    assert logging.getLogger("bitsandbytes.backends.cpu.ops").level == logging.ERROR


def test_pick_device_on_cpu() -> None:
    assert pick_device("cpu") == ("cpu", torch.bfloat16)
    if not torch.cuda.is_available():
        assert pick_device("auto") == ("cpu", torch.bfloat16)
        with pytest.raises(ModelUnavailable, match="cuda"):
            pick_device("cuda")


def test_pick_device_prefers_cuda_and_falls_back_to_fp16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert pick_device("auto") == ("cuda", torch.float16)
    assert pick_device("cpu") == ("cpu", torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert pick_device("cuda") == ("cuda", torch.bfloat16)


def test_avx512_bf16_flag_is_read_from_cpuinfo(tmp_path: Path) -> None:
    fast, slow = tmp_path / "fast", tmp_path / "slow"
    fast.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni\n")
    slow.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 avx512_bf16x\n")
    assert cpu_has_avx512_bf16(fast) and not cpu_has_avx512_bf16(slow)
    assert not cpu_has_avx512_bf16(tmp_path / "missing")


def test_kernel_description_names_the_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device, "cpu_has_avx512_bf16", lambda: False)
    assert kernel_description("cpu", "nf4") == "bnb cpu (no avx512-bf16: slow path)"
    monkeypatch.setattr(device, "cpu_has_avx512_bf16", lambda: True)
    assert kernel_description("cpu", "nf4") == "bnb cpu avx512-bf16"
    assert kernel_description("cuda", "nf4") == "bnb cuda nf4"


def test_folder_checksum_tracks_config_and_weights_not_resaves(tiny: Path, tmp_path: Path) -> None:
    twin = build_tiny_qwen2(tmp_path / "twin")
    assert folder_checksum(twin) == folder_checksum(tiny) == tiny_base_checksum(tiny)
    config = json.loads((twin / "config.json").read_text())
    config["transformers_version"] = "9.9.9"  # a re-save with another version: same base
    (twin / "config.json").write_text(json.dumps(config))
    assert folder_checksum(twin) == folder_checksum(tiny)
    config["num_hidden_layers"] = 3
    (twin / "config.json").write_text(json.dumps(config))
    assert folder_checksum(twin) != folder_checksum(tiny)
    other = build_tiny_qwen2(tmp_path / "untied", tie_word_embeddings=False)  # bigger weights file
    assert folder_checksum(other) != folder_checksum(tiny)


def test_resolve_source_kinds(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundled = resolve_source("bundled")
    assert bundled.kind == "gguf" and bundled.checksum == GGUF_SHA256 and bundled.path is None  # nothing joined yet
    folder = resolve_source(str(tiny))
    assert folder.kind == "folder" and folder.model_id == str(tiny.resolve())
    with pytest.raises(ModelUnavailable, match="does not exist"):
        resolve_source(str(tmp_path / "nope.gguf"))
    with pytest.raises(ModelUnavailable, match="neither"):
        resolve_source(str(tmp_path / "no-such-folder"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(ModelUnavailable) as err:
        resolve_source("Qwen/Qwen2.5-0.5B-Instruct")
    assert "not in the local Hugging Face cache" in str(err.value) and "hf download" in err.value.hint


# ------------------------------------------------------------------ loading a folder


def test_bf16_folder_load(tiny: Path) -> None:
    loaded = load_base(Settings(base=str(tiny), quantization="bf16", threads=1), progress=False)
    assert loaded.model.dtype == torch.bfloat16
    assert loaded.info.quantization == "bf16" and loaded.info.device == "cpu"
    assert loaded.checksum == tiny_base_checksum(tiny) and loaded.model_id == str(tiny.resolve())
    assert torch.get_num_threads() == 1
    assert nf4_dirs() == []  # bf16 never touches the 4-bit cache
    assert torch.isfinite(next_token_logits(loaded)).all()


@needs_bnb
def test_nf4_folder_load_caches_the_quantized_checkpoint(tiny: Path) -> None:
    first = load_base(Settings(base=str(tiny)), progress=False)
    layer = first.model.model.layers[0].mlp.down_proj
    assert type(layer).__name__ == "Linear4bit"
    assert first.info.quantization == "nf4" and first.info.kernel.startswith("bnb cpu")
    (cached,) = nf4_dirs()
    marker = (cached / COMPLETE_MARKER).read_text()
    assert json.loads(marker)["source_sha256"] == tiny_base_checksum(tiny)

    second = load_base(Settings(base=str(tiny)), progress=False)
    assert (cached / COMPLETE_MARKER).read_text() == marker  # loaded, not rebuilt
    assert type(second.model.model.layers[0].mlp.down_proj).__name__ == "Linear4bit"
    assert torch.equal(next_token_logits(first), next_token_logits(second))


@needs_bnb
def test_warm_up_marks_the_model_inference_only(tiny: Path) -> None:
    loaded = load_base(Settings(base=str(tiny)), progress=False)
    assert not getattr(loaded.model, INFERENCE_ONLY_ATTR, False)
    assert warm_up(loaded.model, loaded.tokenizer) >= 0
    assert getattr(loaded.model, INFERENCE_ONLY_ATTR) is True


def corrupt_missing(folder: Path) -> None:
    (folder / "model.safetensors").unlink()


def corrupt_truncated(folder: Path) -> None:
    with open(folder / "model.safetensors", "r+b") as handle:
        handle.truncate(1000)


def corrupt_garbage_same_size(folder: Path) -> None:
    weights = folder / "model.safetensors"
    weights.write_bytes(b"\xff" * weights.stat().st_size)  # size intact: only loading can tell


def corrupt_marker(folder: Path) -> None:
    (folder / COMPLETE_MARKER).write_text("{not json")


def corrupt_stale_format(folder: Path) -> None:
    facts = json.loads((folder / COMPLETE_MARKER).read_text())
    facts["format"] = -1
    (folder / COMPLETE_MARKER).write_text(json.dumps(facts))


@needs_bnb
@pytest.mark.parametrize(
    "corrupt", [corrupt_missing, corrupt_truncated, corrupt_garbage_same_size, corrupt_marker, corrupt_stale_format]
)
def test_corrupted_nf4_cache_is_rebuilt(tiny: Path, corrupt: Any) -> None:
    reference = next_token_logits(load_base(Settings(base=str(tiny)), progress=False))
    (cached,) = nf4_dirs()
    corrupt(cached)
    again = load_base(Settings(base=str(tiny)), progress=False)
    assert torch.equal(next_token_logits(again), reference)
    assert check_cache(cached, {"format": base_model.CACHE_FORMAT}).ok
    third = load_base(Settings(base=str(tiny)), progress=False)  # and the rebuilt cache loads as is
    assert torch.equal(next_token_logits(third), reference)


def test_folder_without_safetensors_is_refused(tiny: Path, tmp_path: Path) -> None:
    import shutil

    pickled = tmp_path / "pickled"
    shutil.copytree(tiny, pickled)
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(ModelUnavailable, match="no safetensors weights") as err:
        load_base(Settings(base=str(pickled), quantization="bf16"), progress=False)
    assert "pytorch_model.bin" in str(err.value) and "pickled weights are refused" in err.value.hint


# ------------------------------------------------------------------ converting a .gguf


def test_gguf_is_converted_once_and_a_near_copy_output_layer_is_tied(tiny: Path, tiny_gguf: Path) -> None:
    loaded = load_base(Settings(base=str(tiny_gguf), quantization="bf16"), progress=False)
    assert loaded.model.config.tie_word_embeddings
    assert loaded.model.lm_head.weight.data_ptr() == loaded.model.model.embed_tokens.weight.data_ptr()
    (converted,) = cache_path("models").glob("gguf-*-bf16")
    facts = json.loads((converted / COMPLETE_MARKER).read_text())
    assert facts["tied"] and 0 < facts["lm_head_relative_diff"] < 0.05
    assert loaded.checksum == sha256_file(tiny_gguf)
    assert (converted / "chat_template.jinja").is_file()

    # Same network as the folder it was written from, up to the output-layer noise and bf16.
    reference = load_base(Settings(base=str(tiny), quantization="bf16"), progress=False)
    assert loaded.tokenizer.apply_chat_template([{"role": "user", "content": "你好"}]) == (
        reference.tokenizer.apply_chat_template([{"role": "user", "content": "你好"}])
    )
    a, b = next_token_logits(loaded), next_token_logits(reference)
    assert torch.allclose(a, b, atol=0.1), (a - b).abs().max()

    stamp = (converted / COMPLETE_MARKER).stat().st_mtime_ns
    time.sleep(0.01)
    load_base(Settings(base=str(tiny_gguf), quantization="bf16"), progress=False)
    assert (converted / COMPLETE_MARKER).stat().st_mtime_ns == stamp  # not converted again


def test_gguf_with_an_unrelated_output_layer_stays_untied(tmp_path: Path) -> None:
    untied = build_tiny_gguf(tmp_path / "untied.gguf", output_noise=None)
    loaded = load_base(Settings(base=str(untied), quantization="bf16"), progress=False)
    assert not loaded.model.config.tie_word_embeddings
    assert loaded.model.lm_head.weight.data_ptr() != loaded.model.model.embed_tokens.weight.data_ptr()


@needs_bnb
def test_gguf_to_nf4_and_a_broken_conversion_cache_is_rebuilt(tiny_gguf: Path) -> None:
    first = load_base(Settings(base=str(tiny_gguf)), progress=False)
    assert type(first.model.model.layers[1].self_attn.k_proj).__name__ == "Linear4bit"
    (converted,) = cache_path("models").glob("gguf-*-bf16")
    (nf4,) = nf4_dirs()
    corrupt_missing(converted)
    corrupt_missing(nf4)
    again = load_base(Settings(base=str(tiny_gguf)), progress=False)
    assert torch.equal(next_token_logits(first), next_token_logits(again))
    assert (converted / "model.safetensors").is_file() and (nf4 / "model.safetensors").is_file()


# ------------------------------------------------------------------ the real bundled model


@pytest.mark.slow
def test_real_bundled_model_generates_chinese() -> None:
    loaded = load_base(Settings(), progress=True)
    assert loaded.checksum == GGUF_SHA256 and loaded.info.quantization == "nf4"
    assert loaded.model.config.tie_word_embeddings  # the re-tie measured in docs/MODELS.md
    warm_up(loaded.model, loaded.tokenizer)
    tokenizer = loaded.tokenizer
    ids = tokenizer.apply_chat_template(
        [
            {"role": "system", "content": "你是一个乐于助人的助手。"},
            {"role": "user", "content": "你好，请介绍一下你自己。"},
        ],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )["input_ids"]
    with torch.no_grad():
        out = loaded.model.generate(ids, max_new_tokens=8, do_sample=False)
    text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in text), text
