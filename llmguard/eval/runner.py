"""The shared judge runner: one judge model, many prompts, honest outcomes.

:class:`JudgeRunner` takes :class:`JudgeRequest` s (a rendered prompt, an optional image and a
parser) and returns :class:`JudgeOutcome` s (raw output, parse result, attempts, timing), in
chunks so callers can write records as they go (a killed run loses at most one chunk and
``--resume`` picks up from there). It

- loads the judge lazily (a run served entirely from the cache loads nothing) and, if the
  judge cannot be loaded or is not generative, turns every request into a ``judge_error``
  outcome instead of stopping the run;
- generates greedily in length-bucketed batches through :func:`llmguard.inference.generate`
  (text judges) or :func:`llmguard.eval.image_text.generate_image_text` (LLaVA-layout judges),
  or through vLLM with ``backend="vllm"`` when it is installed;
- parses every output; an unparsable one is regenerated at most ``retries`` times by
  sampling (``retry_temperature``) with a recorded seed ``seed + attempt``, and every attempt is
  kept in the outcome; a score is never invented;
- caches every generation by (judge fingerprint, prompt hash, image hash, decoding).
"""

from __future__ import annotations

import gc
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmguard.errors import LLMGuardError, ResourceError, UsageError
from llmguard.eval.cache import GenerationCache, cache_key
from llmguard.eval.parsing import ParseResult
from llmguard.eval.templating import prompt_hash
from llmguard.progress import NullProgress, Progress

BACKENDS = ("hf", "vllm")


@dataclass(frozen=True)
class JudgeConfig:
    """Which judge and how to load it."""

    path: str
    device: str = "auto"
    dtype: str = "auto"
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    trust_remote_code: bool = False
    backend: str = "hf"
    modality: str = "text"  # "text" or "image-text"


@dataclass(frozen=True)
class Decoding:
    """Decoding and batching; greedy first, sampled retries only on parse failure."""

    max_new_tokens: int = 512
    batch_size: int = 8
    prompt_format: str = "auto"
    retries: int = 0
    retry_temperature: float = 0.7
    seed: int = 0

    def params(self, attempt: int) -> dict[str, Any]:
        if attempt == 0:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False, "temperature": None,
                    "seed": None, "prompt_format": self.prompt_format}
        return {"max_new_tokens": self.max_new_tokens, "do_sample": True, "temperature": self.retry_temperature,
                "seed": self.seed + attempt, "prompt_format": self.prompt_format}

    def to_json(self) -> dict[str, Any]:
        return {"max_new_tokens": self.max_new_tokens, "batch_size": self.batch_size,
                "prompt_format": self.prompt_format, "retries": self.retries,
                "retry_temperature": self.retry_temperature, "seed": self.seed, "greedy": True}


@dataclass
class JudgeRequest:
    key: Any
    prompt: str
    parse: Callable[[str, bool], Any]
    image: Any = None
    image_hash: str | None = None
    #: anything the caller wants back
    payload: Any = None

    @property
    def prompt_sha(self) -> str:
        return prompt_hash(self.prompt)


@dataclass
class JudgeOutcome:
    request: JudgeRequest
    raw: str | None = None
    parsed: Any = None
    attempts: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    output_tokens: int = 0
    cached: bool = False
    error: str | None = None


def parsed_ok(parsed: Any) -> bool:
    if isinstance(parsed, ParseResult):
        return parsed.ok
    if isinstance(parsed, dict):
        return all(p.ok for p in parsed.values())
    return bool(getattr(parsed, "ok", False))


def parsed_status(parsed: Any) -> str:
    if isinstance(parsed, ParseResult):
        return parsed.status
    if isinstance(parsed, dict):
        statuses = [p.status for p in parsed.values()]
        bad = [s for s in statuses if s != "ok"]
        return bad[0] if bad else "ok"
    return str(getattr(parsed, "status", "unknown"))


def judge_fingerprint(path: str) -> str:
    """Identify a judge without loading it: SHA-256 over config/tokenizer/processor files and,
    per weight file, its name, size and safetensors header. A hub id hashes as its name."""
    local = Path(path).expanduser()
    digest = hashlib.sha256()
    if not local.is_dir():
        digest.update(b"id:" + path.encode())
        return digest.hexdigest()
    for p in sorted(local.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        digest.update(p.name.encode() + b"\0")
        if p.suffix == ".safetensors":
            size = p.stat().st_size
            with open(p, "rb") as fh:
                head = fh.read(8)
                n = int.from_bytes(head, "little") if len(head) == 8 else 0
                digest.update(head + fh.read(min(n, 64 << 20)))
            digest.update(str(size).encode())
        elif p.stat().st_size <= (64 << 20):
            digest.update(p.read_bytes())
        else:
            digest.update(str(p.stat().st_size).encode())
    return digest.hexdigest()


class _Backend:
    def format(self, prompt: str) -> str:
        raise NotImplementedError

    def generate(self, prompts: list[str], images: list[Any] | None, params: dict[str, Any]) -> list[str]:
        raise NotImplementedError

    def count_tokens(self, text: str) -> int:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _HFText(_Backend):
    def __init__(self, cfg: JudgeConfig, decoding: Decoding) -> None:
        from llmguard.inference import load_causal_lm

        self.decoding = decoding
        self.model, self.tokenizer = load_causal_lm(
            cfg.path, device=cfg.device, dtype=cfg.dtype, load_in_4bit=cfg.load_in_4bit,
            load_in_8bit=cfg.load_in_8bit, trust_remote_code=cfg.trust_remote_code,
        )
        can_generate = getattr(self.model, "can_generate", None)
        if callable(can_generate) and not can_generate():
            from llmguard.errors import InvalidInputError

            raise InvalidInputError(f"{cfg.path}: {type(self.model).__name__} is not a generative model")

    def format(self, prompt: str) -> str:
        from llmguard.inference import format_prompt

        return format_prompt(self.tokenizer, prompt, self.decoding.prompt_format)

    def generate(self, prompts: list[str], images: list[Any] | None, params: dict[str, Any]) -> list[str]:
        from llmguard.inference import generate

        return generate(
            self.model, self.tokenizer, prompts, max_new_tokens=params["max_new_tokens"],
            batch_size=self.decoding.batch_size, do_sample=params["do_sample"],
            temperature=params["temperature"] or 1.0, seed=params["seed"],
        )

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def close(self) -> None:
        del self.model


class _HFImageText(_Backend):
    def __init__(self, cfg: JudgeConfig, decoding: Decoding) -> None:
        from llmguard.eval.image_text import load_image_text_model

        self.decoding = decoding
        self.model, self.processor = load_image_text_model(
            cfg.path, device=cfg.device, dtype=cfg.dtype, load_in_4bit=cfg.load_in_4bit,
            load_in_8bit=cfg.load_in_8bit, trust_remote_code=cfg.trust_remote_code,
        )

    def format(self, prompt: str) -> str:
        from llmguard.eval.image_text import format_image_prompt

        return format_image_prompt(self.processor, prompt, self.decoding.prompt_format)

    def generate(self, prompts: list[str], images: list[Any] | None, params: dict[str, Any]) -> list[str]:
        from llmguard.eval.image_text import generate_image_text

        return generate_image_text(
            self.model, self.processor, prompts, images or [], max_new_tokens=params["max_new_tokens"],
            batch_size=self.decoding.batch_size, do_sample=params["do_sample"],
            temperature=params["temperature"] or 1.0, seed=params["seed"],
        )

    def count_tokens(self, text: str) -> int:
        return len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])

    def close(self) -> None:
        del self.model


class _VLLM(_Backend):
    def __init__(self, cfg: JudgeConfig, decoding: Decoding) -> None:
        vllm = require_vllm()
        if cfg.load_in_4bit or cfg.load_in_8bit:
            raise UsageError("--backend vllm: use a pre-quantised checkpoint instead of --load-in-4bit/8bit")
        self._vllm = vllm
        self.decoding = decoding
        self.modality = cfg.modality
        dtype = "auto" if cfg.dtype == "auto" else cfg.dtype
        self.llm = vllm.LLM(model=cfg.path, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
        self.tokenizer = self.llm.get_tokenizer()

    def format(self, prompt: str) -> str:
        from llmguard.inference import format_prompt

        if self.modality == "image-text":
            # LLaVA layout: one image placeholder before the text (untested: no GPU in CI)
            prompt = "<image>\n" + prompt
        return format_prompt(self.tokenizer, prompt, self.decoding.prompt_format)

    def generate(self, prompts: list[str], images: list[Any] | None, params: dict[str, Any]) -> list[str]:
        sp = self._vllm.SamplingParams(
            max_tokens=params["max_new_tokens"],
            temperature=params["temperature"] if params["do_sample"] else 0.0,
            seed=params["seed"],
        )
        if images:
            inputs = [{"prompt": p, "multi_modal_data": {"image": im}} for p, im in zip(prompts, images)]
        else:
            inputs = prompts
        return [o.outputs[0].text for o in self.llm.generate(inputs, sp, use_tqdm=False)]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def close(self) -> None:
        del self.llm


def require_vllm() -> Any:
    """Import vllm or fail with exit 4 and the install hint."""
    try:
        import vllm  # type: ignore[import-not-found]
    except ImportError:
        raise ResourceError("--backend vllm needs the vllm package (GPU only): pip install vllm; or use --backend hf") from None
    return vllm


class JudgeRunner:
    """Runs one judge over requests; see the module docstring."""

    def __init__(
        self,
        config: JudgeConfig,
        decoding: Decoding,
        *,
        cache: GenerationCache | None = None,
        progress: Progress | None = None,
        chunk_size: int | None = None,
    ) -> None:
        if config.backend not in BACKENDS:
            raise UsageError(f"--backend: {config.backend!r} is not one of {', '.join(BACKENDS)}")
        if config.backend == "vllm":
            require_vllm()
        self.config = config
        self.decoding = decoding
        self.cache = cache
        self.progress = progress or NullProgress()
        self.chunk_size = chunk_size or max(decoding.batch_size * 4, 16)
        self.fingerprint = judge_fingerprint(config.path)
        self._backend: _Backend | None = None
        self.load_error: str | None = None
        self.load_seconds = 0.0
        self.stats = {"generated": 0, "cached": 0, "generate_seconds": 0.0, "output_tokens": 0, "retries": 0}

    def _ensure_backend(self) -> _Backend | None:
        if self._backend is not None or self.load_error is not None:
            return self._backend
        t0 = time.perf_counter()
        try:
            if self.config.backend == "vllm":
                self._backend = _VLLM(self.config, self.decoding)
            elif self.config.modality == "image-text":
                self._backend = _HFImageText(self.config, self.decoding)
            else:
                self._backend = _HFText(self.config, self.decoding)
        except ResourceError:
            raise
        except LLMGuardError as err:
            self.load_error = err.message
        self.load_seconds = time.perf_counter() - t0
        return self._backend

    def _key(self, req: JudgeRequest, params: dict[str, Any]) -> str:
        return cache_key(self.fingerprint, req.prompt_sha, req.image_hash, params)

    def run(self, requests: Sequence[JudgeRequest], stage: str = "judge") -> Iterator[list[JudgeOutcome]]:
        """Yield outcomes chunk by chunk (in request order within a chunk)."""
        self.progress.stage(stage, total=len(requests))
        for start in range(0, len(requests), self.chunk_size):
            chunk = list(requests[start : start + self.chunk_size])
            outcomes = self._run_chunk(chunk)
            self.progress.advance(len(chunk))
            yield outcomes

    def _run_chunk(self, chunk: list[JudgeRequest]) -> list[JudgeOutcome]:
        outcomes = [JudgeOutcome(request=r) for r in chunk]
        pending = list(range(len(chunk)))
        for attempt in range(self.decoding.retries + 1):
            if not pending:
                break
            params = self.decoding.params(attempt)
            if attempt > 0:
                self.stats["retries"] += len(pending)
            texts, token_counts, cached_flags, seconds, error = self._generate([chunk[i] for i in pending], params)
            next_pending = []
            for j, i in enumerate(pending):
                out = outcomes[i]
                if error is not None:
                    out.error = error
                    out.attempts.append({"attempt": attempt, "error": error})
                    continue
                text = texts[j]
                tokens = token_counts[j]
                truncated = tokens >= params["max_new_tokens"] - 1
                parsed = chunk[i].parse(text, truncated)
                out.raw, out.parsed, out.cached = text, parsed, cached_flags[j]
                out.seconds += seconds[j]
                out.output_tokens = tokens
                out.attempts.append({
                    "attempt": attempt, "do_sample": params["do_sample"], "temperature": params["temperature"],
                    "seed": params["seed"], "parse_status": parsed_status(parsed), "cached": cached_flags[j],
                    **({"raw_output": text} if attempt > 0 or not parsed_ok(parsed) else {}),
                })
                if not parsed_ok(parsed):
                    next_pending.append(i)
            if error is not None:
                break
            pending = next_pending
        return outcomes

    def _generate(
        self, reqs: list[JudgeRequest], params: dict[str, Any]
    ) -> tuple[list[str], list[int], list[bool], list[float], str | None]:
        texts: list[str | None] = [None] * len(reqs)
        tokens = [0] * len(reqs)
        cached = [False] * len(reqs)
        seconds = [0.0] * len(reqs)
        keys = [self._key(r, params) for r in reqs]
        if self.cache is not None:
            for i, k in enumerate(keys):
                hit = self.cache.get(k)
                if hit is not None:
                    entry = json.loads(hit)
                    texts[i], tokens[i], cached[i] = entry["text"], int(entry["tokens"]), True
        todo = [i for i, t in enumerate(texts) if t is None]
        if todo:
            backend = self._ensure_backend()
            if backend is None:
                return [], [], [], [], f"judge {self.config.path} could not be used: {self.load_error}"
            prompts = [backend.format(reqs[i].prompt) for i in todo]
            images = [reqs[i].image for i in todo] if self.config.modality == "image-text" else None
            t0 = time.perf_counter()
            generated = backend.generate(prompts, images, params)
            elapsed = time.perf_counter() - t0
            self.stats["generate_seconds"] += elapsed
            self.stats["generated"] += len(todo)
            for i, text in zip(todo, generated):
                texts[i] = text
                tokens[i] = backend.count_tokens(text)
                seconds[i] = elapsed / len(todo)
                self.stats["output_tokens"] += tokens[i]
            if self.cache is not None:
                self.cache.put_many([(keys[i], json.dumps({"text": texts[i] or "", "tokens": tokens[i]})) for i in todo])
        self.stats["cached"] += len(reqs) - len(todo)
        return [t or "" for t in texts], tokens, cached, seconds, None

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None
            gc.collect()
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except ImportError:  # pragma: no cover
                pass

    def describe(self) -> dict[str, Any]:
        return {"path": self.config.path, "fingerprint": self.fingerprint, "backend": self.config.backend,
                "modality": self.config.modality, "load_error": self.load_error}


def check_resumed_judges(existing: Sequence[dict[str, Any]], expected: dict[str, str], where: Path) -> None:
    """Refuse to resume a results file whose records for a criterion came from another judge
    (``expected``: criterion -> judge fingerprint)."""
    for rec in existing:
        crit, fp = rec.get("criterion"), rec.get("judge_fingerprint")
        if fp and crit in expected and expected[crit] != fp:
            raise UsageError(
                f"{where}: records for {crit} were written by another judge ({rec.get('judge')}); "
                "resume with the same judge or write a new output"
            )


def throughput(stats: dict[str, Any]) -> dict[str, Any]:
    secs = stats.get("generate_seconds", 0.0)
    return {
        **stats,
        "items_per_second": round(stats["generated"] / secs, 3) if secs else None,
        "tokens_per_second": round(stats["output_tokens"] / secs, 1) if secs else None,
    }


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True)
