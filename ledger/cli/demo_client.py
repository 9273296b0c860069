"""The HTTP client `ledger demo` talks to a running ledger with: a bearer token when given,
an Idempotency-Key on every write, and one clear error for every answer it did not expect.
"""

from __future__ import annotations

from collections.abc import Collection
from types import TracebackType
from typing import Any, Final

import httpx

_TIMEOUT_S: Final = 45.0
"""Longer than the longest `?wait=` (30 s) the demo asks for."""
_HINTS: Final = {
    401: "pass a token with --token or LEDGER_TOKEN",
    403: "the token may not do this",
}


class LedgerUnreachable(Exception):
    """Nothing answers at the ledger's URL."""


class UnexpectedAnswer(Exception):
    """The ledger answered a request in a way the demo did not expect."""

    def __init__(self, method: str, path: str, response: httpx.Response) -> None:
        hint = _HINTS.get(response.status_code)
        super().__init__(
            f"{method} {path} answered {response.status_code}: {_problem_text(response)}"
            + (f" ({hint})" if hint else "")
        )
        self.status_code = response.status_code


class LedgerClient:
    """A ledger's HTTP API at `url`, as one client."""

    def __init__(self, url: str, token: str | None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url
        self._http = httpx.AsyncClient(base_url=url, headers=headers, timeout=_TIMEOUT_S)

    async def __aenter__(self) -> LedgerClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:  # fmt: skip
        await self._http.aclose()

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        key: str | None = None,
        params: dict[str, Any] | None = None,
        expect: Collection[int] = (200,),
    ) -> dict[str, Any]:
        """The JSON answer of one request; raises LedgerUnreachable when nothing answers and
        UnexpectedAnswer for a status not in `expect`."""
        headers = {"Idempotency-Key": key} if key else {}
        try:
            response = await self._http.request(method, path, json=body, params=params,
                                                headers=headers)  # fmt: skip
        except httpx.TransportError as error:
            raise LedgerUnreachable(f"no ledger answers at {self.url} ({_reason(error)});"
                                    " start one with: ledger up") from error  # fmt: skip
        if response.status_code not in expect:
            raise UnexpectedAnswer(method, path, response)
        answer: dict[str, Any] = response.json()
        return answer


def _problem_text(response: httpx.Response) -> str:
    """The problem+json's detail (or title), else the start of the body."""
    try:
        problem = response.json()
    except ValueError:
        return response.text[:200].strip() or response.reason_phrase
    if isinstance(problem, dict):
        text = problem.get("detail") or problem.get("title")
        if text:
            return " ".join(str(text).split())
    return response.reason_phrase


def _reason(error: httpx.TransportError) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
