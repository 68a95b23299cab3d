"""The LoRA adapters attached by name to one shared base, and which of them the next forward goes through."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from adapters.registry import read_manifest, scan_adapters
from assistant.engine import AdapterInfo
from assistant.errors import AssistantError


class AdapterSlots:
    """Owns the PeftModel wrapping the base, the adapters that loaded, and the one last made active.

    Every adapter is attached here, before the first forward pass: only then is
    disable_adapter() bit-exact with the plain base (bitsandbytes repacks on the first forward).
    Not thread-safe: the engine selects and uses an adapter under its own lock.
    """

    def __init__(
        self,
        base: Any,
        adapter_dirs: Path | Sequence[Path],
        base_checksum: str,
        base_model: str,
        warn: Callable[[str], None],
    ) -> None:
        self._base = base
        self._warn = warn
        self._peft: Any = None
        self._loaded: list[AdapterInfo] = []
        self._active: str | None = None  # adapter last set with set_adapter; None = unknown
        self._attach_all(adapter_dirs, base_checksum, base_model)

    @property
    def model(self) -> Any:
        """The model to run: the PeftModel when any adapter loaded, else the base itself."""
        return self._peft if self._peft is not None else self._base

    def loaded(self) -> list[AdapterInfo]:
        """The adapters that loaded successfully, in load order."""
        return list(self._loaded)

    def names(self) -> list[str]:
        """Names of the loaded adapters."""
        return [a.name for a in self._loaded]

    @contextmanager
    def scope(self, adapter: str | None) -> Iterator[None]:
        """Make `adapter` (or the plain base for None) the one the next forwards go through."""
        if self._peft is None:
            yield
            return
        if adapter is None:
            with self._peft.disable_adapter():
                yield
            return
        if self._active != adapter:
            self._peft.set_adapter(adapter, inference_mode=True)
            self._active = adapter
        yield

    def _attach_all(self, adapter_dirs: Path | Sequence[Path], base_checksum: str, base_model: str) -> None:
        from peft import PeftModel

        found, problems = scan_adapters(adapter_dirs)
        for problem in problems:
            self._warn(problem)
        for adapter in found:
            try:
                trained_on = read_manifest(Path(adapter.path)).get("base_checksum", "")
            except AssistantError as exc:  # the folder changed since the scan
                self._warn(f"adapter {adapter.name!r} skipped: {exc}")
                continue
            if trained_on != base_checksum:
                self._warn(
                    f"adapter {adapter.name!r} skipped: it was trained on base {adapter.base_model!r} "
                    f"(checksum {str(trained_on)[:12]}), but the loaded base is {base_model!r} "
                    f"(checksum {base_checksum[:12]}); retrain it on this base or load that base"
                )
                continue
            try:
                if self._peft is None:
                    self._peft = PeftModel.from_pretrained(
                        self._base, adapter.path, adapter_name=adapter.name, is_trainable=False
                    )
                else:
                    self._peft.load_adapter(adapter.path, adapter_name=adapter.name, is_trainable=False)
            except Exception as exc:  # noqa: BLE001 - peft/safetensors raise many types; one bad adapter must not crash
                self._forget(adapter.name)
                self._warn(f"adapter {adapter.name!r} skipped: loading {adapter.path} failed: {exc}")
                continue
            self._loaded.append(adapter)
        if self._peft is not None:
            self._peft.eval()

    def _forget(self, name: str) -> None:
        """Remove what a failed load left behind, so the base and the other adapters stay exact."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        try:
            if self._peft is not None:
                if name in self._peft.peft_config:
                    self._peft.delete_adapter(name)
            else:
                # PeftModel.from_pretrained injects LoRA layers into the base before reading the
                # weights; adapter-less wrappers left behind compute exactly the base layer.
                for module in self._base.modules():
                    if isinstance(module, BaseTunerLayer):
                        module.delete_adapter(name)
                # It also leaves its config on the model, which the next PeftModel would adopt.
                configs = getattr(self._base, "peft_config", None)
                if isinstance(configs, dict):
                    configs.pop(name, None)
                    if not configs:
                        del self._base.peft_config
        except Exception as exc:  # noqa: BLE001 - cleanup is best effort; the load warning says why
            self._warn(f"could not fully unload the failed adapter {name!r}: {exc}")
        self._active = None
