"""README.md and docs/ stay short, linked, true to the code and free of pkill advice."""

import re
from dataclasses import fields
from pathlib import Path

import pytest
import tomli_w

from fl_app.config import NodeConfig, RunConfig
from tests.conftest import APP_DIR

README = APP_DIR / "README.md"
DOCS = APP_DIR / "docs"
CONFIGURATION = DOCS / "configuration.md"
RUN_CONFIG_HEADER = ["key", "default", "allowed", "meaning"]
NODE_CONFIG_HEADER = ["node key", "default", "allowed", "meaning"]
SCHEMAS = [(RunConfig, RUN_CONFIG_HEADER), (NodeConfig, NODE_CONFIG_HEADER)]
README_MAX_BYTES = 10_240

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
CELL_SPLIT = re.compile(r"(?<!\\)\|")


def linked_pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def every_markdown_file() -> list[Path]:
    return [README, *sorted(DOCS.rglob("*.md"))]


def prose(path: Path) -> str:
    """The markdown text without fenced code blocks (links there are not links)."""
    return FENCE.sub("", path.read_text(encoding="utf-8"))


def relative_links(path: Path) -> list[str]:
    targets = []
    for target in LINK.findall(prose(path)):
        if not EXTERNAL.match(target):
            targets.append(target)
    return targets


def github_anchor(heading: str) -> str:
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(prose(path)):
        slug = github_anchor(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def table_rows(text: str, header: list[str]) -> list[list[str]]:
    """The body rows of the first table whose header is ``header``, as stripped cells."""
    lines = text.splitlines()
    for start, line in enumerate(lines):
        if cells(line) == header:
            rows = []
            for row in lines[start + 2 :]:
                if not row.lstrip().startswith("|"):
                    break
                rows.append(cells(row))
            return rows
    raise AssertionError(f"no table with header {header}")


def cells(line: str) -> list[str]:
    stripped = line.strip()
    if not stripped.startswith("|"):
        return []
    return [cell.strip() for cell in CELL_SPLIT.split(stripped.strip("|"))]


def unquoted(cell: str) -> str:
    return cell.replace("`", "")


def toml_value(value: object) -> str:
    return tomli_w.dumps({"v": value}).strip().removeprefix("v = ")


def test_readme_is_at_most_10_kb():
    size = README.stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes"


@pytest.mark.parametrize("page", linked_pages(), ids=lambda p: str(p.relative_to(APP_DIR)))
def test_relative_links_point_to_existing_files(page):
    missing = []
    for target in relative_links(page):
        path = target.split("#", 1)[0]
        if path and not (page.parent / path).exists():
            missing.append(target)
    assert missing == [], f"{page.name} links to missing files"


@pytest.mark.parametrize("page", linked_pages(), ids=lambda p: str(p.relative_to(APP_DIR)))
def test_links_to_headings_name_existing_headings(page):
    broken = []
    for target in relative_links(page):
        path, sep, anchor = target.partition("#")
        if not sep:
            continue
        linked = (page.parent / path) if path else page
        if linked.suffix == ".md" and linked.is_file() and anchor not in anchors(linked):
            broken.append(target)
    assert broken == [], f"{page.name} links to missing headings"


@pytest.mark.parametrize(("schema", "header"), SCHEMAS, ids=lambda x: getattr(x, "__name__", ""))
def test_configuration_table_lists_every_key_once_with_its_default(schema, header):
    rows = table_rows(CONFIGURATION.read_text(encoding="utf-8"), header)
    keys = [unquoted(row[0]) for row in rows]
    expected = {f.name.replace("_", "-"): f.default for f in fields(schema)}
    assert sorted(keys) == sorted(expected), f"rows differ from the keys of {schema.__name__}"
    assert len(keys) == len(set(keys)), "a key has more than one row"
    for row in rows:
        key = unquoted(row[0])
        assert len(row) == len(header), f"row of '{key}' has {len(row)} cells"
        assert unquoted(row[1]) == toml_value(expected[key]), f"default of '{key}'"


@pytest.mark.parametrize(("schema", "header"), SCHEMAS, ids=lambda x: getattr(x, "__name__", ""))
def test_configuration_table_states_the_allowed_values_of_the_code(schema, header):
    rows = table_rows(CONFIGURATION.read_text(encoding="utf-8"), header)
    allowed = {unquoted(row[0]): unquoted(row[2]) for row in rows}
    for spec in fields(schema):
        key = spec.name.replace("_", "-")
        assert allowed[key] == spec.metadata["allowed"], f"allowed values of '{key}'"


def test_toml_defaults_are_written_as_toml():
    assert [toml_value(v) for v in (20, 0.001, 8.0, "digits", "", False)] == [
        "20",
        "0.001",
        "8.0",
        '"digits"',
        '""',
        "false",
    ]


@pytest.mark.parametrize("page", every_markdown_file(), ids=lambda p: str(p.relative_to(APP_DIR)))
def test_no_page_tells_the_user_to_pkill(page):
    assert "pkill" not in page.read_text(encoding="utf-8").lower()
