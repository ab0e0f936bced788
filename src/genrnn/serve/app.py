"""The HTTP API (OpenAI-compatible completions) and the web playground.

    app = create_app({"shakespeare": "runs/shakespeare"}, Limits(max_streams=64), api_key="...")

Endpoints: ``POST /v1/completions`` (plain or streamed as server-sent events;
``condition`` for a conditioned model), ``POST /v1/captions`` (an image as
base64 JSON or as the raw body, for a captioner), ``GET /v1/models``,
``GET /v1/models/{id}``, ``GET /healthz``, the playground at ``/`` and the
OpenAPI document at ``/openapi.json`` (browsable at ``/docs``).

Requests run in the :class:`~genrnn.serve.engine.Engine` thread, batched with
every other request; this module only checks, translates and streams. Every
error, a failed validation included, is a JSON body in OpenAI's shape
``{"error": {"message", "type", "param", "code"}}``: 400 bad parameters, 401
missing or wrong key, 404 unknown model or path, 408 body too slow, 413 body too
large, 429 no free stream, 500 an internal failure (the server keeps running).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import os
import secrets
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..beam import caption_beam
from ..errors import GenrnnError
from ..sampling import row_seed
from ..tokenizers import EOS_ID
from .engine import Engine, EngineFull, EngineStopped, RowParams, RowSpec, Update
from .limits import Limits
from .schemas import (
    MAX_STOP,
    MAX_STOP_CHARS,
    SSE_EVENT_SCHEMA,
    CaptionRequest,
    CaptionResponse,
    CompletionRequest,
    ConditionDetails,
    CompletionResponse,
    ErrorResponse,
    Health,
    ModelCard,
    ModelDetails,
    ModelList,
)

STATIC = Path(__file__).parent / "static"
FLUSH_INTERVAL = 0.02  # seconds between two writes of one stream (the first text goes out at once)
DEFAULT_MODEL = "default"


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: Optional[str] = None, code: Optional[str] = None, headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers


def error_body(message: str, type: str, param: Optional[str] = None, code: Optional[str] = None) -> Dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def json_bytes(data: Any) -> bytes:
    """Compact UTF-8 JSON; text that cannot be UTF-8 (a lone surrogate that a
    corpus read with errors="surrogateescape" put in the vocabulary) is escaped
    instead of failing the response."""
    try:
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(data, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class _JSON(JSONResponse):
    def render(self, content: Any) -> bytes:
        return json_bytes(content)


def _error_response(e: APIError) -> JSONResponse:
    return _JSON(error_body(e.message, e.type, e.param, e.code), status_code=e.status, headers=e.headers)


_ERRORS = {status: {"model": ErrorResponse, "description": what} for status, what in [
    (400, "Bad parameters (also invalid JSON or a failed validation)"),
    (401, "Missing or wrong API key"),
    (404, "Unknown model"),
    (408, "Request body not received in time (--body-timeout)"),
    (413, "Request body too large"),
    (429, "All streams busy; retry later"),
    (500, "Internal error"),
    (503, "The server is shutting down"),
]}


def create_app(models: Mapping[str, Any], limits: Limits = Limits(), api_key: Optional[str] = None,
               device: str = "auto") -> FastAPI:
    """An app serving ``models``: name -> run folder (or a loaded TrainedModel).

    The first model is the default one: a request that leaves ``model`` out,
    or names ``"default"``, gets it. With ``api_key``, every ``/v1`` request
    needs ``Authorization: Bearer <api_key>``.
    """
    from ..api import TrainedModel, load

    if not models:
        raise ValueError("create_app needs at least one model")
    limits.validate()
    served: Dict[str, TrainedModel] = {}
    for name, run in models.items():
        served[name] = run if isinstance(run, TrainedModel) else load(run, device=device)
    engine = Engine(served, max_streams=limits.max_streams)
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, engine.stop)

    app = FastAPI(title="genrnn", version=__version__, lifespan=lifespan,
                  description="Generate text with recurrent language models trained by genrnn. "
                              "`/v1/completions` follows OpenAI's completions API.")
    app.state.engine = engine
    app.state.models = served
    app.state.limits = limits
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes, timeout=limits.body_timeout)
    responses: Dict[int, int] = {}  # status code -> count, filled by StatusCounter
    app.add_middleware(StatusCounter, counts=responses)  # outermost: counts the refusals above too
    _add_error_handlers(app)
    auth = [Depends(_key_checker(api_key))] if api_key else []

    @app.get("/", include_in_schema=False)
    async def playground() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/healthz", response_model=Health, summary="Liveness and load")
    async def healthz() -> Health:
        return Health(models=list(served), active_streams=engine.active, waiting_rows=engine.waiting,
                      max_streams=limits.max_streams, limits=vars(limits), steps=engine.steps, tokens=engine.tokens,
                      responses={str(k): v for k, v in sorted(responses.items())}, rss_bytes=resident_bytes())

    @app.get("/v1/models", response_model=ModelList, dependencies=auth, responses=_pick(401),
             summary="The served models; the first is the default")
    async def list_models() -> ModelList:
        return ModelList(data=[_card(name, run, created) for name, run in served.items()])

    @app.get("/v1/models/{model_id}", response_model=ModelCard, dependencies=auth, responses=_pick(401, 404),
             summary="One served model")
    async def get_model(model_id: str) -> ModelCard:
        name = _resolve(model_id, served)
        return _card(name, served[name], created)

    @app.post("/v1/completions", response_model=CompletionResponse, dependencies=auth,
              summary="Complete prompts (OpenAI-compatible)",
              responses={200: {"description": "The completions, or with `stream` a text/event-stream of "
                                              "CompletionResponse chunks ending with `data: [DONE]`",
                               "content": {"text/event-stream": {"schema": SSE_EVENT_SCHEMA}}},
                         **_pick(400, 401, 404, 413, 429, 500, 503)})
    async def create_completion(body: CompletionRequest, request: Request):
        name = _resolve(body.model, served)
        job = _Job.build(body, name, served[name], limits)
        sink, ticket, watcher = _submit(engine, name, job, request)
        if body.stream:
            return StreamingResponse(_stream(job, sink, ticket, watcher), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            return _JSON(await _collect(job, sink))
        finally:
            watcher.cancel()
            ticket.cancel()

    @app.post("/v1/captions", response_model=CaptionResponse, dependencies=auth,
              summary="Caption images with a captioner (genrnn extra)",
              openapi_extra={"requestBody": {"content": {
                  "application/json": {"schema": {"$ref": "#/components/schemas/CaptionRequest"}},
                  "image/*": {"schema": {"type": "string", "format": "binary"}}}, "required": True}},
              responses=_pick(400, 401, 404, 413, 429, 500, 503))
    async def create_caption(request: Request):
        """JSON ``{"image": BASE64 or [BASE64...], "model", "max_tokens", "temperature", "beam", "seed"}``,
        or an image file as the body (``Content-Type: image/png``; the other
        fields as query parameters)."""
        body, images = await _caption_body(request)
        name = _resolve(body.model, served)
        run = served[name]
        if run.condition is None or run.condition.kind != "image":
            raise APIError(400, f"the model '{name}' is not an image captioner", param="model")
        if body.max_tokens > limits.max_tokens:
            raise APIError(400, f"max_tokens is {body.max_tokens}; this server allows at most {limits.max_tokens}",
                           param="max_tokens")
        if len(images) > limits.max_rows:
            raise APIError(400, f"{len(images)} images; this server allows at most {limits.max_rows} per request",
                           param="image")
        try:
            condition = run.condition.encode(images)
        except GenrnnError as e:
            raise APIError(400, str(e), param="image") from None
        try:
            beam = caption_beam(body.beam, body.temperature)
        except GenrnnError as e:
            raise APIError(400, str(e), param="beam") from None
        request_body = CompletionRequest(prompt=[""] * len(images), max_tokens=body.max_tokens,
                                         temperature=body.temperature, seed=body.seed, beam=beam)
        job = _Job.build(request_body, name, run, limits, condition=condition)
        sink, ticket, watcher = _submit(engine, name, job, request)
        try:
            done = await _collect(job, sink)
        finally:
            watcher.cancel()
            ticket.cancel()
        return _JSON({"id": job.id.replace("cmpl-", "cap-"), "object": "caption", "created": job.created,
                      "model": name, "captions": [{"index": c["index"], "text": c["text"],
                                                   "finish_reason": c["finish_reason"]} for c in done["choices"]]})

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


# -- requests -------------------------------------------------------------------------


def _pick(*statuses: int) -> Dict[int, Dict[str, Any]]:
    return {s: _ERRORS[s] for s in statuses}


def _resolve(model: Optional[str], served: Mapping[str, Any]) -> str:
    if model in served:
        return model  # type: ignore[return-value]
    if model is None or model == DEFAULT_MODEL:
        return next(iter(served))
    raise APIError(404, f"The model '{model}' does not exist; served: {', '.join(served)}", param="model",
                   code="model_not_found")


def _card(name: str, run: Any, created: int) -> ModelCard:
    m, d = run.config.model, run.config.data
    params = sum(p.numel() for p in run.model.parameters())
    c = run.condition
    condition = None if c is None else ConditionDetails(
        kind=c.kind, labels=c.label_names() if c.kind == "label" else [], values=list(c.labels), size=c.size,
        max_length=c.max_length if c.kind == "text" else None)
    return ModelCard(id=name, created=created,
                     genrnn=ModelDetails(type=m.type, cell=m.cell, num_layers=m.num_layers, hidden_size=m.hidden_size,
                                         tokenizer=d.tokenizer, vocab_size=run.tokenizer.vocab_size,
                                         parameters=params, condition=condition))


def _submit(engine: Engine, name: str, job: "_Job", request: Request):
    """Queue a job's rows; (sink, ticket, the task that cancels them if the client leaves)."""
    sink = _QueueSink(asyncio.get_running_loop(), len(job.specs))
    try:
        ticket = engine.submit(name, job.specs, sink)
    except EngineFull as e:
        raise APIError(429, str(e), type="server_busy", code="too_many_streams",
                       headers={"Retry-After": "1"}) from None
    except EngineStopped as e:
        raise APIError(503, str(e), type="server_error", code="shutting_down") from None
    return sink, ticket, asyncio.create_task(_watch_disconnect(request, ticket, sink))


async def _caption_body(request: Request) -> Tuple[CaptionRequest, List[bytes]]:
    """The caption request and its image files, from JSON with base64 or a raw image body."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    raw = await request.body()
    try:
        if kind.startswith("image/") or kind == "application/octet-stream":
            query = dict(request.query_params)
            for key in ("max_tokens", "seed", "beam"):
                if key in query:
                    query[key] = int(query[key])
            if "temperature" in query:
                query["temperature"] = float(query["temperature"])
            body = CaptionRequest(image="", **query)
            return body, [raw]
        body = CaptionRequest.model_validate_json(raw)
    except ValueError as e:  # pydantic's ValidationError is a ValueError
        raise APIError(400, f"invalid caption request: {str(e).splitlines()[0]}"
                       + (f" ({str(e).splitlines()[1].strip()})" if len(str(e).splitlines()) > 1 else ""),
                       code="invalid_value") from None
    encoded = [body.image] if isinstance(body.image, str) else list(body.image)
    images = []
    for i, text in enumerate(encoded):
        if "," in text[:100] and text.startswith("data:"):  # a data: URL from a browser
            text = text.split(",", 1)[1]
        try:
            images.append(base64.b64decode(text, validate=True))
        except (binascii.Error, ValueError):
            raise APIError(400, f"image {i} is not valid base64", param="image") from None
    if not images:
        raise APIError(400, "give at least one image", param="image")
    return body, images


@dataclass
class _Job:
    """A checked request: its rows, and what the response needs to know."""

    model: str
    prompts: List[str]
    n: int
    specs: List[RowSpec]
    prompt_tokens: int
    echo: bool
    logprobs: bool
    include_usage: bool
    id: str
    created: int
    # echo + logprobs: each prompt's tokens as (text, offset in the prompt), for its logprobs
    pieces: Optional[List[List[Tuple[str, int]]]] = None

    @property
    def scored(self) -> bool:
        """Whether the prompts' own logprobs come first in each choice's (echo + logprobs)."""
        return self.pieces is not None

    @classmethod
    def build(cls, body: CompletionRequest, model: str, run: Any, limits: Limits,
              condition: Optional[Any] = None) -> "_Job":
        """``condition``: the prompts' encoded conditions (one row per prompt);
        else they come from ``body.condition``."""
        prompts = [body.prompt] if isinstance(body.prompt, str) else list(body.prompt)
        if not prompts:
            raise APIError(400, "prompt must be a string or a non-empty list of strings", param="prompt")
        if body.max_tokens > limits.max_tokens:
            raise APIError(400, f"max_tokens is {body.max_tokens}; this server allows at most {limits.max_tokens}",
                           param="max_tokens")
        if body.n > limits.max_n:
            raise APIError(400, f"n is {body.n}; this server allows at most {limits.max_n}", param="n")
        if len(prompts) * body.n > limits.max_rows:
            raise APIError(400, f"{len(prompts)} prompts x n={body.n} is {len(prompts) * body.n} completions; "
                                f"this server allows at most {limits.max_rows} per request", param="prompt")
        if body.best_of is not None and body.best_of != body.n:
            raise APIError(400, "best_of is not supported (only best_of == n)", param="best_of")
        stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if body.beam is not None:
            for name, bad in (("n", body.n != 1), ("stop", bool(stop)), ("logprobs", body.logprobs is not None)):
                if bad:
                    raise APIError(400, f"beam search gives the most likely text: leave out {name} "
                                        "(n must be 1)", param=name)
        seq2seq = run.condition is not None and run.condition.kind == "text"
        if seq2seq and body.condition is not None:
            raise APIError(400, f"the model '{model}' translates its prompt: give the source sentence as the "
                                "prompt, not a condition", param="condition")
        scored = body.echo and body.logprobs is not None  # the prompt's own logprobs too
        if seq2seq and scored:
            raise APIError(400, f"the model '{model}' translates its prompt: a source sentence is read, not "
                                "predicted, so it has no logprobs to echo; leave out echo (logprobs alone gives "
                                "the translation's)", param="echo")
        if len(stop) > MAX_STOP or any(len(s) > MAX_STOP_CHARS for s in stop):
            raise APIError(400, f"stop takes at most {MAX_STOP} strings of at most {MAX_STOP_CHARS} characters",
                           param="stop")
        encoded = []
        for i, p in enumerate(prompts):
            if len(p) > limits.max_prompt_chars:
                raise APIError(400, f"prompt {i} has {len(p)} characters; this server allows at most "
                                    f"{limits.max_prompt_chars}", param="prompt")
            ids = [] if seq2seq else run.tokenizer.encode(p)  # a source goes to the encoder, not the decoder
            if len(ids) > limits.max_prompt_tokens:
                raise APIError(400, f"prompt {i} has {len(ids)} tokens; this server allows at most "
                                    f"{limits.max_prompt_tokens}", param="prompt")
            encoded.append([EOS_ID] + ids)
        if seq2seq:
            try:
                condition = run.encode_condition(prompts, len(prompts))
            except GenrnnError as e:
                raise APIError(400, str(e), param="prompt") from None
        elif condition is None:
            if run.condition is not None and run.condition.kind == "image":
                raise APIError(400, f"the model '{model}' captions images: POST them to /v1/captions",
                               param="condition")
            try:
                condition = run.encode_condition(body.condition, len(prompts))
            except GenrnnError as e:
                raise APIError(400, str(e), param="condition") from None
        specs = []
        for p, ids in enumerate(encoded):
            for j in range(body.n):
                index = p * body.n + j
                params = RowParams(max_tokens=body.max_tokens, temperature=body.temperature, top_k=body.top_k,
                                   top_p=None if body.top_p >= 1.0 else body.top_p, greedy=body.greedy,
                                   stop=tuple(stop), logprobs=body.logprobs,
                                   seed=None if body.seed is None else row_seed(body.seed, index),
                                   beam=body.beam, length_penalty=body.length_penalty,
                                   # one row per prompt scores it; the prompt's other rows share its scores
                                   prompt_logprobs=body.logprobs if scored and j == 0 else None)
                specs.append(RowSpec(index, ids, params, None if condition is None else condition[p]))
        return cls(model=model, prompts=prompts, n=body.n, specs=specs,
                   prompt_tokens=sum(len(ids) - 1 for ids in encoded), echo=body.echo,
                   logprobs=body.logprobs is not None,
                   pieces=[_prompt_pieces(run.tokenizer, p, ids[1:]) for p, ids in zip(prompts, encoded)]
                   if scored else None,
                   include_usage=bool(body.stream_options and body.stream_options.include_usage),
                   id=f"cmpl-{uuid.uuid4().hex}", created=int(time.time()))

    def prompt_of(self, index: int) -> str:
        return self.prompts[index // self.n]

    def envelope(self, choices: List[Dict[str, Any]]) -> Dict[str, Any]:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": choices}

    def logprobs_of(self, index: int, updates: List[Update],
                    prompt: Optional[List[Tuple[float, Dict[str, float]]]] = None) -> Dict[str, Any]:
        """A choice's logprobs: with ``prompt`` (the engine's scores of its
        prompt), the prompt's tokens first, then the generated ones."""
        base = len(self.prompt_of(index))
        tokens = [t for u in updates for t in u.tokens]
        out = {"tokens": [t.text for t in tokens], "token_logprobs": [t.logprob for t in tokens],
               "top_logprobs": [t.top for t in tokens], "text_offset": [base + t.offset for t in tokens]}
        if prompt is not None and self.pieces is not None:
            pieces = self.pieces[index // self.n]
            out["tokens"][:0] = [text for text, _ in pieces]
            out["token_logprobs"][:0] = [logprob for logprob, _ in prompt]
            out["top_logprobs"][:0] = [top for _, top in prompt]
            out["text_offset"][:0] = [offset for _, offset in pieces]
        return out

    def prompt_scores(self, updates: List[Update], into: Dict[int, Any]) -> None:
        """Note the prompt scores among ``updates``: prompt number -> its scores."""
        for u in updates:
            if u.prompt is not None:
                into[u.index // self.n] = u.prompt

    def usage(self, completion_tokens: int) -> Dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}


def _prompt_pieces(tokenizer: Any, text: str, ids: List[int]) -> List[Tuple[str, int]]:
    """Each token of a prompt as (its text, where it starts in the prompt),
    the spaces before a token counted in its text (as OpenAI's tokens have
    them), so the pieces add up to the prompt but for spaces at its end.
    Where the prompt cannot be lined up with its tokens (lower-casing that
    changes lengths), the tokens as decoded instead."""
    spans = tokenizer.spans(text)
    if spans is None or len(spans) != len(ids):
        decoder, pieces, at = tokenizer.decoder(), [], 0
        for tid in ids:
            piece = decoder.push(tid)
            pieces.append((piece, min(at, len(text))))
            at += len(piece)
        return pieces
    pieces, end = [], 0
    for _, stop in spans:
        pieces.append((text[end:stop], end))
        end = stop
    return pieces


_FINISH = {"eos": "stop", "stop": "stop", "length": "length"}


def _check_failure(update: Update) -> None:
    if update.finish_reason == "error":
        raise APIError(500, update.error or "generation failed", type="server_error")
    if update.finish_reason == "cancelled":
        raise APIError(503, update.error or "cancelled", type="server_error", code="shutting_down")


class _QueueSink:
    """Receives the engine's updates in the event loop (see Engine._publish)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, rows: int):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.left = rows  # rows that have not ended yet
        self.pause: Optional[asyncio.Future] = None  # a stream waiting out FLUSH_INTERVAL

    def deliver(self, updates: List[Update]) -> None:
        self.queue.put_nowait(updates)
        self.left -= sum(u.finish_reason is not None for u in updates)
        if self.left <= 0 and self.pause is not None and not self.pause.done():
            self.pause.set_result(None)  # every row ended: the last chunk need not wait

    async def wait(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if every row ends meanwhile."""
        if self.left <= 0:
            return
        self.pause = self.loop.create_future()
        timer = self.loop.call_later(seconds, _set_none, self.pause)
        try:
            await self.pause
        finally:
            timer.cancel()
            self.pause = None

    async def next_batch(self) -> Optional[List[Update]]:
        """All updates that arrived, waiting for at least one; None once the client left."""
        first = await self.queue.get()
        if first is None:
            return None
        batch = list(first)
        while not self.queue.empty():
            more = self.queue.get_nowait()
            if more is None:
                return None
            batch.extend(more)
        return batch


def _set_none(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


async def _watch_disconnect(request: Request, ticket, sink: _QueueSink) -> None:
    """Cancel the request's rows as soon as its client goes away."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            ticket.cancel()
            sink.queue.put_nowait(None)
            return


async def _collect(job: _Job, sink: _QueueSink) -> Dict[str, Any]:
    rows = len(job.specs)
    texts = [""] * rows
    updates: List[List[Update]] = [[] for _ in range(rows)]
    reasons: List[Optional[str]] = [None] * rows
    counts = [0] * rows
    scores: Dict[int, Any] = {}  # prompt number -> its logprobs (echo + logprobs)
    left = rows
    while left:
        batch = await sink.next_batch()
        if batch is None:  # the client is gone; nobody reads the answer
            raise APIError(499, "client closed the request")
        job.prompt_scores(batch, scores)
        for u in batch:
            _check_failure(u)
            texts[u.index] += u.text
            counts[u.index] = u.completion_tokens
            if job.logprobs:
                updates[u.index].append(u)
            if u.finish_reason:
                reasons[u.index] = _FINISH[u.finish_reason]
                left -= 1
    choices = []
    for i in range(rows):
        text = job.prompt_of(i) + texts[i] if job.echo else texts[i]
        choices.append({"text": text, "index": i, "finish_reason": reasons[i],
                        "logprobs": job.logprobs_of(i, updates[i], scores.get(i // job.n)) if job.logprobs
                        else None})
    response = job.envelope(choices)
    response["usage"] = job.usage(sum(counts))
    return response


def _sse(data: Any) -> bytes:
    return b"data: " + json_bytes(data) + b"\n\n"


async def _stream(job: _Job, sink: _QueueSink, ticket, watcher: asyncio.Task):
    """Server-sent events: chunks in the shape of CompletionResponse, then ``[DONE]``.

    The first text goes out at once; after that a stream writes at most every
    ``FLUSH_INTERVAL`` seconds, sending all that arrived meanwhile as one
    chunk per choice. Steady for a reader (50 updates a second), and a busy
    server makes far fewer, larger writes instead of one per token per stream.
    """
    rows = len(job.specs)
    counts = [0] * rows
    left = rows
    last_write = 0.0
    loop = asyncio.get_running_loop()
    scores: Dict[int, Any] = {}  # echo + logprobs: prompt number -> its logprobs
    echoed = [not job.scored] * rows  # whether a choice's prompt went out (in its first chunk with logprobs)
    try:
        if job.echo and not job.scored:
            yield b"".join(_sse(job.envelope([{"text": job.prompt_of(i), "index": i, "logprobs": None,
                                                "finish_reason": None}])) for i in range(rows))
        while left:
            wait = last_write + FLUSH_INTERVAL - loop.time()
            if wait > 0:
                await sink.wait(wait)
            batch = await sink.next_batch()
            if batch is None:
                return
            merged: Dict[int, List[Update]] = {}
            for u in batch:
                merged.setdefault(u.index, []).append(u)
            if job.scored:
                # a prompt's scores come in its first row's first update, which the engine sends
                # before any update of that prompt's rows (they join with or after it)
                job.prompt_scores(batch, scores)
            out = []
            for index, ups in merged.items():
                last = ups[-1]
                if last.finish_reason in ("error", "cancelled"):
                    status = 500 if last.finish_reason == "error" else 503
                    out.append(_sse(error_body(last.error or "generation failed", "server_error",
                                               code=None if status == 500 else "shutting_down")))
                    out.append(b"data: [DONE]\n\n")
                    yield b"".join(out)
                    return
                counts[index] = last.completion_tokens
                reason = _FINISH[last.finish_reason] if last.finish_reason else None
                left -= reason is not None
                text = "".join(u.text for u in ups)
                prompt = None
                if not echoed[index]:  # echo + logprobs: the prompt and its logprobs in the first chunk
                    echoed[index] = True
                    text = job.prompt_of(index) + text
                    prompt = scores.get(index // job.n)
                choice = {"text": text, "index": index, "finish_reason": reason,
                          "logprobs": job.logprobs_of(index, ups, prompt) if job.logprobs else None}
                out.append(_sse(job.envelope([choice])))
            last_write = loop.time()
            yield b"".join(out)
        if job.include_usage:
            chunk = job.envelope([])
            chunk["usage"] = job.usage(sum(counts))
            yield _sse(chunk)
        yield b"data: [DONE]\n\n"
    finally:
        watcher.cancel()
        ticket.cancel()


# -- auth, limits, errors ----------------------------------------------------------------


def _key_checker(api_key: str):
    bearer = HTTPBearer(auto_error=False, description="The server's --api-key")

    async def check(credentials: Optional[HTTPAuthorizationCredentials] = Depends(bearer)) -> None:
        if credentials is None:
            raise APIError(401, "You didn't provide an API key: send it as 'Authorization: Bearer KEY'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        if not secrets.compare_digest(credentials.credentials.encode(), api_key.encode()):
            raise APIError(401, "Incorrect API key provided", code="invalid_api_key",
                           headers={"WWW-Authenticate": "Bearer"})

    return check


def resident_bytes() -> Optional[int]:
    """This process's resident memory (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class StatusCounter:
    """Count the responses by status code, for ``/healthz``: an operator (and the
    server soak) sees the 4xx and 5xx without reading logs."""

    def __init__(self, app, counts: Dict[int, int]):
        self.app = app
        self.counts = counts

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def counted(message) -> None:
            if message["type"] == "http.response.start":
                status = int(message["status"])
                self.counts[status] = self.counts.get(status, 0) + 1
            await send(message)

        await self.app(scope, receive, counted)


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413 -- by Content-Length, and
    by counting the bytes as they arrive (a chunked body has no length) -- so
    no request can make the server hold more than that; and bodies that take
    longer than ``timeout`` seconds to arrive (a client sending a byte at a
    time) with 408, so no client can hold a connection open by being slow."""

    def __init__(self, app, max_bytes: int, timeout: float = 30.0):
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return await self._refuse(send, 400, "Content-Length is not a number")
            if declared > self.max_bytes:
                return await self._too_large(send)
        body = bytearray()
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                return await self._refuse(send, 408, f"Request body not received within {self.timeout:g} s",
                                          code="request_timeout")
            if message["type"] != "http.request":
                return  # the client left before sending the body
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                return await self._too_large(send)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send) -> None:
        await self._refuse(send, 413, f"Request body too large: this server accepts at most {self.max_bytes} bytes",
                           code="request_too_large")

    @staticmethod
    async def _refuse(send, status: int, message: str, code: Optional[str] = None) -> None:
        payload = json.dumps(error_body(message, "invalid_request_error", code=code)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, e: APIError) -> JSONResponse:
        return _error_response(e)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        errors = e.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":
            where = first.get("loc", ("body", "?"))[-1]
            detail = (first.get("ctx") or {}).get("error", "invalid JSON")
            return _error_response(APIError(400, f"The body is not valid JSON: {detail} (at character {where})",
                                            code="invalid_json"))
        loc = [str(part) for part in first.get("loc", ()) if part != "body"]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg')}" if param else str(first.get("msg"))
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        return _error_response(APIError(400, message, param=param, code="invalid_value"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        message = e.detail if isinstance(e.detail, str) else json.dumps(e.detail)
        return _error_response(APIError(e.status_code, message, headers=getattr(e, "headers", None)))

    @app.exception_handler(Exception)
    async def internal_error(request: Request, e: Exception) -> JSONResponse:
        return _error_response(APIError(500, f"internal error: {type(e).__name__}", type="server_error"))


def _openapi(app: FastAPI) -> Dict[str, Any]:
    """FastAPI's document without its 422 responses: validation errors are 400 here."""
    if app.openapi_schema is None:
        spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for path in spec.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        schemas = spec.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = spec
    return app.openapi_schema


def parse_model_args(runs: List[str], named: List[str]) -> Dict[str, str]:
    """``RUN`` (named after its folder) and ``NAME=RUN`` arguments -> {name: run}."""
    out: Dict[str, str] = {}
    pairs: List[Tuple[str, str]] = [(Path(r).resolve().name, r) for r in runs]
    for item in named:
        name, sep, run = item.partition("=")
        if not sep or not name or not run:
            raise ValueError(f"--model takes NAME=RUN, got {item!r}")
        pairs.append((name, run))
    for name, run in pairs:
        if name in out:
            raise ValueError(f"two models are named {name!r}; name them with --model NAME=RUN")
        if name == DEFAULT_MODEL:
            raise ValueError(f"{DEFAULT_MODEL!r} is reserved for the default model; choose another name")
        out[name] = run
    return out

