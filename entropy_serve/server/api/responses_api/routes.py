"""`/v1/responses`: create (whole or streamed), retrieve and delete stored responses.

A response is answered by the chat path (request.py translates the body, reply.py
the answer), so it says exactly what /v1/chat/completions would. With `store` (true
unless the client says otherwise, as OpenAI's), the Response and its conversation are
kept in the store under the caller's key; `previous_response_id` continues one.
Errors from the chat path name the fields as this API calls them.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import aclosing

from fastapi import APIRouter, Request
from fastapi.responses import Response as HTTPResponse
from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from entropy_serve.server.api.answer import answer
from entropy_serve.server.api.batch_routes import owner_of
from entropy_serve.server.api.drain import Drain
from entropy_serve.server.api.responses_api.events import EventStream
from entropy_serve.server.api.responses_api.reply import answer_of, new_response_id, response_object
from entropy_serve.server.api.responses_api.request import CHAT_TO_RESPONSES_FIELDS, ResponsesRequest
from entropy_serve.server.core.answering import ChunkStream
from entropy_serve.server.core.service import Endpoint, Service, check_model, parse_body
from entropy_serve.server.core.store import Store
from entropy_serve.server.errors import APIError, NotFound


def parse_responses_request(body: object) -> ResponsesRequest:
    return parse_body(body, ResponsesRequest)


def responses_router(service: Service, store: Store, drain: Drain) -> APIRouter:
    router = APIRouter()

    async def respond(owner: str, body: object) -> Response | ChunkStream:
        request = parse_responses_request(body)
        check_model(service.config, request.model)
        history = []
        if request.previous_response_id is not None:
            stored = await asyncio.to_thread(store.response, owner, request.previous_response_id)
            if stored is None:
                raise NotFound(
                    f"Previous response with id '{request.previous_response_id}' not found.",
                    param="previous_response_id",
                )
            history = stored[1]
        chat_body = request.chat_body(history)
        response_id, created_at = new_response_id(), int(time.time())
        try:
            reply = await service.answer(chat_body, Endpoint.CHAT_COMPLETIONS)
        except APIError as error:
            raise renamed(error) from None
        conversation = [*history, *request.messages()]  # instructions are not carried to the next turn

        async def keep(response: Response, reply_message: dict) -> None:
            if request.store:
                await asyncio.to_thread(
                    store.add_response, owner, response.model_dump(mode="json"), [*conversation, reply_message]
                )

        if isinstance(reply, ChatCompletion):
            answered = answer_of(reply)
            response = response_object(request, response_id=response_id, created_at=created_at, answer=answered)
            await keep(response, answered.chat_message())
            return response

        events = EventStream(request, response_id, created_at)

        async def streamed():
            async with aclosing(events.events(reply)) as stream:
                async for event in stream:
                    if event.type in ("response.completed", "response.incomplete"):
                        await keep(events.final, events.answer.chat_message())
                    yield event

        return await ChunkStream.start(streamed(), reply.extensions)

    @router.post("/responses")
    async def create_response(raw: Request) -> HTTPResponse:
        owner = owner_of(raw)
        return await answer(drain, raw, lambda body: respond(owner, body), named_events=True)

    @router.get("/responses/{response_id}")
    async def retrieve_response(raw: Request, response_id: str) -> dict:
        stored = await asyncio.to_thread(store.response, owner_of(raw), response_id)
        if stored is None:
            raise _no_response(response_id)
        return stored[0]

    @router.delete("/responses/{response_id}")
    async def delete_response(raw: Request, response_id: str) -> dict:
        if not await asyncio.to_thread(store.delete_response, owner_of(raw), response_id):
            raise _no_response(response_id)
        return {"id": response_id, "object": "response", "deleted": True}

    return router


def renamed(error: APIError) -> APIError:
    """`error` naming the chat field it is about as the Responses API calls it."""
    for chat_name, name in CHAT_TO_RESPONSES_FIELDS.items():
        if error.param == chat_name or error.message.startswith(chat_name):
            error.message = name + error.message.removeprefix(chat_name)
            error.param = name
            break
    return error


def _no_response(response_id: str) -> NotFound:
    return NotFound(f"Response with id '{response_id}' not found.", param="response_id")
