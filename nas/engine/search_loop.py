"""The progressive search loop (P-DARTS): per stage build the supernet with its kept ops, warm up the
weights, alternate weight and architecture steps, then drop the weakest ops on every edge.

Everything that decides the future is checkpointed (every epoch end and every `run.checkpoint_every`
weight steps), so `--resume` continues a killed run exactly where it stopped.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from controllers.base import ArchStepContext, StageContext
from controllers.registry import controller_class
from nas.core.accel import Precision, loader_options, memory_format, set_cudnn_benchmark
from nas.core.arch_types import KeptOps
from nas.core.batchnorm import batch_stat_eval
from nas.core.checkpoint import load_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state
from nas.core.data import search_loaders, shard_positions
from nas.core.device import resolve_device
from nas.core.distributed import all_sum, average_gradients, broadcast_buffers, gather_objects, world
from nas.core.errors import UserError
from nas.core.records import make_record, read_record, write_record
from nas.engine.dominance import DominanceTracker, warning_line
from nas.engine.search_config import SearchConfig
from nas.engine.selection import distinct_samples, final_choice, probe_accuracy, rescore, stage_candidates, vote
from nas.report.monitor import Monitor
from nas.report.run import write_report
from search_spaces.registry import space_class

log = logging.getLogger("nas.engine.search_loop")
STAGE_SEED_STRIDE = 1000  # stage k's weights and data draw from seed + 1000 * (k + 1), so --stage N repeats a stage
RANK_SEED_STRIDE = 7_919  # under torchrun, rank r's dropout and augmentation then draw from that seed + 7919 * (r + 1)
RECORD = "genotype.json"  # the finished search's record in its run directory


class TrainingDiverged(RuntimeError):
    """A non-finite loss: the run stops and keeps its last good checkpoint."""


class CyclingBatches:
    """Endless batches from a loader whose sampler has set_epoch; its position is checkpointable."""

    def __init__(self, loader: DataLoader, epoch: int = 0, pos: int = 0):
        self.loader, self.epoch, self.pos = loader, epoch, pos
        self._it: Iterator | None = None

    def __next__(self):
        if self._it is None:
            self.loader.sampler.set_epoch(self.epoch, skip_batches=self.pos)
            self._it = iter(self.loader)
        try:
            batch = next(self._it)
        except StopIteration:
            self.epoch, self.pos = self.epoch + 1, 0
            self.loader.sampler.set_epoch(self.epoch)
            self._it = iter(self.loader)
            batch = next(self._it)
        self.pos += 1
        return batch

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos}


@dataclass
class Progress:
    """Where the search is and what it has produced so far (all of it plain data)."""

    stage: int = 0
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    elapsed: float = 0.0
    kept_ops: KeptOps = field(default_factory=dict)
    stages: list[dict[str, Any]] = field(default_factory=list)
    sums: dict[str, float] = field(default_factory=lambda: {"loss": 0.0, "correct": 0.0, "count": 0.0})
    summary: dict[str, float] = field(default_factory=dict)  # the stage's last epoch summary
    dominance: dict[str, Any] = field(default_factory=dict)  # the stage's DominanceTracker state


class StageRunner:
    """One stage: a fresh supernet and controller over the stage's kept ops, trained epoch by epoch."""

    def __init__(self, search: Search, stage: int, state: dict[str, Any] | None):
        self.search, self.cfg, self.stage = search, search.cfg, stage
        p = search.progress
        if state is None:
            seed_everything(self.cfg.run.seed + STAGE_SEED_STRIDE * (stage + 1))  # a stage repeats alone
        self.model = search.space.build_supernet(p.kept_ops, self.cfg.stages.layers[stage]).to(
            search.device, memory_format=search.memory_format)
        self.precision = Precision(self.cfg.run.amp, search.device)
        self.generator = torch.Generator().manual_seed(self.cfg.run.seed + stage)
        controller_ctx = StageContext(sections=self.cfg.controller_sections, space=search.space, kept_ops=p.kept_ops,
                                      stage=stage, num_stages=self.cfg.num_stages, generator=self.generator)
        self.controller = controller_class(self.cfg.controller).from_config(controller_ctx).to(search.device)
        o = self.cfg.optim
        self.params = list(self.model.parameters())  # walking a supernet's modules costs ms per call
        self.w_opt = torch.optim.SGD(self.params, lr=o.lr, momentum=o.momentum,
                                     weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.w_opt, T_max=self.cfg.stages.epochs[stage], eta_min=o.lr_min)
        self.val_batches = CyclingBatches(search.val_loader)
        if state is not None:
            self.model.load_state_dict(state["model"])
            self.controller.load_state_dict(state["controller"])
            self.w_opt.load_state_dict(state["w_opt"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.generator.set_state(state["generator"])
            self.val_batches = CyclingBatches(search.val_loader, **state["val_cursor"])
            if state.get("scaler"):  # fp16: the GradScaler's scale and growth tracker
                self.precision.scaler.load_state_dict(state["scaler"])
        self.regularisers: dict[str, float] = {}  # the space's regulariser values of the current epoch
        self.epoch_lr = self.scheduler.get_last_lr()[0]
        dist = search.dist
        if state is None and dist.world_size > 1:  # after the model and logits, which every rank builds alike
            seed_everything(self.cfg.run.seed + STAGE_SEED_STRIDE * (stage + 1) + RANK_SEED_STRIDE * (dist.rank + 1))
        if state is not None:  # last, so building this stage's modules does not shift the restored RNG
            own = state["ranks"][dist.rank]
            set_rng_state(own["rng"])
            p.sums = own["sums"]

    # ----- state -----
    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "controller": self.controller.state_dict(),
                "w_opt": self.w_opt.state_dict(), "scheduler": self.scheduler.state_dict(),
                "generator": self.generator.get_state(), "val_cursor": self.val_batches.state(),
                "scaler": self.precision.scaler.state_dict(),
                "ranks": gather_objects({"rng": rng_state(), "sums": dict(self.search.progress.sums)})}

    # ----- steps -----
    def _batch(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch
        x = x.to(self.search.device, non_blocking=True).contiguous(memory_format=self.search.memory_format)
        return x, y.to(self.search.device, non_blocking=True)

    def _arch_step(self, train_batch, step: int) -> dict[str, float]:
        ctx = ArchStepContext(model=self.model, criterion=F.cross_entropy, train_batch=train_batch,
                              val_batch=self._batch(next(self.val_batches)), w_optimizer=self.w_opt,
                              lr=self.scheduler.get_last_lr()[0], stage=self.stage, step=step)
        with self.precision.arch_autocast():
            metrics = self.controller.arch_step(ctx)
        if not all(torch.isfinite(a).all() for a in self.controller.parameters()):
            raise TrainingDiverged(self.search.where("architecture logits became non-finite"))
        return metrics

    def _weight_step(self, x: torch.Tensor, y: torch.Tensor, forward_kwargs: dict[str, Any]) -> torch.Tensor:
        self.model.train()
        self.w_opt.zero_grad(set_to_none=True)
        with self.precision.autocast():
            logits = self.model(x, **forward_kwargs)
            loss = F.cross_entropy(logits, y)
        self.precision.backward(loss)
        diverged = average_gradients(self.params, loss)  # under torchrun: the mean over the ranks' shards (and paths)
        if diverged:  # every rank stops at this step, before the weights move
            local, ranks = loss.item(), self.search.dist.world_size
            what = f"loss became {local}" if not math.isfinite(local) else "loss became non-finite"
            if ranks > 1:
                what += f" on rank {', '.join(map(str, diverged))} of {ranks}"
            raise TrainingDiverged(self.search.where(what))
        self.precision.step(self.w_opt, self.params, self.cfg.optim.grad_clip)
        p = self.search.progress
        p.sums["loss"] += loss.item() * len(y)
        p.sums["correct"] += (logits.argmax(1) == y).sum().item()
        p.sums["count"] += len(y)
        return loss

    def _train_epoch(self, epoch: int) -> None:
        p, search = self.search.progress, self.search
        loader = search.train_loader
        loader.sampler.set_epoch(epoch, skip_batches=p.step)
        arch_on = self.controller.arch_active(epoch, self.cfg.stages.warmup_epochs[self.stage])
        for batch in search.monitor.progress(loader, total=len(loader), desc=f"stage {self.stage + 1} ep {epoch}"):
            x, y = self._batch(batch)
            if arch_on and p.step % self.controller.update_interval == 0:
                metrics = self._arch_step((x, y), p.step)
                search.log_arch_metrics(self.stage, metrics)
            self._weight_step(x, y, self.controller.weight_forward_kwargs())
            self._step_done()

    def _step_done(self) -> None:
        """Count a finished step; log the architecture and checkpoint on their schedules."""
        p, search = self.search.progress, self.search
        p.step += 1
        p.global_step += 1
        if p.global_step % self.cfg.run.log_every == 0:
            search.log_arch(self.stage, self.controller.probs())
        if self.cfg.run.checkpoint_every and p.global_step % self.cfg.run.checkpoint_every == 0:
            search.checkpoint(self)

    def _policy_epoch(self) -> None:
        """An epoch of architecture updates on validation batches with the supernet frozen (extra_epochs)."""
        p, search = self.search.progress, self.search
        for _ in range(p.step, search.val_batches_per_epoch):
            metrics = self._arch_step(None, p.step)
            search.log_arch_metrics(self.stage, metrics)
            self._step_done()

    def evaluate(self, **forward_kwargs: Any) -> tuple[float, float]:
        """Loss and top-1 (%) on the whole architecture half."""
        total_loss, correct, count = 0.0, 0, 0
        mode = batch_stat_eval(self.model) if "path" in forward_kwargs else contextlib.nullcontext()
        if "weights" in forward_kwargs:
            self.model.eval()
        with mode, torch.no_grad(), self.precision.autocast():
            for x, y in self.search.val_eval_loader:
                x, y = self._batch((x, y))
                logits = self.model(x, **forward_kwargs)
                total_loss += F.cross_entropy(logits.float(), y, reduction="sum").item()
                correct += (logits.argmax(1) == y).sum().item()
                count += len(y)
        self.model.train()
        total_loss, correct, count = all_sum([total_loss, correct, count])  # each rank scored its shard
        return total_loss / count, 100.0 * correct / count

    def _epoch_summary(self, epoch: int, phase_epochs: int) -> dict[str, float]:
        p, search = self.search.progress, self.search
        broadcast_buffers(self.model)  # every rank evaluates (and goes on) with rank 0's BatchNorm statistics
        loss, correct, count = all_sum([p.sums["loss"], p.sums["correct"], p.sums["count"]])
        summary = {"train/loss": loss / max(count, 1), "train/acc": 100.0 * correct / max(count, 1),
                   "lr/weights": self.epoch_lr, **self.regularisers}
        trains = self.controller.weight_epochs(self.cfg.stages.epochs[self.stage]) > 0
        if trains:  # an untrained supernet's accuracy means nothing, and a pass over the half costs minutes
            summary["val/loss"], summary["val/acc"] = self.evaluate(**self.controller.eval_forward_kwargs())
        summary.update(self.controller.epoch_scalars(self.evaluate, summary))
        search.monitor.stage_scalars(self.stage + 1, summary, p.global_step)
        if not trains:
            log.info("stage %d epoch %d/%d  training-free: no weight trained or evaluated", self.stage + 1,
                     epoch + 1, phase_epochs)
            return summary
        extra = "".join(f"  {key} {value:.3f}" for key, value in self.regularisers.items())
        log.info("stage %d epoch %d/%d  train loss %.4f acc %.2f  val loss %.4f acc %.2f  lr %.5f%s",
                 self.stage + 1, epoch + 1, phase_epochs, summary["train/loss"], summary["train/acc"],
                 summary["val/loss"], summary["val/acc"], summary["lr/weights"], extra)
        return summary

    def run(self) -> dict[str, float]:
        """Train the stage from the progress position to its end; returns the last epoch's summary."""
        p, st = self.search.progress, self.cfg.stages
        epochs, warmup = st.epochs[self.stage], st.warmup_epochs[self.stage]
        trained = self.controller.weight_epochs(epochs)
        total = trained + self.controller.extra_epochs(epochs, warmup)
        while p.epoch < total:
            self.controller.on_epoch(p.epoch, total)
            if p.epoch < trained:
                self.regularisers = self.search.space.regularise(self.model, st.skip_dropout[self.stage], p.epoch,
                                                                 epochs, warmup)
                self._train_epoch(p.epoch)
                self.epoch_lr = self.scheduler.get_last_lr()[0]  # the rate this epoch trained with
                self.scheduler.step()
            else:
                self._policy_epoch()
            p.summary = self._epoch_summary(p.epoch, total)
            p.epoch, p.step = p.epoch + 1, 0
            p.sums = {"loss": 0.0, "correct": 0.0, "count": 0.0}
            self.search.checkpoint(self)
        return p.summary


class Search:
    """A whole progressive search in one run directory."""

    def __init__(self, cfg: SearchConfig, run_dir: Path, resume: bool = False, only_stage: int | None = None):
        self.cfg, self.run_dir = cfg, run_dir
        self.dist = world()  # under torchrun: this rank's shard of every batch; rank 0 alone writes
        self.device = resolve_device(cfg.run.device, self.dist.local_rank)
        self.memory_format = memory_format(cfg.run.channels_last)
        set_cudnn_benchmark(cfg.run.cudnn_benchmark, self.device)
        feed = loader_options(cfg.run, self.device, cfg.data.num_workers)
        data, self.train_loader, self.val_loader = search_loaders(cfg.data, cfg.run.seed, self.dist.rank,
                                                                  self.dist.world_size, feed)
        self.val_batches_per_epoch = len(self.val_loader)  # a policy epoch; the loader's len shrinks on resume
        val_indices = self.val_loader.sampler.indices
        eval_batch = cfg.data.batch_size * 2
        shard = shard_positions(len(val_indices), eval_batch, self.dist.rank, self.dist.world_size).tolist()
        self.val_eval_loader = DataLoader(torch.utils.data.Subset(data.dataset, [val_indices[i] for i in shard]),
                                          batch_size=eval_batch // self.dist.world_size,
                                          pin_memory=feed["pin_memory"])
        self.space = space_class(cfg.space).from_config(cfg.space_sections, data)
        self.data = data
        self.only_stage, self.resume = only_stage, resume
        self.stage_state: dict[str, Any] | None = None
        self.progress = Progress(kept_ops=self.space.initial_kept_ops())
        if resume:
            self._restore(load_checkpoint(run_dir, "search"))
        elif only_stage is not None and only_stage > 0:
            self._load_previous_stage(only_stage)

    # ----- persistence -----
    def _restore(self, state: dict[str, Any]) -> None:
        p = state["progress"]
        self.progress = Progress(**p)
        self.stage_state = state["stage"]
        self.only_stage = state.get("only_stage")

    def _load_previous_stage(self, stage: int) -> None:
        previous = self.run_dir / "stages" / f"stage{stage}.json"
        if not previous.is_file():
            raise UserError(f"--stage {stage + 1} needs {previous} from an earlier run of stage {stage} in this "
                            f"run directory; run --stage {stage} first")
        saved = read_record(previous)
        self.progress = Progress(stage=stage, global_step=saved["global_step"], elapsed=saved["elapsed"],
                                 kept_ops=saved["kept_after"], stages=saved["stages"])

    def checkpoint(self, runner: StageRunner | None) -> None:
        p = self.progress
        state = {"config": self.cfg.to_tree(), "progress": vars(p).copy(), "only_stage": self.only_stage,
                 "stage": runner.state() if runner is not None else None, "world_size": self.dist.world_size}
        state["progress"]["elapsed"] = p.elapsed + (time.time() - self._started)
        if self.dist.is_main:
            save_checkpoint(self.run_dir, state, "search")

    def where(self, what: str) -> str:
        p = self.progress
        return (f"{what} at stage {p.stage + 1}, epoch {p.epoch + 1}, step {p.step}; the last good checkpoint and "
                f"the finished stages are kept in {self.run_dir}; rerun this stage from them with a lower lr: "
                f"python search.py -c {self.run_dir / 'config.yaml'} --run-dir {self.run_dir} --stage {p.stage + 1} "
                f"--set optim.lr={self.cfg.optim.lr / 4:g}")

    def log_arch_metrics(self, stage: int, metrics: dict[str, float]) -> None:
        """A controller's scalars, keyed by tag suffix (stage{s}/<key>)."""
        self.monitor.stage_scalars(stage + 1, metrics, self.progress.global_step)

    def log_arch(self, stage: int, probs: dict[str, torch.Tensor]) -> dict[str, dict[str, Any]]:
        """The op probabilities and the dominance diagnostics now; warns once per stage and cell when one op is
        the argmax of WARN_SHARE of the edges or more."""
        p = self.progress
        self.monitor.arch(stage + 1, probs, p.kept_ops, p.global_step)
        tracker = DominanceTracker(p.dominance)
        p.dominance = tracker.state
        summary = tracker.update(probs, p.kept_ops, p.global_step)
        self.monitor.dominance(stage + 1, summary, p.global_step)
        for group in tracker.new_warnings(summary):
            log.warning(warning_line(stage + 1, group, summary[group], self.cfg.controller))
        return summary

    def _dominance_entry(self, stage: int, probs: dict[str, torch.Tensor]) -> dict[str, Any]:
        """The stage's dominance record per cell: op shares, their entropy, the top op, commitment steps."""
        summary = self.log_arch(stage, probs)
        commits = DominanceTracker(self.progress.dominance).commit_steps()
        self.monitor.commit_steps(stage + 1, commits, self.progress.global_step)
        return {group: {"share": {op: round(v, 4) for op, v in s["share"].items()}, "entropy": round(s["entropy"], 4),
                        "top_op": s["top_op"], "top_share": round(s["top_share"], 4), "commit_step": commits[group]}
                for group, s in summary.items()}

    def _select_entries(self, runner: StageRunner, arch: Any, last: bool) -> dict[str, Any]:
        """The stage's rescored top samples and argmax, the SBO check, and (final stage, vote) the voted
        architecture; nothing for controllers that keep no scored samples."""
        controller, space, kept = runner.controller, self.space, self.progress.kept_ops
        if not controller.scores_samples or not controller.scored_samples():
            return {}
        candidates, check = stage_candidates(controller, space, kept, arch, runner.evaluate, self.cfg.search.top_k,
                                             self.cfg.search.rescore)
        sbo = check["sbo"]
        self.monitor.stage_scalars(runner.stage + 1, {"select/top10_reward": sbo["top10_reward"],
                                                      "select/argmax_reward": sbo["argmax_reward"]},
                                   self.progress.global_step)
        log.info("stage %d SBO check: mean reward of the top %d samples %.4f, argmax architecture %.4f",
                 runner.stage + 1, sbo["samples"], sbo["top10_reward"], sbo["argmax_reward"])
        entries = {"candidates": candidates, "argmax_rescored": check["argmax"], "sbo": sbo}
        if last and self.cfg.search.select == "vote":
            top = distinct_samples(controller, space, kept)[:self.cfg.search.top_k]
            voted = controller.path_architecture(space, kept, vote([c["path"] for c in top], space.cell_layout(kept)))
            entries["vote"] = {"genotype": space.format_arch(voted), "record": space.arch_to_record(voted),
                               **rescore(voted, controller, space, kept, runner.evaluate)}
        return entries

    def _probe(self, candidate: dict[str, Any]) -> float:
        """Validation top-1 (%) of a candidate trained from scratch (search.probe_*), on one process."""
        def subset(loader: DataLoader) -> torch.utils.data.Dataset:
            return torch.utils.data.Subset(self.data.dataset, list(loader.sampler.indices))

        arch = self.space.arch_from_record(candidate["record"])
        acc = probe_accuracy(self.space, arch, self.data, subset(self.train_loader), subset(self.val_loader),
                             self.cfg.data.batch_size, self.cfg.search, self.device, self.cfg.run.seed)
        log.info("probe: %s -> %.2f%% validation top-1 after %d epochs", candidate["genotype"], acc,
                 self.cfg.search.probe_epochs)
        return acc

    # ----- the stage loop -----
    def _finish_stage(self, runner: StageRunner, summary: dict[str, float]) -> None:
        p, stage, space, controller = self.progress, runner.stage, self.space, runner.controller
        probs = controller.probs()
        arch = controller.architecture(space, p.kept_ops)
        last = stage == self.cfg.num_stages - 1
        kept_after = space.prune(probs, p.kept_ops, self.cfg.stages.keep[stage], drop_none_first=last)
        entry: dict[str, Any] = {
            "stage": stage + 1, "layers": self.cfg.stages.layers[stage], "epochs": self.cfg.stages.epochs[stage],
            "kept_ops": p.kept_ops, "kept_after": kept_after,
            "probabilities": {g: [[round(v, 6) for v in row] for row in t.tolist()] for g, t in probs.items()},
            "genotype": space.arch_to_record(arch), "genotype_str": space.format_arch(arch),
            "params_M": round(space.params_millions(arch), 4),
            "val_acc": summary.get("val/acc"), "train_acc": summary.get("train/acc"),
        }
        if last:  # P-DARTS reports the final genotype for every skip limit, for the researcher to choose
            by_skip = {m: controller.architecture(space, p.kept_ops, m) for m in space.max_skip_choices()}
            entry["genotypes_by_max_skip"] = {str(m): None if a is None else space.format_arch(a)
                                              for m, a in by_skip.items()}
        entry.update(controller.stage_entries(space, p.kept_ops, summary))
        entry["dominance"] = self._dominance_entry(stage, probs)
        entry.update(self._select_entries(runner, arch, last))
        for key, text in controller.stage_texts(entry).items():
            self.monitor.text(f"stage{{s}}/{key}", text, p.global_step, s=stage + 1)
        p.stages.append(entry)
        self.monitor.text("stage{s}/genotype", entry["genotype_str"], p.global_step, s=stage + 1)
        self._draw_stage(stage, arch)
        log.info("stage %d done: %s (%.3fM params at eval scale)", stage + 1, entry["genotype_str"], entry["params_M"])
        p.kept_ops, p.stage, p.epoch, p.step, p.summary, p.dominance = kept_after, stage + 1, 0, 0, {}, {}
        elapsed = p.elapsed + (time.time() - self._started)
        stage_file = self.run_dir / "stages" / f"stage{stage + 1}.json"
        if self.dist.is_main:
            stage_file.parent.mkdir(exist_ok=True)
            write_record(stage_file, {"genotype": entry["genotype"], "space": space.name,
                                      "kept_after": kept_after, "stages": p.stages, "global_step": p.global_step,
                                      "elapsed": elapsed})
        self.checkpoint(None)

    def _draw_stage(self, stage: int, arch: Any) -> None:
        if not (self.cfg.run.draw and self.dist.is_main):
            return
        images = self.space.draw(arch, self.run_dir / "stages" / f"stage{stage + 1}")
        for cell, image in images.items():
            self.monitor.image("stage{s}/cell/{cell}", image, self.progress.global_step, s=stage + 1, cell=cell)

    def run(self) -> dict[str, Any] | None:
        """Run the remaining stages, writing TensorBoard events (the run directory must exist); returns the final record
        (None after a single non-final --stage)."""
        self._started = time.time()
        stop = self.cfg.num_stages if self.only_stage is None else self.only_stage + 1
        self.monitor = Monitor(self.run_dir / "tb", purge_step=self.progress.global_step if self.resume else None,
                               enabled=self.dist.is_main)
        try:
            while self.progress.stage < stop:
                runner = StageRunner(self, self.progress.stage, self.stage_state)
                self.stage_state = None
                summary = runner.run()
                self._finish_stage(runner, summary)
        except TrainingDiverged as err:
            self.monitor.text("stage{s}/diverged", str(err), self.progress.global_step, s=self.progress.stage + 1)
            raise
        finally:  # the buffered events, the divergence's own among them, reach the event file whatever happens
            self.monitor.close()
        if self.progress.stage < self.cfg.num_stages:
            return None
        return self._final_record()

    def _final_record(self) -> dict[str, Any]:
        p = self.progress
        final = p.stages[-1]
        selection = final_choice(final, self.cfg.search, self._probe)
        picked = selection["picked"]
        arch = self.space.arch_from_record(picked["record"])
        if picked["genotype"] != final["genotype_str"]:
            log.info("search.select=%s picked %s (%s) instead of the argmax", self.cfg.search.select,
                     picked["genotype"], picked["source"])
        record = make_record(
            picked["record"], space=self.space.name, source=f"search {self.run_dir.name}",
            search={"config": self.cfg.to_tree(), "seed": self.cfg.run.seed, "controller": self.cfg.controller,
                    "dataset": self.cfg.data.dataset, "stages": p.stages, "final_kept_ops": p.kept_ops,
                    "genotypes_by_max_skip": final.get("genotypes_by_max_skip", {}), "selection": selection,
                    "wall_time_s": round(p.elapsed + (time.time() - self._started), 1)},
            metrics={"params_M": round(self.space.params_millions(arch), 4),
                     "flops_M": round(self.space.flops_millions(arch), 3)})
        record["genotype_str"] = picked["genotype"]
        if self.dist.is_main:
            write_record(self.run_dir / RECORD, record)
            write_report(self.run_dir, figures=self.cfg.run.draw)
        return record
