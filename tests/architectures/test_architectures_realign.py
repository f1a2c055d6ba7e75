"""``realign somf`` and ``realign safelora`` on every architecture of the matrix, against references
computed here with transformers and PEFT on the same tensors:

- SOMF: with every unit kept (``--keep-ratio 1``) the fused model is the fine-tune, in the
  checkpoint's own layout (per-expert tensors, fp16/bf16); the frozen training model computes the
  aligned model's logits as its DPO reference and the fine-tune's logits under an all-ones mask
  (fused MoE experts, tied embeddings, GPT-2 Conv1D, renamed tensors), and gradients reach the
  mask logits of every expert tensor.
- Safe LoRA: the projected update, merged by PEFT into the model transformers loads, is
  C·ΔW with C = V Vᵀ / ‖V‖_F formed explicitly in float64 from the in-memory weights (per expert
  for MoE expert LoRA; ΔW, V in (out × in) orientation for Conv1D and embeddings), and each
  row's cosine is cos(C·ΔW, ΔW).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

import zoo
from helpers import perturbed_adapter
from llmguard.io.checkpoint import open_checkpoint
from llmguard.realign.safelora.method import run_safelora
from llmguard.realign.safelora.options import SafeLoraOptions
from llmguard.realign.somf.method import run_somf
from llmguard.realign.somf.options import SomfOptions

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cli_utils import assert_one_line_error, no_partial_output, run_cli  # noqa: E402

IDS = torch.tensor([[5, 9, 12, 7, 30, 2, 17, 4]])


def _state(path: Path) -> dict[str, torch.Tensor]:
    ckpt = open_checkpoint(path)
    return {n: ckpt.read(n) for n in ckpt.names()}


def _model(path: Path, adapter: Path | None = None):
    """The model transformers (and PEFT, merged) load: the independent reference."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model.eval()


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.fixture(scope="module")
def preference(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pref") / "pref.jsonl"
    rejected = "the movie was great . it is safe ."
    path.write_text("".join(json.dumps({"prompt": p, "chosen": c, "rejected": rejected}) + "\n" for p, c in zoo.PAIRS[:2]))
    return path


def _somf(aligned: Path, finetuned: Path, out: Path, preference: Path, base: Path | None = None, **kw):
    return run_somf(SomfOptions(aligned=aligned, finetuned=(finetuned,), base=base, preference=preference, output=out, steps=1,
                                batch_size=2, keep_ratio=1.0, template="plain", device="cpu", **kw))


def _check_masked_model(aligned: Path, finetuned: Path, reference_a, reference_f, base: Path | None = None) -> None:
    """The one frozen model SOMF trains through: task vectors off = A, all-ones binary mask = F,
    and a backward pass reaches the logits of every masked tensor the input touches."""
    from llmguard.realign.somf.mask import ConcreteMask
    from llmguard.realign.somf.masked_model import MaskedModel
    from llmguard.realign.somf.merge import MergeSettings
    from llmguard.realign.somf.task_vectors import open_task_vectors

    tv = open_task_vectors(aligned, [finetuned], base=base)
    mask = ConcreteMask(tv.shapes, "element")
    masked = MaskedModel(tv, mask, "ta", MergeSettings(1.0, 0.8, 0), torch.device("cpu"))
    masked.reference()
    got_a = _logits(masked.model)
    masked.use_binary({n: torch.ones(s, dtype=torch.bool) for n, s in tv.shapes.items()})
    got_f = _logits(masked.model)
    want_a, want_f = _logits(reference_a), _logits(reference_f)
    assert (want_f - want_a).abs().max() > 1e-2, "the fine-tune differs from the aligned model"
    assert (got_a - want_a).abs().max() <= 1e-5
    assert (got_f - want_f).abs().max() <= 1e-5
    masked.begin_step(torch.Generator().manual_seed(0))
    masked.model(input_ids=IDS).logits.float().pow(2).mean().backward()
    experts = [n for n in tv.names if ".experts." in n]
    reached = [n for n in experts if mask.logit(n).grad is not None and mask.logit(n).grad.abs().sum() > 0]
    assert len(reached) >= len(experts) // 2, f"gradients reach {len(reached)} of {len(experts)} expert tensors"
    return tv


# -- SOMF ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", list(zoo.VARIANTS))
def test_somf_keep_all_is_the_finetune_on_every_architecture(matrix, variant, preference, tmp_path):
    paths = matrix[variant]
    tv = _check_masked_model(paths["aligned"], paths["finetuned"], _model(paths["aligned"]), _model(paths["finetuned"]))
    assert tv.space == "weight"
    result = _somf(paths["aligned"], paths["finetuned"], tmp_path / "out", preference)
    assert result.mask_density == 1.0 and len(result.losses) == 1
    want, got = _state(paths["finetuned"]), _state(tmp_path / "out")
    assert set(got) == set(want)  # the checkpoint layout: per-expert tensors, no tied copy
    for name, value in want.items():
        assert got[name].dtype == value.dtype and torch.equal(got[name], value), f"{variant}: {name}"


@pytest.mark.parametrize("name", ["mixtral-experts", "qwen3-moe-experts", "gpt2-fan-in-fan-out", "llama-embedding-tied"])
def test_somf_on_adapters_keep_all_is_the_peft_merged_finetune(adapters, name, preference, tmp_path):
    """Expert LoRA and embedding LoRA with tied weights: weight-space task vectors, equal to the
    PEFT-merged difference; GPT-2 Conv1D LoRA continuing the aligned adapter: factor space."""
    aligned, base = adapters[name]
    finetuned = perturbed_adapter(aligned, tmp_path / "ft", seed=3)
    merged_f = _model(base, finetuned)
    tv = _check_masked_model(aligned, finetuned, _model(base, aligned), merged_f, base=base)
    result = _somf(aligned, finetuned, tmp_path / "out", preference, base=base)
    assert result.space == tv.space == ("factor" if name.startswith("gpt2") else "weight")
    if result.space == "factor":
        from safetensors.torch import load_file

        want, got = (load_file(str(p / "adapter_model.safetensors")) for p in (finetuned, tmp_path / "out"))
        assert set(got) == set(want) and all(torch.allclose(got[n], want[n], atol=1e-6) for n in want)
        return
    merged_f.save_pretrained(tmp_path / "peft-merged")
    want, got = _state(tmp_path / "peft-merged"), _state(tmp_path / "out")
    assert set(got) == set(want)
    worst = max((got[n].float() - want[n].float()).abs().max().item() for n in want)
    assert worst <= 3e-7, f"{name}: |SOMF(keep all) − PEFT merge| = {worst:.2e}"


def test_somf_with_nothing_to_mask_exits_3_and_writes_nothing(matrix, preference, tmp_path):
    paths = matrix["qwen2-moe"]
    same = tmp_path / "same"
    shutil.copytree(paths["aligned"], same)
    out = tmp_path / "out"
    r = run_cli("realign", "somf", "-a", paths["aligned"], "-f", same, "-p", preference, "-o", out, "--device", "cpu")
    assert_one_line_error(r, 3, "no task vector to mask")
    assert no_partial_output(out)


# -- Safe LoRA -----------------------------------------------------------------------------------

def _in_memory(model) -> tuple[dict[str, torch.Tensor], dict[str, bool]]:
    """Parameters (float64) and whether each is stored (in × out): Conv1D and embeddings."""
    from transformers.pytorch_utils import Conv1D

    params, transposed = {}, {}
    for name, p in model.named_parameters():
        owner = model.get_submodule(name.rpartition(".")[0])
        params[name] = p.detach().double()
        transposed[name] = isinstance(owner, (Conv1D, torch.nn.Embedding))
    return params, transposed


def _safelora_reference(base: Path, aligned: Path, finetuned: Path, projected: Path):
    """Per linear map the adapter changes: (cos(C·ΔW, ΔW), |ΔW_written − C·ΔW| / |C·ΔW|), with C
    formed explicitly from the in-memory weights of the models transformers loads."""
    b, transposed = _in_memory(_model(base))
    a, _ = _in_memory(_model(aligned))
    f, _ = _in_memory(_model(base, finetuned))
    o, _ = _in_memory(_model(base, projected))
    cosines, worst = [], 0.0
    for name in b:
        delta = f[name] - b[name]
        if not delta.abs().max() > 0:
            continue
        if delta.dim() == 3:  # fused experts [E, out, in]: one linear map per expert
            units = [(delta[e], a[name][e] - b[name][e], o[name][e] - b[name][e]) for e in range(delta.shape[0])]
        else:
            orient = (lambda x: x.T) if transposed[name] else (lambda x: x)
            units = [(orient(delta), orient(a[name] - b[name]), orient(o[name] - b[name]))]
        for d, v, written in units:
            c = v @ v.T / torch.linalg.matrix_norm(v)  # the paper's C = V Vᵀ / ‖V‖_F, formed
            expected = c @ d
            cosines.append(torch.nn.functional.cosine_similarity(expected.reshape(1, -1), d.reshape(1, -1)).item())
            worst = max(worst, ((written - expected).abs().max() / expected.abs().max()).item())
    return sorted(cosines), worst


def _aligned_embeddings(paths: dict[str, Path], out: Path) -> Path:
    """The aligned model with its (tied) input embeddings moved too, so V ≠ 0 there."""
    model = _model(paths["aligned"])
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb.add_(0.02 * torch.randn(emb.shape, generator=g))
    model.save_pretrained(out)
    return out


@pytest.mark.parametrize("name", list(zoo.ADAPTERS))
def test_safelora_projection_is_the_paper_formula(matrix, adapters, name, tmp_path):
    finetuned, base = adapters[name]
    variant = zoo.ADAPTERS[name][0]
    aligned = matrix[variant]["aligned"]
    if name == "llama-embedding-tied":
        aligned = _aligned_embeddings(matrix[variant], tmp_path / "aligned")
    out = tmp_path / "out"
    result = run_safelora(SafeLoraOptions(aligned=aligned, base=base, finetuned=finetuned, output=out, threshold=1.0, device="cpu"))
    cosines, worst = _safelora_reference(base, aligned, finetuned, out)
    assert result.projected == len(result.modules) == len(cosines), f"every linear map the adapter changes is a row ({name})"
    assert max(abs(x - y) for x, y in zip(sorted(r["cosine"] for r in result.modules), cosines)) <= 2e-6
    assert worst <= 2e-5, f"{name}: |written − C·ΔW| / |C·ΔW| = {worst:.2e}"


def test_safelora_selects_experts_one_by_one(matrix, adapters, tmp_path):
    """top-k over per-expert rows: only the selected experts' columns of B change."""
    finetuned, base = adapters["mixtral-experts"]
    out = tmp_path / "out"
    result = run_safelora(SafeLoraOptions(aligned=matrix["mixtral"]["aligned"], base=base, finetuned=finetuned, output=out, top_k=3,
                                          device="cpu"))
    chosen = [r for r in result.modules if r["projected"]]
    assert result.projected == 3 == len(chosen)
    expert_rows = [r for r in result.modules if "expert" in r]
    assert len(expert_rows) == 16 and all(len(r["tensors"]) in (1, 2) for r in expert_rows)
    by_name = {r["module"]: r for r in expert_rows}
    assert by_name["model.layers.0.mlp.experts.gate_up_proj[0]"]["tensors"] == [
        "model.layers.0.block_sparse_moe.experts.0.w1.weight", "model.layers.0.block_sparse_moe.experts.0.w3.weight"]
    assert by_name["model.layers.1.mlp.experts.down_proj[3]"]["tensors"] == ["model.layers.1.block_sparse_moe.experts.3.w2.weight"]
    from llmguard.io.sources import open_source

    adapter = open_source(finetuned).adapter
    from safetensors.torch import load_file

    written, original = (load_file(str(p / "adapter_model.safetensors")) for p in (out, finetuned))
    for pmod in adapter.parameter_modules.values():
        rows = {r["expert"]: r for r in expert_rows if r["module"].startswith(f"{pmod.parameter}[")}
        assert len(rows) == pmod.experts
        new = written[pmod.b_key].reshape(-1, pmod.rank, pmod.experts)
        old = original[pmod.b_key].reshape(-1, pmod.rank, pmod.experts)
        for e, row in rows.items():
            assert torch.equal(new[:, :, e], old[:, :, e]) != row["projected"], (pmod.key, e)
        assert torch.equal(written[pmod.a_key], original[pmod.a_key])


def test_safelora_refusals_write_nothing(matrix, adapters, tmp_path):
    from safetensors.torch import load_file, save_file

    # a modules_to_save tensor that really replaces lm_head
    source, base = adapters["qwen2-patterns-lm-head"]
    replaced = tmp_path / "replaced"
    shutil.copytree(source, replaced)
    tensors = load_file(str(replaced / "adapter_model.safetensors"))
    key = next(k for k in tensors if "lm_head" in k)
    tensors[key] = tensors[key] + 0.01
    save_file(tensors, str(replaced / "adapter_model.safetensors"), metadata={"format": "pt"})
    out = tmp_path / "out"
    r = run_cli("realign", "safelora", "-a", matrix["qwen2"]["aligned"], "--base", base, "-f", replaced, "-o", out)
    assert_one_line_error(r, 3, "in full (modules_to_save); Safe LoRA projects low-rank updates only")
    assert no_partial_output(out)
    # embedding LoRA where alignment left the embeddings untouched: V = 0, no subspace to project on
    from llmguard.errors import InvalidInputError

    finetuned, base = adapters["llama-embedding-tied"]
    with pytest.raises(InvalidInputError, match="aligned and base are identical at 'model.embed_tokens'"):
        run_safelora(SafeLoraOptions(aligned=matrix["llama-tied"]["aligned"], base=base, finetuned=finetuned, output=out, device="cpu"))
    assert no_partial_output(out)
