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
  nb201_path   the NAS-Bench-201 supernet (search_spaces/nb201.py, all 5 ops kept, --C channels, --nb201-cells cells
               per stage) running one uniformly sampled op per edge (`none` included), as a REINFORCE weight step
  nb201_child  the stand-alone child of that path: the space's evaluation network of that cell (build_network, same
               C and cells). It is the floor for (nb201_path).
  nb201_mixture  that NB201 supernet's full mixture (all 5 ops on every channel, alphas differentiated)
  nb201_partial  its PC-DARTS mixture (model.mixture: partial, --partial-k, edge weights differentiated)
  controller   what a REINFORCE search (the default config: genotype samples, 4 per update, one update per
               weight step, parameter and FLOP costs) pays its controller per search step: the weight step's path
               draw plus the whole arch step (sample, cost each sample, update), with the supernet's scoring of
               the samples replaced by a stub that returns fixed logits (that forward is the supernet's time).
  ref_darts    the reference DARTS code itself (quark0/darts, cnn/model_search.py's Network, all 8 ops, alphas
               differentiated), imported from --reference-darts, a checkout outside this repository.
  ref_pcdarts  the reference PC-DARTS code itself (yuhuixu1993/PC-DARTS, model_search.py's Network: K=4, edge
               weights differentiated), imported from --reference-pcdarts. Both run as published; only their
               hard-coded .cuda() calls on the alphas are made no-ops on CPU while they are built.
Step times are measured in this process with the cases interleaved round-robin (a load change on a shared
machine hits every case alike); wall and process-CPU medians are both reported, the ratios use wall time.
Peak memory is measured per case in its own subprocess (this script with the hidden --case flag), so the
peaks do not mix: CUDA max_memory_allocated, or on CPU the growth of the peak RSS (VmHWM) over two steps.

    python experiments/bench_supernet.py [--C 16] [--layers 8] [--batch 32] [--size 32] [--partial-k 4]
        [--nb201-cells 5] [--cases path,child,...] [--json OUT]
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
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from controllers.base import ArchStepContext, StageContext
from controllers.edge_weights import node_softmax
from controllers.reinforce import ReinforceConfig, ReinforceController
from controllers.reward import RewardConfig
from nas.core.errors import UserError, exit_on_user_error
from search_spaces.darts.geometry import GROUPS, CellSpec, edges_per_cell, node_edges
from search_spaces.darts.networks import FixedNetwork, SearchNetwork
from search_spaces.darts.space import DartsSpace
from search_spaces.depthwise import Depthwise
from search_spaces.nb201 import EDGES as NB201_EDGES
from search_spaces.nb201 import GROUP as NB201_GROUP
from search_spaces.nb201 import INCOMING as NB201_INCOMING
from search_spaces.nb201 import NB201_OPS, NB201Network, build_network, path_to_arch
from search_spaces.ops import DARTS_OPS
from search_spaces.partial_channels import check_partial_k

OWN_STEP_CASES = ("mixture", "partial", "path", "child", "baseline", "baseline_cl", "nb201_path", "nb201_child",
                  "nb201_mixture", "nb201_partial")
REFERENCE_CASES = {"ref_darts": "reference_darts", "ref_pcdarts": "reference_pcdarts"}  # case: its folder option
STEP_CASES = OWN_STEP_CASES + tuple(REFERENCE_CASES)
CASES = STEP_CASES + ("controller",)
REFERENCE_MODULES = ("operations", "genotypes", "model_search")  # the top-level names both references use
REFERENCE_PARTIAL_K = 4  # PC-DARTS's model_search hard-codes K=4
TARGETS = {"path_over_child": ("<=", 1.05), "nb201_path_over_child": ("<=", 1.05), "mixture_over_path": (">=", 4.0),
           "baseline_over_mixture": (">=", 1.3), "controller_fraction": ("<=", 0.005),
           "baseline_over_partial": (">=", 4.0), "partial_memory_over_baseline": ("<=", 0.5),
           "ref_darts_over_partial": (">=", 4.0), "partial_memory_over_ref_darts": ("<=", 0.5),
           "ref_pcdarts_over_partial": (">=", 1.0)}
RATIOS = {  # ratio -> (numerator case, denominator case), of the median step times
    "path_over_child": ("path", "child"), "nb201_path_over_child": ("nb201_path", "nb201_child"),
    "mixture_over_path": ("mixture", "path"), "baseline_over_mixture": ("baseline", "mixture"),
    "baseline_cl_over_mixture": ("baseline_cl", "mixture"), "controller_fraction": ("controller", "path"),
    "mixture_over_partial": ("mixture", "partial"), "baseline_over_partial": ("baseline", "partial"),
    "ref_darts_over_partial": ("ref_darts", "partial"), "ref_darts_over_mixture": ("ref_darts", "mixture"),
    "ref_pcdarts_over_partial": ("ref_pcdarts", "partial"),
    "nb201_mixture_over_partial": ("nb201_mixture", "nb201_partial")}
MEMORY_RATIO_CASES = ("mixture", "baseline", *REFERENCE_CASES)  # partial_memory_over_<case>
STEPS, MULTIPLIER = 4, 4
CONTROLLER_ROUNDS = 50
CONTROLLER_STAGES = 3  # the default config's stages (reinforce.epsilon has one value per stage)
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
    """One op index per edge, uniform over the 8 DARTS ops per DARTS group (path and child share it), and under
    "nb201" uniform over the 5 NB201 ops per edge of the NB201 cell (nb201_path and nb201_child share it)."""
    gen = torch.Generator().manual_seed(seed)
    path = {group: torch.randint(0, len(DARTS_OPS), (edges_per_cell(STEPS),), generator=gen).tolist()
            for group in GROUPS}
    path["nb201"] = torch.randint(0, len(NB201_OPS), (len(NB201_EDGES),), generator=gen).tolist()
    return path


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


def build_step(case: str, args: argparse.Namespace, path: dict[str, list[int]], device: torch.device) -> Step:
    """A closure running one forward+backward of `case` on a fixed random batch."""
    if case in REFERENCE_CASES:
        return build_reference_step(getattr(args, REFERENCE_CASES[case]), args, device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    if case.startswith("nb201"):
        return build_nb201_step(case, args, path["nb201"], x, y)
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
    nodes = [list(edges) for edges in node_edges(STEPS)]
    return _mixture_step(model, x, y, GROUPS, len(DARTS_OPS), nodes, edge_weights=case == "partial")


def _mixture_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, groups: Sequence[str], n_ops: int,
                  nodes: list[list[int]], edge_weights: bool) -> Step:
    """A training step of the supernet's mixture, softmax(alphas) per group, and with `edge_weights` the node
    softmax of per-edge betas (PC-DARTS); the alphas and betas are differentiated with the weights."""
    n_edges = sum(len(node) for node in nodes)
    alphas = {g: (1e-3 * torch.randn(n_edges, n_ops, device=x.device)).requires_grad_() for g in groups}
    betas = {g: (1e-3 * torch.randn(n_edges, device=x.device)).requires_grad_() for g in groups} if edge_weights else {}

    def forward() -> torch.Tensor:
        edges = {"edge_weights": {g: node_softmax(b, nodes) for g, b in betas.items()}} if betas else {}
        return model(x, weights={g: torch.softmax(a, dim=-1) for g, a in alphas.items()}, **edges)

    return _train_step(list(model.parameters()) + list(alphas.values()) + list(betas.values()), forward, y)


def build_nb201_step(case: str, args: argparse.Namespace, path: list[int], x: torch.Tensor,
                     y: torch.Tensor) -> Step:
    """The NB201 supernet running `path` (nb201_path), that path's stand-alone network (nb201_child), or the
    supernet's full or partial mixture (nb201_mixture, nb201_partial)."""
    path_t = {NB201_GROUP: torch.tensor(path)}
    if case == "nb201_child":
        child = build_network(path_to_arch(path_t), args.C, args.nb201_cells).to(x.device)
        return _train_step(list(child.parameters()), lambda: child(x), y)
    kept = {NB201_GROUP: [list(NB201_OPS) for _ in NB201_EDGES]}
    partial_k = args.partial_k if case == "nb201_partial" else 1
    model = NB201Network(kept, args.C, args.nb201_cells, partial_k=partial_k).to(x.device)
    if case == "nb201_path":
        return _train_step(list(model.parameters()), lambda: model(x, path=path_t), y)
    nodes = [[e for e, _ in pairs] for pairs in NB201_INCOMING]
    return _mixture_step(model, x, y, [NB201_GROUP], len(NB201_OPS), nodes, edge_weights=partial_k > 1)


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


class ScoringStub(torch.nn.Module):
    """Stands in for the supernet when the arch step scores its samples: random logits, whatever the path."""

    def __init__(self, batch: int, seed: int):
        super().__init__()
        self.batch, self.generator = batch, torch.Generator().manual_seed(seed)

    def forward(self, x: torch.Tensor, path: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.randn(self.batch, 10, generator=self.generator)


def build_controller_step(args: argparse.Namespace) -> Step:
    """The controller's part of one REINFORCE search step (default config, stage 0): the weight step's path draw,
    then the arch step (sample, cost, score with the stub, update)."""
    sections = {"reinforce": ReinforceConfig(), "reward": RewardConfig()}  # genotype samples, 4 per update
    for section in sections.values():
        section.validate(CONTROLLER_STAGES)
    space = DartsSpace(C=args.C, num_classes=10, in_channels=3, normal_ops=list(DARTS_OPS), reduce_ops=list(DARTS_OPS))
    controller = ReinforceController.from_config(StageContext(
        sections, space, space.initial_kept_ops(), stage=0, num_stages=CONTROLLER_STAGES,
        generator=torch.Generator().manual_seed(args.seed)))
    y = torch.randint(0, 10, (args.batch,), generator=torch.Generator().manual_seed(args.seed))
    ctx = ArchStepContext(model=ScoringStub(args.batch, args.seed + 1), criterion=F.cross_entropy, train_batch=None,
                          val_batch=(torch.zeros(args.batch), y), w_optimizer=controller.optimizer, lr=0.0, stage=0,
                          step=0)  # REINFORCE uses neither the weight optimizer nor the lr

    def step() -> None:
        controller.weight_forward_kwargs()
        controller.arch_step(ctx)

    return step


def time_cases(args: argparse.Namespace, path: dict[str, list[int]]) -> dict[str, dict]:
    """Median step times of the chosen cases (args.cases), measured in this process with the step cases interleaved
    round-robin.

    Interleaving makes a load change on a shared machine hit every case alike. The controller round,
    milliseconds long, is timed over `CONTROLLER_ROUNDS` calls, spread over the rounds of the step cases.
    """
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    step_cases = [case for case in args.cases if case in STEP_CASES]
    steps = {case: build_step(case, args, path, device) for case in step_cases}
    if "controller" in args.cases:
        steps["controller"] = build_controller_step(args)
    times: dict[str, list[tuple[float, float]]] = {case: [] for case in args.cases}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    controller_calls = -(-CONTROLLER_ROUNDS // args.steps) if "controller" in steps else 0
    for _ in range(args.steps):
        for case in step_cases:
            times[case].append(_timed(steps[case], device))
        times.get("controller", []).extend(_timed(steps["controller"], device) for _ in range(controller_calls))
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
    keys = ("C", "layers", "batch", "size", "steps", "warmup", "device", "seed", "threads", "partial_k", "nb201_cells",
            *REFERENCE_CASES.values())
    return [item for key in keys if getattr(args, key) is not None
            for item in (f"--{key.replace('_', '-')}", str(getattr(args, key)))]


def summarize(args: argparse.Namespace, path: dict[str, list[int]], cases: dict[str, dict]) -> dict:
    """Ratios, targets and settings around the raw per-case results."""
    t = {case: result["median_s"] for case, result in cases.items()}
    ratios = {key: t[top] / t[bottom] for key, (top, bottom) in RATIOS.items() if top in t and bottom in t}
    memory = {case: max(result["peak_memory_mib"], MIN_MEMORY_MIB) for case, result in cases.items()
              if "peak_memory_mib" in result}
    if "partial" in memory:
        ratios.update({f"partial_memory_over_{case}": memory["partial"] / memory[case]
                       for case in MEMORY_RATIO_CASES if case in memory})
    met = {key: (ratios[key] <= bound if op == "<=" else ratios[key] >= bound) for key, (op, bound) in TARGETS.items()
           if key in ratios}
    settings = {key: getattr(args, key) for key in ("space", "C", "layers", "batch", "size", "steps", "warmup",
                                                     "device", "seed", "partial_k", "nb201_cells", "cases")}
    settings["threads"] = args.threads or torch.get_num_threads()
    paths = {**{g: [DARTS_OPS[k] for k in path[g]] for g in GROUPS},
             "nb201": path_to_arch({NB201_GROUP: torch.tensor(path["nb201"])})}
    return {"settings": settings, "path": paths, "cases": cases,
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
    parser.add_argument("--nb201-cells", type=int, default=5, help="cells per stage of the nb201 cases")
    parser.add_argument("--cases", default=None, help=f"comma-separated cases to run, of {','.join(CASES)} (default: "
                        "all, the references where their folders are given)")
    parser.add_argument("--reference-darts", type=FilePath, default=None, metavar="DIR",
                        help="a quark0/darts checkout's cnn/ folder: time its search Network beside ours")
    parser.add_argument("--reference-pcdarts", type=FilePath, default=None, metavar="DIR",
                        help="a yuhuixu1993/PC-DARTS checkout: time its search Network (K=4) beside ours")
    parser.add_argument("--json", type=FilePath, default=None, help="write the report here")
    parser.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)
    parser.add_argument("--case-path", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for key in ("C", "layers", "batch", "size", "steps", "partial_k", "nb201_cells"):
        if getattr(args, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1, got {getattr(args, key)}")
    given = [case for case, option in REFERENCE_CASES.items() if getattr(args, option) is not None]
    if args.cases is None:
        args.cases = [*OWN_STEP_CASES, *given, "controller"]
    else:
        args.cases = [case for case in args.cases.split(",") if case]
    unknown = [case for case in args.cases if case not in CASES]
    if unknown or not args.cases:
        raise UserError(f"--cases takes a comma-separated list of {', '.join(CASES)}; got {unknown or 'none'}")
    for case, option in REFERENCE_CASES.items():
        folder, flag = getattr(args, option), f"--{option.replace('_', '-')}"
        if case in args.cases and folder is None:
            raise UserError(f"case {case} needs {flag} DIR, the reference checkout's folder")
        if folder is not None and not (folder / "model_search.py").is_file():
            raise UserError(f"{flag} {folder} has no model_search.py; pass the reference checkout's folder that "
                            "holds it (quark0/darts: cnn/)")
    if "ref_pcdarts" in args.cases and args.partial_k != REFERENCE_PARTIAL_K:
        raise UserError(f"the PC-DARTS reference hard-codes K={REFERENCE_PARTIAL_K}; use --partial-k "
                        f"{REFERENCE_PARTIAL_K} with --reference-pcdarts")
    check_partial_k(args.C, args.partial_k)
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
        print(f"timing {', '.join(args.cases)} interleaved ...", file=sys.stderr, flush=True)
        cases = time_cases(args, path)
        for case in args.cases:
            print(f"peak memory of {case} ...", file=sys.stderr, flush=True)
            cases[case]["peak_memory_mib"] = memory_in_subprocess(case, args, path)
        report = summarize(args, path, cases)
        print_table(report)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
