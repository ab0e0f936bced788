"""What one request, and the server as a whole, may ask for.

Plain data with no imports, so ``genrnn --help`` can show the defaults without
loading FastAPI or PyTorch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Caps that keep every request's cost bounded (each a ``genrnn serve`` flag).

    ``max_streams`` bounds the completions generating at once over all
    requests, so memory and the time of one batched step stay bounded; a
    request that does not fit gets 429 at once rather than waiting in a queue.
    """

    max_tokens: int = 2048  # the largest max_tokens a request may ask for
    max_prompt_chars: int = 32_768  # per prompt
    max_prompt_tokens: int = 8_192  # per prompt
    max_body_bytes: int = 1_048_576
    max_n: int = 16
    max_rows: int = 64  # prompts x n in one request
    max_streams: int = 128  # completions generating at once, all requests together
    body_timeout: int = 30  # seconds a client may take to send its whole request body; slower gets 408

    def validate(self) -> None:
        for name, value in vars(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}")


DEFAULT_LIMITS = Limits()
