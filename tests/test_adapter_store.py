"""Adapters are data apart from code: where they install, what an install may replace, how stores are searched."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from adapters.registry import install_target, scan_adapters
from assistant.config import SHIPPED_ADAPTERS, Settings, user_adapters_dir
from assistant.errors import UsageError
from tests.conftest import REPO
from tests.test_registry import make_adapter


def code_folder_identity(folder: Path) -> tuple[int, str, bool]:
    """The folder itself (an install swaps folders whole), its package marker, and whether it holds an adapter."""
    marker = hashlib.sha256((folder / "__init__.py").read_bytes()).hexdigest()
    return folder.stat().st_ino, marker, (folder / "manifest.json").exists()


def test_adapters_install_into_the_user_store_and_both_stores_are_searched() -> None:
    settings = Settings()
    assert settings.adapter_dirs == (user_adapters_dir(), SHIPPED_ADAPTERS)
    assert settings.adapters_dir == user_adapters_dir() and REPO not in settings.adapters_dir.parents
    assert not any(SHIPPED_ADAPTERS.glob("*.py")), "the shipped store holds adapters only"


def test_an_earlier_store_hides_the_same_name_later(tmp_path: Path) -> None:
    mine, shipped = tmp_path / "mine", tmp_path / "shipped"
    make_adapter(shipped, "caregiving", metrics={"v": "shipped"})
    make_adapter(shipped, "legal")
    make_adapter(mine, "caregiving", metrics={"v": "mine"})
    found, problems = scan_adapters([mine, shipped])
    assert problems == [] and [(a.name, a.metrics.get("v")) for a in found] == [("caregiving", "mine"), ("legal", None)]


def test_install_refuses_code_folders_bad_names_and_non_adapters(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="holds Python code"):
        install_target(REPO, "measurement")
    with pytest.raises(UsageError, match="holds Python code"):
        install_target(REPO / "adapters", "wiring")
    for bad in ("../escape", ".hidden", "a/b", ""):
        with pytest.raises(UsageError, match="bad adapter name"):
            install_target(tmp_path, bad)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(UsageError, match="not an adapter"):
        install_target(tmp_path, "notes")


def test_install_may_replace_an_adapter_or_resume_an_unfinished_run(tmp_path: Path) -> None:
    make_adapter(tmp_path, "care")
    assert install_target(tmp_path, "care") == tmp_path / "care"
    (tmp_path / "half" / "checkpoints").mkdir(parents=True)
    assert install_target(tmp_path, "half") == tmp_path / "half"
    assert install_target(tmp_path, "new") == tmp_path / "new"


def test_training_an_adapter_named_like_a_code_folder_leaves_the_code_untouched(tmp_path: Path) -> None:
    import json

    from tests.fakes import HashingEncoder
    from tests.tiny_models import build_tiny_qwen2
    from training.adapter_job import AdapterJob, run_adapter_job
    from training.config import TrainConfig

    before = {room: code_folder_identity(REPO / room) for room in ("measurement", "adapters", "assistant")}
    data = tmp_path / "d.jsonl"
    rows = [{"prompt": f"问题{i}", "response": f"回答{i}。"} for i in range(8)]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    settings = Settings(base=str(build_tiny_qwen2(tmp_path / "base")))
    config = TrainConfig().with_overrides(max_steps=1, batch_size=2, max_length=2048, identity=False, probe=False)

    for name in ("measurement", "adapters"):
        run_adapter_job(
            AdapterJob(name, data, config, progress=False), settings, lambda m: None, lambda s: HashingEncoder()
        )
        assert (user_adapters_dir() / name / "manifest.json").is_file()
    with pytest.raises(UsageError, match="holds Python code"):
        job = AdapterJob("measurement", data, config, progress=False)
        run_adapter_job(job, settings.with_overrides(adapter_dirs=(REPO,)), lambda m: None, lambda s: HashingEncoder())

    assert {room: code_folder_identity(REPO / room) for room in before} == before
    assert not any(before[room][2] for room in before)
