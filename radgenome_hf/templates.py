"""VQA question templates: this project's own phrasings, or the templates an upstream release ships.

Each question type (abnormality, location, presence, size, disorders) has several phrasings; a row's phrasing is
chosen deterministically from its content (a stable hash), so the same row always renders the same question,
on any machine and in any process.

>>> t = QuestionTemplates.default()
>>> q = t.render("presence", key="train_1_a_1|lung|nodule", region="left lung", abnormality="nodule")
>>> "left lung" in q and "nodule" in q
True
>>> q == t.render("presence", key="train_1_a_1|lung|nodule", region="left lung", abnormality="nodule")
True
"""

from __future__ import annotations

import zlib
import json
from dataclasses import dataclass
from importlib import resources
from typing import Mapping

from .errors import MalformedFileError

QUESTION_TYPES = ("abnormality", "location", "presence", "size", "disorders")
_PLACEHOLDERS = {
    "abnormality": {"region"},
    "location": {"abnormality"},
    "presence": {"abnormality", "region"},
    "size": {"abnormality", "region"},
    "disorders": set(),
}


@dataclass(frozen=True)
class QuestionTemplates:
    """Question phrasings per question type. ``source`` says where they came from."""

    templates: Mapping[str, tuple[str, ...]]
    source: str = "radgenome_hf"

    @classmethod
    def default(cls) -> "QuestionTemplates":
        raw = json.loads(resources.files("radgenome_hf").joinpath("data/qa_templates.json").read_text("utf-8"))
        return cls({k: tuple(v) for k, v in raw["templates"].items()}, source="radgenome_hf")

    @classmethod
    def from_upstream(cls, files: Mapping[str, bytes | str], origin: str = "upstream") -> "QuestionTemplates":
        """Templates from an upstream ``qa_templates/<type>_template.json`` set (``{"<type>": [..]}`` each).

        Types the upstream set lacks keep this project's phrasings.
        """
        merged = dict(cls.default().templates)
        for name, content in files.items():
            qtype = name.rsplit("/", 1)[-1].replace("_template.json", "")
            if qtype not in QUESTION_TYPES:
                continue
            try:
                data = json.loads(content)
            except json.JSONDecodeError as exc:
                raise MalformedFileError(name, f"not valid JSON ({exc})") from exc
            values = data.get(qtype) if isinstance(data, dict) else None
            if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
                raise MalformedFileError(name, f'expected {{"{qtype}": [question strings]}}')
            merged[qtype] = tuple(values)
        return cls(merged, source=origin)

    def render(self, qtype: str, key: str, **fields: str) -> str:
        """Render one question; ``key`` identifies the row (its phrasing depends on it alone)."""
        options = self.templates[qtype]
        template = options[zlib.crc32(f"{qtype}|{key}".encode("utf-8")) % len(options)]
        if len(fields) < len(_PLACEHOLDERS[qtype]):
            fields = {**dict.fromkeys(_PLACEHOLDERS[qtype], ""), **fields}
        return template.format(**fields)
