"""Docs cannot drift: every model/data option is in docs/configuration.md; README links resolve."""

from __future__ import annotations

import inspect
import re

import pytest

from conftest import REPO
from sasrec_lightning import SASRecDataModule, SASRecModule


@pytest.mark.parametrize("cls", [SASRecModule, SASRecDataModule], ids=lambda cls: cls.__name__)
def test_every_init_argument_is_documented(cls):
    page = (REPO / "docs" / "configuration.md").read_text()
    doc = inspect.getdoc(cls)
    missing_page, missing_doc = [], []
    for name in inspect.signature(cls.__init__).parameters:
        if name == "self":
            continue
        if f"| `{name}` |" not in page:
            missing_page.append(name)
        if not re.search(rf"^    {name}: \S", doc, re.M):
            missing_doc.append(name)
    assert not missing_doc, f"{cls.__name__} docstring has no Args entry for {missing_doc}"
    assert not missing_page, f"docs/configuration.md lacks {missing_page}: run python docs/generate_configuration.py"


def test_readme_links_resolve():
    readme = (REPO / "README.md").read_text()
    for target in re.findall(r"\]\(((?:docs|configs)/[^)#]*|CHANGELOG.md)(?:#[^)]*)?\)", readme):
        assert (REPO / target).exists(), target
    for config in re.findall(r"`(configs/[\w.-]+\.yaml)`", readme):
        assert (REPO / config).exists(), config
