"""Request and response bodies of the HTTP API, as pydantic models.

They follow OpenAI's (legacy) completions API, so its clients work unchanged,
plus extras: ``top_k``, ``greedy`` and, for conditioned models, ``condition``;
and ``/v1/captions`` for captioners. They are strict (no coercion of
"1" to 1, no unknown fields), so the OpenAPI document FastAPI derives from
them describes exactly what the server accepts. OpenAI fields genrnn cannot
honour are accepted only with their neutral value, so clients that always send
them (``presence_penalty: 0``) still work.
"""

from __future__ import annotations

from typing import Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

MAX_LOGPROBS = 20
MAX_STOP = 4
MAX_STOP_CHARS = 256


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Strict):
    include_usage: bool = Field(False, description="Send a last chunk with the token counts (empty `choices`).")


class CompletionRequest(_Strict):
    """``POST /v1/completions``."""

    model: Optional[str] = Field(
        None, max_length=256,
        description="A served model (see `GET /v1/models`). Left out or `\"default\"`: the first model the "
                    "server was started with.")
    prompt: Union[str, List[str]] = Field(
        "", description="Text to continue, or a list of texts (one completion each, times `n`). An empty "
                        "prompt starts a new document. For a sequence-to-sequence model (condition kind `text`): "
                        "the source sentence, and the completion is its output (its translation).")
    max_tokens: int = Field(16, ge=0, description="Tokens to generate at most per completion (the server caps it).")
    temperature: float = Field(1.0, ge=0.0, le=10.0, allow_inf_nan=False,
                               description="Sampling temperature; 0 = greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, allow_inf_nan=False,
                         description="Nucleus sampling: only the most likely tokens whose mass reaches `top_p`.")
    top_k: Optional[int] = Field(None, ge=1, description="genrnn extra: only the `top_k` most likely tokens.")
    greedy: bool = Field(False, description="genrnn extra: always the most likely token (as temperature 0).")
    condition: Optional[Union[str, int, List[float], List[str], List[List[float]]]] = Field(
        None, description="genrnn extra, for a conditioned model (see its card in `GET /v1/models`): a label "
                          "(its name or value), or a vector of numbers; or a list with one per prompt.")
    beam: Optional[int] = Field(
        None, ge=1, le=64,
        description="genrnn extra: beam search with this many beams instead of sampling (the temperature, "
                    "top_k and top_p are then not used); 1 is greedy. Needs n = 1, no stop and no logprobs; "
                    "a stream sends the whole text in one chunk.")
    length_penalty: float = Field(1.0, ge=0.0, le=5.0, allow_inf_nan=False,
                                  description="genrnn extra, with beam: rank by log p / length^length_penalty.")
    n: int = Field(1, ge=1, description="Completions per prompt.")
    stop: Optional[Union[str, List[str]]] = Field(
        None, description=f"Up to {MAX_STOP} strings that end a completion (not included in the text).")
    seed: Optional[int] = Field(
        None, ge=-(2**63), le=2**63 - 1,
        description="The same seed gives the same text, whatever else the server is generating.")
    stream: bool = Field(False, description="Send the text as server-sent events, ending with `data: [DONE]`.")
    stream_options: Optional[StreamOptions] = None
    logprobs: Optional[int] = Field(
        None, ge=0, le=MAX_LOGPROBS,
        description="Return the log-probability of each token and of the `logprobs` most likely ones "
                    "(the model's own distribution, before temperature and filtering). With `echo`, the "
                    "prompt's tokens too.")
    echo: bool = Field(
        False, description="Put the prompt before the completion in `text`. With `logprobs`, the prompt's own "
                           "tokens also come first in `logprobs`, each scored given the text before it (in a "
                           "stream, in each choice's first chunk); `max_tokens: 0` then scores the prompt "
                           "alone. Not with a sequence-to-sequence model, whose prompt is a source.")
    user: Optional[str] = Field(None, max_length=256, description="Accepted and ignored.")
    # OpenAI options accepted only with their neutral values
    presence_penalty: float = Field(0.0, ge=0.0, le=0.0, description="Only 0 (not supported).")
    frequency_penalty: float = Field(0.0, ge=0.0, le=0.0, description="Only 0 (not supported).")
    best_of: Optional[int] = Field(None, ge=1, description="Only equal to `n` (not supported otherwise).")
    logit_bias: Optional[Dict[str, float]] = Field(None, max_length=0, description="Only empty (not supported).")
    suffix: Optional[str] = Field(None, max_length=0, description="Only empty (not supported).")


class Logprobs(BaseModel):
    """OpenAI's legacy logprobs: one entry per generated token; with `echo`, the
    prompt's tokens first."""

    tokens: List[str] = Field(description="Each token's text. A prompt token's includes the spaces before it, "
                                          "so the prompt's add up to the prompt (but for spaces at its end).")
    token_logprobs: List[Optional[float]] = Field(
        description="Each token's natural-log probability given the tokens before it. Unlike OpenAI, whose first "
                    "echoed token has null, the first prompt token has a real value here: genrnn begins every "
                    "prompt with the beginning-of-document `<eos>` and predicts the first token from it.")
    top_logprobs: Optional[List[Optional[Dict[str, float]]]] = Field(
        description="The `logprobs` most likely tokens at each position (vocabulary entries), with their "
                    "log-probabilities.")
    text_offset: List[int] = Field(description="Where each token starts in the prompt + completion text.")


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: Optional[Logprobs] = None
    finish_reason: Optional[Literal["stop", "length"]] = Field(
        description="`stop`: the model ended the document, or a stop string was met; `length`: `max_tokens` "
                    "reached. Null in a stream chunk before the last one of its choice.")


class Usage(BaseModel):
    prompt_tokens: int = Field(description="Prompt tokens, the beginning-of-document marker not counted.")
    completion_tokens: int
    total_tokens: int


class CompletionResponse(BaseModel):
    """The response, and also each chunk of a stream (with partial `choices`)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: List[CompletionChoice]
    usage: Optional[Usage] = None
    system_fingerprint: Optional[str] = None


class ConditionDetails(BaseModel):
    """What a conditioned model generates from."""

    kind: Literal["label", "vector", "image", "text"]
    labels: List[str] = Field([], description="label: the labels (their names where the run has names), in order")
    values: List[str] = Field([], description="label: each label's value in the training data")
    size: int = Field(description="label: the number of labels; vector: its width; image: its side in pixels; "
                                  "text: the source vocabulary's size")
    max_length: Optional[int] = Field(None, description="text: the most tokens a source sentence may have")


class ModelDetails(BaseModel):
    """genrnn extra: what kind of network is served."""

    type: str
    cell: Optional[str] = None
    num_layers: Optional[int] = None
    hidden_size: Optional[int] = None
    tokenizer: str
    vocab_size: int
    parameters: int
    condition: Optional[ConditionDetails] = Field(
        None, description="Null for a plain language model; else what `condition` (or an image, for "
                          "`/v1/captions`) must give.")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "genrnn"
    genrnn: ModelDetails


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: List[ModelCard]


class CaptionRequest(_Strict):
    """``POST /v1/captions`` as JSON (an image file can also be posted as the raw body)."""

    model: Optional[str] = Field(None, max_length=256, description="A captioner (its card's condition kind is image).")
    image: Union[str, List[str]] = Field(description="A base64-encoded image file (PNG, JPEG, ...), or a list.")
    max_tokens: int = Field(100, ge=1, description="Tokens per caption at most.")
    temperature: float = Field(0.0, ge=0.0, le=10.0, allow_inf_nan=False,
                               description="0 = the most likely caption, by beam search; above 0, sampled.")
    beam: Optional[int] = Field(None, ge=1, le=64,
                                description="Beams for the most likely caption (default 3, as `genrnn caption`; "
                                            "1 is greedy). Not with a temperature above 0.")
    seed: Optional[int] = Field(None, ge=-(2**63), le=2**63 - 1)


class Caption(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length"]


class CaptionResponse(BaseModel):
    id: str
    object: Literal["caption"] = "caption"
    created: int
    model: str
    captions: List[Caption]


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    models: List[str]
    active_streams: int = Field(description="Rows held now, all requests together: generating, or waiting.")
    waiting_rows: int = Field(0, description="Of those, rows waiting for their prefill (the queue).")
    max_streams: int
    limits: Dict[str, int] = Field(description="What a request may ask for (see `genrnn serve --help`).")
    steps: int = Field(description="Batched model steps taken since the start.")
    tokens: int = Field(description="Tokens generated since the start (tokens / steps = the average batch).")
    responses: Dict[str, int] = Field(default_factory=dict, description="Responses sent, by status code.")
    rss_bytes: Optional[int] = Field(None, description="The server's resident memory (Linux).")


class ErrorBody(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    """Every error, in OpenAI's shape."""

    error: ErrorBody


# One server-sent event of a streamed completion, as OpenAPI 3.1 describes the
# items of text/event-stream: `data` is a CompletionResponse chunk (or an
# error) as JSON, and the last event's data is the literal [DONE].
SSE_EVENT_SCHEMA = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "event": {"type": "string"},
        "data": {"anyOf": [
            {"const": "[DONE]"},
            {"type": "string", "contentMediaType": "application/json",
             "contentSchema": {"anyOf": [{"$ref": "#/components/schemas/CompletionResponse"},
                                         {"$ref": "#/components/schemas/ErrorResponse"}]}},
        ]},
    },
}
