"""A supernet's single-path step computes exactly its stand-alone child: the NB201 supernet on a path against the
benchmark's network of that cell, the DARTS supernet on a path against the FixedNetwork of its non-none edges, both
given the supernet's weights (affine BatchNorms of the child at their initial 1 and 0)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from search_spaces.darts.geometry import CellSpec
from search_spaces.darts.networks import FixedNetwork, SearchNetwork
from search_spaces.nb201 import GROUP, NB201_OPS, NB201Network, build_network, path_to_arch
from search_spaces.ops import DARTS_OPS

# NB201: edge 1 and 5 run `none`, so node 2 sums one edge and node 3 two.
NB201_PATH = [NB201_OPS.index(op) for op in ("skip_connect", "none", "nor_conv_3x3", "avg_pool_3x3", "nor_conv_1x1",
                                             "none")]
# DARTS (14 edges, nodes reading 2, 3, 4, 5 inputs): every op once, `none` on edges 0, 5 and 13, node 0 on one edge.
DARTS_PATH = [0, 4, 1, 2, 3, 0, 5, 6, 7, 4, 3, 2, 1, 0]


def _load_renamed(child: nn.Module, supernet: nn.Module, rename) -> None:
    """Give the child the supernet's tensors under renamed keys; child-only tensors (affine BN) keep their init."""
    source = supernet.state_dict()
    state = child.state_dict()
    copied = {key: source[rename(key)] for key in state if rename(key) in source}
    assert len(copied) >= len(state) // 2  # the renaming found the ops
    child.load_state_dict({**state, **copied})


def _assert_same_step(supernet: nn.Module, child: nn.Module, forward_super, forward_child, x: torch.Tensor) -> None:
    y = torch.arange(len(x)) % 10
    out_super, out_child = forward_super(x), forward_child(x)
    torch.testing.assert_close(out_super, out_child, rtol=1e-5, atol=1e-6)
    F.cross_entropy(out_super, y).backward()
    F.cross_entropy(out_child, y).backward()
    torch.testing.assert_close(supernet.classifier.weight.grad, child.classifier.weight.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(supernet.stem[0].weight.grad, child.stem[0].weight.grad, rtol=1e-4, atol=1e-5)


def test_nb201_path_step_is_its_stand_alone_network(one_thread) -> None:
    torch.manual_seed(0)
    supernet = NB201Network({GROUP: [list(NB201_OPS) for _ in NB201_PATH]}, C=4, cells_per_stage=2)
    path = {GROUP: torch.tensor(NB201_PATH)}
    child = build_network(path_to_arch(path), C=4, cells_per_stage=2)

    def rename(key: str) -> str:  # blocks.B.edges.E.0.rest -> blocks.B.edges.E.<path[E]>.rest
        parts = key.split(".")
        if len(parts) > 4 and parts[2] == "edges":
            parts[4] = str(NB201_PATH[int(parts[3])])
        return ".".join(parts)

    _load_renamed(child, supernet, rename)
    x = torch.randn(6, 3, 8, 8)
    _assert_same_step(supernet, child, lambda x: supernet(x, path=path), child, x)
    with torch.no_grad():  # the child is the same class: check the cells' sums against one written out here
        torch.testing.assert_close(supernet(x, path=path), _nb201_reference(supernet, x), rtol=1e-5, atol=1e-6)


def _nb201_reference(net: NB201Network, x: torch.Tensor) -> torch.Tensor:
    """Node 1 = e0(n0); node 2 = e1(n0) + e2(n1); node 3 = e3(n0) + e4(n1) + e5(n2), with the path's ops."""
    x = net.stem(x.contiguous(memory_format=torch.channels_last))
    for block in net.blocks:
        if not hasattr(block, "edges"):
            x = block(x)
            continue
        op = [block.edges[e][k] for e, k in enumerate(NB201_PATH)]
        n1 = op[0](x)
        x = op[3](x) + op[4](n1)  # edge 5 (from node 2) is `none`, so node 2 does not reach node 3
    return net.classifier(net.head(x))


def test_darts_path_step_is_its_stand_alone_network(one_thread) -> None:
    torch.manual_seed(0)
    kept = {group: [list(DARTS_OPS) for _ in DARTS_PATH] for group in ("normal", "reduce")}
    supernet = SearchNetwork(4, 10, 3, 3, kept)
    nodes, where, start = [], {}, 0  # where: child key prefix (node, position) -> supernet edge
    for i in range(4):
        node = []
        for j in range(2 + i):
            if DARTS_PATH[start + j]:
                where[(i, len(node))] = start + j
                node.append((DARTS_OPS[DARTS_PATH[start + j]], j))
        nodes.append(node)
        start += 2 + i
    spec = CellSpec(nodes, [2, 3, 4, 5])
    child = FixedNetwork({"normal": spec, "reduce": spec}, 4, 10, 3, 3, affine=False, pool_bn=True)

    def rename(key: str) -> str:  # cells.C.node_ops.N.P.rest -> cells.C.edges.E.<op index>.rest
        parts = key.split(".")
        if len(parts) > 4 and parts[2] == "node_ops":
            edge = where[(int(parts[3]), int(parts[4]))]
            parts[2:5] = ["edges", str(edge), str(DARTS_PATH[edge])]
        return ".".join(parts)

    _load_renamed(child, supernet, rename)
    path = {group: torch.tensor(DARTS_PATH) for group in ("normal", "reduce")}
    _assert_same_step(supernet, child, lambda x: supernet(x, path=path), lambda x: child(x)[0],
                      torch.randn(4, 3, 8, 8))
