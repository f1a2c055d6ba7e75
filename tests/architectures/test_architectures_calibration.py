"""The calibration pass's XᵀX equals a plain forward of the real transformers model with hooks,
for every architecture of the matrix, layer-wise and whole-model, MoE experts and routers included."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import zoo
from llmguard.io.architecture import Architecture
from llmguard.io.calibration import CalibrationBatch, load_config, second_moments
from llmguard.io.checkpoint import open_checkpoint


def _batches() -> list[CalibrationBatch]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(4, zoo.VOCAB, (3, 12), generator=g)
    attention = torch.ones_like(ids)
    attention[2, 8:] = 0
    select = attention.bool().clone()
    select[:, :3] = False  # only "response" positions count
    return [CalibrationBatch(ids[:2], attention[:2], select[:2]), CalibrationBatch(ids[2:], attention[2:], select[2:])]


def _reference(path: Path, arch: Architecture, batches: list[CalibrationBatch]) -> dict[str, torch.Tensor]:
    """XᵀX (float64) of every linear map's input, from hooks on the model transformers loads itself.

    Plain modules are hooked at their input; for fused experts the routed tokens are recomputed
    here from the router's choice (hidden states of the tokens routed to expert e for its
    gate/up projection, act(gate)·up for its down projection).
    """
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    sums: dict[str, torch.Tensor] = {}
    current: dict[str, torch.Tensor] = {}
    by_module: dict[str, list] = {}
    for m in arch.linear_maps:
        by_module.setdefault(m.module, []).append(m)

    def add(name: str, x: torch.Tensor) -> None:
        x = x.double()
        sums[name] = sums.get(name, 0) + x.T @ x

    def plain(maps):
        def hook(module, inputs, output):
            x = inputs[0].reshape(-1, inputs[0].shape[-1])[current["select"]]
            for m in maps:
                add(m.name, x)
        return hook

    def experts(maps):
        def hook(module, inputs, output):
            hidden, index = inputs[0], inputs[1]
            keep = current["select"]
            hidden, index = hidden[keep], index[keep]
            for m in maps:
                routed = hidden[(index == m.expert).any(dim=-1)]
                attr = m.parameter.rpartition(".")[2]
                if attr == "down_proj":
                    gate, up = torch.nn.functional.linear(routed, module.gate_up_proj[m.expert]).chunk(2, dim=-1)
                    routed = module.act_fn(gate) * up
                add(m.name, routed)
        return hook

    for name, module in model.named_modules():
        maps = by_module.get(name)
        if maps:
            module.register_forward_hook(experts(maps) if maps[0].parameter else plain(maps))
    with torch.no_grad():
        for batch in batches:
            current["select"] = batch.select.reshape(-1)
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    return sums


@pytest.mark.parametrize("variant", list(zoo.VARIANTS))
def test_second_moments_equal_a_hooked_forward(matrix, variant):
    path = matrix[variant]["base"]
    arch = Architecture(load_config(path))
    checkpoint = open_checkpoint(path)
    batches = _batches()
    expected = _reference(path, arch, batches)
    assert set(expected) == {m.name for m in arch.linear_maps}, "every linear map is hooked by the reference"
    for mode in ("layerwise", "whole"):
        got = second_moments(load_config(path), checkpoint.read, batches, mode=mode)
        assert set(got) == set(expected), mode
        for name, ref in expected.items():
            err = ((got[name].xtx.double() - ref).norm() / ref.norm()).item()
            assert err <= 2e-6, f"{variant} {mode} {name}: relative error {err:.2e}"


def test_layers_replay_their_own_attention_type(matrix):
    """Gemma3 alternates sliding-window and full attention: each layer is replayed with its own
    mask (layer 0's sliding-window mask reused for the full-attention layer was 0.77 off), and
    the embedding scale buffer is the real √hidden, not uninitialised memory."""
    from llmguard.io.calibration import _front, _record_layer_inputs
    from llmguard.progress import NullProgress

    path = matrix["gemma3"]["base"]
    arch = Architecture(load_config(path))
    cpu = torch.device("cpu")
    _front(arch, open_checkpoint(path).read, cpu)
    captured = _record_layer_inputs(arch, _batches()[:1], cpu, cpu, NullProgress())
    sliding, full = (kwargs["attention_mask"] for _, kwargs in captured[0])
    assert sliding is not None
    assert full is None or not torch.equal(sliding, full)
    assert arch.model.model.embed_tokens.embed_scale.item() == pytest.approx(32 ** 0.5)
