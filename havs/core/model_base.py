"""The base of the configuration model (havs.core.model): the strict object every config section is, the
range constraint with operators' wording, and the cross-field Problem that names its key's line."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from havs.core.scalars import item_type, strict_message

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def Range(lo: float, hi: float) -> AfterValidator:
    """An inclusive range with the message operators expect: `must be 0..65535, got -1`."""

    def check(v: float) -> float:
        if not lo <= v <= hi:
            raise ValueError(f"must be {lo}..{hi}")
        return v

    return AfterValidator(check)


class Problem(ValueError):
    """A cross-field problem that knows which key (relative to the object being validated) it is about,
    so the error can name that key's line rather than the object's."""

    def __init__(self, where: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.where = where


Seconds = Annotated[float, Field(gt=0, le=3600)]


class Strict(BaseModel):
    """Every config object: unknown keys are errors, objects are immutable once loaded, and scalars are never
    coerced across YAML types (`priority: true`, `address: 1`, `port: "80"` are errors: core.scalars)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _strict_scalars(cls, v: Any, info: ValidationInfo) -> Any:
        annotation = cls.model_fields[info.field_name].annotation if info.field_name else None
        if isinstance(v, list):
            item = item_type(annotation)
            for i, x in enumerate(v if item is not None else ()):
                if (why := strict_message(item, x)) is not None:
                    raise Problem((i,), why)
        elif (why := strict_message(annotation, v)) is not None:
            raise ValueError(why)
        return v
