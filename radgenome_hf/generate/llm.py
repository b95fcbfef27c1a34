"""Grounding backends: the lexicon matcher (default) and an optional LLM behind an OpenAI-compatible API.

A :class:`~radgenome_hf.generate.ground.GroundingBackend` maps a batch of sentences to anatomy paths (one tuple per
sentence); it and the default lexicon backend live in :mod:`~radgenome_hf.generate.ground`. The LLM backend
posts to ``<endpoint>/chat/completions`` (stdlib ``urllib``; any OpenAI-compatible server: vLLM, llama.cpp,
Ollama, a hosted API), asks for JSON ``{"<sentence index>": ["<path>", ...]}``, and validates every path against
the ontology (unknown paths are dropped; a sentence the model fails on falls back to the lexicon). It is off by
default. Endpoint, model and key come from the arguments or ``RADGENOME_LLM_ENDPOINT``, ``RADGENOME_LLM_MODEL``,
``RADGENOME_LLM_API_KEY`` (or ``OPENAI_API_KEY``); the key is sent in the ``Authorization`` header only and never
logged or shown in a repr.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Sequence

from ..config import llm_settings
from ..errors import RadGenomeError
from ..ontology import get_ontology, normalize_path
from .ground import GroundingBackend, LexiconBackend

log = logging.getLogger(__name__)

__all__ = ["OpenAIChatBackend", "LLMError", "get_grounding_backend"]


class LLMError(RadGenomeError):
    """The LLM endpoint failed or answered something that is not the JSON asked for."""


_SYSTEM = (
    "You ground chest CT report sentences to anatomy. For each numbered sentence, list the most specific anatomy "
    "paths it describes, chosen ONLY from the allowed paths. Answer with one JSON object mapping the sentence "
    "number (as a string) to a list of paths; use [] for a sentence about no particular anatomy."
)


@dataclass
class OpenAIChatBackend:
    """Grounding by an OpenAI-compatible chat-completions endpoint (validated against the ontology)."""

    endpoint: str | None = None
    model: str | None = None
    api_key: str | None = field(default=None, repr=False)
    timeout: float = 60.0
    batch_size: int = 16
    max_retries: int = 1
    fallback: bool = True  # sentences the model fails on use the lexicon
    temperature: float = 0.0
    name: str = "llm"

    def __post_init__(self) -> None:
        env_endpoint, env_model, env_key = llm_settings()
        self.endpoint = (self.endpoint or env_endpoint).rstrip("/")
        self.model = self.model or env_model
        self.api_key = self.api_key or env_key
        if not self.endpoint or not self.model:
            raise LLMError("the LLM grounding backend needs an endpoint and a model: pass --llm-endpoint/--llm-model "
                           "or set RADGENOME_LLM_ENDPOINT and RADGENOME_LLM_MODEL")
        self._lexicon = LexiconBackend()
        self.requests_made = 0

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIChatBackend(endpoint={self.endpoint!r}, model={self.model!r}, key={'set' if self.api_key else 'unset'})"

    # -- HTTP ---------------------------------------------------------------------------------------
    def _post(self, payload: dict) -> dict:
        url = self.endpoint + ("" if self.endpoint.endswith("/chat/completions") else "/chat/completions")
        data = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last: Exception | None = None
        for _ in range(self.max_retries + 1):
            req = urllib.request.Request(url, data=data, headers=headers, method="POST")
            self.requests_made += 1
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as exc:
                last = exc
                if exc.code in (400, 401, 403, 404):
                    break
            except (urllib.error.URLError, TimeoutError, json.JSONDecodeError) as exc:
                last = exc
        raise LLMError(f"{url}: request failed ({type(last).__name__}: {getattr(last, 'code', '') or last}); check "
                       "the endpoint, model name and API key")

    def _ask(self, sentences: Sequence[str]) -> dict[str, list[str]]:
        onto = get_ontology()
        numbered = "\n".join(f"{i}: {s}" for i, s in enumerate(sentences))
        payload = {
            "model": self.model,
            "temperature": self.temperature,
            "response_format": {"type": "json_object"},
            "messages": [
                {"role": "system", "content": _SYSTEM + "\nAllowed paths:\n" + "\n".join(onto.paths)},
                {"role": "user", "content": numbered},
            ],
        }
        answer = self._post(payload)
        try:
            content = answer["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError) as exc:
            raise LLMError(f"{self.endpoint}: the answer has no choices[0].message.content") from exc
        m = re.search(r"\{.*\}", content or "", re.S)
        if not m:
            raise LLMError(f"{self.endpoint}: the model did not answer with a JSON object")
        try:
            obj = json.loads(m.group(0))
        except json.JSONDecodeError as exc:
            raise LLMError(f"{self.endpoint}: the model's JSON is invalid ({exc})") from exc
        if not isinstance(obj, dict):
            raise LLMError(f"{self.endpoint}: expected a JSON object mapping sentence numbers to paths")
        return obj

    def ground(self, sentences: Sequence[str]) -> list[tuple[str, ...]]:
        onto = get_ontology()
        out: list[tuple[str, ...]] = []
        for start in range(0, len(sentences), self.batch_size):
            batch = list(sentences[start:start + self.batch_size])
            try:
                obj = self._ask(batch)
            except LLMError:
                if not self.fallback:
                    raise
                log.warning("LLM grounding failed for a batch of %d sentences; using the lexicon", len(batch))
                obj = {}
            for i, s in enumerate(batch):
                raw = obj.get(str(i), obj.get(s))
                if not isinstance(raw, list):
                    out.append(self._lexicon.ground([s])[0] if self.fallback else ())
                    continue
                valid = []
                for p in raw:
                    if isinstance(p, str) and normalize_path(p) and normalize_path(p) in onto:
                        valid.append(normalize_path(p))
                    else:
                        log.debug("dropping path %r: not in the ontology", p)
                out.append(tuple(dict.fromkeys(valid)))
        return out


def get_grounding_backend(name: str = "lexicon", **kwargs) -> GroundingBackend:
    """``"lexicon"`` (default) or ``"llm"`` (kwargs: endpoint, model, api_key, timeout, batch_size)."""
    if name == "lexicon":
        return LexiconBackend()
    if name == "llm":
        return OpenAIChatBackend(**{k: v for k, v in kwargs.items() if v is not None})
    raise RadGenomeError(f"unknown grounding backend {name!r}; use 'lexicon' or 'llm'")
