"""The verb framework: options validated once, replace, manifest, and the Typer command derived from them."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from llmguard.cli.derive import JSON_FLAG, verb_command
from llmguard.errors import UsageError
from llmguard.options import PANEL_INPUT, PANEL_METHOD, Options, option

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True, kw_only=True)
class ToyOptions(Options):
    verb: ClassVar[str] = "toy run"

    model: Path = option(help="The model directory.", short="-m", panel=PANEL_INPUT, manifest=False)
    ratio: float = option(0.2, help="Fraction kept, in (0, 1).", min=0, max=1, min_exclusive=True, max_exclusive=True, panel=PANEL_METHOD)
    alpha: float = option(0.9, help="Amplification.", min=0)
    count: int | None = option(None, help="How many (default: all).", min=1, metavar="N")
    mode: str = option("fast", help="fast or exact.", choices=("fast", "exact"))
    scorer: str = option("b", help="A strategy name.", choices=lambda: ["a", "b"])
    select_mode: str = option("least", help="Selection rule.", flag="--select", manifest_key="select")
    extras: tuple[Path, ...] = option((), help="Repeat for more inputs.", flag="--extra")
    force: bool = option(False, help="Replace OUT.", manifest=False)
    pairs: tuple[tuple[str, str], ...] | None = option(None, help="In-memory data.", cli=False, manifest=False)

    def validate(self) -> None:
        if self.mode == "exact" and self.count is None:
            raise UsageError("--mode exact needs --count")


def test_construction_normalises_and_validates_once() -> None:
    opts = ToyOptions(model="m", extras=["a", Path("b")])
    assert opts.model == Path("m") and opts.extras == (Path("a"), Path("b"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.alpha = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"ratio": 1.5}, "--ratio 1.5: must lie strictly between 0 and 1"),
        ({"ratio": float("nan")}, "--ratio nan: must lie strictly between 0 and 1"),
        ({"alpha": -1.0}, "--alpha -1.0: must be non-negative"),
        ({"count": 0}, "--count 0: must be at least 1"),
        ({"mode": "slow"}, "--mode 'slow': choose fast, exact"),
        ({"scorer": "z"}, "--scorer 'z': choose a, b"),
        ({"select_mode": "x", "mode": "exact"}, "--mode exact needs --count"),
    ],
)
def test_bad_values_are_one_line_usage_errors(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError) as info:
        ToyOptions(model="m", **changes)
    assert info.value.message == message and info.value.exit_code == 2


def test_replace_is_a_validated_copy() -> None:
    opts = ToyOptions(model="m")
    point = opts.replace(alpha=0.5, mode="exact", count=3)
    assert (point.alpha, point.count, opts.alpha, opts.count) == (0.5, 3, 0.9, None)
    assert point.model == opts.model
    with pytest.raises(UsageError, match="needs --count"):
        opts.replace(mode="exact")
    with pytest.raises(UsageError, match="--alpha"):
        opts.replace(alpha=-2.0)


def test_manifest_is_written_from_the_options() -> None:
    opts = ToyOptions(model="m", extras=["x"], select_mode="official")
    assert opts.to_manifest() == {"ratio": 0.2, "alpha": 0.9, "count": None, "mode": "fast", "scorer": "b",
                                  "select": "official", "extras": ["x"]}
    assert ToyOptions.flag("select_mode") == "--select" and ToyOptions.flag("count") == "--count"


def test_an_undecorated_subclass_or_a_bare_field_is_refused() -> None:
    class Undecorated(ToyOptions):
        pass

    with pytest.raises(TypeError, match="must be decorated"):
        Undecorated(model="m")

    @dataclass(frozen=True, kw_only=True)
    class Bare(Options):
        x: int = 1

    with pytest.raises(TypeError, match="option"):
        Bare()


def _toy_app(seen: list) -> typer.Typer:
    app = typer.Typer()

    @verb_command(app, "run", ToyOptions, extra={"json_output": JSON_FLAG})
    def run(options: ToyOptions, *, json_output: bool = False) -> None:
        """Run the toy verb."""
        seen.append((options, json_output))

    @app.command("other")
    def _other() -> None:  # a second command keeps `run` a sub-command
        pass

    return app


def test_derived_command_flags_help_and_defaults_follow_the_options() -> None:
    command = typer.main.get_command(_toy_app([])).commands["run"]
    params = {p.name: p for p in command.params}
    cli_fields = [f for f in ToyOptions.fields() if f.spec.cli]
    assert set(params) == {f.name for f in cli_fields} | {"json_output"}
    for f in cli_fields:
        param = params[f.name]
        assert f.flag in param.opts and param.help == f.spec.help, f.name
        assert param.required == f.required, f.name
    assert params["model"].opts == ["--model", "-m"] and params["select_mode"].opts == ["--select"]
    assert params["ratio"].default == 0.2 and params["mode"].default == "fast" and params["count"].default is None
    assert params["extras"].multiple and params["force"].is_flag and params["json_output"].opts == ["--json"]
    assert params["count"].metavar == "N"
    assert command.help.startswith("Run the toy verb.")


def test_derived_command_builds_validated_options() -> None:
    seen: list = []
    app = _toy_app(seen)
    runner = CliRunner()
    result = runner.invoke(app, ["run", "-m", "dir", "--ratio", "0.5", "--extra", "a", "--extra", "b", "--select", "official", "--json"])
    assert result.exit_code == 0, result.output
    options, json_output = seen[-1]
    assert isinstance(options, ToyOptions) and json_output
    assert (options.model, options.ratio, options.extras, options.select_mode) == (Path("dir"), 0.5, (Path("a"), Path("b")), "official")
    assert options.pairs is None and options.alpha == 0.9
    result = runner.invoke(app, ["run", "-m", "dir"])
    assert result.exit_code == 0 and seen[-1][0] == ToyOptions(model="dir")
    bad = runner.invoke(app, ["run", "-m", "dir", "--mode", "exact"])
    assert bad.exit_code == 2 and "--mode exact needs --count" in bad.output
    missing = runner.invoke(app, ["run"])
    assert missing.exit_code == 2


def test_every_registered_method_has_a_cli_verb_a_demo_step_and_docs() -> None:
    from llmguard.realign.registry import methods
    from llmguard.cli.demo_runner import load_steps, verb_exists

    steps = load_steps()
    assert methods(), "no realign method registered"
    for name, method in methods().items():
        assert verb_exists("realign", name), name
        assert method.demo_step in steps, (name, method.demo_step)
        docs = (ROOT / method.docs).read_text()
        assert re.search(rf"^#+ `realign {re.escape(name)}`", docs, re.M), (name, method.docs)
        options = method.options_class()
        assert issubclass(options, Options) and options.verb == f"realign {name}"


def test_realign_commands_are_derived_from_the_registered_options() -> None:
    from llmguard.cli.app import app
    from llmguard.realign.registry import methods

    realign = typer.main.get_command(app).commands["realign"]
    for name, method in methods().items():
        flags = {opt for p in realign.commands[name].params for opt in p.opts}
        for f in method.options_class().fields():
            if f.spec.cli and not f.spec.positional:
                assert f.flag in flags, (name, f.flag)


def _leaf_commands(group, path=()):
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _leaf_commands(command, (*path, name))
        else:
            yield (*path, name), command


def test_every_verb_is_derived_from_an_options_class():
    from llmguard.cli.app import app

    leaves = dict(_leaf_commands(typer.main.get_command(app)))
    assert {("realign", "resta"), ("realign", "nlsr"), ("watermark", "detect"), ("eval", "hdc"), ("demo",)} <= set(leaves)
    for path, command in leaves.items():
        options = getattr(command.callback, "options_class", None)
        assert options is not None and issubclass(options, Options), f"llmguard {' '.join(path)} is hand-written"
        params = {p.name: p for p in command.params}
        for f in options.fields():
            if f.spec.cli:
                assert f.name in params and params[f.name].help == f.spec.help, (path, f.name)
                assert f.spec.positional or f.flag.split("/")[0] in params[f.name].opts, (path, f.flag)
