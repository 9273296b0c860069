"""The benchmarks' lean HTTP/1.1 client against a real uvicorn server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from lean_http import LeanConnection, ProtocolError

from ledger.embedded import free_port

app = FastAPI()


@app.post("/echo")
async def echo(request: Request) -> JSONResponse:
    assert request.client is not None
    return JSONResponse(
        {"body": await request.json(), "token": request.headers.get("authorization"),
         "key": request.headers.get("idempotency-key"), "client_port": request.client.port},
        status_code=201,
    )  # fmt: skip


@app.get("/closing")
async def closing(request: Request) -> JSONResponse:
    assert request.client is not None
    return JSONResponse({"client_port": request.client.port}, headers={"connection": "close"})


@app.get("/chunked")
async def chunked() -> StreamingResponse:
    def parts() -> Iterator[bytes]:
        yield b'{"a":'
        yield b"1}"

    return StreamingResponse(parts(), media_type="application/json")


@app.get("/text")
async def text() -> PlainTextResponse:
    return PlainTextResponse("Internal Server Error", status_code=500)


@app.get("/slow")
async def slow() -> JSONResponse:
    await asyncio.sleep(2)
    return JSONResponse({"late": True})


@pytest.fixture
async def port() -> AsyncIterator[int]:
    """A uvicorn server of `app` on a free local port, for one test."""
    chosen = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=chosen, log_config=None))
    task = asyncio.create_task(server.serve())
    while not server.started:  # uvicorn offers no event to wait on
        assert not task.done(), "uvicorn stopped before it started"
        await asyncio.sleep(0.01)
    yield chosen
    server.should_exit = True
    await task


async def test_requests_share_one_connection_and_carry_their_headers(port: int) -> None:
    async with LeanConnection("127.0.0.1", port, {"Authorization": "Bearer t"}) as http:
        first: Any
        status, first = await http.request("POST", "/echo", {"amount": "1.00"},
                                           {"Idempotency-Key": "k-1"})  # fmt: skip
        _, second = await http.request("POST", "/echo", {"amount": "2.00"})

    assert status == 201
    assert first["body"] == {"amount": "1.00"}
    assert (first["token"], first["key"]) == ("Bearer t", "k-1")
    assert (second["token"], second["key"]) == ("Bearer t", None)
    assert first["client_port"] == second["client_port"]


async def test_a_connection_the_server_closed_is_opened_again(port: int) -> None:
    async with LeanConnection("127.0.0.1", port) as http:
        _, first = await http.request("GET", "/closing")
        status, second = await http.request("GET", "/closing")

    assert status == 200
    assert first["client_port"] != second["client_port"]


async def test_an_answer_without_a_length_is_refused_and_leaves_no_answer_behind(
    port: int,
) -> None:
    async with LeanConnection("127.0.0.1", port) as http:
        with pytest.raises(ProtocolError, match="transfer-encoding chunked"):
            await http.request("GET", "/chunked")
        status, body = await http.request("POST", "/echo", {"a": 1})

    assert (status, body["body"]) == (201, {"a": 1})


async def test_an_answer_too_late_times_out_and_the_next_request_gets_its_own(
    port: int,
) -> None:
    async with LeanConnection("127.0.0.1", port) as http:
        with pytest.raises(TimeoutError):
            await http.request("GET", "/slow", timeout_s=0.2)
        status, body = await http.request("POST", "/echo", {"b": 2})

    assert (status, body["body"]) == (201, {"b": 2})


async def test_a_body_that_is_not_json_is_returned_as_text(port: int) -> None:
    async with LeanConnection("127.0.0.1", port) as http:
        assert await http.request("GET", "/text") == (500, "Internal Server Error")
