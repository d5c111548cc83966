"""The documentation: relative links resolve, the spec reference is current, the README is short."""

import re
from pathlib import Path

import pytest

from msgc.spec_docs import spec_reference_markdown

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 200

FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"(`+).+?\1", re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def documents() -> list[Path]:
    """The markdown files whose links are checked."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
            ROOT / "studies" / "README.md"]


def prose(text: str) -> str:
    """`text` without fenced code blocks and code spans (their brackets are not links)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a markdown file's headings (repeats get -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(f"{base}-{count}" if count else base)
    return found


def broken_links(path: Path) -> list[str]:
    """Each relative link or image in `path` whose file or heading does not exist."""
    problems = []
    for target in LINK.findall(prose(path.read_text(encoding="utf-8"))):
        if SCHEME.match(target):
            continue  # a URL: not checked offline
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        if not resolved.exists():
            problems.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            problems.append(f"{target}: no heading #{anchor} in {resolved.name}")
    return problems


@pytest.mark.parametrize("path", documents(), ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    assert broken_links(path) == []


def test_link_checker_flags_broken_links(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# A heading, with `code`\n\ntext\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md) [ok anchor](other.md#a-heading-with-code) [own](#title)\n"
        "# Title\n"
        "[missing](nowhere.md) ![image](img/missing.png) [bad anchor](other.md#nope)\n"
        "[web](https://example.com/x.md) `[in code](nowhere.md)`\n"
        "```\n[in a block](nowhere.md)\n```\n"
    )
    assert broken_links(page) == [
        "nowhere.md: no such file",
        "img/missing.png: no such file",
        "other.md#nope: no heading #nope in other.md",
    ]


def test_repeated_headings_get_numbered_anchors(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Usage\n## Usage\n## `msgc compare`\n```\n# not a heading\n```\n")
    assert anchors(page) == {"usage", "usage-1", "msgc-compare"}


def test_spec_reference_is_current() -> None:
    page = (ROOT / "docs" / "spec.md").read_text(encoding="utf-8")
    assert page == spec_reference_markdown(), (
        "docs/spec.md is out of date with msgc/spec.py; regenerate it with "
        "`python -m msgc.spec_docs > docs/spec.md` (or `make docs`)"
    )


def test_spec_reference_lists_every_key() -> None:
    page = spec_reference_markdown()
    for key in ("`name`", "`family`", "`module`", "`hf`", "`ramp_steps`", "`lr_restart`",
                "`fused_head`"):
        assert f"| {key} |" in page
    assert "| `steps` | integer > 0 | required |" in page
    assert "| `init` | one of `normal`, `match`, `zeros`, `copy` | `\"normal\"` |" in page
    assert "| `stages` | list of [Stage](#stage) | `[]` |" in page
    assert "| `kv_heads` | integer > 0 | unset |" in page
    assert "| `dropout` | number >= 0, < 1 | `0.0` |" in page


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; keep it under {README_MAX_LINES} and move the "
        "rest to docs/"
    )
