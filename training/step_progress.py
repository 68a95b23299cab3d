"""The training progress bar: optimizer steps, with recent loss, last validation loss and learning rate."""

from __future__ import annotations

from typing import Any

from training.checkpoints import LoopState


class StepProgress:
    """A tqdm bar over optimizer steps, or nothing at all when progress is off (logs only)."""

    def __init__(self, enabled: bool, total_steps: int, state: LoopState, learning_rate: float) -> None:
        self._bar: Any = None
        if enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total_steps, initial=state.step, desc="training", unit="step", dynamic_ncols=True)
            self._bar.set_postfix(_postfix(state, learning_rate), refresh=False)

    def step_done(self, state: LoopState, learning_rate: float) -> None:
        """Advance by one optimizer step and show the state after it."""
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(_postfix(state, learning_rate), refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _postfix(state: LoopState, learning_rate: float) -> dict[str, str]:
    recent = [loss for _, loss in state.train_losses[-10:]]
    out = {"loss": f"{sum(recent) / len(recent):.3f}" if recent else "-"}
    if state.val_losses:
        out["val"] = f"{state.val_losses[-1][1]:.3f}"
    out["lr"] = f"{learning_rate:.1e}"
    return out
