"""Reports made of counts that add up field by field."""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, Self


class Tally:
    """Base of a dataclass of counts: ``a += b`` adds each field of ``b`` to
    the same field of ``a`` (numbers, and nested tallies in place)."""

    def __iadd__(self, other: Self) -> Self:
        for field in dataclasses.fields(self):  # type: ignore[arg-type]  # subclasses are dataclasses
            mine: Any = getattr(self, field.name)
            setattr(self, field.name, operator.iadd(mine, getattr(other, field.name)))
        return self
