"""Genotype: the discrete architecture of a DARTS-style cell pair.

Three forms, all round-tripping to an equal :class:`Genotype`:

* the DARTS string ``Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=range(2, 6), ...)``, read by
  :func:`parse_genotype` (an ``ast`` walker, never ``eval``);
* the JSON dict ``{"normal": [["sep_conv_3x3", 0], ...], "normal_concat": [2, 3, 4, 5], ...}``;
* a record ``{"genotype": <dict>, "space": ..., "source": ..., "search": {...}, "metrics": {...}}``
  stored as a file; published ones ship as ``genotypes/NAME.json`` (see :func:`load_genotype`).

Parsed genotypes hold lists of ``(op, int)`` tuples and concat lists of ints.
"""
from __future__ import annotations

import ast
import numbers
import os
from pathlib import Path
from typing import Any, Collection, Mapping, NamedTuple, Union

import genotypes as _shipped
from nas.core.errors import UserError
from nas.core.records import read_record
from search_spaces.ops import canonical_op_name

CELLS: tuple[str, ...] = ("normal", "reduce")
FIELDS: tuple[str, ...] = ("normal", "normal_concat", "reduce", "reduce_concat")
SHIPPED_DIR = Path(_shipped.__file__).resolve().parent
_EXPECTED_FORM = ("Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=range(2, 6), "
                  "reduce=[...], reduce_concat=range(2, 6))")
_MAX_RANGE = 1024

OpSets = Union[Collection[str], Mapping[str, Collection[str]]]


def _format_concat(concat: Any) -> str:
    """`range(a, b)` for a contiguous ascending concat, else a list literal."""
    values = [int(i) for i in concat]
    if values and values == list(range(values[0], values[-1] + 1)):
        return f"range({values[0]}, {values[-1] + 1})"
    return repr(values)


def _format_cell(pairs: Any) -> str:
    return "[" + ", ".join(f"({str(op)!r}, {int(index)})" for op, index in pairs) + "]"


class Genotype(NamedTuple):
    """Per cell type, (op, input index) pairs (two per node) and the node indices concatenated at the output.

    Input index 0 is c_{k-2}, 1 is c_{k-1}, j >= 2 is intermediate node j-2.
    """

    normal: list[tuple[str, int]]
    normal_concat: list[int]
    reduce: list[tuple[str, int]]
    reduce_concat: list[int]

    def __repr__(self) -> str:
        return (
            f"Genotype(normal={_format_cell(self.normal)}, normal_concat={_format_concat(self.normal_concat)}, "
            f"reduce={_format_cell(self.reduce)}, reduce_concat={_format_concat(self.reduce_concat)})"
        )

    def to_dict(self) -> dict[str, list]:
        """The JSON form: pairs as `[op, index]` lists, concats as int lists."""
        return {
            field: [[str(op), int(index)] for op, index in value] if field in CELLS else [int(i) for i in value]
            for field, value in zip(FIELDS, self)
        }


to_dict = Genotype.to_dict


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _pair(item: Any, cell: str, k: int) -> tuple[str, int]:
    """Check one (op, input index) pair and return it as a (str, int) tuple."""
    if not (isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[0], str) and _is_int(item[1])):
        raise UserError(f"{cell} pair {k} must be (op name, input index) with a str and an int, got {item!r}")
    return item[0], int(item[1])


def _canonical_pairs(value: Any, cell: str) -> list[tuple[str, int]]:
    """Checked pairs with op names in registry spelling (`conv 3x3` -> `conv_3x3`)."""
    if not isinstance(value, (list, tuple)):
        raise UserError(f"{cell} must be a list of (op, input index) pairs, got {value!r}")
    pairs = []
    for k, item in enumerate(value):
        op, index = _pair(item, cell, k)
        try:
            pairs.append((canonical_op_name(op), index))
        except ValueError as err:
            raise UserError(f"{cell} pair {k}: {err}") from None
    return pairs


def _concat_list(value: Any, field: str) -> list[int]:
    if not isinstance(value, (list, tuple, range)) or not all(_is_int(i) for i in value):
        raise UserError(f"{field} must be a list of ints or range(a, b), got {value!r}")
    return [int(i) for i in value]


def _build(fields: Mapping[str, Any], what: str) -> Genotype:
    """Genotype from a field mapping (parsed string or JSON dict), normalised and validated."""
    missing = [f for f in FIELDS if f not in fields]
    unknown = [f for f in fields if f not in FIELDS]
    if missing or unknown:
        problems = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"unknown {', '.join(unknown)}"] if unknown else [])
        raise UserError(f"{what} fields: {'; '.join(problems)}; expected exactly {', '.join(FIELDS)}")
    genotype = Genotype(
        normal=_canonical_pairs(fields["normal"], "normal"),
        normal_concat=_concat_list(fields["normal_concat"], "normal_concat"),
        reduce=_canonical_pairs(fields["reduce"], "reduce"),
        reduce_concat=_concat_list(fields["reduce_concat"], "reduce_concat"),
    )
    validate_genotype(genotype, steps=max(1, (len(genotype.normal) + 1) // 2))
    return genotype


def validate_genotype(genotype: Genotype, steps: int = 4, ops: OpSets | None = None) -> None:
    """Raise UserError unless each cell has `steps` nodes of 2 in-range inputs, a valid concat and only allowed ops.

    `ops` is one set of op names for both cells, or a mapping cell name -> ops (cells not in it are unchecked).
    """
    for cell in CELLS:
        pairs = getattr(genotype, cell)
        if len(pairs) != 2 * steps:
            raise UserError(f"{cell} cell has {len(pairs)} (op, input) pairs, expected {2 * steps} "
                            f"(two per intermediate node, steps={steps})")
        allowed = ops.get(cell) if isinstance(ops, Mapping) else ops
        for k, item in enumerate(pairs):
            op, index = _pair(item, cell, k)
            node = k // 2
            if not 0 <= index < node + 2:
                raise UserError(f"{cell} cell node {node} (pair {k}): input index {index} is out of range; node {node} "
                                f"takes inputs 0..{node + 1} (0 = c_{{k-2}}, 1 = c_{{k-1}}, j >= 2 = node j-2)")
            if allowed is not None and op not in allowed:
                raise UserError(f"op {op!r} is not in this space's {cell} ops: {', '.join(sorted(allowed))}")
        field = f"{cell}_concat"
        concat = _concat_list(getattr(genotype, field), field)
        bad = [i for i in concat if not 2 <= i < steps + 2]
        if not concat or bad or len(set(concat)) != len(concat):
            raise UserError(f"{field} {concat} is invalid: it must list distinct intermediate nodes 2..{steps + 1}, "
                            f"for example range(2, {steps + 2})")


def genotype_from_dict(data: Any) -> Genotype:
    """Genotype from its JSON form (see :meth:`Genotype.to_dict`); malformed structure raises UserError."""
    if not isinstance(data, dict):
        raise UserError(f"a genotype must be a JSON object with keys {', '.join(FIELDS)}, got {type(data).__name__}")
    return _build(data, "genotype")


# ---------------------------------------------------------------- string form (ast walker, no eval)

def _snippet(node: ast.AST) -> str:
    text = ast.unparse(node).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def _literal(node: ast.AST) -> Any:
    """The value of an allowed literal node: str/int constants, lists, tuples and range(...) of ints."""
    if isinstance(node, ast.Constant) and (isinstance(node.value, str) or _is_int(node.value)):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant) \
            and _is_int(node.operand.value):
        return -node.operand.value
    if isinstance(node, ast.List):
        return [_literal(item) for item in node.elts]
    if isinstance(node, ast.Tuple):
        return tuple(_literal(item) for item in node.elts)
    if isinstance(node, ast.Call):
        _check_callee(node, "range")
        args = [_literal(arg) for arg in node.args]
        if node.keywords or not 1 <= len(args) <= 3 or not all(_is_int(a) for a in args):
            raise UserError(f"range takes 1 to 3 int arguments, got {_snippet(node)}")
        try:
            span = range(*args)
        except ValueError as err:
            raise UserError(f"bad {_snippet(node)}: {err}") from None
        if len(span) > _MAX_RANGE:
            raise UserError(f"{_snippet(node)} is too long for a concat (over {_MAX_RANGE} values)")
        return list(span)
    if isinstance(node, ast.Attribute):
        raise UserError(f"attribute access is not allowed in a genotype string: {_snippet(node)}")
    if isinstance(node, ast.Name):
        raise UserError(f"name {node.id!r} is not allowed in a genotype string; quote op names, e.g. 'sep_conv_3x3'")
    raise UserError(f"unsupported expression in a genotype string: {_snippet(node)}; "
                    "only str and int constants, lists, tuples and range(...) are allowed")


def _check_callee(node: ast.Call, name: str) -> None:
    """Refuse any call but `name(...)`, attribute calls such as `__import__('os').system(...)` included."""
    if isinstance(node.func, ast.Attribute):
        raise UserError(f"attribute access is not allowed in a genotype string: {_snippet(node.func)}")
    if not (isinstance(node.func, ast.Name) and node.func.id == name):
        raise UserError(f"call {_snippet(node.func)}(...) is not allowed here; a genotype string calls only "
                        "Genotype(...) at the top and range(...) for concats")


def parse_genotype(text: str) -> Genotype:
    """Parse the DARTS string form without eval; op names are normalised, anything else raises UserError."""
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as err:
        raise UserError(f"genotype string is not valid syntax ({err.msg} at line {err.lineno} column {err.offset}); "
                        f"expected {_EXPECTED_FORM}") from None
    call = tree.body
    if not isinstance(call, ast.Call):
        raise UserError(f"a genotype string must be one Genotype(...) call, got {_snippet(call)}; "
                        f"expected {_EXPECTED_FORM}")
    _check_callee(call, "Genotype")
    if call.args or any(kw.arg is None for kw in call.keywords):
        raise UserError(f"Genotype(...) takes keyword arguments only: {', '.join(f + '=' for f in FIELDS)}")
    names = [kw.arg for kw in call.keywords]
    duplicate = sorted({n for n in names if names.count(n) > 1})
    if duplicate:
        raise UserError(f"Genotype(...) repeats field {', '.join(duplicate)}; give each field once")
    return _build({kw.arg: _literal(kw.value) for kw in call.keywords}, "Genotype(...)")


def _genotype_from_file(path: Path) -> Genotype:
    record = read_record(path)
    try:
        return genotype_from_dict(record["genotype"])
    except UserError as err:
        raise UserError(f"{path}: {err}") from None


def shipped_genotype_names() -> list[str]:
    """Names of the genotype records shipped in genotypes/ (case-sensitive)."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.json"))


def load_genotype(spec: str) -> Genotype:
    """Genotype from a shipped name (e.g. PDARTS), a record JSON path, or a `Genotype(...)` string.

    Anything else with a parenthesis goes to :func:`parse_genotype`, so its refusal says what is wrong.
    """
    spec = spec.strip()
    if spec.startswith("Genotype"):
        return parse_genotype(spec)
    names = shipped_genotype_names()
    if spec in names:
        return _genotype_from_file(SHIPPED_DIR / f"{spec}.json")
    if spec.endswith(".json") or os.path.exists(spec):
        return _genotype_from_file(Path(spec))
    if "(" in spec:
        return parse_genotype(spec)
    near = [n for n in names if n.lower() == spec.lower()]
    hint = f" (names are case-sensitive: did you mean {near[0]}?)" if near else ""
    raise UserError(f"unknown genotype {spec!r}{hint}; give a shipped name ({', '.join(names)}), "
                    "a record .json path or a 'Genotype(...)' string")
