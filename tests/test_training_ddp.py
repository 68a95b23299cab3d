"""`train adapter` under torchrun: two CPU ranks (gloo) train the same adapter as one process does.

Slow: three processes each load torch and the tiny base; about 70 s on the shared 2-core machine.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from assistant.config import Settings
from tests.conftest import REPO
from tests.fakes import HashingEncoder
from tests.tiny_models import build_tiny_qwen2
from training.adapter_job import AdapterJob, run_adapter_job
from training.config import TrainConfig

#: Largest difference allowed between LoRA weights trained by one process and by two ranks. Both
#: train in fp32 (autocast off, no dropout) on the same global batches; what differs is the order
#: of the sums (each rank pads its share to its own length and the ranks' gradients are added) and
#: the 4-bit base's bf16 matmuls on differently shaped batches. Measured: 2.7e-5. Two AdamW steps
#: at 5e-3 move the weights by up to 1e-2, so a wrong shard (a sample seen twice or not at all)
#: lands far outside this. AdamW divides each gradient by its own running size, so an element whose
#: gradient is rounding noise (lora_A at step 2, while lora_B is still near zero) moves by a full
#: step in a sign the noise picks: measured on another machine, 1 of 16,384 elements differed by
#: 6.1e-3 (a sign flip), the median by 1.7e-8. So all but OUTLIERS elements must agree within the
#: tolerance, and none by more than the two steps can move.
WEIGHT_TOLERANCE = 1e-3
OUTLIERS = 0.001
#: Losses (train and validation), relative: sums of the same per-token losses in another order.
LOSS_TOLERANCE = 1e-4

#: The script each rank runs: the job below, results written into the spec's out folder.
DRIVER = """
import json, sys
from pathlib import Path

spec = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
sys.path.insert(0, spec["repo"])
from tests.test_training_ddp import run_job

run_job(spec)
"""

#: Tiny and deterministic: fp32 without autocast, no dropout, no identity pairs, no probe.
CONFIG = {
    "max_steps": 2,
    "batch_size": 2,
    "grad_accumulation": 2,
    "max_length": 160,
    "system_prompt": "你是颐家小助手。",
    "identity": False,
    "probe": False,
    "eval_every": 1,
    "val_max": 4,
    "learning_rate": 5e-3,
    "dropout": 0.0,
    "autocast": "off",
    "save_dtype": "fp32",
}
LAUNCH_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _inputs(root: Path) -> dict[str, Any]:
    """The tiny base, 20 lines of data and a routing seed, shared by both runs."""
    base = build_tiny_qwen2(root / "base")
    data = root / "pets.jsonl"
    rows = [{"prompt": f"我家小狗{i}岁了，该怎么喂？", "response": f"{i}岁的小狗每天喂两次。"} for i in range(20)]
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    routing = root / "routing"
    routing.mkdir()
    lines = [{"text": f"今天的新闻{i}：股市和体育", "label": "general"} for i in range(12)]
    lines += [{"text": f"糖尿病老人{i}的照护要点", "label": "caregiving"} for i in range(12)]
    (routing / "seed.jsonl").write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines), "utf-8")
    return {"repo": str(REPO), "base": str(base), "data": str(data), "routing": str(routing), "config": CONFIG}


def run_job(spec: dict[str, Any]) -> None:
    """The tiny routed job; this rank's manifest, log and training losses go into spec["out"]."""
    from training.sft import SFTLoop

    rank, out, logs = os.environ.get("RANK", "0"), Path(spec["out"]), []
    train_run = SFTLoop.run

    def recording_run(loop: SFTLoop, resume: bool, fingerprint: str) -> Any:
        outcome = train_run(loop, resume, fingerprint)
        (out / f"train-losses-{rank}.json").write_text(json.dumps(outcome.state.train_losses))
        return outcome

    settings = Settings(
        base=spec["base"], adapter_dirs=(Path(spec["adapters"]),), routing_data=(Path(spec["routing"]),)
    )
    job = AdapterJob("pets", Path(spec["data"]), TrainConfig().with_overrides(**spec["config"]), route="pets")
    SFTLoop.run = recording_run  # type: ignore[method-assign]
    try:
        manifest = run_adapter_job(replace(job, progress=False), settings, logs.append, lambda s: HashingEncoder())
    finally:
        SFTLoop.run = train_run  # type: ignore[method-assign]
        (out / f"log-{rank}.txt").write_text("\n".join(logs), encoding="utf-8")
    (out / f"manifest-{rank}.json").write_text(json.dumps(manifest))


def _spec(root: Path, inputs: dict[str, Any]) -> dict[str, Any]:
    (root / "out").mkdir(parents=True)
    return {**inputs, "out": str(root / "out"), "adapters": str(root / "adapters")}


def _torchrun(root: Path, inputs: dict[str, Any], ranks: int) -> Path:
    """The job under `python -m torch.distributed.run` with `ranks` CPU processes; their output folder."""
    spec = _spec(root, inputs)
    (root / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    (root / "driver.py").write_text(DRIVER, encoding="utf-8")
    launch = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}"]
    launch += [
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(root / "driver.py"),
        str(root / "spec.json"),
    ]
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_ENV}
    result = subprocess.run(launch, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return Path(spec["out"])


def _read(out: Path, name: str) -> Any:
    return json.loads((out / name).read_text(encoding="utf-8"))


@pytest.mark.slow
def test_two_cpu_ranks_train_the_same_adapter_as_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # no real model is used: caches stay here
    inputs = _inputs(tmp_path)
    single_spec = _spec(tmp_path / "single", inputs)
    run_job(single_spec)  # one process: this one
    single = Path(single_spec["out"])
    ranks = _torchrun(tmp_path / "ddp", inputs, ranks=2)

    one, two = _read(single, "manifest-0.json"), _read(ranks, "manifest-0.json")
    assert _read(ranks, "manifest-1.json") == two, "rank 1 returns the manifest rank 0 installed"
    assert two["steps"] == one["steps"] == 2 and two["data"] == one["data"]
    assert two["metrics"]["router"] == one["metrics"]["router"], "rank 0 checked the route as one process does"

    # The same global batches: the loss summed over the ranks is the one process's loss, on both ranks.
    want = [loss for _, loss in _read(single, "train-losses-0.json")]
    got = [loss for _, loss in _read(ranks, "train-losses-0.json")]
    assert [loss for _, loss in _read(ranks, "train-losses-1.json")] == got
    assert got == pytest.approx(want, rel=LOSS_TOLERANCE)
    during_one = [v for _, v in one["val_loss"]["during_training"]]
    during_two = [v for _, v in two["val_loss"]["during_training"]]
    assert during_two == pytest.approx(during_one, rel=LOSS_TOLERANCE)
    assert two["val_loss"]["adapter"] == pytest.approx(one["val_loss"]["adapter"], rel=LOSS_TOLERANCE)

    # The installed LoRA weights.
    weights_one = load_file(str(tmp_path / "single" / "adapters" / "pets" / "adapter_model.safetensors"))
    weights_two = load_file(str(tmp_path / "ddp" / "adapters" / "pets" / "adapter_model.safetensors"))
    assert set(weights_two) == set(weights_one)
    diffs = torch.cat([(weights_two[k] - weights_one[k]).abs().flatten() for k in weights_one])
    diff = float(diffs.max())
    off = int((diffs >= WEIGHT_TOLERANCE).sum())
    moved = max(float(t.abs().max()) for k, t in weights_one.items() if "lora_B" in k)  # B starts at zero
    worst_loss = max(abs(a - b) / b for a, b in zip(got + during_two, want + during_one, strict=True))
    print(
        f"\nmax |LoRA weight difference| {diff:.1e}, {off} of {diffs.numel()} elements over {WEIGHT_TOLERANCE:g} "
        f"(lora_B moved up to {moved:.1e}); loss {worst_loss:.1e} rel."
    )
    assert off <= OUTLIERS * diffs.numel() and WEIGHT_TOLERANCE < moved / 5
    assert diff <= 2.2 * moved  # two AdamW steps at most, even for an element steered by noise
    assert all(t.dtype == torch.float32 for t in weights_two.values())

    # Rank 0 alone reports; rank 1 trains silently.
    assert "trained 2 steps" in (ranks / "log-0.txt").read_text(encoding="utf-8")
    assert (ranks / "log-1.txt").read_text(encoding="utf-8") == ""
