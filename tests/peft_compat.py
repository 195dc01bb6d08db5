"""Run a PEFT reference where the installed PEFT works; skip, naming both versions, where it refuses.

PEFT's prefix tuning hands the prefix to the model as ``past_key_values`` and refuses models whose
forward lacks that keyword (transformers 5.24 renamed it ``cache``). That is PEFT's limit, not ptune's:
such a comparison is skipped with the reason, never silently. ``make test`` runs on the locked versions,
where every comparison must run, and sets ``PTUNE_REQUIRE_PEFT=1`` to turn such a skip into a failure.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TypeVar

import peft
import pytest
import transformers

T = TypeVar("T")


def peft_reference(call: Callable[[], T]) -> T:
    try:
        return call()
    except (ValueError, TypeError, AttributeError) as err:
        reason = (f"peft {peft.__version__} does not run with transformers {transformers.__version__}: "
                  f"{type(err).__name__}: {str(err).splitlines()[0]}")
        if os.environ.get("PTUNE_REQUIRE_PEFT") == "1":
            pytest.fail(reason + " (PTUNE_REQUIRE_PEFT=1: the locked versions must run every comparison)")
        pytest.skip(reason)
