"""The generated corpus: broken inputs and hostile situations x every verb that reads or writes them.

A :class:`Case` builds its situation in a fresh case directory (corrupting private copies of
testbed inputs; clean inputs are read from the testbed in place and hashed before and after the
whole corpus), gives the command line, the documented exit code and the words the one error line
must contain. :func:`cases` is the whole table; ``docs/reliability.md`` is generated from it by
``python -m tests.reliability.report``.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import copy_input

# ----------------------------------------------------------------------------- environment


@dataclass
class Env:
    """Clean inputs (the testbed, read in place) and small data files shared by the cases."""

    tb: Path  # testbed root
    data: Path  # small data files written once per session
    judge: Path  # the tiny HDC judge
    llava: Path | None = None  # the tiny LLaVA (ace-m3's judge)

    def model(self, name: str) -> Path:
        return self.tb / name

    @property
    def prompts(self) -> Path:
        return self.data / "prompts.jsonl"

    @property
    def calibration(self) -> Path:
        return self.data / "calibration.jsonl"

    @property
    def preference(self) -> Path:
        return self.data / "preference.jsonl"

    @property
    def items(self) -> Path:
        return self.data / "items.jsonl"

    @property
    def labels(self) -> Path:
        return self.data / "labels.jsonl"

    @property
    def pred(self) -> Path:
        return self.data / "pred.jsonl"

    @property
    def texts(self) -> Path:
        return self.data / "texts.jsonl"

    @property
    def sft(self) -> Path:
        return self.data / "sft.jsonl"


def write_env_data(tb: Path, data: Path) -> None:
    """Tiny data files: two prompts, four calibration pairs, four preference pairs, judge items."""
    from llmguard.testbed import judge as tj

    data.mkdir(parents=True, exist_ok=True)
    lines = (tb / "data" / "harmful_test.jsonl").read_text().splitlines()[:2]
    (data / "prompts.jsonl").write_text("\n".join(lines) + "\n")
    benign = [json.loads(x) for x in (tb / "data" / "benign_dev.jsonl").read_text().splitlines()[:4]]
    (data / "calibration.jsonl").write_text("".join(json.dumps({"prompt": b["prompt"], "response": b["response"]}) + "\n" for b in benign))
    (data / "preference.jsonl").write_text("\n".join((tb / "data" / "safety_preference.jsonl").read_text().splitlines()[:4]) + "\n")
    items = tj.judge_items(2)
    tj.write_items(items, data / "items.jsonl")
    tj.write_labels(items, data / "labels.jsonl")
    (data / "pred.jsonl").write_text("".join(json.dumps({"id": it["id"], "criterion": "REL", "score": 3 + i % 2, "parse_status": "ok"}) + "\n"
                                             for i, it in enumerate(items)))
    (data / "texts.jsonl").write_text("".join(json.dumps({"text": "the review is positive . the answer is seven ."}) + "\n" for _ in range(2)))
    (data / "sft.jsonl").write_text("".join(json.dumps({"instruction": "say hi", "input": "", "output": "hi there ."}) + "\n" for _ in range(2)))


# ----------------------------------------------------------------------------- corruptions

def _shard(model: Path) -> Path:
    return model / "model.safetensors"


def _header(path: Path) -> tuple[dict[str, Any], bytes]:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _write_header(path: Path, header: dict[str, Any], data: bytes) -> None:
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


def _rewrite_tensors(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def truncated(m: Path) -> tuple[str, ...]:
    raw = _shard(m).read_bytes()
    _shard(m).write_bytes(raw[: len(raw) - 4096])
    return ("model.safetensors", "truncated")


def header_beyond(m: Path) -> tuple[str, ...]:
    raw = bytearray(_shard(m).read_bytes())
    raw[:8] = struct.pack("<Q", 10**12)
    _shard(m).write_bytes(bytes(raw))
    return ("model.safetensors", "header length")


def garbage_header(m: Path) -> tuple[str, ...]:
    raw = bytearray(_shard(m).read_bytes())
    raw[8:12] = b"{{{{"
    _shard(m).write_bytes(bytes(raw))
    return ("model.safetensors", "header")


def unknown_dtype(m: Path) -> tuple[str, ...]:
    header, data = _header(_shard(m))
    name = "model.norm.weight"
    header[name]["dtype"] = "F99"
    _write_header(_shard(m), header, data)
    return ("F99", name)


def overlapping_offsets(m: Path) -> tuple[str, ...]:
    header, data = _header(_shard(m))
    a, b = "model.layers.0.input_layernorm.weight", "model.layers.1.input_layernorm.weight"
    header[b]["data_offsets"] = list(header[a]["data_offsets"])
    _write_header(_shard(m), header, data)
    return ("overlap",)


def _sharded(m: Path) -> dict[str, Any]:
    from safetensors.torch import load_file, save_file

    tensors = load_file(_shard(m))
    _shard(m).unlink()
    names = sorted(tensors)
    half = len(names) // 2
    save_file({k: tensors[k] for k in names[:half]}, m / "model-00001-of-00002.safetensors", metadata={"format": "pt"})
    save_file({k: tensors[k] for k in names[half:]}, m / "model-00002-of-00002.safetensors", metadata={"format": "pt"})
    return {"metadata": {}, "weight_map": {k: f"model-0000{1 if i < half else 2}-of-00002.safetensors" for i, k in enumerate(names)}}


def index_dotdot(m: Path) -> tuple[str, ...]:
    index = _sharded(m)
    (m.parent / "outside.safetensors").write_bytes((m / "model-00001-of-00002.safetensors").read_bytes())
    first = sorted(index["weight_map"])[0]
    index["weight_map"][first] = "../outside.safetensors"
    (m / "model.safetensors.index.json").write_text(json.dumps(index))
    return ("outside the model directory", first)


def index_absolute(m: Path) -> tuple[str, ...]:
    index = _sharded(m)
    first = sorted(index["weight_map"])[0]
    index["weight_map"][first] = str((m / "model-00001-of-00002.safetensors").resolve())
    (m / "model.safetensors.index.json").write_text(json.dumps(index))
    return ("outside the model directory", first)


def index_symlink_out(m: Path) -> tuple[str, ...]:
    index = _sharded(m)
    outside = m.parent / "elsewhere.safetensors"
    shutil.move(str(m / "model-00001-of-00002.safetensors"), outside)
    (m / "model-00001-of-00002.safetensors").symlink_to(outside)
    (m / "model.safetensors.index.json").write_text(json.dumps(index))
    first = sorted(index["weight_map"])[0]
    return ("outside the model directory",)


def missing_tensor(m: Path) -> tuple[str, ...]:
    name = "model.layers.1.mlp.up_proj.weight"
    _rewrite_tensors(_shard(m), lambda t: t.pop(name))
    return (name,)


def int_tensor(m: Path) -> tuple[str, ...]:
    import torch

    name = "model.layers.0.self_attn.q_proj.weight"

    def edit(t: dict) -> None:
        t[name] = torch.zeros(t[name].shape, dtype=torch.int32)

    _rewrite_tensors(_shard(m), edit)
    return (name, "I32")


def more_layers_in_config(m: Path) -> tuple[str, ...]:
    config = json.loads((m / "config.json").read_text())
    config["num_hidden_layers"] += 1
    (m / "config.json").write_text(json.dumps(config))
    return ("model.layers.4",)


def nan_weight(m: Path) -> tuple[str, ...]:
    name = "model.layers.0.mlp.up_proj.weight"

    def edit(t: dict) -> None:
        t[name][0, 0] = float("nan")

    _rewrite_tensors(_shard(m), edit)
    return (name, "NaN")


def pickle_only(m: Path) -> tuple[str, ...]:
    import torch
    from safetensors.torch import load_file

    torch.save(load_file(_shard(m)), m / "pytorch_model.bin")
    _shard(m).unlink()
    return ("pytorch_model.bin", "--allow-pickle")


def config_not_json(m: Path) -> tuple[str, ...]:
    (m / "config.json").write_text("{ not json")
    return ("config.json",)


CHECKPOINT_CORRUPTIONS: dict[str, Callable[[Path], tuple[str, ...]]] = {
    "truncated shard": truncated,
    "header length beyond file": header_beyond,
    "garbage header JSON": garbage_header,
    "unknown dtype": unknown_dtype,
    "overlapping data_offsets": overlapping_offsets,
    "weight_map ../ escape": index_dotdot,
    "weight_map absolute path": index_absolute,
    "weight_map symlink out": index_symlink_out,
    "tensor missing": missing_tensor,
    "int32 tensor for a float one": int_tensor,
    "config names more layers": more_layers_in_config,
    "NaN weight": nan_weight,
    "pickle weights only": pickle_only,
    "config.json not JSON": config_not_json,
}


def _adapter_config(a: Path, edit: Callable[[dict[str, Any]], Any]) -> None:
    cfg = json.loads((a / "adapter_config.json").read_text())
    result = edit(cfg)
    (a / "adapter_config.json").write_text(json.dumps(cfg if result is None else result))


def r_string(a: Path) -> tuple[str, ...]:
    _adapter_config(a, lambda c: c.update(r="eight"))
    return ("adapter_config.json", "'r'")


def r_null(a: Path) -> tuple[str, ...]:
    _adapter_config(a, lambda c: c.update(r=None))
    return ("adapter_config.json", "'r'")


def r_zero(a: Path) -> tuple[str, ...]:
    _adapter_config(a, lambda c: c.update(r=0))
    return ("adapter_config.json", "'r'")


def alpha_string(a: Path) -> tuple[str, ...]:
    _adapter_config(a, lambda c: c.update(lora_alpha="16"))
    return ("adapter_config.json", "'lora_alpha'")


def rank_pattern_list(a: Path) -> tuple[str, ...]:
    _adapter_config(a, lambda c: c.update(rank_pattern=["q_proj"]))
    return ("adapter_config.json", "'rank_pattern'")


def config_list(a: Path) -> tuple[str, ...]:
    _adapter_config(a, lambda c: [c])
    return ("adapter_config.json", "object")


def adapter_config_not_utf8(a: Path) -> tuple[str, ...]:
    (a / "adapter_config.json").write_bytes(b'{"r": 8, "x": "\xff\xfe"}')
    return ("adapter_config.json", "UTF-8")


def missing_lora_b(a: Path) -> tuple[str, ...]:
    key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    _rewrite_tensors(a / "adapter_model.safetensors", lambda t: t.pop(key))
    return ("model.layers.1.self_attn.v_proj",)


def target_not_in_base(a: Path) -> tuple[str, ...]:
    old = "base_model.model.model.layers.1.self_attn.v_proj"

    def edit(t: dict) -> None:
        for kind in ("lora_A", "lora_B"):
            t[f"base_model.model.model.layers.9.self_attn.v_proj.{kind}.weight"] = t.pop(f"{old}.{kind}.weight")

    _rewrite_tensors(a / "adapter_model.safetensors", edit)
    return ("model.layers.9.self_attn.v_proj",)


def bad_factor_shape(a: Path) -> tuple[str, ...]:
    import torch

    key = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"

    def edit(t: dict) -> None:
        t[key] = torch.zeros(t[key].shape[0] + 3, t[key].shape[1])

    _rewrite_tensors(a / "adapter_model.safetensors", edit)
    return ("model.layers.0.self_attn.q_proj",)


def adapter_pickle_only(a: Path) -> tuple[str, ...]:
    (a / "adapter_model.safetensors").rename(a / "adapter_model.bin")
    return ("adapter_model",)


ADAPTER_CORRUPTIONS: dict[str, Callable[[Path], tuple[str, ...]]] = {
    "r is a string": r_string,
    "r is null": r_null,
    "r is 0": r_zero,
    "lora_alpha is a string": alpha_string,
    "rank_pattern is a list": rank_pattern_list,
    "config is a JSON list": config_list,
    "config not UTF-8": adapter_config_not_utf8,
    "lora_B missing": missing_lora_b,
    "target module not in base": target_not_in_base,
    "factor shape wrong": bad_factor_shape,
    "pickle adapter only": adapter_pickle_only,
}


def data_not_utf8(p: Path) -> tuple[str, ...]:
    lines = p.read_bytes().splitlines(keepends=True)
    p.write_bytes(lines[0] + b'{"prompt": "caf\xe9 \xff", "response": "x", "id": "z", "question": "q", "answer": "a", "text": "t"}\n' + b"".join(lines[1:]))
    return (p.name, ":2", "UTF-8")


def data_bad_json_line(p: Path) -> tuple[str, ...]:
    lines = p.read_text().splitlines(keepends=True)
    p.write_text(lines[0] + '{"prompt": "unterminated\n' + "".join(lines[1:]))
    return (p.name, ":2")


def data_empty(p: Path) -> tuple[str, ...]:
    p.write_text("")
    return (p.name,)


def data_not_objects(p: Path) -> tuple[str, ...]:
    p.write_text("[1, 2]\n[3]\n")
    return (p.name, ":1")


def data_garbage_parquet(p: Path) -> tuple[str, ...]:
    q = p.with_suffix(".parquet")
    q.write_bytes(b"PAR1" + os.urandom(256))
    p.unlink()
    return (q.name,)


DATA_CORRUPTIONS: dict[str, Callable[[Path], tuple[str, ...]]] = {
    "a line not UTF-8": data_not_utf8,
    "a line not JSON": data_bad_json_line,
    "empty file": data_empty,
    "records not objects": data_not_objects,
    "garbage .parquet": data_garbage_parquet,
}


# ----------------------------------------------------------------------------- cases


@dataclass
class Case:
    """One situation run against one verb."""

    name: str  # what is broken (the table's row)
    verb: str
    build: Callable[[Env, Path], tuple[list[str], tuple[str, ...]]]  # (argv, needles) from (env, case dir)
    expected: int
    outputs: tuple[str, ...] = ()  # what a successful run may create (relative to the case dir)
    hold: Callable[[Path], Callable[[], Callable[[], None]]] | None = None
    after: Callable[[Path, Any], list[str]] | None = None  # extra checks (case dir, outcome): list of problems
    kind: str = "checkpoint"
    allowed_changes: tuple[str, ...] = field(default=())


FAST_GEN = ["--max-new-tokens", "2", "--batch-size", "2", "--device", "cpu"]


def _ckpt_cases() -> list[Case]:
    """Every checkpoint corruption against the verbs that read checkpoints."""
    cases: list[Case] = []
    inference_ok = {"truncated shard", "header length beyond file", "garbage header JSON", "unknown dtype", "overlapping data_offsets",
                    "weight_map ../ escape", "weight_map absolute path", "weight_map symlink out", "tensor missing",
                    "int32 tensor for a float one", "config names more layers", "pickle weights only", "config.json not JSON"}
    engine_ok = {"truncated shard", "header length beyond file", "garbage header JSON", "unknown dtype", "overlapping data_offsets",
                 "weight_map ../ escape", "weight_map absolute path", "weight_map symlink out", "pickle weights only", "NaN weight"}
    verbs: dict[str, tuple[set[str], Callable[[Env, Path], list[str]]]] = {
        "inspect": (engine_ok, lambda e, m: ["inspect", str(m), "--scan"]),
        "diff": (engine_ok - {"NaN weight"}, lambda e, m: ["diff", str(m), str(e.model("aligned")), "--device", "cpu"]),
        "realign resta": (engine_ok | {"tensor missing", "int32 tensor for a float one"},
                          lambda e, m: ["realign", "resta", "-f", str(m), "-a", str(e.model("aligned")), "-u", str(e.model("base")),
                                        "-o", "out", "--device", "cpu"]),
        "realign nlsr": (engine_ok - {"NaN weight"} | {"tensor missing", "int32 tensor for a float one"},
                         lambda e, m: ["realign", "nlsr", "-f", str(m), "-a", str(e.model("aligned")), "--base", str(e.model("base")),
                                       "-c", str(e.calibration), "--unit", "weight", "-o", "out", "--device", "cpu"]),
        "eval safety": (inference_ok, lambda e, m: ["eval", "safety", "-m", str(m), "-p", str(e.prompts), "--records", "rec.jsonl",
                                                    *FAST_GEN]),
        "watermark generate": (inference_ok, lambda e, m: ["watermark", "generate", "-m", str(m), "-p", str(e.prompts), "-o", "gen.jsonl",
                                                           *FAST_GEN]),
        "watermark scrub": ({"overlapping data_offsets", "weight_map ../ escape", "tensor missing", "config names more layers"},
                            lambda e, m: ["watermark", "scrub", "--student", str(m), "--reference", str(e.model("aligned")),
                                          "--prompts", str(e.prompts), "--data-only", "-o", "scrub", "--device", "cpu"]),
    }
    for corruption, make in CHECKPOINT_CORRUPTIONS.items():
        for verb, (applies, argv) in verbs.items():
            if corruption not in applies:
                continue
            source = "finetuned-full"

            def build(env: Env, root: Path, make=make, argv=argv, source=source) -> tuple[list[str], tuple[str, ...]]:
                model = copy_input(env.model(source), root / "model")
                needles = make(model)
                return argv(env, model), needles

            cases.append(Case(corruption, verb, build, 3, kind="checkpoint"))
    return cases


def _adapter_cases() -> list[Case]:
    cases: list[Case] = []
    sft = "aligned-sft"
    verbs: dict[str, Callable[[Env, Path], list[str]]] = {
        "inspect": lambda e, a: ["inspect", str(a)],
        "diff": lambda e, a: ["diff", str(a), str(e.model("aligned-lora")), "--device", "cpu"],
        "realign resta": lambda e, a: ["realign", "resta", "-f", str(a), "-a", str(e.model("aligned-lora")), "-u", str(e.model(sft)),
                                       "--as-adapter", "-o", "out", "--device", "cpu"],
        "realign nlsr": lambda e, a: ["realign", "nlsr", "-f", str(a), "-a", str(e.model("aligned-lora")), "-c", str(e.calibration),
                                      "-o", "out", "--device", "cpu"],
        "realign safelora": lambda e, a: ["realign", "safelora", "-a", str(e.model("aligned")), "--base", str(e.model(sft)), "-f", str(a),
                                          "-o", "out", "--device", "cpu"],
        "eval safety": lambda e, a: ["eval", "safety", "-m", str(e.model(sft)), "-a", str(a), "-p", str(e.prompts), *FAST_GEN],
        "watermark generate": lambda e, a: ["watermark", "generate", "-m", str(e.model(sft)), "--adapter", str(a), "-p", str(e.prompts),
                                            "-o", "gen.jsonl", *FAST_GEN],
    }
    for corruption, make in ADAPTER_CORRUPTIONS.items():
        for verb, argv in verbs.items():
            if corruption in ("factor shape wrong", "target module not in base") and verb == "inspect":
                continue  # inspect describes the adapter alone; these show only against a base

            def build(env: Env, root: Path, make=make, argv=argv) -> tuple[list[str], tuple[str, ...]]:
                adapter = copy_input(env.model("finetuned-lora"), root / "adapter")
                needles = make(adapter)
                return argv(env, adapter), needles

            cases.append(Case(corruption, verb, build, 3, kind="adapter"))
    return cases


def _data_cases() -> list[Case]:
    """Every data-file corruption against the verbs that read that kind of file."""
    cases: list[Case] = []
    verbs: dict[str, tuple[str, Callable[[Env, Path], list[str]], set[str]]] = {
        "eval safety": ("prompts", lambda e, d: ["eval", "safety", "-m", str(e.model("base")), "-p", str(d), *FAST_GEN], set()),
        "watermark generate": ("prompts", lambda e, d: ["watermark", "generate", "-m", str(e.model("base")), "-p", str(d), "-o", "gen.jsonl",
                                                        *FAST_GEN], {"garbage .parquet"}),
        "realign nlsr": ("calibration", lambda e, d: ["realign", "nlsr", "-f", str(e.model("finetuned-lora")), "-a",
                                                      str(e.model("aligned-lora")), "-c", str(d), "-o", "out", "--device", "cpu"], set()),
        "realign somf": ("preference", lambda e, d: ["realign", "somf", "-a", str(e.model("aligned-lora")), "-f", str(e.model("finetuned-lora")),
                                                     "-p", str(d), "--steps", "1", "-o", "out", "--device", "cpu"], set()),
        "eval hdc": ("items", lambda e, d: ["eval", "hdc", str(d), "--judge", str(e.judge), "-o", "hdc.jsonl", "--device", "cpu"],
                     {"garbage .parquet"}),
        "eval ace-m3": ("items", lambda e, d: ["eval", "ace-m3", str(d), "--judge", str(e.llava), "-o", "ace.jsonl", "--device", "cpu"],
                        {"garbage .parquet"}),
        "eval agree": ("labels", lambda e, d: ["eval", "agree", "--pred", str(e.pred), "--human", str(d), "--bootstrap", "0"], {"garbage .parquet"}),
        "watermark detect": ("texts", lambda e, d: ["watermark", "detect", str(d), "--tokenizer", str(e.model("tokenizer"))],
                             {"garbage .parquet"}),
        "watermark distill": ("sft", lambda e, d: ["watermark", "distill", "--data", str(d), "--student-init", str(e.model("base")),
                                                   "-o", "student", "--device", "cpu"], {"garbage .parquet"}),
        "watermark scrub": ("prompts", lambda e, d: ["watermark", "scrub", "--student", str(e.model("aligned")), "--reference",
                                                     str(e.model("base")), "--prompts", str(d), "--data-only", "-o", "scrub",
                                                     "--device", "cpu"], {"garbage .parquet"}),
    }
    for corruption, make in DATA_CORRUPTIONS.items():
        for verb, (which, argv, skip) in verbs.items():
            if corruption in skip:
                continue

            def build(env: Env, root: Path, make=make, argv=argv, which=which) -> tuple[list[str], tuple[str, ...]]:
                src = getattr(env, which)
                data = copy_input(src, root / src.name)
                needles = make(data)
                if not data.exists():  # replaced by another format (.parquet)
                    data = data.with_suffix(".parquet")
                return argv(env, data), needles

            cases.append(Case(corruption, verb, build, 3, kind="data"))
    return cases


# -- output situations --------------------------------------------------------------------------

def _other_process_lock(out_name: str) -> Callable[[Path], Callable[[], Callable[[], None]]]:
    """Hold OUT's advisory lock through a separate open file description, as another run would."""

    def hold(root: Path) -> Callable[[], Callable[[], None]]:
        def start() -> Callable[[], None]:
            fd = os.open(root / f".{out_name}.llmguard-lock", os.O_RDWR | os.O_CREAT, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

            def stop() -> None:
                os.unlink(root / f".{out_name}.llmguard-lock")
                os.close(fd)

            return stop

        return start

    return hold


def _stale_temps(out_name: str) -> Callable[[Path, Any], list[str]]:
    def check(root: Path, outcome: Any) -> list[str]:
        left = [p.name for p in root.iterdir() if p.name.startswith(f".{out_name}.llmguard-")]
        return [f"stale temporaries not removed: {left}"] if left else []

    return check


def _plant_stale(root: Path, out_name: str, directory: bool) -> None:
    stale = root / f".{out_name}.llmguard-tmp-999999999"
    if directory:
        stale.mkdir()
        (stale / "model.safetensors").write_bytes(b"partial")
    else:
        stale.write_text("partial")
    old = root / f".{out_name}.llmguard-old-999999998"
    old.mkdir()


WRITERS: dict[str, tuple[str, bool, Callable[[Env, Path, str], list[str]], tuple[str, ...]]] = {
    # verb: (output name, output is a directory, argv(env, prompts copy, out), extra outputs)
    "realign resta": ("out", True, lambda e, p, o: ["realign", "resta", "-f", str(p), "-a", str(e.model("aligned")),
                                                    "-u", str(e.model("base")), "-o", o, "--device", "cpu"], ()),
    "watermark generate": ("gen.jsonl", False, lambda e, p, o: ["watermark", "generate", "-m", str(e.model("base")), "-p", str(p), "-o", o,
                                                                *FAST_GEN], ("gen.jsonl.llmguard.json",)),
    "eval safety": ("rec.jsonl", False, lambda e, p, o: ["eval", "safety", "-m", str(e.model("base")), "-p", str(p), "--records", o,
                                                         *FAST_GEN], ()),
    "eval hdc": ("hdc.jsonl", False, lambda e, p, o: ["eval", "hdc", str(p), "--judge", str(e.judge), "-o", o, "--device", "cpu",
                                                      "--no-cache", "--aspects", "REL", "--max-new-tokens", "4"], ("hdc.jsonl.llmguard.json",)),
    "realign nlsr": ("out", True, lambda e, p, o: ["realign", "nlsr", "-f", str(e.model("finetuned-lora")), "-a", str(e.model("aligned-lora")),
                                                   "-c", str(p), "-o", o, "--device", "cpu"], ()),
    "realign safelora": ("out", True, lambda e, p, o: ["realign", "safelora", "-a", str(e.model("aligned")), "--base", str(e.model("aligned-sft")),
                                                       "-f", str(p), "-o", o, "--device", "cpu"], ()),
    "realign somf": ("out", True, lambda e, p, o: ["realign", "somf", "-a", str(e.model("aligned-lora")), "-f", str(e.model("finetuned-lora")),
                                                   "-p", str(p), "--steps", "1", "-o", o, "--device", "cpu"], ()),
    "watermark scrub": ("scrub", True, lambda e, p, o: ["watermark", "scrub", "--student", str(e.model("aligned")), "--reference",
                                                        str(e.model("base")), "--prompts", str(p), "--data-only", "-o", o, "--device", "cpu",
                                                        "--max-new-tokens", "2"], ()),
    "watermark spoof": ("spoof", True, lambda e, p, o: ["watermark", "spoof", "--student", str(e.model("aligned")), "--reference",
                                                        str(e.model("base")), "--prompts", str(p), "--data-only", "-o", o, "--device", "cpu",
                                                        "--max-new-tokens", "2"], ()),
    "watermark distill": ("student", True, lambda e, p, o: ["watermark", "distill", "--data", str(p), "--student-init",
                                                            str(e.model("base")), "-o", o, "--device", "cpu"], ()),
}

#: the input each writer reads (a private copy), which the output situations point OUT at
WRITER_INPUT = {"eval hdc": "items", "realign resta": "finetuned-full", "realign safelora": "finetuned-lora", "realign nlsr": "calibration",
                "realign somf": "preference", "watermark distill": "sft"}


def _output_cases() -> list[Case]:
    cases: list[Case] = []
    for verb, (out_name, is_dir, argv, extra) in WRITERS.items():
        which = WRITER_INPUT.get(verb, "prompts")

        def prep(env: Env, root: Path, which: str = which) -> Path:
            src = getattr(env, which) if hasattr(env, which) else env.model(which)
            return copy_input(src, root / src.name)

        def out_is_input(env: Env, root: Path, argv=argv, prep=prep) -> tuple[list[str], tuple[str, ...]]:
            data = prep(env, root)
            return argv(env, data, data.name) + ["--force"], ("refusing", data.name)

        def out_symlink_to_input(env: Env, root: Path, argv=argv, prep=prep) -> tuple[list[str], tuple[str, ...]]:
            data = prep(env, root)
            (root / "link").symlink_to(data.name)
            return argv(env, data, "link") + ["--force"], ("refusing",)

        def out_hardlink_to_input(env: Env, root: Path, argv=argv, prep=prep) -> tuple[list[str], tuple[str, ...]]:
            data = prep(env, root)
            os.link(data, root / "hard")
            return argv(env, data, "hard") + ["--force"], ("refusing",)

        def parent_is_file(env: Env, root: Path, argv=argv, prep=prep, out_name=out_name) -> tuple[list[str], tuple[str, ...]]:
            data = prep(env, root)
            (root / "afile").write_text("x")
            return argv(env, data, f"afile/{out_name}"), ("afile", "not a directory")

        def exists_no_force(env: Env, root: Path, argv=argv, prep=prep, out_name=out_name, is_dir=is_dir) -> tuple[list[str], tuple[str, ...]]:
            data = prep(env, root)
            if is_dir:
                (root / out_name).mkdir()
                (root / out_name / "keep.txt").write_text("previous result")
            else:
                (root / out_name).write_text("previous result\n")
            return argv(env, data, out_name), (out_name, "exists")

        def locked(env: Env, root: Path, argv=argv, prep=prep, out_name=out_name) -> tuple[list[str], tuple[str, ...]]:
            data = prep(env, root)
            return argv(env, data, out_name), (out_name, "another llmguard run")

        if verb not in ("eval safety",):  # --records needs no --force to be checked against the prompts
            cases.append(Case("OUT is an input (--force)", verb, out_is_input, 2, kind="output"))
        else:
            cases.append(Case("OUT is an input", verb, lambda e, r, argv=argv, prep=prep: (argv(e, prep(e, r), prep(e, r).name),
                                                                                           ("refusing",)), 2, kind="output"))
        if not is_dir:
            cases.append(Case("OUT a symlink to an input (--force)", verb, out_symlink_to_input, 2, kind="output"))
            cases.append(Case("OUT a hard link to an input (--force)", verb, out_hardlink_to_input, 2, kind="output"))
        cases.append(Case("OUT's parent is a file", verb, parent_is_file, 3, kind="output"))
        cases.append(Case("OUT exists, no --force", verb, exists_no_force, 2, kind="output"))
        if verb in ("realign resta", "watermark generate", "eval safety", "eval hdc", "watermark distill"):
            cases.append(Case("OUT locked by another run", verb, locked, 4, hold=_other_process_lock(out_name), kind="output"))

    # inside an input directory, and --force over a symlink to a directory
    def inside_input(env: Env, root: Path) -> tuple[list[str], tuple[str, ...]]:
        ft = copy_input(env.model("finetuned-full"), root / "ft")
        return (["realign", "resta", "-f", str(ft), "-a", str(env.model("aligned")), "-u", str(env.model("base")), "-o", "ft/realigned",
                 "--device", "cpu"], ("refusing", "input directory"))

    cases.append(Case("OUT inside an input directory", "realign resta", inside_input, 2, kind="output"))

    def out_contains_input(env: Env, root: Path) -> tuple[list[str], tuple[str, ...]]:
        (root / "work").mkdir()
        ft = copy_input(env.model("finetuned-full"), root / "work" / "ft")
        return (["realign", "resta", "-f", str(ft), "-a", str(env.model("aligned")), "-u", str(env.model("base")), "-o", "work",
                 "--device", "cpu", "--force"], ("refusing", "holds the input"))

    cases.append(Case("OUT holds an input (--force)", "realign resta", out_contains_input, 2, kind="output"))

    # stale temporaries of a killed run are removed by the next successful run
    for verb in ("realign resta", "watermark generate"):
        out_name, is_dir, argv, extra = WRITERS[verb]

        def stale(env: Env, root: Path, argv=argv, out_name=out_name, is_dir=is_dir, verb=verb) -> tuple[list[str], tuple[str, ...]]:
            which = WRITER_INPUT.get(verb, "prompts")
            src = getattr(env, which) if hasattr(env, which) else env.model(which)
            data = copy_input(src, root / src.name)
            _plant_stale(root, out_name, is_dir)
            return argv(env, data, out_name), ()

        cases.append(Case("stale temporaries of a killed run", verb, stale, 0, outputs=(out_name, *extra), after=_stale_temps(out_name),
                          kind="output", allowed_changes=(f".{out_name}.llmguard-tmp-999999999", f".{out_name}.llmguard-old-999999998")))

    def force_over_dir_symlink(env: Env, root: Path) -> tuple[list[str], tuple[str, ...]]:
        (root / "previous").mkdir()
        (root / "previous" / "keep.txt").write_text("the symlink's target is not ours to delete")
        (root / "out").symlink_to("previous")
        return (["realign", "resta", "-f", str(env.model("finetuned-full")), "-a", str(env.model("aligned")), "-u", str(env.model("base")),
                 "-o", "out", "--device", "cpu", "--force"], ())

    cases.append(Case("--force over a symlink to a directory", "realign resta", force_over_dir_symlink, 0, outputs=("out",),
                      after=_stale_temps("out"), kind="output"))
    return cases


def _misc_cases() -> list[Case]:
    cases: list[Case] = []

    def gamma_nan(env: Env, root: Path) -> tuple[list[str], tuple[str, ...]]:
        return (["realign", "resta", "-f", str(env.model("finetuned-full")), "-a", str(env.model("aligned")), "-u", str(env.model("base")),
                 "--gamma", "nan", "-o", "out"], ("--gamma",))

    cases.append(Case("--gamma nan", "realign resta", gamma_nan, 2, kind="options"))

    def diff_other_hidden(env: Env, root: Path) -> tuple[list[str], tuple[str, ...]]:
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from helpers import make_llama

        other = make_llama(root / "other", seed=0, hidden_size=64, num_attention_heads=4, num_key_value_heads=4, intermediate_size=256,
                           num_hidden_layers=4, vocab_size=1024)
        return (["diff", str(env.model("finetuned-lora")), str(env.model("aligned-lora")), "--base", str(other), "--device", "cpu"],
                ("finetuned-lora", "delta"))

    cases.append(Case("diff --base of another hidden size", "diff", diff_other_hidden, 3, kind="adapter"))

    def diff_zero_delta(env: Env, root: Path) -> tuple[list[str], tuple[str, ...]]:
        m = str(env.model("finetuned-full"))
        return ["diff", m, m, "--base", m, "--json", "--device", "cpu"], ()

    def strict_json(root: Path, outcome: Any) -> list[str]:
        def refuse(constant: str) -> None:
            raise ValueError(constant)

        try:
            json.loads(outcome.stdout, parse_constant=refuse)
        except ValueError as err:
            return [f"stdout is not valid JSON ({err})"]
        return []

    cases.append(Case("zero deltas (undefined cosines) with --json", "diff", diff_zero_delta, 0, after=strict_json, kind="options"))

    def diff_nan_json(env: Env, root: Path) -> tuple[list[str], tuple[str, ...]]:
        model = copy_input(env.model("finetuned-full"), root / "model")
        nan_weight(model)
        return ["diff", str(model), str(env.model("aligned")), "--json", "--device", "cpu"], ()

    cases.append(Case("NaN weight with --json (NaN statistics)", "diff", diff_nan_json, 0, after=strict_json, kind="checkpoint"))
    return cases


def cases() -> list[Case]:
    return _ckpt_cases() + _adapter_cases() + _data_cases() + _output_cases() + _misc_cases()


# ----------------------------------------------------------------------------- running


def shared_inputs(env: Env) -> list[Path]:
    """The clean inputs every case reads in place (hashed before and after the whole corpus)."""
    names = ("base", "aligned", "aligned-sft", "aligned-lora", "finetuned-lora", "finetuned-full", "tokenizer")
    return [env.model(n) for n in names] + [env.data, env.judge]


def run_all(env: Env, work: Path, only: Callable[[Case], bool] | None = None) -> list[Any]:
    """Every case in its own directory under ``work``; the shared inputs must come out unchanged."""
    from harness import Outcome, run_case, snapshot

    before = {str(p): snapshot(p) for p in shared_inputs(env)}
    outcomes: list[Outcome] = []
    for i, case in enumerate(cases()):
        if only is not None and not only(case):
            continue
        root = work / f"case-{i:03d}"
        root.mkdir(parents=True)
        argv, needles = case.build(env, root)
        hold = case.hold(root) if case.hold is not None else None
        outcome = run_case(case.name, case.verb, root, argv, case.expected, needles, case.outputs, case.allowed_changes, hold)
        if case.after is not None:
            outcome.leftovers += case.after(root, outcome)
        outcome.kind = case.kind  # type: ignore[attr-defined]
        outcomes.append(outcome)
    for path, digest in before.items():
        now = snapshot(Path(path))
        changed = sorted(k for k in set(digest) | set(now) if digest.get(k) != now.get(k))
        if changed:
            bad = Outcome("shared inputs", "(all)", 0, 0, "")
            bad.changed_inputs = [f"{path}/{c}" for c in changed]
            outcomes.append(bad)
    return outcomes
