"""docs/methods.md's parameter table is the one the code gives (tests/methods/param_table.py)."""

from __future__ import annotations

from tests.conftest import REPO
from tests.methods.param_table import table


def test_docs_hold_the_parameter_table_computed_from_the_code():
    docs = (REPO / "docs" / "methods.md").read_text()
    assert table() in docs, "regenerate it: .venv/bin/python -m tests.methods.param_table"
