"""The architecture matrix, built once per session: for every variant of ``zoo.VARIANTS`` a base
(θ_U), an aligned (θ_A) and a fine-tuned (θ_F) full checkpoint, and real PEFT LoRA adapters on
the bases that exercise each family's peculiarities."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/helpers.py
import zoo  # noqa: E402

#: adapter name → (variant, LoraConfig keyword arguments)
ADAPTERS = {
    "llama-default": ("llama-tied", dict(r=4, lora_alpha=8)),
    "llama-embedding-tied": ("llama-tied", dict(r=4, lora_alpha=8, target_modules=["embed_tokens", "q_proj"])),
    "qwen2-all-linear-rslora": ("qwen2", dict(r=8, lora_alpha=16, use_rslora=True, target_modules="all-linear")),
    "qwen2-patterns-lm-head": ("qwen2", dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                             rank_pattern={"down_proj": 2}, alpha_pattern={"v_proj": 3}, modules_to_save=["lm_head"])),
    "gemma2-default": ("gemma2", dict(r=4, lora_alpha=8)),
    "gemma3-default": ("gemma3", dict(r=4, lora_alpha=8)),
    "phi3-fused-qkv": ("phi3", dict(r=4, lora_alpha=8, target_modules=["qkv_proj", "gate_up_proj"])),
    "gpt2-fan-in-fan-out": ("gpt2", dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_proj", "c_fc"], fan_in_fan_out=True)),
    "gpt-neox-default": ("gpt-neox", dict(r=4, lora_alpha=8)),
    "opt-default": ("opt", dict(r=4, lora_alpha=8)),
    "mixtral-experts": ("mixtral", dict(r=4, lora_alpha=8, target_modules=["q_proj"],
                                        target_parameters=["mlp.experts.gate_up_proj", "mlp.experts.down_proj"])),
    "qwen3-moe-experts": ("qwen3-moe", dict(r=2, lora_alpha=4, target_modules=["o_proj"], target_parameters=["mlp.experts.down_proj"])),
    "qwen2-moe-all-linear": ("qwen2-moe", dict(r=4, lora_alpha=8, target_modules="all-linear")),
    "gpt2-default": ("gpt2", dict(r=4, lora_alpha=8, fan_in_fan_out=True)),
}


def make_adapter(base: Path, out: Path, seed: int, **config) -> Path:
    """A real PEFT LoRA adapter on ``base`` with random non-zero factors."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(**config))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    peft_model.save_pretrained(out)
    return out


def _shared_dir(tmp_path_factory: pytest.TempPathFactory, name: str, build) -> Path:
    """Build ``name`` once for all pytest-xdist workers of this session (they share basetemp's parent)."""
    from filelock import FileLock

    worker_root = tmp_path_factory.getbasetemp()
    root = worker_root.parent if os.environ.get("PYTEST_XDIST_WORKER") else worker_root
    target = root / name
    with FileLock(str(root / f"{name}.lock")):
        if not (target / ".complete").is_file():
            if target.exists():
                shutil.rmtree(target)
            build(target)
            (target / ".complete").write_text("")
    return target


@pytest.fixture(scope="session")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    def build(root: Path) -> None:
        for name, variant in zoo.VARIANTS.items():
            zoo.family(variant, root / name)

    root = _shared_dir(tmp_path_factory, "architectures", build)
    return {name: {role: root / name / role for role in ("base", "aligned", "finetuned")} for name in zoo.VARIANTS}


@pytest.fixture(scope="session")
def adapters(matrix: dict[str, dict[str, Path]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """adapter name → (adapter directory, its base)."""
    def build(root: Path) -> None:
        for i, (name, (variant, config)) in enumerate(ADAPTERS.items()):
            make_adapter(matrix[variant]["base"], root / name, seed=10 + i, **config)

    root = _shared_dir(tmp_path_factory, "architecture-adapters", build)
    return {name: (root / name, matrix[variant]["base"]) for name, (variant, _) in ADAPTERS.items()}
