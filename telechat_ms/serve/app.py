"""The OpenAI-compatible HTTP API (FastAPI): /v1/chat/completions, /v1/completions, /v1/models, /health.

Each generation request is validated (400 / 404 in OpenAI's error JSON), rendered to prompt ids, and submitted
to the Engine (503 when its queue is full). Tokens come back as events on an asyncio queue; the answer text is
re-decoded as tokens arrive and streamed as Server-Sent Events (`data: {chunk}` ... `data: [DONE]`), holding
back any tail that may still become a stop string or a `<tool_call>` tag. A client that disconnects (streaming
or not) cancels its request, which frees its slot at the engine's next step.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..config.base import ConfigError
from ..data.stops import answer_text
from .protocol import APIError, ChatRequest, CompletionRequest, generation_config, max_tokens_of, parse_body, \
    stop_list
from .scheduler import Engine, GenRequest, QueueFull
from .served import ServedModel, chat_prompt, completion_prompt
from .tools import ToolCallStream, generated_text, held_back


class Answer:
    """The text of one request as its tokens arrive: deltas safe to stream, then the rest at the end."""

    def __init__(self, tokenizer, stops: list[str], keep_tool_tags: bool):
        self.tokenizer, self.stops, self.keep = tokenizer, stops, keep_tool_tags
        self.tokens: list[int] = []
        self.sent = ""

    def text(self) -> str:
        if self.keep:
            return generated_text(self.tokenizer, self.tokens, self.stops)[0]
        return answer_text(self.tokenizer, self.tokens, self.stops)[0]

    def add(self, token: int) -> str:
        self.tokens.append(token)
        text = self.text()
        if text.endswith("\ufffd"):                       # an incomplete UTF-8 character: wait for its bytes
            return ""
        return self._release(text[:len(text) - held_back(text, self.stops)])

    def final(self) -> str:
        return self._release(self.text())

    def _release(self, text: str) -> str:
        if len(text) <= len(self.sent) or not text.startswith(self.sent):
            return ""
        delta, self.sent = text[len(self.sent):], text
        return delta


class Job:
    """One submitted request as seen from the event loop."""

    def __init__(self, engine: Engine, prompt, config, max_tokens, stops):
        loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()

        def emit(event):            # engine thread -> event loop; the loop may be gone at shutdown
            try:
                loop.call_soon_threadsafe(self.queue.put_nowait, event)
            except RuntimeError:
                pass

        self.engine = engine
        self.request = GenRequest(prompt, config, max_tokens, emit, stops)

    def submit(self) -> None:
        try:
            self.engine.submit(self.request)
        except QueueFull as exc:
            raise APIError(503, f"server busy: {exc}; retry later", code="server_busy") from None

    def cancel(self) -> None:
        self.engine.cancel(self.request)


def _finish_reason(reason: str, parser: ToolCallStream | None) -> str:
    if parser is None or reason == "length":
        return reason
    if parser.error:
        return "invalid_tool_call"
    return "tool_calls" if parser.calls else reason


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _sse(data) -> str:
    return "data: " + (data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)) + "\n\n"


async def _wait_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _collect(job: Job) -> tuple[list[int], str, int]:
    tokens = []
    while True:
        event = await job.queue.get()
        if event[0] == "token":
            tokens.append(event[1])
        elif event[0] == "done":
            return tokens, event[1], event[2]
        else:
            raise APIError(500, event[1], code="generation_error")


async def _run_to_end(request: Request, job: Job):
    """Wait for the answer; a client that goes away cancels the request (frees its slot)."""
    result = asyncio.ensure_future(_collect(job))
    gone = asyncio.ensure_future(_wait_disconnect(request))
    try:
        await asyncio.wait({result, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not result.done():
            result.cancel()
            job.cancel()
    return result.result() if not result.cancelled() else None


class API:
    """Route handlers bound to one served model and its engine."""

    def __init__(self, served: ServedModel, engine: Engine):
        self.served, self.engine = served, engine

    def _parse(self, raw: bytes, cls):
        body = parse_body(raw, cls)
        if body.model != self.served.name:
            raise APIError(404, f"The model `{body.model}` does not exist (this server serves "
                                f"`{self.served.name}`)", param="model", code="model_not_found")
        return body

    def _prepare(self, body, prompt, stops):
        try:
            config = generation_config(body, self.served.defaults)
        except ConfigError as exc:
            raise APIError(400, str(exc), code="invalid_value") from None
        max_tokens = max_tokens_of(body, len(prompt), self.served.max_len, self.served.defaults.max_new_tokens)
        return Job(self.engine, prompt, config, max_tokens, stops)

    async def chat(self, request: Request):
        body = self._parse(await request.body(), ChatRequest)
        prompt, template, tools, prefix = chat_prompt(self.served, body)
        job = self._prepare(body, prompt, self.served.chat_stops(template, stop_list(body)))
        job.submit()
        meta = {"id": "chatcmpl-" + uuid.uuid4().hex, "created": int(time.time()), "model": self.served.name}
        answer = Answer(self.served.tokenizer, job.request.stop_strings, tools is not None)
        parser = ToolCallStream(prefix) if tools is not None else None
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _streaming(self._chat_chunks(job, meta, answer, parser, len(prompt), include_usage), job)
        got = await _run_to_end(request, job)
        if got is None:
            return JSONResponse({}, status_code=499)
        answer.tokens, reason, generated = got
        message = {"role": "assistant", "content": answer.text()}
        if parser is not None:
            events = parser.feed(message["content"]) + parser.finish()
            message["content"] = "".join(e[1] for e in events if e[0] == "content") or None
            if parser.calls:
                message["tool_calls"] = [call.openai() for call in parser.calls]
        choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": _finish_reason(reason, parser)}
        return {**meta, "object": "chat.completion", "choices": [choice], "usage": _usage(len(prompt), generated)}

    async def _chat_chunks(self, job, meta, answer, parser, prompt_len, include_usage):
        def chunk(delta, finish=None):
            return _sse({**meta, "object": "chat.completion.chunk",
                         "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

        def deltas(events):
            for kind, value in events:
                if kind == "content":
                    yield chunk({"content": value})
                else:
                    yield chunk({"tool_calls": [value.openai(index=len(parser_calls_sent))]})
                    parser_calls_sent.append(value)

        parser_calls_sent: list = []
        yield chunk({"role": "assistant", "content": ""})
        while True:
            event = await job.queue.get()
            if event[0] == "error":
                yield _sse(APIError(500, event[1], code="generation_error").body())
                break
            text = answer.add(event[1]) if event[0] == "token" else answer.final()
            if parser is None:
                events = [("content", text)] if text else []
            else:
                events = parser.feed(text) + (parser.finish() if event[0] == "done" else [])
            for piece in deltas(events):
                yield piece
            if event[0] == "done":
                yield chunk({}, _finish_reason(event[1], parser))
                if include_usage:
                    yield _sse({**meta, "object": "chat.completion.chunk", "choices": [],
                                "usage": _usage(prompt_len, event[2])})
                break
        yield _sse("[DONE]")

    async def completion(self, request: Request):
        body = self._parse(await request.body(), CompletionRequest)
        prompt = completion_prompt(self.served, body)
        job = self._prepare(body, prompt, self.served.completion_stops(stop_list(body)))
        job.submit()
        meta = {"id": "cmpl-" + uuid.uuid4().hex, "created": int(time.time()), "model": self.served.name}
        answer = Answer(self.served.tokenizer, job.request.stop_strings, False)
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _streaming(self._completion_chunks(job, meta, answer, len(prompt), include_usage), job)
        got = await _run_to_end(request, job)
        if got is None:
            return JSONResponse({}, status_code=499)
        answer.tokens, reason, generated = got
        choice = {"index": 0, "text": answer.text(), "logprobs": None, "finish_reason": reason}
        return {**meta, "object": "text_completion", "choices": [choice], "usage": _usage(len(prompt), generated)}

    async def _completion_chunks(self, job, meta, answer, prompt_len, include_usage):
        def chunk(text, finish=None):
            return _sse({**meta, "object": "text_completion",
                         "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}]})

        while True:
            event = await job.queue.get()
            if event[0] == "error":
                yield _sse(APIError(500, event[1], code="generation_error").body())
                break
            text = answer.add(event[1]) if event[0] == "token" else answer.final()
            if text:
                yield chunk(text)
            if event[0] == "done":
                yield chunk("", event[1])
                if include_usage:
                    yield _sse({**meta, "object": "text_completion", "choices": [],
                                "usage": _usage(prompt_len, event[2])})
                break
        yield _sse("[DONE]")


def _streaming(chunks, job: Job) -> StreamingResponse:
    async def guarded():
        try:
            async for piece in chunks:
                yield piece
        finally:                   # finished, or cancelled because the client disconnected
            job.cancel()
    return StreamingResponse(guarded(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def create_app(served: ServedModel, engine: Engine, manage_engine: bool = True) -> FastAPI:
    """The ASGI app. With manage_engine the app's lifespan starts and stops the engine thread."""

    @asynccontextmanager
    async def lifespan(_app):
        if manage_engine:
            engine.start()
        try:
            yield
        finally:
            if manage_engine:
                engine.shutdown()

    app = FastAPI(title="telechat-ms serve", lifespan=lifespan)
    api = API(served, engine)

    @app.exception_handler(APIError)
    async def _api_error(_request, exc: APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request, exc: StarletteHTTPException):
        return JSONResponse(APIError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _internal(_request, exc: Exception):
        return JSONResponse(APIError(500, f"internal error: {type(exc).__name__}: {exc}").body(), status_code=500)

    app.add_api_route("/v1/chat/completions", api.chat, methods=["POST"])
    app.add_api_route("/v1/completions", api.completion, methods=["POST"])

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": served.name, "object": "model", "created": 0,
                                            "owned_by": "telechat_ms", "max_model_len": served.max_len}]}

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": served.name, **engine.load()}

    return app
