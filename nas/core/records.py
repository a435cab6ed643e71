"""Architecture records: the JSON files a search, a sweep or a study writes (`genotype.json`, `stages/stageN.json`,
`sweep.json`, the published `genotypes/NAME.json`), written atomically and read with one-line errors."""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

from nas.core.errors import UserError


def make_record(genotype: Any, space: str = "darts", source: str = "", search: dict | None = None,
                metrics: dict | None = None) -> dict:
    """An architecture record: the architecture (a DARTS Genotype, or anything with its `to_dict`, is stored in its
    JSON form; any other value is the space's record form of its own architecture), the space's name, the source,
    search details and metrics. Every record file of the framework (genotype.json, stage records, the published
    genotypes/) has these five keys."""
    arch = genotype.to_dict() if hasattr(genotype, "to_dict") else genotype
    return {"genotype": arch, "space": space, "source": source, "search": search or {}, "metrics": metrics or {}}


def _dumps(value: Any, level: int = 0) -> str:
    """Indented JSON that keeps each list of scalars (a pair, a concat) on one line."""
    pad, inner = "  " * level, "  " * (level + 1)
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(str(k))}: {_dumps(v, level + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, (list, tuple)) and any(isinstance(v, (dict, list, tuple)) for v in value):
        return "[\n" + ",\n".join(inner + _dumps(v, level + 1) for v in value) + f"\n{pad}]"
    return json.dumps(value)


def write_record(path: str | os.PathLike, record: dict) -> Path:
    """Write `record` as JSON atomically: temp file in the same folder, fsync, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = _dumps(record) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 & ~umask, like open(path, "w")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_record(path: str | os.PathLike) -> dict:
    """Read a record file; a missing file, invalid JSON or no "genotype" key raises UserError naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UserError(f"{path}: cannot read genotype record ({err.strerror or err}); check the path") from None
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno}); "
                        "fix the file or write it again") from None
    if not isinstance(record, dict) or "genotype" not in record:
        raise UserError(f'{path}: not a genotype record: expected a JSON object with a "genotype" key')
    return record
