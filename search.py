"""Entry point of a progressive architecture search (also installed as `nas-search`).

    python search.py -c experiments/quick_digits.yaml [--run-dir DIR] [--stage N] [--resume DIR]
                     [--seed S] [--set section.key=value ...]
    torchrun --nproc_per_node=N search.py ...   (the same search on N processes: one per GPU, or gloo on CPU)
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import yaml

from nas.core.config import load_config
from nas.core.errors import UserError, exit_on_user_error


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="P-DARTS style progressive search (any registered space and controller).")
    parser.add_argument("-c", "--config", help="YAML config (see experiments/); required unless --resume")
    parser.add_argument("--run-dir", help="where the run writes (default: runs/<config>-<time>)")
    parser.add_argument("--stage", type=int, help="run only stage N (1-based), from stage N-1's saved state")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue a killed run from its last checkpoint")
    parser.add_argument("--seed", type=int, help="shortcut for --set run.seed=S")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="override config values, e.g. --set stages.epochs=[2,2,2] data.batch_size=32")
    return parser.parse_args(argv)


def setup_logging(run_dir: Path, is_main: bool) -> None:
    """INFO to stdout and search.log on rank 0; the other ranks of a torchrun job report errors only (their
    warnings would repeat rank 0's)."""
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    logger = logging.getLogger("nas")
    logger.setLevel(logging.INFO if is_main else logging.ERROR)
    logger.handlers.clear()
    if not is_main:
        return
    for handler in (logging.StreamHandler(sys.stdout), logging.FileHandler(run_dir / "search.log")):
        handler.setFormatter(fmt)
        logger.addHandler(handler)


def prepare(args: argparse.Namespace, world_size: int):
    """Validate the command line and the config, and choose the run directory, before any work."""
    from nas.core.checkpoint import load_checkpoint
    from nas.engine.search_config import SearchConfig

    if args.resume:
        if args.config or args.overrides or args.stage is not None or args.seed is not None:
            raise UserError("--resume continues a run with its saved config and seed; drop -c, --set, --seed and "
                            "--stage")
        run_dir = Path(args.resume)
        if args.run_dir is not None and Path(args.run_dir).resolve() != run_dir.resolve():
            raise UserError(f"--run-dir {args.run_dir} and --resume {run_dir} differ; a resumed run stays in its "
                            f"directory")
        state = load_checkpoint(run_dir, "search")
        saved_world = state.get("world_size", 1)
        if saved_world != world_size:
            raise UserError(f"{run_dir} was searched by {saved_world} process(es), this is {world_size}; resume it "
                            f"with torchrun --nproc_per_node={saved_world} (the data shards and the per-rank random "
                            f"streams depend on it)")
        cfg = SearchConfig.from_tree(state["config"])
        cfg.validate()
        return cfg, run_dir
    if not args.config:
        raise UserError("give a config with -c (for example -c experiments/quick_digits.yaml) or --resume RUN_DIR")
    overrides = list(args.overrides) + ([f"run.seed={args.seed}"] if args.seed is not None else [])
    cfg = load_config(SearchConfig, args.config, overrides)
    if args.stage is not None and not 1 <= args.stage <= cfg.num_stages:
        raise UserError(f"--stage must be between 1 and {cfg.num_stages}, got {args.stage}")
    name = f"{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(args.run_dir) if args.run_dir else Path(cfg.run.out_dir) / name
    if args.stage is None:
        refuse_finished_run(run_dir)
    return cfg, run_dir


def refuse_finished_run(run_dir: Path) -> None:
    """A fresh search never starts in a directory that holds a run (its checkpoint or its record); `--stage N`
    reuses one on purpose."""
    from nas.core.checkpoint import CHECKPOINT
    from nas.engine.search_loop import RECORD

    held = [name for name in (CHECKPOINT, RECORD) if (run_dir / name).exists()]
    if held:
        raise UserError(f"{run_dir} already holds a run ({held[0]}); continue it with --resume {run_dir}, rerun one "
                        f"of its stages with --stage N, or choose another --run-dir")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with exit_on_user_error():
        from nas.core.device import resolve_device
        from nas.core.distributed import barrier, broadcast_object, dist_info, process_group

        info = dist_info()
        cfg, run_dir = prepare(args, info.world_size)
        from nas.engine.search_loop import Search, TrainingDiverged

        with process_group(info, resolve_device(cfg.run.device, info.local_rank)):
            run_dir = broadcast_object(run_dir)  # rank 0's timestamped name
            only_stage = args.stage - 1 if args.stage is not None else None
            # Loads and checks the data and the space first: a failed start leaves no run directory behind.
            search = Search(cfg, run_dir, resume=bool(args.resume), only_stage=only_stage)
            if info.is_main:
                run_dir.mkdir(parents=True, exist_ok=True)
                (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_tree(), sort_keys=False))
            barrier()  # the other ranks open the directory once it exists
            setup_logging(run_dir, info.is_main)
            try:
                record = search.run()
            except TrainingDiverged as err:  # raised on every rank at once; rank 0 reports it
                if info.is_main:
                    print(f"error: {err}", file=sys.stderr)
                barrier()  # every rank got here; none exits (and has torchrun stop the others) before rank 0 is done
                return 1
    if not info.is_main:
        return 0
    if record is None:
        done = search.progress.stage  # finished stages; a resumed --stage run knows its stage from the checkpoint
        print(f"stage {done} done; run --stage {done + 1} --run-dir {run_dir} to go on")
    else:
        print(f"genotype: {record['genotype_str']}")
        print(f"params at eval scale: {record['metrics']['params_M']:.3f}M")
        print(f"run directory: {run_dir}  (record: {run_dir / 'genotype.json'}, "
              f"TensorBoard: tensorboard --logdir {run_dir / 'tb'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
