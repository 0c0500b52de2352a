"""The customer record a screen pop shows."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cti.directory.numbers import normalise_number

__all__ = ["CompanyTier", "Customer"]

CompanyTier = Literal["enterprise", "business", "smb"]


class Customer(BaseModel):
    """``numbers`` are stored normalised (see :func:`normalise_number`), so they are also the lookup keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    id: str = Field(min_length=1, max_length=64)
    numbers: list[str] = Field(min_length=1)
    name: str = Field(min_length=1)
    company: str | None = None
    company_tier: CompanyTier | None = None
    role: str | None = Field(None, description="the caller's role at the company")
    vip_tier: int = Field(0, ge=0, le=3, description="0 = not a VIP; 1..3, higher is more important")
    account_manager: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="an agent id")
    notes: str = ""

    @field_validator("name", "company", "role")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        """A name goes into caller-ID-like places (the simulator's AMI events, log lines): no control characters."""
        if value is not None and any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("must be one line without control characters (CR, LF, TAB, NUL ...)")
        return value

    @field_validator("numbers", mode="before")
    @classmethod
    def _as_list(cls, value: object) -> object:
        """Accept ``"a; b"`` (CSV) and bare YAML integers, which is how people write numbers."""
        if isinstance(value, str):
            return [part for part in (p.strip() for p in value.split(";")) if part]
        if isinstance(value, int) and not isinstance(value, bool):
            return [str(value)]
        if isinstance(value, list):
            return [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
        return value

    @field_validator("numbers")
    @classmethod
    def _normalise(cls, numbers: list[str]) -> list[str]:
        out: list[str] = []
        for raw in numbers:
            number = normalise_number(raw)
            if number is None:
                raise ValueError(f"{raw!r} is not a phone number (digits, spaces, - . ( ) and a leading + or 00)")
            if number not in out:
                out.append(number)
        return out
