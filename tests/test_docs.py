"""Every config key is documented in docs/config.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from havs.core import model

DOC = (Path(__file__).resolve().parents[1] / "docs/config.md").read_text()
MODELS = [m for m in vars(model).values() if isinstance(m, type) and issubclass(m, model.Strict)
          and m not in (model.Strict, model.NodeView)]


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_every_key_is_documented(cls: type[BaseModel]) -> None:
    # a key appears in backticks, alone or as part of a dotted path: `timeout`, `garp.burst`, `nodes.<name>`
    missing = [name for name in cls.model_fields if not re.search(rf"`([\w.<>\[\]]*\.)?{name}[.`\[]", DOC)]
    assert missing == []
