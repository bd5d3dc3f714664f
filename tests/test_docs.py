"""The documentation: README.md and docs/ stay linked, short and in step with the code.

``make docs`` builds the site with ``mkdocs build --strict``, which checks the links between the pages of
docs/. These tests cover what it cannot: the README (outside docs/), anchors as GitHub spells them, the
generated option and key tables, and the rule that nothing in the project points outside it.
"""

from __future__ import annotations

import importlib.util
import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]

FENCE = re.compile(r"^ *(```|~~~).*?^ *\1", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(text: str) -> str:
    """The text without fenced code blocks and code spans, where brackets are not links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def _headings(text: str) -> list[str]:
    return [m.group(1) for m in re.finditer(r"^#{1,6} +(.+?) *#* *$", FENCE.sub("", text), re.M)]


def _plain(heading: str) -> str:
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    return heading.replace("`", "").replace("*", "")


def github_slug(heading: str) -> str:
    """GitHub's anchor: lower case, punctuation but hyphens and underscores dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", _plain(heading).strip().lower()).replace(" ", "-")


def mkdocs_slug(heading: str) -> str:
    """Python-Markdown's toc.slugify, which the site uses."""
    value = unicodedata.normalize("NFKD", _plain(heading)).encode("ascii", "ignore").decode()
    return re.sub(r"[-\s]+", "-", re.sub(r"[^\w\s-]", "", value).strip().lower())


def _links(page: Path) -> list[str]:
    return [m.group(1) for m in LINK.finditer(_prose(page.read_text(encoding="utf-8")))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves_on_github_and_in_the_site(page: Path) -> None:
    problems = []
    for target in _links(page):
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: outside the project, not checked here
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            problems.append(f"{target}: no such file")
            continue
        if ROOT not in dest.parents:
            problems.append(f"{target}: outside the repository")
        if page.parent == DOCS and DOCS not in dest.parents:
            problems.append(f"{target}: outside docs/, which the site does not have")
        if anchor and dest.suffix == ".md":
            heads = _headings(dest.read_text(encoding="utf-8"))
            if anchor not in {github_slug(h) for h in heads}:
                problems.append(f"{target}: no heading with GitHub's anchor #{anchor}")
            if anchor not in {mkdocs_slug(h) for h in heads}:
                problems.append(f"{target}: no heading with the site's anchor #{anchor}")
    assert not problems, f"{page}:\n" + "\n".join(problems)


def test_slugs_follow_both_rules() -> None:
    assert github_slug("Your own experiment: ASVspoof 2019 LA and In-the-Wild") == (
        "your-own-experiment-asvspoof-2019-la-and-in-the-wild"
    )
    assert mkdocs_slug("Recipes and `ncdetect run`") == "recipes-and-ncdetect-run"
    # where the two rules differ, a link to the heading is caught by one of them
    assert github_slug("A + B") == "a--b" != mkdocs_slug("A + B") == "a-b"


def test_readme_is_short_with_short_lines() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250
    long = [i + 1 for i, line in enumerate(lines) if len(line) > 110]
    assert not long, f"README.md lines over 110 characters: {long}"


def test_every_docs_page_is_in_the_site_navigation() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    missing = [p.name for p in DOCS.glob("*.md") if not re.search(rf":\s*{re.escape(p.name)}\s*$", nav, re.M)]
    assert not missing


def _cli_reference():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "scripts" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def test_generated_option_and_key_tables_match_the_code() -> None:
    ref = _cli_reference()
    cmds, models = ref.commands(), ref.schemas()
    seen: set[str] = set()
    stale = []
    for path in sorted(DOCS.glob("*.md")):
        text = path.read_text(encoding="utf-8")
        new, problems = ref.render(text, path, cmds, models, seen)
        assert not problems
        if new != text:
            stale.append(path.name)
    assert not stale, f"run python scripts/cli_reference.py: stale tables in {stale}"
    assert seen == set(cmds), f"commands without an option table: {sorted(set(cmds) - seen)}"


def test_generated_table_lists_every_option_of_the_command() -> None:
    ref = _cli_reference()
    cmd = ref.commands()["sample"]
    block = ref.command_block("sample", cmd)
    for param in cmd.params:
        for opt in getattr(param, "opts", ()):
            if opt != "--help" and param.param_type_name == "option":
                assert f"`{opt}`" in block
    assert "&lt;stem&gt;.summary.json" in block  # help text is escaped, not read as HTML


def test_no_source_or_test_points_to_a_document_outside_the_project() -> None:
    outside = re.compile(r"DESIGN(\.md| section| \d)|the brief|issue \d+", re.I)
    hits = []
    for folder in ("src", "tests", "benchmarks", "scripts"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix not in (".py", ".yaml", ".yml", ".sh", ".md") or path == Path(__file__):
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if outside.search(line):
                    hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not hits, "\n".join(hits)
