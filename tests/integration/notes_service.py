"""A minimal service for testing the host: notes, each a stream `note-<id>`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict, Field

from eventstore import ANY, NewEvent, Projection
from ledger import context
from ledger.dependencies import runtime_of
from ledger.host import Runtime

NotesRuntime = Annotated[Runtime, Depends(runtime_of("notes"))]


class NoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(max_length=200)


class NotesService:
    name = "notes"
    categories: tuple[str, ...] = ("note",)

    def inline_projections(self) -> Sequence[Projection]:
        return ()

    def router(self) -> APIRouter:
        router = APIRouter()
        @router.post("/v1/notes/{note_id}", status_code=201)
        async def write_note(note_id: str, note: NoteIn, runtime: NotesRuntime) -> dict[str, int]:
            event = NewEvent("NoteWritten", {"text": note.text}, context.current().as_metadata())
            result = await runtime.store.append(f"note-{note_id}", [event], ANY)
            return {"version": result.version}

        return router

    async def start(self, runtime: Runtime) -> None:
        self.runtime = runtime

    async def stop(self) -> None:
        pass
