"""The shipped caregiving adapter on the real bundled base (slow: loads the 0.5B model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adapters.registry import read_manifest, scan_adapters
from assistant.config import REPO_ROOT, Settings
from training.identity_probe import judge, load_probe

SHIPPED = REPO_ROOT / "data" / "adapters" / "caregiving"
pytestmark = pytest.mark.skipif(not (SHIPPED / "manifest.json").is_file(), reason="no shipped caregiving adapter")


def test_shipped_manifest_records_what_the_issue_asks_for() -> None:
    from adapters.bundled_gguf import GGUF_SHA256

    manifest = read_manifest(SHIPPED)
    assert manifest["route"] == "caregiving" and manifest["base_checksum"] == GGUF_SHA256
    assert manifest["val_loss"]["adapter"] < manifest["val_loss"]["base"]
    assert manifest["data"]["file"] == "data/caregiving/grounded.jsonl" and manifest["data"]["checksum"]
    assert manifest["knowledge"]["dir"] == "data/knowledge/caregiving" and manifest["knowledge"]["grounded_samples"] > 0
    for key in ("config", "steps", "wall_time_s", "peak_memory_mb", "created"):
        assert manifest[key], key
    assert set(manifest["metrics"]["identity_probe"]) == {"general", "caregiving"}
    assert (SHIPPED / "adapter_model.safetensors").stat().st_size < 20 * 2**20
    assert (SHIPPED / "loss.png").is_file() and (SHIPPED / "samples.md").is_file()
    assert [a.name for a in scan_adapters(SHIPPED.parent)[0]] == ["caregiving"]


@pytest.mark.slow
def test_shipped_adapter_answers_identity_and_care_on_the_real_base() -> None:
    from adapters.base_model import load_base
    from adapters.hf_engine import TransformersEngine
    from assistant.engine import GenerationParams, Message
    from data.identity import load_identity

    loaded = load_base(Settings(), progress=False)
    engine = TransformersEngine(loaded.model, loaded.tokenizer, loaded.info, loaded.checksum, SHIPPED.parent)
    assert [a.name for a in engine.adapters()] == ["caregiving"]
    system = Message("system", load_identity().system_prompt())
    params = GenerationParams(max_new_tokens=48)
    for question in [q.question for q in load_probe()][::9]:  # 4 probe questions, both languages
        answer = "".join(engine.stream([system, Message("user", question)], "caregiving", params))
        assert judge(answer)[0], (question, answer)
    care = [system, Message("user", "帕金森病老人在家怎么防跌倒？")]
    tuned = "".join(engine.stream(care, "caregiving", params))
    base = "".join(engine.stream(care, None, params))
    assert tuned.strip() and tuned != base


def test_shipped_config_header_gives_the_command_that_made_it() -> None:
    header = (REPO_ROOT / "training" / "configs" / "caregiving.yaml").read_text(encoding="utf-8").split("\n\n")[0]
    manifest = read_manifest(SHIPPED)
    assert "python main.py train adapter --name caregiving" in header
    assert Path(manifest["config"]["config_file"]) == Path("training/configs/caregiving.yaml")
