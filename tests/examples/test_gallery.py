"""The docs' gallery stays true to the examples: a page per example folder, every script and
file a page names exists, every chart it shows is committed, every page is in mkdocs' nav."""

from __future__ import annotations

import re

import pytest
from example_tools import REPO

GALLERY = REPO / "docs/examples"
PAGES = sorted(p for p in GALLERY.glob("*.md") if p.name != "index.md")


def test_every_example_folder_has_a_page() -> None:
    folders = {p.name for p in (REPO / "examples").iterdir() if p.is_dir()}
    assert folders <= {p.stem for p in PAGES}


@pytest.mark.parametrize("page", PAGES, ids=[p.stem for p in PAGES])
def test_a_page_names_files_that_exist_and_shows_its_chart(page) -> None:
    text = page.read_text(encoding="utf-8")
    named = set(re.findall(r"\b((?:examples|models)/[\w./-]+\.(?:sh|py|prototxt|txt))\b", text))
    assert named, page
    missing = sorted(n for n in named if not (REPO / n).is_file())
    assert not missing, missing
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert images, f"{page.name} shows no chart"
    assert all((GALLERY / image).is_file() for image in images), images
    nav = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    assert f"examples/{page.name}" in nav
