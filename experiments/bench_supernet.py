"""Benchmark: one supernet step against the stand-alone child and against the straightforward mixture (issue 8).

Cases, each a median forward+backward step (cross-entropy on random data) after warm-up:
  mixture      SearchNetwork(weights=softmax(alpha)): every kept op (all 8 DARTS ops) of every edge, our mixture
  partial      the PC-DARTS mixture (model.mixture: partial, issue 24): every op of every edge on a random 1/K of
               its channels (--partial-k, 4 by default), the rest bypassing, a channel shuffle, and edge weights
               (softmax over each node's inputs) that the step differentiates with the alphas
  path         SearchNetwork(path=...): one uniformly sampled op per edge (the REINFORCE weight step)
  child        the stand-alone child of that path: a FixedNetwork whose cells hold exactly the sampled ops of all
               14 edges (no `none` edges), affine=False, BN after pools, no drop path; same memory format as the
               supernet. It is the floor for (path).
  baseline     the DARTS reference mixture: sum(w * op(x)) over all ops of every edge with `none` computed as
               zeros, a ReLU per op, Python sums per edge and node, plain nn.Conv2d dilated convs, in NCHW
               (PyTorch's default layout).
  baseline_cl  the same reference mixture fed channels_last input, to separate the layout gain from the rest.
  controller   ReinforceController.sample(n) + update(paths, rewards), n = its default samples per update.
  ref_darts    the reference DARTS code itself (quark0/darts, cnn/model_search.py's Network, all 8 ops, alphas
               differentiated), imported from --reference-darts, a checkout outside this repository.
  ref_pcdarts  the reference PC-DARTS code itself (yuhuixu1993/PC-DARTS, model_search.py's Network: K=4, edge
               weights), imported from --reference-pcdarts. Both are run as published; only their hard-coded
               .cuda() calls on the alphas are made no-ops on CPU while they are built.
Step times are measured in this process with the cases interleaved round-robin (a load change on a shared
machine hits every case alike); wall and process-CPU medians are both reported, the ratios use wall time.
Peak memory is measured per case in its own subprocess (this script with the hidden --case flag), so the
peaks do not mix: CUDA max_memory_allocated, or on CPU the growth of the peak RSS (VmHWM) over two steps.

    python experiments/bench_supernet.py [--C 16] [--layers 8] [--batch 32] [--size 32] [--partial-k 4] [--json OUT]
        [--reference-darts DARTS/cnn] [--reference-pcdarts PC-DARTS]
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path as FilePath
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from controllers.edge_weights import node_softmax
from controllers.reinforce import ReinforceConfig, ReinforceController
from nas.core.errors import UserError, exit_on_user_error
from search_spaces.darts.geometry import GROUPS, CellSpec, edges_per_cell, node_edges
from search_spaces.darts.networks import FixedNetwork, SearchNetwork
from search_spaces.darts.space import DartsSpace
from search_spaces.depthwise import Depthwise
from search_spaces.ops import DARTS_OPS
from search_spaces.partial_channels import check_partial_k

STEP_CASES = ("mixture", "partial", "path", "child", "baseline", "baseline_cl")
CASES = STEP_CASES + ("controller",)
REFERENCE_CASES = {"ref_darts": "reference_darts", "ref_pcdarts": "reference_pcdarts"}  # case: its folder option
REFERENCE_MODULES = ("operations", "genotypes", "model_search")  # the top-level names both references use
REFERENCE_PARTIAL_K = 4  # PC-DARTS's model_search hard-codes K=4
TARGETS = {"path_over_child": ("<=", 1.10), "mixture_over_path": (">=", 4.0),
           "baseline_over_mixture": (">=", 1.3), "controller_fraction": ("<=", 0.02),
           "baseline_over_partial": (">=", 4.0), "partial_memory_over_baseline": ("<=", 0.5),
           "ref_darts_over_partial": (">=", 4.0), "partial_memory_over_ref_darts": ("<=", 0.5),
           "ref_pcdarts_over_partial": (">=", 1.0)}
STEPS, MULTIPLIER = 4, 4
CONTROLLER_ROUNDS = 50
MEMORY_STEPS = 2
MIN_MEMORY_MIB = 0.1  # a peak growth below this (a tiny case on CPU) counts as this in the memory ratios
Step = Callable[[], None]


class BaselineMixture(SearchNetwork):
    """The straightforward DARTS mixture on the same cells: every op runs (`none` as zeros) and is summed."""

    def forward(self, x: torch.Tensor, weights: dict[str, torch.Tensor] | None = None,
                path: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell, group in zip(self.cells, self._groups):
            w, states, offset = weights[group], [cell.preprocess0(s0), cell.preprocess1(s1)], 0
            for _ in range(STEPS):
                node = sum(sum(w_k * op(h) for w_k, op in zip(w[offset + j], cell.edges[offset + j]))
                           for j, h in enumerate(states))
                offset += len(states)
                states.append(node)
            s0, s1 = s1, torch.cat(states[-MULTIPLIER:], dim=1)
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(s1, 1), 1))


def reference_ops(model: torch.nn.Module) -> torch.nn.Module:
    """Swap our dilated depthwise convs (faster backward on CPU) back to the plain nn.Conv2d of the reference."""
    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, Depthwise):
                setattr(module, name, child.conv)
    return model


def all_ops_kept() -> dict[str, list[list[str]]]:
    return {group: [list(DARTS_OPS) for _ in range(edges_per_cell(STEPS))] for group in GROUPS}


def sample_path(seed: int) -> dict[str, list[int]]:
    """One op index per edge, uniform over the 8 DARTS ops (the path (b) and (c) share)."""
    gen = torch.Generator().manual_seed(seed)
    return {group: torch.randint(0, len(DARTS_OPS), (edges_per_cell(STEPS),), generator=gen).tolist()
            for group in GROUPS}


def child_specs(path: dict[str, list[int]]) -> dict[str, CellSpec]:
    """The cells of the stand-alone child: every edge whose sampled op is not `none`, with that op."""
    specs, concat = {}, list(range(2 + STEPS - MULTIPLIER, 2 + STEPS))
    for group in GROUPS:
        names, nodes = [DARTS_OPS[k] for k in path[group]], []
        for i in range(STEPS):
            start = len(nodes) * (len(nodes) + 3) // 2  # edges of the nodes before node i
            nodes.append([(names[start + j], j) for j in range(2 + i) if names[start + j] != "none"])
        specs[group] = CellSpec(nodes, concat)
    return specs


def step_cases(args: argparse.Namespace) -> tuple[str, ...]:
    """The step cases of this run: ours, then each reference whose folder was given."""
    return STEP_CASES + tuple(case for case, option in REFERENCE_CASES.items() if getattr(args, option))


def build_step(case: str, args: argparse.Namespace, path: dict[str, list[int]], device: torch.device) -> Step:
    """A closure running one forward+backward of `case` on a fixed random batch."""
    if case in REFERENCE_CASES:
        return build_reference_step(getattr(args, REFERENCE_CASES[case]), args, device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    if case == "child":
        child = FixedNetwork(child_specs(path), args.C, 10, args.layers, 3, affine=False, pool_bn=True).to(device)
        x_child = x.contiguous(memory_format=torch.channels_last) if device.type == "cpu" else x
        return _train_step(list(child.parameters()), lambda: child(x_child)[0], y)
    if case.startswith("baseline"):
        model: torch.nn.Module = reference_ops(BaselineMixture(args.C, 10, args.layers, 3, all_ops_kept())).to(device)
    else:
        partial_k = args.partial_k if case == "partial" else 1
        model = SearchNetwork(args.C, 10, args.layers, 3, all_ops_kept(), partial_k=partial_k).to(device)
    if case == "path":
        path_t = {group: torch.tensor(path[group]) for group in GROUPS}
        return _train_step(list(model.parameters()), lambda: model(x, path=path_t), y)
    if case == "baseline_cl":
        x = x.contiguous(memory_format=torch.channels_last)
    alphas = {group: (1e-3 * torch.randn(edges_per_cell(STEPS), len(DARTS_OPS), device=device)).requires_grad_()
              for group in GROUPS}
    betas = {group: (1e-3 * torch.randn(edges_per_cell(STEPS), device=device)).requires_grad_()
             for group in GROUPS} if case == "partial" else {}
    nodes = [list(edges) for edges in node_edges(STEPS)]

    def forward() -> torch.Tensor:
        edges = {"edge_weights": {g: node_softmax(b, nodes) for g, b in betas.items()}} if betas else {}
        return model(x, weights={g: torch.softmax(a, dim=-1) for g, a in alphas.items()}, **edges)

    return _train_step(list(model.parameters()) + list(alphas.values()) + list(betas.values()), forward, y)


@contextlib.contextmanager
def _cuda_calls_stay_on(device: torch.device) -> Iterator[None]:
    """Make Tensor.cuda() a no-op while a reference network is built on CPU (its alphas call .cuda())."""
    if device.type == "cuda":
        yield
        return
    cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.cuda = cuda  # type: ignore[method-assign]


def load_reference(folder: FilePath):
    """The `model_search` module of a reference checkout, imported from `folder` under its own top-level names.

    Both references name their modules operations/genotypes/model_search, so those names are cleared before and
    after the import: each loaded module keeps its own globals and the two can be timed in one process.
    """
    saved = {name: sys.modules.pop(name) for name in REFERENCE_MODULES if name in sys.modules}
    sys.path.insert(0, str(folder))
    try:
        return importlib.import_module("model_search")
    finally:
        sys.path.remove(str(folder))
        for name in REFERENCE_MODULES:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


def build_reference_step(folder: FilePath, args: argparse.Namespace, device: torch.device) -> Step:
    """One forward+backward of a reference search Network (alphas, and PC-DARTS's betas, differentiated)."""
    module = load_reference(folder)
    with _cuda_calls_stay_on(device):
        model = module.Network(args.C, 10, args.layers, torch.nn.CrossEntropyLoss()).to(device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    return _train_step(list(model.parameters()) + list(model.arch_parameters()), lambda: model(x), y)


def _train_step(params: list[torch.Tensor], forward: Callable[[], torch.Tensor], y: torch.Tensor) -> Step:
    """Zero the gradients (walking a flat list, as an optimizer does), forward, cross-entropy, backward."""
    def step() -> None:
        for param in params:
            param.grad = None
        F.cross_entropy(forward(), y).backward()

    return step


def build_controller_step(args: argparse.Namespace) -> Step:
    """One controller round: sample its default number of paths, update on random rewards."""
    shapes = {group: (edges_per_cell(STEPS), len(DARTS_OPS)) for group in GROUPS}
    cfg = ReinforceConfig()  # samples genotypes, the default
    space = DartsSpace(C=args.C, num_classes=10, in_channels=3, normal_ops=list(DARTS_OPS), reduce_ops=list(DARTS_OPS))
    controller = ReinforceController(shapes, cfg, stage=0, generator=torch.Generator().manual_seed(args.seed),
                                     layouts=space.cell_layout(space.initial_kept_ops()))
    rewards = torch.Generator().manual_seed(args.seed + 1)

    def step() -> None:
        paths = controller.sample(cfg.samples_per_update)
        controller.update(paths, torch.rand(len(paths), generator=rewards).tolist())

    return step


def time_cases(args: argparse.Namespace, path: dict[str, list[int]]) -> dict[str, dict]:
    """Median step times of every case, measured in this process with the cases interleaved round-robin.

    Interleaving makes a load change on a shared machine hit every case alike. The controller round,
    milliseconds long, is timed over `CONTROLLER_ROUNDS` calls after the step cases.
    """
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    steps = {case: build_step(case, args, path, device) for case in step_cases(args)}
    steps["controller"] = build_controller_step(args)
    times: dict[str, list[tuple[float, float]]] = {case: [] for case in steps}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    for _ in range(args.steps):
        for case in step_cases(args):
            times[case].append(_timed(steps[case], device))
    times["controller"] = [_timed(steps["controller"], device) for _ in range(CONTROLLER_ROUNDS)]
    return {case: {"median_s": statistics.median(wall for wall, _ in pairs),
                   "median_cpu_s": statistics.median(cpu for _, cpu in pairs),
                   "times_s": [wall for wall, _ in pairs]} for case, pairs in times.items()}


def _timed(step: Step, device: torch.device) -> tuple[float, float]:
    """(wall, process CPU) seconds of one call."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start, cpu_start = time.perf_counter(), time.process_time()
    step()
    sync()
    return time.perf_counter() - start, time.process_time() - cpu_start


def peak_memory(case: str, args: argparse.Namespace, path: dict[str, list[int]]) -> float:
    """Peak memory (MiB) of MEMORY_STEPS steps of `case` in this process: CUDA max allocated, else peak-RSS growth."""
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    step = build_controller_step(args) if case == "controller" else build_step(case, args, path, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _reset_peak_rss()
    rss_before = _peak_rss_mib()
    for _ in range(MEMORY_STEPS):
        step()
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return _peak_rss_mib() - rss_before


def _reset_peak_rss() -> None:
    """Set the peak RSS to the current RSS (Linux clear_refs 5), so import-time peaks do not hide the growth."""
    try:
        FilePath("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # the growth is then measured from the peak so far, which can under-report small cases


def _peak_rss_mib() -> float:
    """VmHWM, the peak RSS of this process's memory, which clear_refs resets.

    ru_maxrss is not used where /proc is available: after fork + exec it also remembers the RSS of the forked
    copy of the parent, so a large parent would hide the growth of the case.
    """
    try:
        status = FilePath("/proc/self/status").read_text()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def memory_in_subprocess(case: str, args: argparse.Namespace, path: dict[str, list[int]]) -> float:
    """Run `peak_memory` for one case in a fresh interpreter so its peak is its own."""
    command = [sys.executable, __file__, "--case", case, "--case-path", json.dumps(path)] + _forwarded(args)
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"memory case {case} failed:\n{result.stderr[-4000:]}")
    return float(result.stdout.strip().splitlines()[-1])


def _forwarded(args: argparse.Namespace) -> list[str]:
    keys = ("C", "layers", "batch", "size", "steps", "warmup", "device", "seed", "threads", "partial_k",
            *REFERENCE_CASES.values())
    return [item for key in keys if getattr(args, key) is not None
            for item in (f"--{key.replace('_', '-')}", str(getattr(args, key)))]


def summarize(args: argparse.Namespace, path: dict[str, list[int]], cases: dict[str, dict]) -> dict:
    """Ratios, targets and settings around the raw per-case results."""
    t = {case: result["median_s"] for case, result in cases.items()}
    ratios = {
        "path_over_child": t["path"] / t["child"],
        "mixture_over_path": t["mixture"] / t["path"],
        "baseline_over_mixture": t["baseline"] / t["mixture"],
        "baseline_cl_over_mixture": t["baseline_cl"] / t["mixture"],
        "controller_fraction": t["controller"] / t["path"],
        "mixture_over_partial": t["mixture"] / t["partial"],
        "baseline_over_partial": t["baseline"] / t["partial"],
    }
    for case in REFERENCE_CASES:
        if case in t:
            ratios[f"{case}_over_partial"] = t[case] / t["partial"]
            ratios[f"{case}_over_mixture"] = t[case] / t["mixture"]
    memory = {case: max(result["peak_memory_mib"], MIN_MEMORY_MIB) for case, result in cases.items()
              if "peak_memory_mib" in result}
    if "partial" in memory:
        for case in ("mixture", "baseline", *REFERENCE_CASES):
            if case in memory:
                ratios[f"partial_memory_over_{case}"] = memory["partial"] / memory[case]
    met = {key: (ratios[key] <= bound if op == "<=" else ratios[key] >= bound) for key, (op, bound) in TARGETS.items()
           if key in ratios}
    settings = {key: getattr(args, key) for key in ("space", "C", "layers", "batch", "size", "steps", "warmup",
                                                     "device", "seed", "partial_k")}
    settings["threads"] = args.threads or torch.get_num_threads()
    return {"settings": settings, "path": {g: [DARTS_OPS[k] for k in path[g]] for g in GROUPS}, "cases": cases,
            "ratios": ratios, "targets": {k: f"{op} {bound}" for k, (op, bound) in TARGETS.items()}, "met": met}


def print_table(report: dict) -> None:
    print(f"{'case':<12} {'median step (s)':>16} {'peak memory (MiB)':>18}")
    for case, result in report["cases"].items():
        print(f"{case:<12} {result['median_s']:>16.4f} {result['peak_memory_mib']:>18.1f}")
    for key, value in report["ratios"].items():
        target = report["targets"].get(key)
        verdict = "" if target is None else f"  (target {target}: {'met' if report['met'][key] else 'NOT met'})"
        print(f"{key:<26} {value:8.3f}{verdict}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", default="darts", choices=["darts"])
    parser.add_argument("--C", type=int, default=16)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per case (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=0, help="seeds the sampled path, data and weights")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--partial-k", type=int, default=4, help="the partial case's K: ops on 1/K of the channels")
    parser.add_argument("--json", type=FilePath, default=None, help="write the report here")
    parser.add_argument("--reference-darts", type=FilePath, default=None, metavar="DIR",
                        help="a quark0/darts checkout's cnn/ folder: time its search Network beside ours")
    parser.add_argument("--reference-pcdarts", type=FilePath, default=None, metavar="DIR",
                        help="a yuhuixu1993/PC-DARTS checkout: time its search Network (K=4) beside ours")
    parser.add_argument("--case", choices=CASES + tuple(REFERENCE_CASES), help=argparse.SUPPRESS)
    parser.add_argument("--case-path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for key in ("C", "layers", "batch", "size", "steps", "partial_k"):
        if getattr(args, key) < 1:
            raise UserError(f"--{key} must be at least 1, got {getattr(args, key)}")
    check_partial_k(args.C, args.partial_k)
    for option in REFERENCE_CASES.values():
        folder = getattr(args, option)
        if folder is not None and not (folder / "model_search.py").is_file():
            raise UserError(f"--{option.replace('_', '-')} {folder} has no model_search.py; pass the reference "
                            "checkout's folder that holds it (quark0/darts: cnn/)")
    if args.reference_pcdarts and args.partial_k != REFERENCE_PARTIAL_K:
        raise UserError(f"the PC-DARTS reference hard-codes K={REFERENCE_PARTIAL_K}; use --partial-k "
                        f"{REFERENCE_PARTIAL_K} with --reference-pcdarts")
    if args.warmup < 0:
        raise UserError(f"--warmup must be >= 0, got {args.warmup}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda but no CUDA device is available; use --device cpu")
    return args


def main(argv: list[str] | None = None) -> None:
    with exit_on_user_error():
        args = parse_args(argv)
        if args.threads:
            torch.set_num_threads(args.threads)
        if args.case:
            print(peak_memory(args.case, args, json.loads(args.case_path)))
            return
        path = sample_path(args.seed)
        print(f"timing {', '.join(step_cases(args))}, controller interleaved ...", file=sys.stderr, flush=True)
        cases = time_cases(args, path)
        for case in cases:
            print(f"peak memory of {case} ...", file=sys.stderr, flush=True)
            cases[case]["peak_memory_mib"] = memory_in_subprocess(case, args, path)
        report = summarize(args, path, cases)
        print_table(report)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
