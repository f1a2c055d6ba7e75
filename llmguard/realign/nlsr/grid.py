"""``--search GRID``: ``"alpha=0.5,0.9;budget=0.25,0.5"`` → the points, as NLSR option fields.

A grid key is a searchable field of :class:`~llmguard.realign.nlsr.options.NlsrOptions` spelled
like its flag (``mask-ratio``); its values are parsed with the field's command-line type, so the
grid cannot disagree with the flags. Torch-free: options validation parses the grid.
"""

from __future__ import annotations

import itertools
from typing import Any

from llmguard.errors import UsageError
from llmguard.options import optional_inner

MAX_POINTS = 64

#: ``--search auto``: the documented DEV grid for the kind of fine-tune, the same for every model:
#: single ΔW weights in every module (element and row units left a LoRA fine-tune 39–100 %
#: harmful on the testbed), over the mask ratio, at the paper's amplification for a LoRA
#: fine-tune (its low-rank change needs a small mask: 0.1–0.2 across testbed seeds) and at the
#: paper's and a stronger amplification with larger masks for a full fine-tune (its change is
#: spread over every weight). Measured on the testbed, seeds 0-4: docs/realign.md ("Results on
#: the testbed").
AUTO_GRIDS = {
    "lora": "unit=weight;budget=1.0;alpha=0.9;mask-ratio=0.1,0.15,0.2",
    "full": "unit=weight;budget=1.0;alpha=0.9,1.5;mask-ratio=0.35,0.45",
}


#: ``--search auto`` with the task guard (``--task-data``) also lets DEV choose the guard's
#: tolerance: 2 points on the training pairs (the default) reverts until the task is nearly whole,
#: 5 stops earlier and keeps more of the safety; the DEV task window decides whether that costs too
#: much. Points that differ only here share the analysis (a selection-only field).
GUARDED_AXIS = "task-tolerance=2,5"


def resolve_grid(spec: str, finetuned: Any, guarded: bool = False) -> str:
    """``auto`` → the :data:`AUTO_GRIDS` entry for the fine-tune (a PEFT adapter directory is
    ``lora``, anything else ``full``), with :data:`GUARDED_AXIS` when the task guard is on; any
    other spec unchanged."""
    if spec.strip() != "auto":
        return spec
    from pathlib import Path

    is_adapter = finetuned is not None and (Path(finetuned) / "adapter_config.json").is_file()
    grid = AUTO_GRIDS["lora" if is_adapter else "full"]
    return f"{grid};{GUARDED_AXIS}" if guarded else grid


def grid_keys() -> dict[str, tuple[str, Any]]:
    """Grid key (``mask-ratio``) → (field name, value parser)."""
    from llmguard.realign.nlsr.options import SEARCHABLE, NlsrOptions

    fields = {info.name: info for info in NlsrOptions.fields()}
    keys = {}
    for name in SEARCHABLE:
        info = fields[name]
        parse = info.spec.cli_type or optional_inner(info.type)[0]
        keys[info.flag.lstrip("-")] = (name, parse)
    return keys


def parse_grid(spec: str) -> list[dict[str, Any]]:
    """``"alpha=0.5,0.9;budget=0.25,0.5"`` -> the cartesian product as field dicts."""
    keys = grid_keys()
    names: list[str] = []
    axes: list[list[Any]] = []
    for part in (p.strip() for p in spec.split(";")):
        if not part:
            continue
        key, sep, values = part.partition("=")
        key = key.strip().lstrip("-").replace("_", "-")
        if not sep or key not in keys:
            raise UsageError(f"--search: {part!r}: expected KEY=V1,V2,... with KEY one of {', '.join(keys)}")
        name, parse = keys[key]
        if name in names:
            raise UsageError(f"--search: {key} is given twice")
        raw = [v.strip() for v in values.split(",") if v.strip()]
        if not raw:
            raise UsageError(f"--search: {key} has no values")
        try:
            axes.append([parse(v) for v in raw])
        except ValueError:
            raise UsageError(f"--search: {key}={values.strip()!r}: not a list of numbers") from None
        names.append(name)
    if not names:
        raise UsageError("--search: the grid is empty (e.g. --search 'alpha=0.5,0.9;budget=0.25,0.5')")
    points = [dict(zip(names, combo)) for combo in itertools.product(*axes)]
    if len(points) > MAX_POINTS:
        raise UsageError(f"--search: {len(points)} points; at most {MAX_POINTS} (each one is a full realign and evaluation)")
    return points


def describe(params: dict[str, Any]) -> str:
    """A grid point as ``alpha=0.5 mask-ratio=0.3`` (the grid's own spelling)."""
    return " ".join(f"{k.replace('_', '-')}={v}" for k, v in params.items())
