"""Money at the edges: decimal strings in, integer minor units inside, decimal strings out.

Each asset has a scale (USD 2, JPY 0, BTC 8); instruments get theirs from settings. An
amount with more decimals than its scale, zero, negative, or above the maximum is refused
with a message a person can act on (DESIGN 3). Floats never enter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

DEFAULT_SCALES: Final[Mapping[str, int]] = MappingProxyType(
    {"USD": 2, "EUR": 2, "GBP": 2, "CHF": 2, "JPY": 0, "BTC": 8, "ETH": 8}
)
DEFAULT_MAX_AMOUNT_MINOR: Final = 10**15
ASSET_CODE_PATTERN: Final = r"^[A-Z][A-Z0-9]{1,11}$"
"""A currency or instrument code: `USD`, `BTC`, `ACME`."""
_ASSET_CODE: Final = re.compile(ASSET_CODE_PATTERN)
_DECIMAL: Final = re.compile(r"(0|[1-9][0-9]{0,30})(?:\.([0-9]{1,30}))?")


class AmountError(ValueError):
    """An amount or asset the ledger cannot accept; the message says why."""


class Assets:
    """The assets the ledger knows, with their scales and the largest amount accepted."""

    def __init__(
        self,
        scales: Mapping[str, int] = DEFAULT_SCALES,
        max_amount_minor: int = DEFAULT_MAX_AMOUNT_MINOR,
    ) -> None:
        for code, scale in scales.items():
            assert _ASSET_CODE.match(code), f"asset code {code!r} is malformed"
            assert 0 <= scale <= 18, f"scale of {code} out of range"
        assert max_amount_minor > 0, "the maximum amount must be positive"
        self.scales = dict(scales)
        self.max_amount_minor = max_amount_minor

    def scale(self, asset: str) -> int:
        """The number of decimals of `asset`; AmountError if the asset is unknown."""
        try:
            return self.scales[asset]
        except KeyError:
            known = ", ".join(sorted(self.scales))
            raise AmountError(
                f"unknown currency or instrument {asset!r} (known: {known})"
            ) from None

    def is_zero(self, text: str) -> bool:
        """Whether `text` is a well-formed decimal zero: `0`, `0.00` (not `0.`, `00`)."""
        match = _DECIMAL.fullmatch(text)
        return match is not None and match[1] == "0" and not (match[2] or "").strip("0")

    def parse(self, text: str, asset: str) -> int:
        """`"12.34"` USD -> 1234. Refuses malformed, zero, negative, too precise or too large."""
        scale = self.scale(asset)
        match = _DECIMAL.fullmatch(text)
        if match is None:
            raise AmountError(f"amount {text[:40]!r} is not a positive decimal like '12.34'")
        # Digits, not Decimal arithmetic: Decimal's context rounds beyond 28 digits, and
        # "1.0000000000000000000000000001" USD must be refused, not taken as 1.00.
        whole, decimals = match[1], (match[2] or "").rstrip("0")
        if len(decimals) > scale:
            raise AmountError(f"{asset} has {scale} decimals; {text!r} has more")
        amount_minor = int(whole + decimals.ljust(scale, "0"))
        if amount_minor <= 0:
            raise AmountError("amount must be greater than zero")
        if amount_minor > self.max_amount_minor:
            raise AmountError(
                f"amount exceeds the maximum of {self.format(self.max_amount_minor, asset)}"
            )
        return amount_minor

    def format(self, amount_minor: int, asset: str) -> str:
        """1234 USD -> `"12.34"`; negative amounts keep their sign."""
        scale = self.scale(asset)
        sign = "-" if amount_minor < 0 else ""
        digits = str(abs(amount_minor)).rjust(scale + 1, "0")
        if scale == 0:
            return f"{sign}{digits}"
        return f"{sign}{digits[:-scale]}.{digits[-scale:]}"
