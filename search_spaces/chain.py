"""The chain SuperNet of the one-shot study (Bender et al. 2018 style), for small images such as MNIST.

stem (3x3 conv to C filters + BN) -> N choice blocks -> head (ReLU, average pool to a g x g grid, linear;
optionally hidden linear layers, each followed by ReLU and dropout, before the classifier: the seed's
fixed-block head).
Each choice block holds K candidate ops from the ops registry, all at stride 1 (they keep C, H and W).
The head pools to a 4 x 4 grid by default; g = 1 is global pooling, which with 8 filters leaves the
classifier 8 features (too weak a signal to rank subnets by: docs/study-oneshot-mnist.md has the measurement).

Weight sharing between the K alternatives of a block:
- ``sum``: the block output is the sum of its ops' outputs, each masked by the choice; only the
  chosen ops are computed, so the next layer is fully shared by every subnet.
- ``concat``: the ops' outputs are concatenated channel-wise in fixed slots (unchosen slots are
  zeros, only chosen ops are computed) and a 1x1 conv maps the K*C channels back to C; that conv
  always sees the full concatenated width, so only its columns of the chosen slots get gradient.

A forward pass takes a *path*: one entry per block, each an op index or a collection of op indices
(several ops on at once, as path dropout produces). ``None`` is the all-on reference network (every
op of every block active), the reference of the KL study.

Stand-alone subnets (:class:`StandaloneNet`) have the same stem and head and just the chosen op in
each block, whatever the sharing mode: in ``concat`` mode the 1x1 conv over a single slot is a
weight-sharing device, not part of the architecture, so it is left out. Stand-alone accuracy is then
a property of the choice alone and one stand-alone run serves both sharing modes.

Weights move from a trained stand-alone net into a supernet in two ways:
- :func:`plant`: the stem, the head and the chosen op of every block are copied (optionally frozen:
  no gradient, BatchNorm statistics kept); in ``concat`` mode the 1x1 conv's columns of the planted
  slot are set to the identity (frozen: they get no gradient). The planted path then computes exactly
  the stand-alone net in both modes. The other ops, and the other columns of the 1x1 convs, keep their
  fresh init.
- :func:`warm_start`: the stem is copied, and every k x k conv choice of block b takes the source's
  block-b conv resized to k x k: a smaller kernel is centre-padded with zeros (a 3x3 put into a 5x5
  computes the same function), a larger one is centre-cropped (a 5x5 into a 3x3 keeps its inner
  3x3 taps); its BatchNorm (affine weights and running statistics) is copied as is. Where the
  source's block b has no conv (pool, skip), the nearest block that has one is used (the earlier on
  a tie). The other op kinds and the head keep their fresh init, and so does everything but the
  stem when the source has no conv at all.
"""
from __future__ import annotations

import itertools
from typing import Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from nas.core.errors import UserError
from search_spaces.ops import ReLUConvBN, build_op, canonical_op_name

Choice = tuple[int, ...]  # one op index per block: a subnet
BlockChoices = Sequence[Union[int, Sequence[int]]]  # per block an op index or several op indices

DEFAULT_OPS: tuple[str, ...] = ("conv_3x3", "conv_5x5")
SHARING_MODES: tuple[str, ...] = ("sum", "concat")
HEAD_GRID = 4


def validate_ops(ops: Sequence[str]) -> tuple[str, ...]:
    """Canonical names of candidate ops for a choice block; UserError when unknown, `none` or repeated."""
    if not ops:
        raise UserError("a choice block needs at least one candidate op")
    try:
        names = tuple(canonical_op_name(op) for op in ops)
    except ValueError as err:
        raise UserError(str(err)) from None
    if "none" in names:
        raise UserError("`none` cannot be a chain candidate: it would cut the chain")
    if len(set(names)) != len(names):
        raise UserError(f"candidate ops repeat: {', '.join(names)}")
    return names


def enumerate_choices(num_blocks: int, num_ops: int) -> list[Choice]:
    """Every subnet of a chain of `num_blocks` blocks with `num_ops` candidates each, in lexicographic order."""
    return list(itertools.product(range(num_ops), repeat=num_blocks))


def _stem(in_channels: int, C: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, C, 3, padding=1, bias=False), nn.BatchNorm2d(C))


def check_head(grid: int, hidden: Sequence[int], dropout: float) -> None:
    """UserError unless the grid and hidden widths are positive and dropout lies in [0, 1) with hidden layers."""
    if grid <= 0:
        raise UserError(f"the head's pooling grid must be positive, got {grid}")
    if any(width <= 0 for width in hidden):
        raise UserError(f"the head's hidden widths must be positive, got {list(hidden)}")
    if not 0.0 <= dropout < 1.0 or (dropout and not hidden):
        raise UserError(f"head dropout must lie in [0, 1) and needs hidden layers, got {dropout} with {list(hidden)}")


def _head(C: int, num_classes: int, grid: int, hidden: Sequence[int] = (), dropout: float = 0.0) -> nn.Sequential:
    """ReLU, average pool to grid x grid, then per width in `hidden` Linear-ReLU-Dropout, then the classifier."""
    check_head(grid, hidden, dropout)
    layers: list[nn.Module] = [nn.ReLU(), nn.AdaptiveAvgPool2d(grid), nn.Flatten()]
    width = C * grid * grid
    for out in hidden:
        layers += [nn.Linear(width, out), nn.ReLU(), nn.Dropout(dropout)]
        width = out
    return nn.Sequential(*layers, nn.Linear(width, num_classes))


class ChoiceBlock(nn.Module):
    """K candidate ops for one position of the chain, combined by `sum` or `concat` weight sharing."""

    def __init__(self, C: int, ops: Sequence[str], sharing: str):
        super().__init__()
        if sharing not in SHARING_MODES:
            raise UserError(f"unknown sharing {sharing!r}; choose one of {', '.join(SHARING_MODES)}")
        self.C = C
        self.sharing = sharing
        self.ops = nn.ModuleList(build_op(name, C, 1, affine=True) for name in ops)
        self.proj = nn.Conv2d(len(ops) * C, C, 1, bias=False) if sharing == "concat" else None

    def forward(self, x: torch.Tensor, active: Sequence[int]) -> torch.Tensor:
        """Run only the ops in `active` and combine them with the block's sharing rule."""
        if not active:
            raise ValueError("a choice block needs at least one active op")
        outputs = {i: self.ops[i](x) for i in active}
        if self.proj is None:
            return sum(outputs.values())
        zeros = x.new_zeros(x.shape[0], self.C, *x.shape[2:])
        return self.proj(torch.cat([outputs.get(i, zeros) for i in range(len(self.ops))], dim=1))


class ChainSuperNet(nn.Module):
    """stem -> `num_blocks` choice blocks over `ops` -> head; forward(x, path) runs one subnet or several ops."""

    def __init__(self, in_channels: int, num_classes: int, C: int = 8, num_blocks: int = 2,
                 ops: Sequence[str] = DEFAULT_OPS, sharing: str = "sum", head_grid: int = HEAD_GRID,
                 head_hidden: Sequence[int] = (), head_dropout: float = 0.0):
        super().__init__()
        if C <= 0 or num_blocks <= 0:
            raise UserError(f"filters and blocks must be positive, got {C} and {num_blocks}")
        self.op_names = validate_ops(ops)
        self.sharing = sharing
        self.stem = _stem(in_channels, C)
        self.blocks = nn.ModuleList(ChoiceBlock(C, self.op_names, sharing) for _ in range(num_blocks))
        self.head = _head(C, num_classes, head_grid, head_hidden, head_dropout)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_ops(self) -> int:
        return len(self.op_names)

    def choices(self) -> list[Choice]:
        """Every subnet of this supernet."""
        return enumerate_choices(self.num_blocks, self.num_ops)

    def _active_sets(self, path: BlockChoices | None) -> list[list[int]]:
        if path is None:
            return [list(range(self.num_ops))] * self.num_blocks
        if len(path) != self.num_blocks:
            raise ValueError(f"a path needs one entry per block ({self.num_blocks}), got {len(path)}")
        sets = [[entry] if isinstance(entry, int) else sorted(set(entry)) for entry in path]
        if any(i < 0 or i >= self.num_ops for ops in sets for i in ops):
            raise ValueError(f"op indices must lie in [0, {self.num_ops}), got {path}")
        return sets

    def forward(self, x: torch.Tensor, path: BlockChoices | None = None) -> torch.Tensor:
        """Logits of the subnet `path` (a choice tuple, or per block several op indices); None runs all ops."""
        x = self.stem(x)
        for block, active in zip(self.blocks, self._active_sets(path)):
            x = block(x, active)
        return self.head(x)


class StandaloneNet(nn.Module):
    """The subnet `choice` of a chain space as a plain network: the stem, the chosen op per block, the head."""

    def __init__(self, choice: Choice, in_channels: int, num_classes: int, C: int = 8,
                 ops: Sequence[str] = DEFAULT_OPS, head_grid: int = HEAD_GRID, head_hidden: Sequence[int] = (),
                 head_dropout: float = 0.0):
        super().__init__()
        self.op_names = validate_ops(ops)
        if any(i < 0 or i >= len(self.op_names) for i in choice):
            raise ValueError(f"choice {choice} has op indices outside [0, {len(self.op_names)})")
        self.choice = tuple(choice)
        self.stem = _stem(in_channels, C)
        self.blocks = nn.Sequential(*(build_op(self.op_names[i], C, 1, affine=True) for i in choice))
        self.head = _head(C, num_classes, head_grid, head_hidden, head_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


def sample_path_dropout(num_blocks: int, num_ops: int, drop_prob: float, generator: torch.Generator) -> list[list[int]]:
    """Per block, the ops that survive path dropout: each dropped with `drop_prob`, at least one kept."""
    path = []
    for _ in range(num_blocks):
        keep = (torch.rand(num_ops, generator=generator) >= drop_prob).nonzero().flatten().tolist()
        path.append(keep or [int(torch.randint(num_ops, (1,), generator=generator))])
    return path


def parse_choice(names: Sequence[str], ops: Sequence[str], num_blocks: int) -> Choice:
    """The subnet named by one op per block (any accepted spelling); UserError when it is not in the space."""
    if len(names) != num_blocks:
        raise UserError(f"a subnet needs one op per block ({num_blocks}), got {len(names)}: {' '.join(names)}")
    space = validate_ops(ops)
    choice = []
    for name in names:
        canonical = validate_ops([name])[0]
        if canonical not in space:
            raise UserError(f"{canonical} is not a candidate op; candidates: {', '.join(space)}")
        choice.append(space.index(canonical))
    return tuple(choice)


def _check_compatible(supernet: ChainSuperNet, net: StandaloneNet) -> None:
    if net.op_names != supernet.op_names or len(net.blocks) != supernet.num_blocks:
        raise ValueError(f"a {len(net.blocks)}-block net over {net.op_names} does not fit a "
                         f"{supernet.num_blocks}-block supernet over {supernet.op_names}")


def freeze(module: nn.Module) -> None:
    """No gradient for the module's parameters, and its BatchNorm running statistics stop moving (momentum 0)."""
    module.requires_grad_(False)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.0


def _plant_identity_slot(proj: nn.Conv2d, slot: int, frozen: bool) -> None:
    """Concat sharing: the 1x1 conv `proj` passes slot `slot` through unchanged (identity columns), as the
    stand-alone net has no such conv; frozen, those columns get zero gradient (a hook), while the other slots'
    columns keep their fresh init and train."""
    C = proj.out_channels
    cols = slice(slot * C, (slot + 1) * C)
    with torch.no_grad():
        proj.weight[:, cols] = torch.eye(C, dtype=proj.weight.dtype)[:, :, None, None]
    if frozen:
        mask = torch.ones_like(proj.weight)
        mask[:, cols] = 0
        proj.weight.register_hook(lambda grad: grad * mask)


def plant(supernet: ChainSuperNet, net: StandaloneNet, frozen: bool = False) -> list[nn.Module]:
    """Copy `net`'s stem, head and chosen op of every block into the supernet (in ``concat`` sharing also an
    identity for the op's slot of the 1x1 conv), so the planted path computes exactly `net`; return the planted
    modules.

    With `frozen` they are frozen (see :func:`freeze`), so the planted path keeps the stand-alone weights.
    """
    _check_compatible(supernet, net)
    planted = [supernet.stem, supernet.head, *(block.ops[i] for block, i in zip(supernet.blocks, net.choice))]
    sources = [net.stem, net.head, *net.blocks]
    for target, source in zip(planted, sources):
        target.load_state_dict(source.state_dict())
        if frozen:
            freeze(target)
    for block, i in zip(supernet.blocks, net.choice):
        if block.proj is not None:
            _plant_identity_slot(block.proj, i, frozen)
    return planted


def resize_kernel(weight: torch.Tensor, kernel: int) -> torch.Tensor:
    """A conv weight [O, I, s, s] as [O, I, kernel, kernel]: zero-padded around it when larger, its centre
    when smaller (s and kernel both odd, so the centres line up)."""
    size = weight.shape[-1]
    if (size - kernel) % 2:
        raise ValueError(f"cannot centre a {size}x{size} kernel in a {kernel}x{kernel} one")
    margin = abs(size - kernel) // 2
    if kernel >= size:
        return F.pad(weight, (margin,) * 4)
    return weight[..., margin:size - margin, margin:size - margin].clone()


def warm_start(supernet: ChainSuperNet, net: StandaloneNet) -> dict[int, list[str]]:
    """Initialise the supernet's stem and conv choices from `net` (see the module notes); return, per block,
    the ops that were initialised."""
    _check_compatible(supernet, net)
    supernet.stem.load_state_dict(net.stem.state_dict())
    convs = [b for b, op in enumerate(net.blocks) if isinstance(op, ReLUConvBN)]
    done: dict[int, list[str]] = {}
    for b, block in enumerate(supernet.blocks if convs else []):
        conv, bn = net.blocks[min(convs, key=lambda s: (abs(s - b), s))].body  # the nearest conv, earlier on ties
        for name, op in zip(supernet.op_names, block.ops):
            if isinstance(op, ReLUConvBN):
                op.body[0].weight.data.copy_(resize_kernel(conv.weight.data, op.body[0].kernel_size[0]))
                op.body[1].load_state_dict(bn.state_dict())
                done.setdefault(b, []).append(name)
    return done
