"""RESTA (Bhardwaj et al., ACL'24): θ_out = θ_F + γ·(θ_A − θ_U), training-free.

The "safety vector" θ_A − θ_U (aligned minus unaligned) is added back onto the fine-tuned
model. Inputs may be full checkpoints or LoRA adapters on a shared base; the output is a full
checkpoint, or (``as_adapter``) one exact LoRA adapter when all inputs are adapters on the
unaligned base.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llmguard.io.checkpoint import copy_auxiliary_files
from llmguard.io.device import resolve_device
from llmguard.io.dtypes import parse_dtype_option
from llmguard.io.manifest import MANIFEST_NAME, Manifest
from llmguard.io.sources import open_source
from llmguard.io.writer import StreamingWriter, parse_size
from llmguard.progress import NullProgress, Progress
from llmguard.realign.arithmetic import AdapterCombination, LinearCombination, Term
from llmguard.realign.resta_options import RestaOptions


@dataclass
class RestaResult:
    output: Path
    tensors_written: int
    as_adapter: bool
    manifest: dict


def run_resta(options: RestaOptions, progress: Progress | None = None) -> RestaResult:
    """Write θ_F + γ·(θ_A − θ_U) to ``options.output`` (streamed, atomic) and return what was done."""
    o = options
    progress = progress or NullProgress()
    manifest = Manifest(verb=o.verb, parameters=o.to_manifest())
    out = o.output
    with manifest.stage("open inputs"):
        sources = {
            role: open_source(getattr(o, role), base=o.base, allow_pickle=o.allow_pickle, role=role)
            for role in ("finetuned", "aligned", "unaligned")
        }
        terms = [
            Term(1.0, sources["finetuned"], "finetuned"),
            Term(o.gamma, sources["aligned"], "aligned"),
            Term(-o.gamma, sources["unaligned"], "unaligned"),
        ]
        out_dtype = parse_dtype_option(o.dtype)
        combination = AdapterCombination(terms, out_dtype) if o.as_adapter else LinearCombination(terms, out_dtype)
        torch_device = resolve_device(o.device)
        input_paths = {role: src.path for role, src in sources.items()}
        for role, src in sources.items():
            manifest.add_input(role, src.path)
            if src.adapter is not None:
                input_paths[f"{role}.base"] = src.base.root
                manifest.add_input(f"{role}.base", src.base.root)
    writer = StreamingWriter(
        out,
        combination.plan(),
        max_shard_bytes=parse_size(o.max_shard_size),
        force=o.force,
        inputs=input_paths.values(),
        single_file_name="adapter_model.safetensors" if o.as_adapter else None,
    )
    with writer:
        with manifest.stage("stream tensors") as record:
            written = combination.run(writer, torch_device, progress)
            record["tensors"] = written
        if isinstance(combination, AdapterCombination):
            writer.write_json("adapter_config.json", combination.adapter_config())
            manifest.extra["lora_ranks"] = combination.ranks
        else:
            copy_auxiliary_files(sources["finetuned"].base, writer, out_dtype)
        writer.write_text("README.md", _model_card(sources, o.gamma, o.as_adapter))
        manifest.extra["output"] = str(out)
        manifest.extra["device_used"] = str(torch_device)
        payload = manifest.to_dict()
        writer.write_json(MANIFEST_NAME, payload)
    progress.close()
    return RestaResult(out, written, o.as_adapter, payload)


def _model_card(sources: dict, gamma: float, as_adapter: bool) -> str:
    kind = "LoRA adapter" if as_adapter else "checkpoint"
    return (
        f"# RESTA-realigned {kind}\n\n"
        f"Written by `llmguard realign resta`: θ = θ_finetuned + {gamma} · (θ_aligned − θ_unaligned).\n\n"
        + "".join(f"- {role}: `{src.path}`\n" for role, src in sources.items())
        + "\nSee `llmguard.json` for every parameter, input fingerprint and timing.\n"
    )
