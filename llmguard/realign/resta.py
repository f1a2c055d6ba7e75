"""RESTA (Bhardwaj et al., ACL'24): θ_out = θ_F + γ·(θ_A − θ_U), training-free.

The "safety vector" θ_A − θ_U (aligned minus unaligned) is added back onto the fine-tuned
model. Inputs may be full checkpoints or LoRA adapters on a shared base; the output is a full
checkpoint, or (``as_adapter``) one exact LoRA adapter when all inputs are adapters on the
unaligned base.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from llmguard.io.checkpoint import copy_auxiliary_files
from llmguard.io.device import resolve_device
from llmguard.io.dtypes import parse_dtype_option
from llmguard.io.manifest import MANIFEST_NAME, Manifest
from llmguard.io.sources import open_source
from llmguard.io.writer import DEFAULT_MAX_SHARD_BYTES, StreamingWriter, parse_size
from llmguard.progress import NullProgress, Progress
from llmguard.realign.arithmetic import AdapterCombination, LinearCombination, Term
from llmguard.realign.registry import register_method


@dataclass
class RestaResult:
    output: Path
    tensors_written: int
    as_adapter: bool
    manifest: dict


@register_method("resta", "θ_F + γ·(θ_A − θ_U): add the safety vector back (training-free baseline)")
def resta(
    finetuned: str | os.PathLike[str],
    aligned: str | os.PathLike[str],
    unaligned: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    gamma: float = 0.5,
    base: str | os.PathLike[str] | None = None,
    as_adapter: bool = False,
    device: str = "auto",
    dtype: str = "auto",
    max_shard_size: str | int = DEFAULT_MAX_SHARD_BYTES,
    force: bool = False,
    allow_pickle: bool = False,
    progress: Progress | None = None,
) -> RestaResult:
    """Write θ_F + γ·(θ_A − θ_U) to ``output`` (streamed, atomic) and return what was done."""
    progress = progress or NullProgress()
    manifest = Manifest(
        verb="realign resta",
        parameters={
            "gamma": gamma,
            "as_adapter": as_adapter,
            "device": device,
            "dtype": dtype,
            "max_shard_size": max_shard_size,
            "base": str(base) if base else None,
        },
    )
    out = Path(output)
    with manifest.stage("open inputs"):
        sources = {
            "finetuned": open_source(finetuned, base=base, allow_pickle=allow_pickle, role="finetuned"),
            "aligned": open_source(aligned, base=base, allow_pickle=allow_pickle, role="aligned"),
            "unaligned": open_source(unaligned, base=base, allow_pickle=allow_pickle, role="unaligned"),
        }
        terms = [
            Term(1.0, sources["finetuned"], "finetuned"),
            Term(gamma, sources["aligned"], "aligned"),
            Term(-gamma, sources["unaligned"], "unaligned"),
        ]
        combination = AdapterCombination(terms, parse_dtype_option(dtype)) if as_adapter else LinearCombination(terms, parse_dtype_option(dtype))
        torch_device = resolve_device(device)
        input_paths = {role: src.path for role, src in sources.items()}
        for role, src in sources.items():
            manifest.add_input(role, src.path)
            if src.adapter is not None:
                input_paths[f"{role}.base"] = src.base.root
                manifest.add_input(f"{role}.base", src.base.root)
    writer = StreamingWriter(
        out,
        combination.plan(),
        max_shard_bytes=parse_size(max_shard_size),
        force=force,
        inputs=input_paths.values(),
        single_file_name="adapter_model.safetensors" if as_adapter else None,
    )
    with writer:
        with manifest.stage("stream tensors") as record:
            written = combination.run(writer, torch_device, progress)
            record["tensors"] = written
        if isinstance(combination, AdapterCombination):
            writer.write_json("adapter_config.json", combination.adapter_config())
            manifest.extra["lora_ranks"] = combination.ranks
        else:
            copy_auxiliary_files(sources["finetuned"].base, writer, parse_dtype_option(dtype))
        writer.write_text("README.md", _model_card(sources, gamma, as_adapter))
        manifest.extra["output"] = str(out)
        manifest.extra["device_used"] = str(torch_device)
        payload = manifest.to_dict()
        writer.write_json(MANIFEST_NAME, payload)
    progress.close()
    return RestaResult(out, written, as_adapter, payload)


def _model_card(sources: dict, gamma: float, as_adapter: bool) -> str:
    kind = "LoRA adapter" if as_adapter else "checkpoint"
    return (
        f"# RESTA-realigned {kind}\n\n"
        f"Written by `llmguard realign resta`: θ = θ_finetuned + {gamma} · (θ_aligned − θ_unaligned).\n\n"
        + "".join(f"- {role}: `{src.path}`\n" for role, src in sources.items())
        + "\nSee `llmguard.json` for every parameter, input fingerprint and timing.\n"
    )
