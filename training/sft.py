"""The QLoRA training loop: accumulation, validation with early stopping, checkpoints and resume."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from training import distributed
from training.checkpoints import CheckpointStore, LoopState
from training.config import TrainConfig
from training.dataset import Batch, TokenizedSplit, collate, epoch_batches, iterate_batches
from training.generation import autocast_context
from training.loss import evaluation, repacked, row_losses, row_results, shared_prefix, summarise, to_tensors
from training.step_progress import StepProgress
from training.stop_signals import StopFlag, stop_on_signals


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) arrived; a checkpoint was saved first."""

    def __init__(self, checkpoint: Path | None) -> None:
        super().__init__("interrupted")
        self.checkpoint = checkpoint


@dataclass
class TrainOutcome:
    """What happened in the loop, for the manifest."""

    state: LoopState
    total_steps: int
    steps_per_epoch: int
    train_seconds: float
    peak_memory_mb: float
    stopped: str
    best_restored: bool = False
    val_by_kind: dict[str, float] = field(default_factory=dict)


def peak_memory_mb(device: str) -> float:
    """Peak memory of this process: CUDA allocations on a GPU, else the resident set size."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def make_optimizer(params: list[torch.nn.Parameter], config: TrainConfig, device: str) -> torch.optim.Optimizer:
    """Paged 8-bit AdamW on CUDA when bitsandbytes has it (QLoRA recipe), plain AdamW elsewhere."""
    if device == "cuda":
        try:
            import bitsandbytes as bnb

            optimizer: torch.optim.Optimizer = bnb.optim.PagedAdamW8bit(
                params, lr=config.learning_rate, weight_decay=config.weight_decay
            )
            return optimizer
        except (ImportError, AttributeError, RuntimeError):
            pass
    return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)


def linear_schedule(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    """Linear warm-up then linear decay to zero (seed article 4)."""
    warmup = max(1, math.ceil(total_steps * warmup_ratio)) if warmup_ratio > 0 else 0

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return factor


class SFTLoop:
    """Trains the LoRA parameters of a peft model on tokenized splits.

    Under torchrun each rank trains on its share of every global batch (training/distributed.py).
    """

    def __init__(
        self,
        model: Any,
        train: TokenizedSplit,
        val: TokenizedSplit,
        config: TrainConfig,
        store: CheckpointStore,
        pad_id: int,
        device: str,
        log: Callable[[str], None],
        progress: bool = True,
    ) -> None:
        if not len(train):
            raise ValueError("no training samples")
        self.model = model
        self.train_split, self.val_split = train, val
        self.config = config
        self.store = store
        self.pad_id = pad_id
        self.device = device
        self.log = log
        self.progress = progress
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(self.params, config, device)
        self.lengths = [len(row) for row in train.input_ids]
        first = epoch_batches(self.lengths, config.batch_size, config.seed, 0)
        self.steps_per_epoch = math.ceil(len(first) / config.grad_accumulation)
        if config.max_steps > 0:
            self.total_steps = config.max_steps
        else:
            self.total_steps = max(1, math.ceil(config.epochs * len(first) / config.grad_accumulation))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, linear_schedule(self.total_steps, config.warmup_ratio)
        )
        self.flag = StopFlag()
        # Gradient checkpointing re-runs forwards and does not mix with a key/value cache.
        share = config.share_system_prefix and not config.gradient_checkpointing
        self.prefix = shared_prefix(train.input_ids, train.labels) if share else 0
        #: Called after every optimizer step (tests use it to send a signal mid-run).
        self.on_step: Callable[[LoopState], None] | None = None

    # -- data -------------------------------------------------------------------------

    def _micro_batches(self, epoch: int, position: int) -> Iterator[tuple[int, int, list[int]]]:
        """(epoch, index in epoch, sample indices) from a position onwards, across epochs, forever."""
        while True:
            batches = epoch_batches(self.lengths, self.config.batch_size, self.config.seed, epoch)
            for i in range(position, len(batches)):
                yield epoch, i, batches[i]
            epoch, position = epoch + 1, 0

    def _local_batches(self, step: list[list[int]]) -> tuple[list[Batch | None], int]:
        """This rank's share of each micro-batch (None when empty) and the labelled tokens of the whole step."""
        full = [collate(self.train_split, indices, self.pad_id) for indices in step]
        tokens = sum(b.label_tokens for b in full)
        if not distributed.active():
            local: list[Batch | None] = list(full)
            return local, tokens
        shares = [distributed.shard(indices) for indices in step]
        return [collate(self.train_split, share, self.pad_id) if share else None for share in shares], tokens

    # -- validation -------------------------------------------------------------------

    def validate(self) -> tuple[float, dict[str, float]]:
        """Validation loss on the current weights, without disturbing training (see loss.evaluation).

        Ranks split the batches and gather the rows back in order: every rank gets one process's number.
        """
        if not len(self.val_split):
            return float("nan"), {}
        batches = list(iterate_batches(self.val_split, self.config.batch_size * 2, self.pad_id))
        with evaluation(self.model), autocast_context(self.device, self.config.autocast):
            mine = row_results(self.model, distributed.shard(batches), self.device)
        return summarise(row for batch in distributed.gather_shards(mine) for row in batch)

    def _after_validation(self, state: LoopState, loss: float) -> bool:
        """Record a validation; keep the best weights; True when early stopping says stop."""
        state.val_losses.append([state.step, loss])
        if math.isnan(loss):
            return False
        if state.best_val is None or loss < state.best_val - self.config.min_delta:
            state.best_val, state.best_step, state.bad_evals = loss, state.step, 0
            if distributed.is_main():
                self.store.save_best(self.model, state)
            return False
        state.bad_evals += 1
        return bool(self.config.patience) and state.bad_evals >= self.config.patience

    # -- the loop ---------------------------------------------------------------------

    def run(self, resume: bool, fingerprint: str) -> TrainOutcome:
        """Train to the end (or early stop); raises Interrupted after saving a checkpoint on Ctrl-C."""
        if getattr(self.model, "yijia_inference_only", False) or repacked(self.model):
            raise RuntimeError(
                "this model instance has served inference (bitsandbytes repacked its 4-bit weights); "
                "training it would crash or compute wrong gradients: load a fresh base"
            )
        state = self._start(resume, fingerprint)
        distributed.broadcast_params(self.params)  # every rank starts from rank 0's weights
        clock_origin = time.perf_counter() - state.train_seconds  # train_seconds goes on from a resumed run
        with stop_on_signals(self.flag, self.log):
            early_stop = self._train_steps(state, clock_origin)
            if self._stop_requested():
                path = self._save(state)
                self.log(
                    f"checkpoint saved at step {state.step}: {path}\n  continue with the same command plus --resume"
                )
                raise Interrupted(path)
        state.train_seconds = time.perf_counter() - clock_origin
        stopped = early_stop or ("max_steps" if self.config.max_steps > 0 else "epochs done")
        self._save(state)  # a crash in the evaluation loses nothing
        # Only rank 0's model goes on to be saved and evaluated.
        restored = distributed.is_main() and state.best_step != state.step and self.store.load_best(self.model)
        return TrainOutcome(
            state=state,
            total_steps=self.total_steps,
            steps_per_epoch=self.steps_per_epoch,
            train_seconds=state.train_seconds,
            peak_memory_mb=peak_memory_mb(self.device),
            stopped=stopped,
            best_restored=restored,
        )

    def _save(self, state: LoopState) -> Path | None:
        """A resumable checkpoint, written by rank 0 alone (every rank holds the same weights)."""
        if not distributed.is_main():
            return None
        return self.store.save(self.model, self.optimizer, self.scheduler, state)

    def _stop_requested(self) -> bool:
        """Ctrl-C/SIGTERM seen by this process or, under torchrun, by any rank: all stop at the same point."""
        return distributed.any_rank(self.flag.requested)

    def _start(self, resume: bool, fingerprint: str) -> LoopState:
        """The checkpoint's state on --resume (when there is one), else a fresh start validated on the base."""
        # Every rank reads the checkpoint (one machine, one folder), so all fail alike when it is missing.
        state = self.store.resume(self.model, self.optimizer, self.scheduler, fingerprint) if resume else None
        if state is not None:
            self.log(f"resuming at step {state.step}/{self.total_steps} (epoch {state.epoch + 1})")
            return state
        if distributed.is_main():
            self.store.clear()
        state = LoopState(fingerprint=fingerprint)
        self.log(
            f"training {self.total_steps} steps ({self.steps_per_epoch} per epoch) on {len(self.train_split)} "
            f"samples; validating on {len(self.val_split)} every {self.config.eval_every} steps"
            + (f"; shared system prefix of {self.prefix} tokens encoded once per batch" if self.prefix else "")
        )
        state.base_val_loss, state.base_val_by_kind = self.validate()  # LoRA B=0: this is the base
        self._after_validation(state, state.base_val_loss)
        self.log(f"validation loss before training (base): {state.base_val_loss:.4f}")
        return state

    def _train_steps(self, state: LoopState, clock_origin: float) -> str:
        """Optimizer steps until the last one, early stopping or a stop request; the early-stop reason or ''."""
        progress = StepProgress(self.progress, self.total_steps, state, self._learning_rate())
        batches = self._micro_batches(state.epoch, state.position)
        self.model.train()
        try:
            while state.step < self.total_steps:
                step_batches = [next(batches) for _ in range(self.config.grad_accumulation)]
                # Seeded per step (a resumed run draws the same dropout masks as an unbroken one) and per rank.
                world = distributed.world()
                torch.manual_seed((self.config.seed * 100_003 + state.step) * world.size + world.rank)
                loss = self._step(*self._local_batches([b for _, _, b in step_batches]))
                if loss is None:  # stop requested mid-step: the weights are still those of state.step
                    return ""
                epoch, index, _ = step_batches[-1]
                state.epoch, state.position = epoch, index + 1
                state.step += 1
                state.train_losses.append([state.step, loss])
                state.train_seconds = time.perf_counter() - clock_origin
                stop_early = self._validate_if_due(state)
                progress.step_done(state, self._learning_rate())
                if self.on_step is not None:
                    self.on_step(state)
                if state.step % self.config.save_every == 0:
                    self._save(state)
                if stop_early:
                    return f"early stop: no improvement in {self.config.patience} validations"
                if self._stop_requested():
                    return ""
            return ""
        finally:
            progress.close()

    def _validate_if_due(self, state: LoopState) -> bool:
        """Validate every eval_every steps and after the last; True when early stopping says stop."""
        due = state.step % self.config.eval_every == 0 or state.step == self.total_steps
        if not due:
            return False
        val, by_kind = self.validate()
        state.last_val_by_kind = by_kind
        return self._after_validation(state, val)

    def _step(self, batches: list[Batch | None], tokens: int) -> float | None:
        """One optimizer step over accumulated micro-batches; None when a stop was requested first.

        `tokens` counts the labels of the whole step, every rank's share included.
        """
        self.optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for batch in batches:
            if self._stop_requested():
                self.optimizer.zero_grad(set_to_none=True)
                return None
            if batch is None or not batch.label_tokens:
                continue
            with autocast_context(self.device, self.config.autocast):
                sums, _ = row_losses(self.model, to_tensors(batch, self.device), self.prefix)
                # Normalised by the whole step's labelled tokens: every token weighs the same.
                loss = sums.sum() / max(tokens, 1)
            loss.backward()
            total += float(loss.detach())
        if self._stop_requested():
            self.optimizer.zero_grad(set_to_none=True)
            return None
        total = distributed.all_reduce_grads(self.params, total)
        if not math.isfinite(total):
            raise FloatingPointError(f"training loss became {total}; lower the learning rate")
        torch.nn.utils.clip_grad_norm_(self.params, self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        return total

    def _learning_rate(self) -> float:
        return float(self.scheduler.get_last_lr()[0])
