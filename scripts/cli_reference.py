#!/usr/bin/env python3
"""Write (or check) the generated reference tables of docs/ from the code itself.

* ``<!-- options: NAME -->`` ... ``<!-- /options -->`` (docs/commands.md): the usage line and a row per
  argument and option of ``ncdetect NAME``, read from the typer app, so they say what ``--help`` says.
* ``<!-- schema: train -->`` / ``<!-- schema: recipe -->`` ... ``<!-- /schema -->``: every key of a
  training config or a recipe, with its type, default and constraints, read from the pydantic models
  that validate them.

The prose and examples around the blocks are written by hand.

    python scripts/cli_reference.py           # rewrite the blocks in place
    python scripts/cli_reference.py --check   # exit 1 when a block is stale or a command has none

``make docs`` runs the check, so an option or a config key added without its documentation fails the docs
build.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import typing
from pathlib import Path
from typing import Any

import typer.main

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
# Document the checkout this script lies in, whichever ncdetect the interpreter would import otherwise.
sys.path.insert(0, str(ROOT / "src"))
BLOCK = re.compile(
    r"(<!-- (?P<kind>options|schema): (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /(?P=kind) -->)", re.S
)


def _cell(text: str) -> str:
    """One table cell: a single line, with pipes and angle brackets escaped (outside code spans, which
    GitHub and MkDocs read alike)."""
    text = " ".join(str(text).split())
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _row(param: Any, ctx: Any) -> str | None:
    """The table row of one argument or option, from the record that ``--help`` prints."""
    record = param.get_help_record(ctx)
    if record is None or "--help" in getattr(param, "opts", ()):
        return None
    signature, text = record
    name, _, value = signature.partition(" ")
    if param.param_type_name == "option":
        name = ", ".join(f"`{o}`" for o in (*param.opts, *param.secondary_opts))
    else:
        name = f"`{name.upper()}`"
    value = value.strip().removeprefix("<").removesuffix(">").replace("|", ", ") if value else "flag"
    return f"| {name} | {_cell(value)} | {_cell(text)} |"


def command_block(name: str, cmd: Any) -> str:
    """The generated block for one command: its usage line and a row per argument and option."""
    ctx = cmd.context_class(cmd, info_name=f"ncdetect {name}")
    pieces = cmd.collect_usage_pieces(ctx)  # typer writes arguments as {name}
    usage = " ".join(p.upper().replace("{", "").replace("}", "") if p.startswith("{") else p for p in pieces)
    lines = [
        "```text", f"ncdetect {name} {usage}", "```", "",
        "| argument or option | value | what it does |",
        "| --- | --- | --- |",
    ]
    lines += [row for row in (_row(param, ctx) for param in cmd.params) if row is not None]
    return "\n".join(lines) + "\n"


def commands() -> dict[str, Any]:
    """The ncdetect commands in the order the CLI declares them."""
    from ncdetect.cli import app

    return dict(typer.main.get_command(app).commands)


def schemas() -> dict[str, type]:
    """The pydantic models that validate what users write: a training config and a recipe."""
    from ncdetect.config import TrainConfig
    from ncdetect.recipe import Recipe

    return {"train": TrainConfig, "recipe": Recipe}


def _type_name(annotation: Any) -> str:
    text = getattr(annotation, "__name__", None) if isinstance(annotation, type) else None
    text = text or str(annotation)
    text = re.sub(r"<class '([\w.]+)'>", r"\1", text)
    return re.sub(r"\b(typing|pathlib|ncdetect\.\w+)\.", "", text).replace("NoneType", "None")


def _constraints(field: Any) -> str:
    words = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    found = []
    for item in field.metadata:
        for attr, sign in words.items():
            if getattr(item, attr, None) is not None:
                found.append(f"{sign} {getattr(item, attr)}")
    return ", ".join(found)


def _models_inside(annotation: Any, in_list: bool = False) -> list[tuple[type, bool]]:
    """The pydantic models an annotation holds (through Optional, unions and lists), each with whether it
    sits in a list."""
    from pydantic import BaseModel

    found = []
    in_list = in_list or typing.get_origin(annotation) is list
    for arg in typing.get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            found.append((arg, in_list))
        else:
            found += _models_inside(arg, in_list)
    return found


def _yaml(value: Any) -> str:
    """A default as it is written in YAML (false, null, lists)."""
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def _schema_rows(model: type, prefix: str = "") -> list[str]:
    from pydantic import BaseModel

    rows = []
    for key, field in model.model_fields.items():
        name = f"{prefix}{key}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows += _schema_rows(annotation, prefix=f"{name}.")
            continue
        if field.is_required():
            default = "required"
        elif field.default_factory is not None:
            default = f"`{_yaml(field.default_factory())}`"
        else:
            default = f"`{_yaml(field.default)}`"
        what = "; ".join(part for part in (_constraints(field), field.description or "") if part)
        rows.append(f"| `{name}` | {_cell(_type_name(annotation))} | {_cell(default)} | {_cell(what)} |")
        for inner, in_list in _models_inside(annotation):
            rows += _schema_rows(inner, prefix=f"{name}{'[]' if in_list else ''}.")
    return rows


def schema_block(name: str, model: type) -> str:
    lines = ["| key | type | default | limits; meaning |", "| --- | --- | --- | --- |"]
    return "\n".join(lines + _schema_rows(model)) + "\n"


def render(text: str, where: Path, cmds: dict[str, Any], models: dict[str, type],
           seen: set[str]) -> tuple[str, list[str]]:
    """``text`` with every block regenerated, and the blocks that name nothing known."""
    problems: list[str] = []

    def fill(match: re.Match[str]) -> str:
        kind, name = match["kind"], match["name"]
        known = cmds if kind == "options" else models
        if name not in known:
            problems.append(f"{where}: a '{kind}' block for '{name}', which does not exist")
            return match[0]
        seen.add(name) if kind == "options" else None
        body = command_block(name, cmds[name]) if kind == "options" else schema_block(name, models[name])
        return match[1] + body + match[5]

    return BLOCK.sub(fill, text), problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when stale")
    args = parser.parse_args(argv)
    cmds, models = commands(), schemas()
    seen: set[str] = set()
    problems, stale = [], []
    for path in sorted(DOCS.glob("*.md")):
        text = path.read_text(encoding="utf-8")
        new, found = render(text, path, cmds, models, seen)
        problems += found
        if new != text:
            stale.append(path)
            if not args.check:
                path.write_text(new, encoding="utf-8")
                print(f"{path}: generated tables rewritten")
    problems += [f"{DOCS}: no '<!-- options: {name} -->' block documents 'ncdetect {name}'"
                 for name in cmds if name not in seen]
    if args.check:
        problems += [f"{path}: generated tables differ from the code; run python scripts/cli_reference.py"
                     for path in stale]
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
