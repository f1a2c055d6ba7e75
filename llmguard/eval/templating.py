"""Judge prompt templates: directories of text files plus a ``preset.json``, hashed into results.

A template directory holds ``preset.json`` (criteria, names, scale, an ``experimental`` flag
with the reason) and one ``.txt`` file per prompt (``single.txt``, ``pairwise.txt`` for HDC;
``branch.txt``, ``conclusion.txt`` for ACE-M3). The shipped presets live in
``llmguard/eval/templates/<name>/``; ``--template DIR`` replaces them. Placeholders are
``{name}``; literal braces are written ``{{`` and ``}}``. The template hash (SHA-256 over every
file's name and bytes) goes into every result record, so results from different prompts are
never mixed silently.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmguard.errors import InvalidInputError

TEMPLATES_ROOT = Path(__file__).resolve().parent / "templates"


@dataclass(frozen=True)
class TemplateSet:
    """A loaded template directory."""

    name: str
    directory: Path
    preset: dict[str, Any]
    prompts: dict[str, str]
    hash: str
    shipped: bool = field(default=True)

    @property
    def experimental(self) -> bool:
        return bool(self.preset.get("experimental", False))

    @property
    def scale(self) -> tuple[float, float]:
        lo, hi = self.preset.get("scale", [0, 5])
        return float(lo), float(hi)

    def prompt(self, name: str) -> str:
        if name not in self.prompts:
            raise InvalidInputError(f"{self.directory}: template file {name}.txt is missing")
        return self.prompts[name]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.preset.get("version"),
            "directory": str(self.directory),
            "shipped": self.shipped,
            "hash": self.hash,
            "experimental": self.experimental,
            "status": self.preset.get("status"),
        }


def hash_directory(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith(".")):
        digest.update(path.name.encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def load_templates(preset: str, directory: str | Path | None = None) -> TemplateSet:
    """Load the shipped preset ``preset`` or, with ``directory``, a user's template directory."""
    shipped = directory is None
    path = TEMPLATES_ROOT / preset if shipped else Path(directory).expanduser()
    if not path.is_dir():
        raise InvalidInputError(f"{path}: template directory does not exist")
    preset_file = path / "preset.json"
    try:
        data = json.loads(preset_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InvalidInputError(f"{preset_file}: missing (a template directory needs preset.json)") from None
    except json.JSONDecodeError as err:
        raise InvalidInputError(f"{preset_file}: not valid JSON (line {err.lineno}: {err.msg})") from None
    if not isinstance(data, dict):
        raise InvalidInputError(f"{preset_file}: must be a JSON object")
    prompts = {p.stem: p.read_text(encoding="utf-8") for p in sorted(path.glob("*.txt"))}
    for name, text in prompts.items():
        try:
            list(string.Formatter().parse(text))
        except ValueError as err:
            raise InvalidInputError(f"{path / (name + '.txt')}: bad placeholder syntax: {err}") from None
    scale = data.get("scale", [0, 5])
    if not (isinstance(scale, list) and len(scale) == 2 and all(isinstance(v, (int, float)) for v in scale) and scale[0] < scale[1]):
        raise InvalidInputError(f"{preset_file}: 'scale' must be [low, high] with low < high")
    return TemplateSet(
        name=str(data.get("name", preset)), directory=path, preset=data, prompts=prompts,
        hash=hash_directory(path), shipped=shipped,
    )


class _Strict(dict):
    def __missing__(self, key: str) -> str:
        raise KeyError(key)


def render(text: str, values: dict[str, Any], *, where: str) -> str:
    """Fill ``{placeholders}``; an unknown placeholder is an error naming the template file."""
    try:
        return string.Formatter().vformat(text, (), _Strict(values))
    except KeyError as err:
        raise InvalidInputError(f"{where}: unknown placeholder {{{err.args[0]}}} (known: {', '.join(sorted(values))})") from None
    except (IndexError, ValueError) as err:
        raise InvalidInputError(f"{where}: cannot render: {err}") from None


def prompt_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
