"""What an interrupted ``watermark generate`` leaves to ``--resume`` from, and reading it back.

After every batch the finished continuations are appended to ``.OUT.llmguard-partial`` (one JSON
line per prompt: its index and text) and ``.OUT.llmguard-partial.state.json`` is replaced with the
number of finished batches, the torch RNG state after them and a fingerprint of everything that
decides the result (prompts, model, adapter, every generation parameter). ``--resume`` checks the
fingerprint, restores the RNG state and continues with the next batch, so the records equal those
of an uninterrupted run (sampling included). The final OUT is still written atomically; the
partial files go once it is in place. A run without ``--resume`` starts over.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmguard.errors import InvalidInputError, UsageError


def partial_paths(out: Path) -> tuple[Path, Path]:
    partial = out.parent / f".{out.name}.llmguard-partial"
    return partial, partial.with_name(partial.name + ".state.json")


def fingerprint(prompts: list[str], settings: dict[str, Any]) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for prompt in prompts:
        digest.update(hashlib.sha256(prompt.encode()).digest())
    return digest.hexdigest()


@dataclass
class ResumeState:
    """The finished batches of an interrupted run (empty when starting over)."""

    batches: int = 0
    texts: dict[int, str] = field(default_factory=dict)
    rng: bytes | None = None
    cuda_rng: list[bytes] | None = None


def load(out: Path, print_: str) -> ResumeState:
    """The state of an unfinished run of ``out`` whose fingerprint is ``print_`` (exit 2 otherwise)."""
    partial, state_path = partial_paths(out)
    if not state_path.is_file() or not partial.is_file():
        raise UsageError(f"--resume: no unfinished run of {out} to resume ({state_path.name} does not exist)")
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
        if state["fingerprint"] != print_:
            raise UsageError(f"--resume: the unfinished run of {out} used other prompts, model or settings; "
                             "rerun with its options, or without --resume to start over")
        texts: dict[int, str] = {}
        for line in partial.read_text(encoding="utf-8").splitlines(keepends=True):
            if not line.endswith("\n"):
                break  # a torn last line: its batch is not counted as finished
            rec = json.loads(line)
            if int(rec["batch"]) < int(state["batches"]):
                texts[int(rec["index"])] = str(rec["text"])
        cuda = [base64.b64decode(s) for s in state.get("cuda_rng") or []] or None
        return ResumeState(int(state["batches"]), texts, base64.b64decode(state["rng"]), cuda)
    except UsageError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise InvalidInputError(f"{state_path}: unfinished-run state is unreadable ({err}); rerun without --resume") from None


class PartialWriter:
    """Appends each finished batch and records the RNG state after it (``on_batch`` of generate)."""

    def __init__(self, out: Path, print_: str, resumed: ResumeState) -> None:
        self.partial, self.state_path = partial_paths(out)
        self.print = print_
        if resumed.batches == 0:
            self.partial.unlink(missing_ok=True)
            self.state_path.unlink(missing_ok=True)
        else:  # drop a torn line or records of an unfinished batch before appending
            kept = [json.dumps({"batch": 0, "index": i, "text": t}, ensure_ascii=False) + "\n" for i, t in sorted(resumed.texts.items())]
            self.partial.write_text("".join(kept), encoding="utf-8")
        self._fh = open(self.partial, "a", encoding="utf-8")

    def __call__(self, batch_index: int, indices: list[int], texts: list[str]) -> None:
        import torch

        for i, text in zip(indices, texts):
            self._fh.write(json.dumps({"batch": batch_index, "index": i, "text": text}, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        state = {"fingerprint": self.print, "batches": batch_index + 1,
                 "rng": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda_rng"] = [base64.b64encode(s.numpy().tobytes()).decode() for s in torch.cuda.get_rng_state_all()]
        tmp = self._state_tmp()
        try:
            tmp.write_text(json.dumps(state), encoding="utf-8")
            tmp.replace(self.state_path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def _state_tmp(self) -> Path:
        return self.state_path.with_name(self.state_path.name + f".tmp-{os.getpid()}")

    def close(self) -> None:
        try:
            self._fh.close()
        except OSError:
            pass  # a full disk fails the flush again; the caller reports the first error
        self._state_tmp().unlink(missing_ok=True)

    def remove(self) -> None:
        self.close()
        self.partial.unlink(missing_ok=True)
        self.state_path.unlink(missing_ok=True)


def restore_rng(state: ResumeState) -> None:
    import torch

    if state.rng is not None:
        torch.set_rng_state(torch.frombuffer(bytearray(state.rng), dtype=torch.uint8))
    if state.cuda_rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.frombuffer(bytearray(s), dtype=torch.uint8) for s in state.cuda_rng])
