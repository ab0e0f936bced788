"""A small client for a genrnn server (or any OpenAI-compatible completions
API), for ``genrnn sample MODEL --server URL``.

Standard library only (urllib), so it needs neither the ``serve`` extra nor
the ``openai`` package. :class:`RemoteModel` has the ``complete()`` of
:class:`genrnn.api.TrainedModel`, so the CLI prints remote samples exactly as
local ones. Rows are grouped by temperature (a request has one temperature);
each group is one streamed request with its prompts as a list.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Union

from ..errors import GenrnnError
from ..sampling import Completion


class RemoteModel:
    """A model served at ``url`` (``http://host:port``, with or without ``/v1``)."""

    def __init__(self, url: str, model: str = "default", api_key: Optional[str] = None, timeout: float = 600.0):
        base = url.rstrip("/")
        self.base = base if base.endswith("/v1") else base + "/v1"
        self.model = model
        self.api_key = api_key
        self.timeout = timeout

    def complete(self, prompts: Sequence[str], *, length: int = 200, temperature: Any = 1.0,
                 top_k: Optional[int] = None, top_p: Optional[float] = None, greedy: bool = False,
                 seed: Optional[int] = None, stop: Iterable[str] = (),
                 on_text: Optional[Callable[[int, str], None]] = None) -> List[Completion]:
        """One :class:`Completion` per prompt; ``temperature`` may be one per prompt."""
        prompts = list(prompts)
        temps = list(temperature) if isinstance(temperature, (list, tuple)) else [temperature] * len(prompts)
        if len(temps) != len(prompts):
            raise GenrnnError(f"got {len(temps)} temperatures for {len(prompts)} prompts")
        groups: Dict[float, List[int]] = {}
        for i, t in enumerate(temps):
            groups.setdefault(0.0 if greedy else float(t), []).append(i)
        results: List[Optional[Completion]] = [None] * len(prompts)
        for t, rows in groups.items():  # insertion order: row 0's group first, so it streams live
            body: Dict[str, Any] = {"model": self.model, "prompt": [prompts[i] for i in rows], "max_tokens": length,
                                    "temperature": t, "stream": True, "logprobs": 0}
            if top_k is not None:
                body["top_k"] = top_k
            if top_p is not None:
                body["top_p"] = top_p
            if seed is not None:
                body["seed"] = seed
            stops = [s for s in stop if s]
            if stops:
                body["stop"] = stops
            texts = {i: "" for i in rows}
            tokens: Dict[int, List[str]] = {i: [] for i in rows}
            reasons: Dict[int, str] = {}
            for chunk in self._stream(body):
                for choice in chunk.get("choices", []):
                    row = rows[choice["index"]]
                    piece = choice.get("text") or ""
                    texts[row] += piece
                    if piece and on_text is not None:
                        on_text(row, piece)
                    tokens[row] += (choice.get("logprobs") or {}).get("tokens") or []
                    if choice.get("finish_reason"):
                        reasons[row] = choice["finish_reason"]
            for i in rows:
                reason = reasons.get(i, "length")
                if reason == "stop" and tokens[i][-1:] == ["<eos>"]:
                    reason = "eos"
                results[i] = Completion(prompts[i], texts[i], len(tokens[i]), reason)
        return results  # type: ignore[return-value]

    def _stream(self, body: Dict[str, Any]) -> Iterator[Dict[str, Any]]:
        """The chunks of a streamed completion; a server error becomes a GenrnnError."""
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(f"{self.base}/completions", data=json.dumps(body).encode(),
                                         headers=headers, method="POST")
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            raise GenrnnError(f"the server answered {e.code}: {_message(e.read())}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise GenrnnError(f"cannot reach {self.base}: {reason}") from None
        with response:
            for raw in response:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                data = line[len("data:"):].strip()
                if data == "[DONE]":
                    return
                chunk = json.loads(data)
                if "error" in chunk:
                    raise GenrnnError(f"the server failed: {_message(chunk)}")
                yield chunk


def _message(payload: Union[bytes, Dict[str, Any]]) -> str:
    try:
        doc = json.loads(payload) if isinstance(payload, bytes) else payload
        return str(doc["error"]["message"])
    except (ValueError, KeyError, TypeError):
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else str(payload)
        return text.strip()[:200] or "no details"
