"""Reuse of a demo command's result, keyed by everything that can change it.

Only the watermark-attack step uses it: each attack writes contrastive data, distils a student
and measures it (tens of CPU-seconds), and on one machine the same inputs give the same bytes,
like the testbeds the demo reuses. A result is reused only when the key matches, and the key
covers

- the command's arguments (every flag and value, the output path left out) and, for each
  argument naming a file or directory, the bytes of every file in it;
- the code: every file of the installed ``llmguard`` package;
- the environment: python, torch, transformers, peft, safetensors, numpy versions, the CPU
  vector path (``testbed.provenance.build_key``) and the torch thread count.

The stored result is the command's JSON document and its output directory, under
``$LLMGUARD_CACHE/demo-results/<key>``; reusing copies the directory into the demo's work dir.
The demo's row says so in its note, and ``llmguard demo --fresh`` runs every command again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

KEY_VERSION = "demo-result-v1"


def _digest_path(path: Path, h: "hashlib._Hash") -> None:
    if path.is_file():
        h.update(b"F")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return
    for sub in sorted(p for p in path.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        h.update(str(sub.relative_to(path)).encode() + b"\0")
        _digest_path(sub, h)


def code_digest() -> str:
    """SHA-256 over every file of the ``llmguard`` package (its relative path and bytes)."""
    import llmguard

    h = hashlib.sha256()
    _digest_path(Path(llmguard.__file__).resolve().parent, h)
    return h.hexdigest()


def command_key(args: list[str]) -> str:
    """The cache key of ``llmguard ARGS`` (``args`` without the output path)."""
    import platform

    import torch

    from llmguard.provenance import _version
    from llmguard.testbed.provenance import build_key

    h = hashlib.sha256()
    env = {"python": platform.python_version(), "build_key": build_key(), "torch_threads": torch.get_num_threads(),
           **{lib: _version(lib) for lib in ("torch", "transformers", "peft", "safetensors", "numpy")}}
    h.update(json.dumps({"v": KEY_VERSION, "args": args, "env": env, "code": code_digest()}, sort_keys=True).encode())
    for arg in args:
        path = Path(arg)
        if len(arg) < 4096 and os.sep in arg and path.exists():
            h.update(b"\0path\0" + arg.encode() + b"\0")
            _digest_path(path, h)
    return h.hexdigest()


def cache_dir(key: str) -> Path:
    from llmguard.testbed.provenance import cache_root

    return cache_root() / "demo-results" / key[:32]


def load(key: str, output: Path) -> Any | None:
    """The stored document of ``key`` with its output directory copied to ``output``; None if absent."""
    root = cache_dir(key)
    try:
        meta = json.loads((root / "result.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("key") != key:
        return None
    if output.exists():
        shutil.rmtree(output)
    shutil.copytree(root / "output", output)
    return meta["document"]


def store(key: str, document: Any, output: Path) -> None:
    """Keep ``document`` and a copy of ``output`` for ``key`` (atomically; a failure only loses the cache entry)."""
    root = cache_dir(key)
    tmp = root.with_name(f".{root.name}.{os.getpid()}.tmp")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shutil.copytree(output, tmp / "output")
        (tmp / "result.json").write_text(json.dumps({"key": key, "document": document}))
        if root.exists():
            shutil.rmtree(root)
        tmp.replace(root)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
