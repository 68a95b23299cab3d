"""Adapter registry: manifests good, broken and incomplete, and the no-torch promise."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.registry import read_manifest, scan_adapters, write_manifest
from assistant.errors import BadInputFile
from tests.conftest import REPO

CHECKSUM = "ab" * 32


def safetensors_bytes(payload: int) -> bytes:
    """A well-formed safetensors file holding one uint8 tensor of `payload` bytes."""
    header = json.dumps({"w": {"dtype": "U8", "shape": [payload], "data_offsets": [0, payload]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"x" * payload


def make_adapter(
    root: Path, name: str, route: str = "", weights: bytes = safetensors_bytes(100), **manifest: object
) -> Path:
    """A folder that looks like a PEFT adapter (the registry never opens the weights)."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}), encoding="utf-8")
    (folder / "adapter_model.safetensors").write_bytes(weights)
    fields: dict[str, object] = {"route": route or name, "base_model": "tiny", "base_checksum": CHECKSUM}
    fields.update(manifest)
    write_manifest(folder, **fields)
    return folder


def test_good_adapters_are_listed_sorted_with_their_facts(tmp_path: Path) -> None:
    make_adapter(tmp_path, "zeta", route="coding", weights=safetensors_bytes(300), metrics={"eval_loss": 1.25})
    make_adapter(tmp_path, "alpha", route="caregiving")
    (tmp_path / "__pycache__").mkdir()  # not an adapter: no manifest, no complaint
    (tmp_path / "half-trained" / "checkpoints").mkdir(parents=True)
    (tmp_path / "notes.txt").write_text("hi", encoding="utf-8")

    found, problems = scan_adapters(tmp_path)

    assert problems == []
    assert [a.name for a in found] == ["alpha", "zeta"]
    zeta = found[1]
    assert zeta.route == "coding"
    assert zeta.path == str(tmp_path / "zeta")
    assert zeta.base_model == "tiny"
    assert zeta.size_bytes == len(safetensors_bytes(300))
    assert zeta.metrics == {"eval_loss": 1.25}
    assert zeta.created  # filled in by write_manifest


def test_size_counts_every_weight_file_but_not_the_rest(tmp_path: Path) -> None:
    folder = make_adapter(tmp_path, "a", weights=safetensors_bytes(10))
    (folder / "extra.safetensors").write_bytes(b"y" * 5)
    (folder / "README.md").write_text("z" * 1000, encoding="utf-8")
    (found,), _ = scan_adapters(tmp_path)
    assert found.size_bytes == len(safetensors_bytes(10)) + 5


def test_bad_json_names_the_file_and_line_and_the_rest_still_load(tmp_path: Path) -> None:
    make_adapter(tmp_path, "good")
    broken = make_adapter(tmp_path, "broken")
    (broken / "manifest.json").write_text('{\n  "name": "broken",\n  oops\n}', encoding="utf-8")

    found, problems = scan_adapters(tmp_path)

    assert [a.name for a in found] == ["good"]
    assert len(problems) == 1
    assert "broken" in problems[0]
    assert f"{broken / 'manifest.json'}:3" in problems[0]
    assert "not valid JSON" in problems[0]


def test_manifest_that_is_not_an_object(tmp_path: Path) -> None:
    folder = make_adapter(tmp_path, "list")
    (folder / "manifest.json").write_text("[1, 2]", encoding="utf-8")
    found, problems = scan_adapters(tmp_path)
    assert found == [] and "JSON object" in problems[0]


def test_missing_weights_is_reported(tmp_path: Path) -> None:
    folder = make_adapter(tmp_path, "noweights")
    (folder / "adapter_model.safetensors").unlink()
    found, problems = scan_adapters(tmp_path)
    assert found == []
    assert "noweights" in problems[0] and "adapter_model.safetensors" in problems[0]


def test_pickled_weights_are_refused_with_a_fix(tmp_path: Path) -> None:
    folder = make_adapter(tmp_path, "pickled")
    (folder / "adapter_model.safetensors").unlink()
    (folder / "adapter_model.bin").write_bytes(b"pickle")
    _, problems = scan_adapters(tmp_path)
    assert "re-save with safetensors" in problems[0]


def test_missing_or_broken_adapter_config(tmp_path: Path) -> None:
    make_adapter(tmp_path, "noconfig")
    (tmp_path / "noconfig" / "adapter_config.json").unlink()
    make_adapter(tmp_path, "badconfig")
    (tmp_path / "badconfig" / "adapter_config.json").write_text("{", encoding="utf-8")
    found, problems = scan_adapters(tmp_path)
    assert found == []
    assert any("noconfig" in p and "missing adapter_config.json" in p for p in problems)
    assert any("badconfig" in p and "not valid JSON" in p for p in problems)


def test_name_mismatch_is_reported(tmp_path: Path) -> None:
    folder = make_adapter(tmp_path, "folder-name")
    manifest = read_manifest(folder)
    manifest["name"] = "other-name"
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    found, problems = scan_adapters(tmp_path)
    assert found == []
    assert "'other-name'" in problems[0] and "'folder-name'" in problems[0]


def test_missing_keys_and_wrong_types_are_listed(tmp_path: Path) -> None:
    folder = make_adapter(tmp_path, "thin")
    (folder / "manifest.json").write_text(json.dumps({"name": "thin", "route": "r", "metrics": []}), encoding="utf-8")
    _, problems = scan_adapters(tmp_path)
    assert "base_model" in problems[0] and "base_checksum" in problems[0] and "created" in problems[0]
    assert "'metrics' must be a JSON object" in problems[0]


def test_two_adapters_for_one_route_keep_the_first(tmp_path: Path) -> None:
    make_adapter(tmp_path, "care-a", route="caregiving")
    make_adapter(tmp_path, "care-b", route="caregiving")
    found, problems = scan_adapters(tmp_path)
    assert [a.name for a in found] == ["care-a"]
    assert "care-b" in problems[0] and "care-a" in problems[0]


def test_missing_adapters_dir_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    assert scan_adapters(tmp_path / "nope") == ([], [f"{tmp_path / 'nope'}: adapters folder does not exist"])


def test_hidden_temp_folders_are_ignored(tmp_path: Path) -> None:
    make_adapter(tmp_path, ".x.tmp123")
    assert scan_adapters(tmp_path) == ([], [])


def test_write_manifest_round_trips_unicode_and_extra_keys(tmp_path: Path) -> None:
    folder = tmp_path / "care"
    folder.mkdir()
    path = write_manifest(
        folder, route="照护", base_model="qwen", base_checksum=CHECKSUM, metrics={"loss": 0.5}, lora_r=8
    )
    assert "照护" in path.read_text(encoding="utf-8")  # readable, not \u-escaped
    manifest = read_manifest(folder)
    assert manifest["name"] == "care" and manifest["route"] == "照护" and manifest["lora_r"] == 8
    assert list(manifest)[:6] == ["name", "route", "base_model", "base_checksum", "created", "metrics"]


def test_write_manifest_refuses_incomplete_or_misnamed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="base_checksum"):
        write_manifest(tmp_path, route="r", base_model="b")
    with pytest.raises(ValueError, match="differs from the folder name"):
        write_manifest(tmp_path, name="other", route="r", base_model="b", base_checksum=CHECKSUM)
    assert not (tmp_path / "manifest.json").exists()


def test_read_manifest_missing_file(tmp_path: Path) -> None:
    with pytest.raises(BadInputFile, match="missing"):
        read_manifest(tmp_path)


def test_registry_does_not_import_torch() -> None:
    code = "import sys, adapters.registry; heavy = {'torch', 'transformers', 'peft'} & set(sys.modules); print(heavy)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "set()"
