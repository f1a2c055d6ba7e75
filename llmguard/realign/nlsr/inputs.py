"""Opening the NLSR inputs and deciding the unit: LoRA elements, ΔW rows or ΔW weights.

Elements (the official code) are meaningful only when the fine-tuned adapter *continues* the
aligned one: same base checkpoint, same modules, same ranks, and A factors still close to the
aligned ones (a fresh adapter starts from an unrelated random A). Everything else (a fresh
adapter, an adapter on the merged aligned model, full fine-tunes) is compared in ΔW space,
relative to the unaligned base, with output rows (neurons) as units by default. The units themselves are strategies in ``units``.
``weight`` units (single entries of ΔW, the unstructured unit) are only used when asked for: on full fine-tunes of the testbed they keep more of the task than rows
(docs/realign.md).
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from pathlib import Path

import torch

from llmguard.errors import InvalidInputError, UsageError
from llmguard.io.checkpoint import Checkpoint, open_checkpoint
from llmguard.io.lora import LoraAdapter, is_adapter_dir
from llmguard.io.sources import WeightSource, open_source
from llmguard.realign.arithmetic import LinearCombination, Term
from llmguard.realign.nlsr.reference import same_checkpoint
from llmguard.realign.nlsr.units import AUTO_UNIT, DELTA_UNITS, UNIT_CHOICES, UNITS, Unit

_LAYER = re.compile(r"\.(?:layers|h|blocks|layer)\.(\d+)\.")


@dataclass
class NlsrInputs:
    aligned: WeightSource | None
    finetuned: WeightSource
    base: Checkpoint
    prepared: WeightSource | None
    unit: str
    modules: list[str]  # checkpoint module names (no ``.weight``), model order
    continuation_cosine: float | None = None

    @property
    def strategy(self) -> Unit:
        return UNITS[self.unit]

    @property
    def finetune_is_adapter(self) -> bool:
        return self.finetuned.adapter is not None

    def mask_ratio(self, given: float | None) -> float:
        """``--mask-ratio``, or the unit's default for this kind of fine-tune."""
        return given if given is not None else self.strategy.default_mask_ratio(self.finetune_is_adapter)

    def budget(self, given: str | float | int | None, threshold: float | None) -> str | float | int | None:
        """``--budget``, or the unit's default (none when ``--threshold`` selects instead)."""
        return given if given is not None or threshold is not None else self.strategy.default_budget

    @property
    def output_is_adapter(self) -> bool:
        return self.strategy.output_is_adapter


def _open_adapter_source(path: Path, fallback_base: Path | None, allow_pickle: bool, role: str) -> WeightSource:
    """An adapter opened on its own local base when it names one, else on ``fallback_base``."""
    if not is_adapter_dir(path):
        return open_source(path, allow_pickle=allow_pickle, role=role)
    hint = LoraAdapter(path).base_model_name_or_path
    base = Path(hint) if hint and Path(hint).is_dir() else fallback_base
    if base is None:
        raise UsageError(f"{role} {path} is a LoRA adapter of {hint!r}, which is not a local directory; pass --base PATH")
    return open_source(path, base=base, allow_pickle=allow_pickle, role=role)


def natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def layer_of(name: str) -> int | None:
    match = _LAYER.search(f".{name}.")
    return int(match.group(1)) if match else None


def open_inputs(
    *,
    aligned: Path | None,
    finetuned: Path,
    base: Path | None,
    reference: Path | None,
    unit: str = "auto",
    allow_pickle: bool = False,
) -> NlsrInputs:
    if unit not in UNIT_CHOICES:
        raise UsageError(f"--unit {unit!r}: choose {', '.join(UNIT_CHOICES)}")
    if aligned is None and reference is None:
        raise UsageError("pass --aligned (or a prepared --reference)")
    aligned_src = None
    if aligned is not None:
        if is_adapter_dir(aligned):
            aligned_src = open_source(aligned, base=base, allow_pickle=allow_pickle, role="aligned")
        else:
            aligned_src = open_source(aligned, allow_pickle=allow_pickle, role="aligned")
    if aligned_src is not None and aligned_src.adapter is not None:
        base_ckpt = aligned_src.base
    elif base is not None:
        base_ckpt = open_checkpoint(base, allow_pickle=allow_pickle)
    else:
        raise UsageError("--base is required when --aligned is a full checkpoint (ΔW_aligned = aligned − base)")
    finetuned_src = _open_adapter_source(finetuned, base_ckpt.root, allow_pickle, "finetuned")
    prepared = _open_adapter_source(reference, base_ckpt.root, allow_pickle, "reference") if reference is not None else None

    base_src = WeightSource(base_ckpt.root, base_ckpt)
    terms = [Term(1.0, finetuned_src, "finetuned"), Term(1.0, base_src, "base")]
    if aligned_src is not None:
        terms.append(Term(1.0, aligned_src, "aligned"))
    if prepared is not None:
        terms.append(Term(1.0, prepared, "reference"))
    LinearCombination(terms)  # architecture, tensor shapes and adapter targets must agree (exit 3)

    delta_source = prepared if prepared is not None else aligned_src
    assert delta_source is not None
    chosen, cosine = _decide_unit(unit, finetuned_src, delta_source, base_ckpt)
    if not UNITS[chosen].delta_space:
        assert finetuned_src.adapter is not None
        names = list(finetuned_src.adapter.modules)
    elif delta_source.adapter is not None:
        names = list(delta_source.adapter.modules)
    else:
        names = [n[: -len(".weight")] for n in base_ckpt.names() if n.endswith(".weight") and len(base_ckpt.meta[n].shape) == 2]
    names = [n for n in names if layer_of(n) is not None]
    if delta_source.adapter is not None:
        names = [n for n in names if not delta_source.adapter.modules.get(n, None) or not delta_source.adapter.modules[n].embedding]
    names.sort(key=natural_key)
    if not names:
        raise InvalidInputError("no adapted linear module inside a decoder layer to realign")
    return NlsrInputs(aligned_src, finetuned_src, base_ckpt, prepared, chosen, names, cosine)


def order_inputs(inputs: NlsrInputs, model_order: list[str]) -> None:
    """Put the modules in model order (layer by layer, projections as the model defines them)."""
    position = {n: i for i, n in enumerate(model_order)}
    if inputs.strategy.delta_space and (inputs.prepared or inputs.aligned) is not None and (inputs.prepared or inputs.aligned).adapter is None:
        inputs.modules = [n for n in inputs.modules if n in position]  # full deltas: linears only
    inputs.modules.sort(key=lambda n: (position.get(n, len(position)), natural_key(n)))


def _decide_unit(unit: str, finetuned: WeightSource, reference: WeightSource, base: Checkpoint) -> tuple[str, float | None]:
    ft, ref = finetuned.adapter, reference.adapter
    both = ft is not None and ref is not None
    if unit == "auto":
        unit = AUTO_UNIT
    if unit in DELTA_UNITS:
        return unit, None
    # --unit element: the fine-tune must continue the aligned adapter (same base, same factor basis)
    if not both:
        raise InvalidInputError("--unit element needs LoRA adapters for both the fine-tuned model and the aligned/reference model")
    assert ft is not None and ref is not None
    if not same_checkpoint(finetuned.base, reference.base):
        raise InvalidInputError(
            f"adapters for different bases: finetuned {finetuned.path} is on {finetuned.base.root}, "
            f"the reference on {reference.base.root}; element-level NLSR needs the fine-tune to continue the aligned adapter"
        )
    missing = [m for m in ft.modules if m not in ref.modules]
    if missing:
        raise InvalidInputError(f"finetuned adapter module {missing[0]!r} is not in the aligned/reference adapter {reference.path}")
    for name, module in ft.modules.items():
        if ref.modules[name].rank != module.rank:
            raise InvalidInputError(
                f"adapters of different ranks: module {name!r} has rank {module.rank} in {finetuned.path} but "
                f"{ref.modules[name].rank} in {reference.path}; a LoRA-element transplant needs the fine-tune to continue "
                "the aligned adapter (pass --unit row to compare ΔW rows instead)"
            )
        if ft.file.tensors[module.a_key].shape != ref.file.tensors[ref.modules[name].a_key].shape:
            raise InvalidInputError(f"module {name!r}: factor shapes differ between {finetuned.path} and {reference.path}")
    cosines = []
    for name, module in ft.modules.items():
        a1 = ft.file.read(module.a_key).float().reshape(-1)
        a2 = ref.file.read(ref.modules[name].a_key).float().reshape(-1)
        cosines.append(torch.nn.functional.cosine_similarity(a1, a2, dim=0).item())
    cosine = statistics.median(cosines)
    return "element", cosine
