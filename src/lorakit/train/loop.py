"""The training loop: `fit` trains a prepared model on tokenized examples. Read it top to bottom.

One optimizer step = one global batch of config.batch_size examples, split over processes and accumulation
micro-batches. The loss is the mean cross-entropy per label token of the whole global batch, so the gradient does
not depend on how the batch was split (1 process x 2 micro-batches == 2 processes x 1).
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from lorakit.core.errors import ConfigError, LoraError
from lorakit.data import IGNORE_INDEX, Example, model_inputs
from lorakit.methods.export import Export, default_export
from lorakit.tasks.base import Evaluate
from lorakit.train import checkpoint, distributed
from lorakit.train.batches import BatchOrder, batcher, micro_batches, step_seed, token_count, use_packing
from lorakit.train.config import TrainConfig
from lorakit.train.logging import RunLog
from lorakit.train.precision import frozen_linears_to
from lorakit.train.schedule import lr_at


class TrainingError(LoraError):
    """Training cannot go on (e.g. the loss became NaN); the message says what to change."""


@dataclass(frozen=True)
class TrainResult:
    """What a run did."""

    steps: int
    """Optimizer steps done in total, including those before a resume."""
    loss: float | None
    """The last step's training loss (None if no step ran in this call)."""
    best: float | None
    """Best value of config.best_metric at a dev evaluation (None without dev data)."""
    best_step: int | None
    stopped: Literal["completed", "interrupted"]
    """interrupted: SIGINT/SIGTERM arrived; a checkpoint was written (when there is a run_dir)."""
    signal: int | None
    """The signal that interrupted the run (SIGINT or SIGTERM), else None."""
    records: tuple[dict[str, Any], ...]
    """Every metrics record of the run: {"step", "split": "train"|"dev", ...}."""
    run_dir: Path | None
    seconds: float


def fit(
    model: nn.Module,
    train_examples: Sequence[Example],
    config: TrainConfig,
    dev_examples: Sequence[Example] | None = None,
    run_dir: str | Path | None = None,
    *,
    pad_id: int = 0,
    export: Export | None = None,
    evaluate: Evaluate | None = None,
    resume: bool = False,
    progress: bool = True,
    on_log: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train `model` in place (its trainable parameters only) with AdamW and a warmup-then-linear-decay schedule.

    Without run_dir nothing is written; with one, rank 0 writes metrics, checkpoints (every save_every steps,
    at the end and on SIGINT/SIGTERM), run_dir/best and run_dir/final. `export` says how weights are saved
    (default: the active lorakit adapter in PEFT format, else save_pretrained). resume=True continues from
    run_dir's newest checkpoint. A NaN or infinite loss raises TrainingError before the bad update is applied.
    """
    started = time.perf_counter()
    where = distributed.setup(config.device)
    _check_sizes(len(train_examples), config, where.world)
    run = Path(run_dir) if run_dir is not None else None
    if resume and run is None:
        raise ConfigError("resume needs the run_dir of the run to continue")
    if run is not None and not resume and checkpoint.checkpoints(run):
        raise ConfigError(f"{run} already holds checkpoints of a run; resume it (--resume, or resume=True) or "
                          "choose a new run_dir")
    export = export or default_export(model)
    model.to(where.device)
    if config.gradient_checkpointing:
        _enable_checkpointing(model)
    optimizer = _optimizer(model, config)
    state: dict[str, Any] = {"step": 0, "best": None, "best_step": None}
    saved = checkpoint.newest_valid(run) if resume and run is not None else None
    if saved is not None:
        state = checkpoint.restore(saved, model, optimizer)
    step = state["step"]
    log = RunLog(run if where.is_main else None, config.steps, step, progress and where.is_main)
    train_model = distributed.wrap(model, where)
    autocast = _autocast(config.precision, where.device)
    packed = use_packing(model, train_examples, config.batching)
    if config.frozen_bf16:
        if not uses_bf16(config.precision, where.device):
            raise ConfigError("frozen_bf16 needs bf16 autocast, which this device does not do natively; set "
                              "precision: bf16 or turn frozen_bf16 off")
        frozen_linears_to(model, torch.bfloat16)
    order = BatchOrder(len(train_examples), config.batch_size, config.seed)
    loss_value, interrupted, last_eval = None, False, -1

    def record(entry: dict[str, Any]) -> None:
        log.write(entry)
        if on_log is not None:
            on_log(entry)

    def save_checkpoint() -> None:
        if run is not None and where.is_main:
            full_state = {**state, "step": step, "seed": config.seed, **order.position(step)}
            checkpoint.save_checkpoint(run, model, optimizer, export, full_state, config.keep_checkpoints)
        distributed.barrier(where)

    def dev_evaluation() -> None:
        metrics = _dev_metrics(model, dev_examples, config, where, batcher(packed, pad_id), autocast, evaluate)
        record({"step": step, "split": "dev", **metrics})
        log.message(f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
        value = metrics.get(config.best_metric)
        if value is not None and _better(value, state["best"], config.best_metric):
            state.update(best=value, best_step=step)
            if run is not None and where.is_main:
                checkpoint.save_export(run / "best", model, export, {"step": step, config.best_metric: value})

    stopped_by: int | None = None
    try:
        with _stop_on_signals() as stop:
            model.train()
            while step < config.steps:
                tick = time.perf_counter()
                torch.manual_seed(step_seed(config.seed, step, where.rank))
                batches = micro_batches(train_examples, order.indices(step), where.rank, where.world,
                                        config.grad_accum, pad_id, packed)
                # Global label-token and input-token counts, known before backward so each micro-batch's loss
                # sum can be scaled to the global mean.
                mine = torch.tensor([sum(_label_count(b["labels"]) for b in batches),
                                     sum(token_count(b) for b in batches)], device=where.device)
                labels_total, tokens_total = distributed.sum_all(mine, where).tolist()
                labels_total = max(labels_total, 1)  # a batch of fully masked examples adds no gradient
                lr = lr_at(step, config.lr, config.warmup_steps, config.steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss_sum = torch.zeros((), device=where.device)
                for k, batch in enumerate(batches):
                    batch = {key: t.to(where.device) for key, t in batch.items()}
                    with (distributed.no_sync(train_model, last=k == len(batches) - 1), autocast(),
                          scored_positions_only(model, batch["labels"]) as labels):
                        logits = train_model(**model_inputs(batch)).logits
                        micro_loss = cross_entropy_sum(logits, labels, config.label_smoothing)
                    # DDP averages gradients over processes; times world makes them the global mean's gradient.
                    (micro_loss * where.world / labels_total).backward()
                    loss_sum += micro_loss.detach()
                asked = torch.tensor(float(stop() is not None), device=where.device)
                reduced = distributed.sum_all(torch.stack([loss_sum, asked]), where)
                loss_value = reduced[0].item() / labels_total
                params = [p for p in model.parameters() if p.requires_grad]
                grad_norm = float(nn.utils.clip_grad_norm_(params, config.max_grad_norm or math.inf))
                if not (math.isfinite(loss_value) and math.isfinite(grad_norm)):
                    raise TrainingError(
                        f"the loss became {loss_value} (gradient norm {grad_norm}) at step {step + 1}, so training "
                        "stopped before applying that update. "
                        + ("" if run is None else f"The last good checkpoint in {run / 'checkpoints'} is intact. ")
                        + "Lower train.lr, set train.max_grad_norm, or use train.precision fp32, then resume."
                    )
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                tokens_per_s = tokens_total / (time.perf_counter() - tick)
                log.advance(1, loss_value, tokens_per_s)
                if step % config.log_every == 0 or step == config.steps:
                    record({"step": step, "split": "train", "loss": loss_value, "lr": lr, "grad_norm": grad_norm,
                            "tokens_per_s": tokens_per_s, "epoch": step / order.steps_per_epoch})
                if dev_examples and (step == config.steps or (config.eval_every and step % config.eval_every == 0)):
                    dev_evaluation()
                    last_eval = step
                    model.train()
                if reduced[1].item() > 0:
                    interrupted = True
                    # Another process's signal stops this one too; SIGTERM is what its launcher relays.
                    stopped_by = stop() or signal.SIGTERM
                    break
                if config.save_every and step % config.save_every == 0 and step < config.steps:
                    save_checkpoint()
        if dev_examples and last_eval != step and not interrupted:
            dev_evaluation()
        save_checkpoint()
        if run is not None and where.is_main and not interrupted:
            checkpoint.save_export(run / "final", model, export, {"step": step})
    finally:
        log.close()
    return TrainResult(
        steps=step, loss=loss_value, best=state["best"], best_step=state["best_step"],
        stopped="interrupted" if interrupted else "completed", records=tuple(log.records), run_dir=run,
        seconds=time.perf_counter() - started, signal=stopped_by,
    )


def cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Summed cross-entropy over labels that are not IGNORE_INDEX, in float32.

    Token labels (B, T) are shifted so position t predicts token t+1: logits (B, T, V) vs labels (B, T).
    Class labels (B,) score logits (B, C) directly, as do the (N,) labels of `scored_positions_only` its (N, V).
    """
    if labels.dim() == 2:
        logits, labels = logits[:, :-1], labels[:, 1:]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1),
                           ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing, reduction="sum")


@contextmanager
def scored_positions_only(model: nn.Module, labels: torch.Tensor) -> Iterator[torch.Tensor]:
    """Within it, the model's output head projects only the positions whose next token is scored; yields the labels
    to score its logits against.

    With token labels (B, T), position t is scored when labels[:, t + 1] is not IGNORE_INDEX; a pre-hook on the output
    embedding keeps those positions of its input (the last T, after any prefix positions a method prepends), so the
    logits come out as (N, V) in row-major order and the yielded labels are the matching (N,). On E2E about half of
    a batch is prompt and padding, whose vocabulary projection (49,152 x 576 on SmolLM2) and float32 log-softmax
    would be computed and thrown away. The scored logits are the same rows the full projection gives. Class labels,
    or a model without get_output_embeddings, pass through unchanged.
    """
    inner = getattr(model, "module", model)  # DDP wraps the model
    head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
    if labels.dim() != 2 or not isinstance(head, nn.Module):
        yield labels
        return
    scored = labels[:, 1:] != IGNORE_INDEX
    keep = torch.cat([scored, scored.new_zeros(labels.shape[0], 1)], dim=1)  # (B, T): position t predicts t + 1
    length = labels.shape[1]

    def select(module: nn.Module, args: tuple) -> tuple:
        return (args[0][:, -length:][keep], *args[1:])

    handle = head.register_forward_pre_hook(select)
    try:
        yield labels[:, 1:][scored]
    finally:
        handle.remove()


def _label_count(labels: torch.Tensor) -> int:
    """How many labels a batch scores: every class label, or token labels after the shift, minus ignored ones."""
    scored = labels[:, 1:] if labels.dim() == 2 else labels
    return int((scored != IGNORE_INDEX).sum())


def _dev_metrics(
    model: nn.Module, examples: Sequence[Example], config: TrainConfig, where: distributed.Dist,
    collate: Callable[[Sequence[Example]], dict[str, torch.Tensor]], autocast: Callable[[], Any],
    evaluate: Evaluate | None,
) -> dict[str, float]:
    """dev_loss (unsmoothed, per label token, over every process's share) plus the task hook's metrics."""
    model.eval()
    mine = list(range(where.rank, len(examples), where.world))
    totals = torch.zeros(2, device=where.device)
    with torch.no_grad(), autocast():
        for start in range(0, len(mine), config.eval_batch_size):
            batch = collate([examples[i] for i in mine[start: start + config.eval_batch_size]])
            batch = {k: t.to(where.device) for k, t in batch.items()}
            with scored_positions_only(model, batch["labels"]) as labels:
                logits = model(**model_inputs(batch)).logits
            totals += torch.stack([cross_entropy_sum(logits, labels),
                                   torch.tensor(float(_label_count(batch["labels"])), device=where.device)])
        loss, count = distributed.sum_all(totals, where).tolist()
        metrics = {"dev_loss": loss / max(count, 1.0)}
        if evaluate is not None and where.is_main:
            metrics.update(evaluate(model))
    return metrics


def _better(value: float, best: float | None, metric: str) -> bool:
    if best is None:
        return True
    return value < best if metric.endswith("loss") else value > best


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay on matrices; biases and norm weights (1-D) are not decayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("the model has no trainable parameters; inject an adapter (lorakit.inject) or choose "
                          "a method that trains something")
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=config.lr, betas=config.betas, eps=config.eps)


def uses_bf16(precision: str, device: torch.device) -> bool:
    """bf16 when asked, or for auto when the hardware has native bf16."""
    return precision == "bf16" or (precision == "auto" and native_bf16(device))


def _autocast(precision: str, device: torch.device) -> Callable[[], Any]:
    """A factory of autocast contexts (bf16 per uses_bf16, else disabled)."""
    bf16 = uses_bf16(precision, device)
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bf16 matmuls natively (CUDA Ampere+, or a CPU with AVX-512 BF16 or AMX).

    On CPUs without it bf16 is emulated and slower than fp32, so auto precision then stays in fp32.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _enable_checkpointing(model: nn.Module) -> None:
    if not hasattr(model, "gradient_checkpointing_enable"):
        raise ConfigError(f"{type(model).__name__} does not support gradient checkpointing; set "
                          "train.gradient_checkpointing false")
    # Non-reentrant checkpointing needs no input that requires grad, which a frozen embedding (LoRA) lacks.
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _check_sizes(n_examples: int, config: TrainConfig, world: int) -> None:
    if config.batch_size % (config.grad_accum * world):
        raise ConfigError(f"batch_size {config.batch_size} must be divisible by grad_accum x processes = "
                          f"{config.grad_accum} x {world}; change batch_size or grad_accum")
    if n_examples < config.batch_size:
        raise ConfigError(f"only {n_examples} training examples for a batch of {config.batch_size}; lower "
                          "train.batch_size or add data")


@contextmanager
def _stop_on_signals() -> Iterator[Callable[[], int | None]]:
    """While training, SIGINT and SIGTERM ask the loop to stop after the current step (and checkpoint);
    a second SIGINT stops at once. Yields a function that returns the first signal received, or None."""
    asked: list[int] = []

    def handle(signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and asked:
            raise KeyboardInterrupt
        asked.append(signum)

    try:
        previous = {s: signal.signal(s, handle) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals cannot be caught here, so leave them alone
        previous = {}
    try:
        yield lambda: asked[0] if asked else None
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
