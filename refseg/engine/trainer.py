"""Training, written once for every method against `RefSegModel`.

One process or `torchrun --nproc_per_node N` (DistributedDataParallel); bf16/fp16 autocast
on GPU; gradient clipping; the config's optimiser and per-iteration LR schedule; a time
budget; periodic validation; atomic checkpoints every ``train.checkpoint_every``
iterations. A resumed run restores weights, optimiser, scheduler, data position and RNG
states, and the data order depends only on (seed, epoch), so it ends with the weights the
uninterrupted run would have had.
"""

from __future__ import annotations

import os
import random
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from refseg import config as config_io
from refseg.config import RunConfig
from refseg.engine import checkpoint, distributed
from refseg.engine.data import Collate, EpochBatches, RefSegData, loader, worker_errors
from refseg.engine.evaluate import numbers, predict_split, score, subset
from refseg.engine.runlog import RunLog
from refseg.engine.schedule import build_optimizer, build_scheduler
from refseg.errors import ConfigError, DataError, RefsegError
from refseg.modeling.matching import NonFiniteCost

# Keys a resumed run may change: they do not alter the computation.
RESUMABLE_CHANGES = {
    "train.max_minutes",
    "train.device",
    "train.eval_every",
    "train.eval_max_samples",
    "train.checkpoint_every",
    "train.log_every",
    "data.num_workers",
    "data.root",
    "data.images",
}

# The validation metric that selects the ``best`` checkpoint, per format.
PRIMARY_METRIC = {"grefcoco": "gIoU", "refcoco": "oIoU", "refzom": "oIoU", "rrefcoco": "mIoU"}


class NonFiniteLoss(RefsegError):
    """The loss or the gradients became NaN/inf; names the iteration and the batch."""


@dataclass
class TrainResult:
    """What a finished (or time-boxed) run left behind.

    Attributes:
        run_dir: the run directory.
        iteration: optimiser steps done.
        checkpoint: the last checkpoint written.
        metrics: the final validation metrics (None without a validation split).
        stopped: ``"done"`` or ``"time budget"``.
    """

    run_dir: Path
    iteration: int
    checkpoint: Path | None
    metrics: dict | None
    stopped: str


class LossMeter:
    """Means of the loss terms and the throughput since the last flush (detached tensors
    are summed on the device; one synchronisation per flush)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.tick = time.monotonic()

    def add(self, losses: dict[str, torch.Tensor]) -> None:
        for key, value in losses.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.count += 1

    def flush(self, batch_size: int) -> dict[str, float]:
        """Mean of each term over the steps and, under torchrun, over the ranks (every rank
        calls it); ``samples_per_s`` for a global batch of ``batch_size``."""
        now = time.monotonic()
        keys = sorted(self.sums)
        sums = [torch.as_tensor(self.sums[k], dtype=torch.float32) for k in keys]
        means = distributed.mean_over_ranks(torch.stack(sums)).tolist() if keys else []
        values = {k: v / max(self.count, 1) for k, v in zip(keys, means)}
        values["samples_per_s"] = self.count * batch_size / max(now - self.tick, 1e-9)
        self.sums, self.count, self.tick = {}, 0, now
        return values


def split_fingerprint(dataset) -> dict:
    """What a resumed run must find again: the number of training sentences and a digest
    of their ids, texts and referents (``data.root`` may move, the data may not change)."""
    import hashlib

    digest = hashlib.sha1()
    for sample in dataset.samples:
        digest.update(f"{sample.sent_id}\t{sample.sentence}\t{sample.ann_ids}\n".encode())
    return {"sentences": len(dataset.samples), "sha1": digest.hexdigest()}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def flat_config(config: RunConfig) -> dict:
    """``{"train.lr": 1e-4, "model.thresholds.mask": 0.5, ...}`` of a run config."""
    out = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else key, sub)
        else:
            out[prefix] = value

    walk("", config_io.to_dict(config))
    return out


def resolve_config(spec: str, overrides: list[str]) -> RunConfig:
    """A named config (``instalign-tiny``), a run's or a checkpoint's config.json, or their
    directory, with ``key=value`` overrides applied (type-checked; an unknown key is an
    error)."""
    from refseg.methods.registry import get_method, variant, variants

    path = Path(spec)
    if path.is_dir() and (path / "config.json").is_file():  # a run or checkpoint directory
        path = path / "config.json"
    if spec in variants():  # a name wins over a folder of that name in the working directory
        config = variant(spec)
    elif path.suffix == ".json" or path.is_file():
        data = config_io.load_json(path)
        if isinstance(data, dict) and data.get("format") == checkpoint.FORMAT:
            data = data.get("config")  # a checkpoint's config.json wraps the run config
        if not isinstance(data, dict) or "method" not in data:
            raise ConfigError(f"{path}: not a refseg run config (no 'method')")
        if not isinstance(data["method"], str):
            raise ConfigError(f"{path}: 'method' must be a method name, got {data['method']!r}")
        try:
            method = get_method(data["method"])
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        config = config_io.from_dict(data, method.config_class, where=str(path))
    else:
        config = variant(spec)
    config = config_io.apply_overrides(config, list(overrides))
    check_model_config(config)  # before minutes of loading data, and for --print-config
    return config


def check_model_config(config: RunConfig) -> None:
    """Raise ConfigError on a model setting the method cannot be built with (its config's
    ``validate``) or a decision threshold outside [0, 1]: what needs no data to check."""
    validate = getattr(config.model, "validate", None)
    if validate is not None:
        validate()
    checkpoint.thresholds_of(config.model).check("model.thresholds")


def check_resumable(config: RunConfig, saved: RunConfig, where: Path) -> None:
    """A resumed run must compute what the killed one did (a few keys may change)."""
    new, old = flat_config(config), flat_config(saved)
    keys = (set(new) | set(old)) - RESUMABLE_CHANGES
    changed = sorted(k for k in keys if new.get(k) != old.get(k))
    if changed:
        diffs = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:5])
        raise ConfigError(f"{where}: --resume with a config that differs from the run's ({diffs})")


class Trainer:
    """One training run in ``run_dir``; call `run`.

    Args:
        config: the resolved run config.
        run_dir: where config.json, checkpoints/, metrics.jsonl, tensorboard/ and
            curves.png go.
        ctx: this process's rank and device (`refseg.engine.distributed.init`).
        resume: continue from ``run_dir/checkpoints/last`` if there is one.
        progress: show a progress bar (rank 0).
    """

    def __init__(
        self,
        config: RunConfig,
        run_dir: str | Path,
        ctx: distributed.DistContext,
        *,
        resume: bool = False,
        progress: bool = True,
    ):
        self.config = config
        self.run_dir = Path(run_dir)
        self.ctx = ctx
        self.progress = progress
        self.checkpoints = checkpoint.CheckpointDir(self.run_dir / "checkpoints")
        self._check_config()
        self.start_time = time.monotonic()
        self.train_set, self.val_set = self._load_data()
        self.train_fingerprint = split_fingerprint(self.train_set)  # once, saved with each save
        resume_from = self.checkpoints.last() if resume else None
        if not resume and self.checkpoints.last() is not None:
            raise ConfigError(
                f"{self.run_dir}: already holds a run; pass --resume to continue it or "
                "choose another --out"
            )
        seed_everything(config.train.seed)
        self._build_model(resume_from)
        self._build_optimisation()
        if ctx.distributed:  # one initialisation, then a stream of its own per rank (dropout)
            seed_everything(config.train.seed + ctx.rank)
        self.data = RefSegData(self.train_set, config.data.image_size, nsc=self._nsc())
        self.collate = Collate(self.tokenizer, self.train_set.source)
        self.iteration = self.epoch = self.position = 0
        self.step_lr = 0.0  # the learning rate of the last step taken
        self.gradients_checked = False  # under torchrun, by the first step (_check_gradients)
        self.best = None  # best primary validation metric so far
        if resume_from is not None:
            self._restore(checkpoint.load_train_state(resume_from), resume_from)
        self.wrapped = distributed.wrap(self.model, ctx)  # the first step checks its premise
        self.log = None
        # Before the first write: a second process training into the same directory stops here.
        self._lock = _lock_run_dir(self.run_dir) if ctx.is_main else None
        if ctx.is_main:
            config_io.save(config, self.run_dir / "config.json")
            self.log = RunLog(self.run_dir, resume_from=self.iteration if resume_from else None)

    # ------------------------------------------------------------------------ setup
    def _check_config(self) -> None:
        cfg, data = self.config.train, self.config.data
        if not data.root:
            raise ConfigError(
                "data.root is not set (the benchmark folder, e.g. data.root=data/synth)"
            )
        if not Path(data.root).is_dir():
            raise ConfigError(f"data.root={data.root}: no such folder (the folder with the refs "
                              "file and instances.json)")
        if not data.images:  # the synthetic benchmark's layout; recorded in config.json
            from refseg.data.load import default_images

            data.images = str(default_images(data.root, "data.images=IMAGE_FOLDER"))
        config_io.check_at_least(data, "data", ("image_size",), 1)
        # A sentence start and end token and at least one word, whatever the tokenizer.
        config_io.check_at_least(data, "data", ("max_text_length",), 3)
        config_io.check_at_least(data, "data", ("num_workers",), 0)
        if not 0.0 <= data.nsc_prob <= 1.0:
            raise ConfigError(f"data.nsc_prob={data.nsc_prob}: must be in [0, 1]")
        check_model_config(self.config)  # also for train() called without resolve_config
        if cfg.amp not in ("none", "bf16", "fp16"):
            raise ConfigError(f"train.amp={cfg.amp}: expected none, bf16 or fp16")
        if cfg.amp != "none" and self.ctx.device.type != "cuda":
            warnings.warn(
                f"train.amp={cfg.amp} is for GPUs; training in float32 on {self.ctx.device}"
            )
        config_io.check_at_least(cfg, "train", ("batch_size",), 1)
        if cfg.batch_size < self.ctx.world_size or cfg.batch_size % self.ctx.world_size:
            raise ConfigError(
                f"train.batch_size={cfg.batch_size}: must be a multiple of the "
                f"{self.ctx.world_size} processes (the global batch is shared among them)"
            )
        config_io.check_at_least(cfg, "train", ("checkpoint_every", "log_every", "epochs"), 1)
        config_io.check_at_least(cfg, "train", ("max_iters", "warmup_iters", "eval_every",
                                                "eval_max_samples", "max_minutes", "grad_clip",
                                                "weight_decay"), 0)
        if not cfg.lr > 0:
            raise ConfigError(f"train.lr={cfg.lr}: must be > 0")

    def _build_model(self, resume_from: Path | None) -> None:
        """Tokenizer and model: fresh, or those of the checkpoint a resumed run continues."""
        from refseg.methods.registry import get_method

        config = self.config
        method = get_method(config.method)
        if resume_from is not None:
            saved = checkpoint.read_config(resume_from)
            check_resumable(config, saved, resume_from / checkpoint.CONFIG)
            self.tokenizer = checkpoint.load_tokenizer(resume_from, config)
        else:
            sentences = [s.sentence for s in self.train_set.samples]
            self.tokenizer = method.build_tokenizer(config.model, config.data, sentences)
        self.model = method.build_model(config.model, self.tokenizer)
        if resume_from is not None:
            checkpoint.load_weights(self.model, resume_from, config.method)
        self.model.to(self.ctx.device).train()
        self.thresholds = checkpoint.thresholds_of(config.model)

    def _build_optimisation(self) -> None:
        """Batch order, length, optimiser, LR schedule and (fp16) gradient scaler."""
        cfg, ctx = self.config.train, self.ctx
        self.per_rank_batch = cfg.batch_size // ctx.world_size
        self.batches = EpochBatches(
            len(self.train_set), self.per_rank_batch, seed=cfg.seed, rank=ctx.rank,
            world_size=ctx.world_size,
        )
        self.iters_per_epoch = self.batches.batches_per_epoch()
        self.total_iters = cfg.max_iters or cfg.epochs * self.iters_per_epoch
        self.optimizer = build_optimizer(self.model.param_groups(cfg.lr), cfg)
        self.scheduler = build_scheduler(
            self.optimizer, cfg, self.total_iters, self.iters_per_epoch
        )
        fp16 = cfg.amp == "fp16" and ctx.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)

    def _load_data(self):
        from refseg.data.load import load_splits

        data = self.config.data
        splits = load_splits(
            data.format, data.root, split_by=data.split_by or None, images=data.images or None
        )
        wanted = [("train_split", data.train_split)]
        if data.val_split:
            wanted.append(("val_split", data.val_split))
        for key, name in wanted:
            if name not in splits:
                hint = "; data.val_split= trains without validation" if key == "val_split" else ""
                raise DataError(f"data.{key}={name}: {data.root} has no split {name!r} "
                                f"(has {', '.join(splits)}{hint})")
        val = splits[data.val_split] if data.val_split else None
        if val is not None:
            val = subset(val, self.config.train.eval_max_samples)
        return splits[data.train_split], val

    def _nsc(self):
        if self.config.data.nsc_prob <= 0:
            return None
        from refseg.data.nsc import NonReferentConversion
        from refseg.data.synth import scene_refers

        return NonReferentConversion.from_samples(
            self.train_set.samples, p=self.config.data.nsc_prob, seed=self.config.train.seed,
            refers=scene_refers(self.config.data.root),  # None unless the synthetic benchmark
        )

    def _restore(self, state: dict, where: Path) -> None:
        saved = state.get("train_split")  # absent in checkpoints written before it was kept
        if saved is not None and saved != self.train_fingerprint:
            raise ConfigError(
                f"{where}: --resume with another training split ({len(self.train_set)} "
                f"sentences now, {saved['sentences']} in the run, or the same number with other "
                "sentences or referents); the saved position in the epoch would mean other data"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.iteration = state["iteration"]
        self.epoch, self.position = state["epoch"], state["position"]
        self.best = state.get("best")
        rng = state["rng"]
        if isinstance(rng, list):  # one state per rank (older checkpoints hold one dict)
            rng = rng[self.ctx.rank] if self.ctx.rank < len(rng) else rng[0]
        checkpoint.restore_rng(rng)

    def _train_state(self, rng: list[dict]) -> dict:
        """What `--resume` restores; ``rng``: every rank's generator states, in rank order
        (the ranks' streams differ: each draws points for its own batch's masks)."""
        return {
            "iteration": self.iteration,
            "epoch": self.epoch,
            "position": self.position,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "best": self.best,
            "rng": rng,
            "train_split": self.train_fingerprint,
        }

    # ------------------------------------------------------------------------ loop
    def over_budget(self) -> bool:
        budget = self.config.train.max_minutes
        return budget > 0 and (time.monotonic() - self.start_time) / 60.0 >= budget

    def step(self, batch) -> tuple[dict[str, torch.Tensor], bool]:
        """One optimiser step; returns the detached loss terms and whether the time budget
        is spent (agreed by all ranks)."""
        cfg = self.config.train
        batch = batch.to(self.ctx.device)
        unmatched = None  # diverged predictions reach the matcher before the loss
        with distributed.autocast(self.ctx.device, cfg.amp):
            outputs = self.wrapped(batch)
            try:
                losses = self.model.loss(outputs, batch)
            except NonFiniteCost as exc:
                unmatched, losses = str(exc), {}
        # Every rank takes part in this one agreement, whatever failed where (a rank that
        # stopped alone would leave the others waiting in a collective for ever).
        failed_match, nonfinite, over = distributed.any_rank(
            [unmatched is not None,
             unmatched is None and not bool(torch.isfinite(losses["loss"])),
             self.over_budget()], self.ctx.device,
        )
        if failed_match:
            cause = unmatched or "on another process"
            raise self._nonfinite(f"matching cost ({cause})", {}, batch.sent_ids)
        if nonfinite:
            raise self._nonfinite("loss", losses, batch.sent_ids)
        loss = losses["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.ctx.distributed and not self.gradients_checked:
            self._check_gradients()
            self.gradients_checked = True  # the parts a config uses are the same every step
        self.scaler.unscale_(self.optimizer)
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")  # inf: measure only
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        # fp16: the scaler skips steps with inf gradients by design; otherwise they are fatal.
        if not self.scaler.is_enabled() and not bool(torch.isfinite(norm)):
            raise self._nonfinite("gradient norm", losses, batch.sent_ids)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.step_lr = self.optimizer.param_groups[0]["lr"]  # the rate this step used
        self.scheduler.step()
        return {k: v.detach().float() for k, v in losses.items()}, over

    def _check_gradients(self) -> None:
        """Under torchrun, a trained parameter without a gradient would leave its bucket
        unreduced (`distributed.wrap`): name them instead of DDP's error a step later."""
        missing = distributed.parameters_without_gradient(self.model)
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            listed = ", ".join(missing[:5]) + more
            raise ConfigError(
                f"{self.config.method}: {len(missing)} trained parameters got no gradient in "
                f"the first step ({listed}); under torchrun every trained parameter must "
                "take part in the loss (freeze it, or leave it out of the model)"
            )

    def _nonfinite(self, what: str, losses: dict, sent_ids: list[int]) -> NonFiniteLoss:
        ids = [i for part in distributed.all_gather_object(list(sent_ids)) for i in part]
        terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items()) or "-"
        last = self.checkpoints.last()
        kept = f"last checkpoint {last.resolve()} is intact" if last else "no checkpoint written"
        return NonFiniteLoss(
            f"non-finite {what} at iteration {self.iteration + 1} (epoch {self.epoch}); "
            f"batch sent_ids {ids}; losses {terms}; {kept}"
        )

    def batches_from_position(self):
        """(Batch, items) from the current (epoch, position) on, in the deterministic order;
        the caller advances (epoch, position) after each step."""
        while True:
            self.batches.set_epoch(self.epoch, self.position)
            self.data.set_epoch(self.epoch)
            seed = self.config.train.seed * 100_003 + self.epoch
            workers = self.config.data.num_workers
            yield from loader(self.data, self.batches, self.collate, num_workers=workers, seed=seed)

    def advance(self) -> bool:
        """Count one step; True when it ended an epoch."""
        self.iteration += 1
        self.position += 1
        if self.position < self.iters_per_epoch:
            return False
        self.epoch, self.position = self.epoch + 1, 0
        return True

    def run(self) -> TrainResult:
        """Train to ``total_iters`` or the time budget; returns what the run left behind."""
        from tqdm import tqdm

        cfg = self.config.train
        bar = tqdm(
            total=self.total_iters, initial=self.iteration, desc="train", unit="it",
            disable=not (self.progress and self.ctx.is_main), dynamic_ncols=True,
        )
        meter = LossMeter()
        metrics, stopped = None, "done"
        saved_at = self.iteration if self.iteration else -1  # a resumed run starts saved
        # A finished run that is resumed has nothing to do: it validated when it finished.
        evaluated_at = self.iteration if self.iteration >= self.total_iters else -1
        batches = self.batches_from_position() if self.iteration < self.total_iters else ()
        try:
            for batch, _ in batches:
                losses, over = self.step(batch)
                epoch_end = self.advance()
                meter.add(losses)
                bar.update(1)
                done = self.iteration >= self.total_iters
                if self.iteration % cfg.log_every == 0 or done or over:
                    self._log_train(meter.flush(cfg.batch_size), bar)
                stopped = "time budget" if over and not done else "done"
                finish = done or over
                improved = False
                periodic = self.iteration % cfg.eval_every == 0 if cfg.eval_every else epoch_end
                if self.val_set is not None and (finish or periodic):
                    metrics, improved = self.validate()
                    evaluated_at = self.iteration
                if finish or improved or self.iteration % cfg.checkpoint_every == 0:
                    self.save(best=improved)
                    saved_at = self.iteration
                if finish:
                    break
            if saved_at != self.iteration:  # a run with no iterations to do
                self.save(best=False)
            if self.val_set is not None and evaluated_at != self.iteration:
                metrics, _ = self.validate()
        finally:
            bar.close()
            if self.log is not None:
                self.log.close()
            if self._lock is not None:
                self._lock.close()  # releases the run directory
        if self.ctx.is_main:
            from refseg.visualize import plot_curves

            plot_curves(self.run_dir / "metrics.jsonl", self.run_dir / "curves.png")
        distributed.barrier()
        return TrainResult(self.run_dir, self.iteration, self.checkpoints.last(), metrics, stopped)

    def _log_train(self, values: dict[str, float], bar) -> None:
        values["lr"] = self.step_lr
        if self.log is not None:
            self.log.write(self.iteration, self.epoch, "train", values)
        loss = values.get("loss", float("nan"))
        bar.set_postfix(loss=f"{loss:.4f}", sps=f"{values['samples_per_s']:.1f}")

    def validate(self) -> tuple[dict | None, bool]:
        """Metrics on the validation split (rank 0) and whether they beat the best so far."""
        cfg = self.config
        predictions = predict_split(
            self.model,
            self.tokenizer,
            self.val_set,
            image_size=cfg.data.image_size,
            thresholds=self.thresholds,
            ctx=self.ctx,
            batch_size=self.per_rank_batch,
            num_workers=cfg.data.num_workers,
            amp=cfg.train.amp,
            progress=self.progress,
        )
        if not self.ctx.is_main:
            return None, distributed.broadcast_object(None)  # rank 0's verdict
        metrics = score(self.val_set, predictions)
        values = numbers(metrics)
        self.log.write(self.iteration, self.epoch, "val", values)
        for warning in metrics.get("warnings", []):
            where = f"refseg train: validation at iteration {self.iteration}"
            print(f"{where}: warning: {warning}", file=sys.stderr)
        value = values.get(PRIMARY_METRIC.get(cfg.data.format))
        improved = value is not None and (self.best is None or value > self.best)
        if improved:
            self.best = value
        return metrics, distributed.broadcast_object(improved)  # every rank saves alike

    def save(self, *, best: bool) -> None:
        """Write a checkpoint (rank 0); every rank calls it, to hand in its RNG state."""
        rng = distributed.all_gather_object(checkpoint.capture_rng())
        if self.ctx.is_main:
            self.checkpoints.save(
                self.iteration,
                best=best,
                model=self.model,
                config=self.config,
                tokenizer=self.tokenizer,
                thresholds=self.thresholds,
                train_state=self._train_state(rng),
            )


def _lock_run_dir(run_dir: Path):
    """An exclusive lock on ``run_dir/.lock``, held while the returned file stays open: a
    second training process in the same directory would interleave their checkpoints and
    logs."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / ".lock", "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        owner = handle.read().strip() or "?"
        handle.close()
        raise ConfigError(f"{run_dir}: in use by another training process (pid {owner}); "
                          "wait for it or choose another --out") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def train(
    config: RunConfig, run_dir: str | Path, *, resume: bool = False, progress: bool = True
) -> TrainResult:
    """Train ``config`` into ``run_dir`` (under torchrun: one call per process)."""
    ctx = distributed.init(config.train.device)
    try:
        with worker_errors():
            return Trainer(config, run_dir, ctx, resume=resume, progress=progress).run()
    finally:
        distributed.shutdown()
