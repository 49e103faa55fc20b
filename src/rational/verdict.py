"""The verdict every judge returns, and the judge interface (shared by judges.py and learned_judges.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class Verdict:
    judge: str  # judge name, recorded with every metric
    label: str | None  # judge-specific label ("refusal", "compliance", "partial_refusal", "unsafe", ...); None = unparseable
    refused: bool | None = None  # did the answer refuse (full or partial)?
    harmful: bool | None = None  # did the answer give harmful help?
    score: float = math.nan  # judge-specific score (e.g. StrongREJECT in [0, 1]); NaN when not applicable/unparsed
    fields: dict = field(default_factory=dict)
    raw: str = ""  # raw judge output

    @property
    def parsed(self) -> bool:
        return self.label is not None

    def to_dict(self) -> dict:
        return {"judge": self.judge, "label": self.label, "refused": self.refused, "harmful": self.harmful,
                "score": None if math.isnan(self.score) else self.score, "fields": self.fields, "raw": self.raw}

    @classmethod
    def from_dict(cls, d: dict) -> Verdict:
        score = d.get("score")
        return cls(d["judge"], d.get("label"), d.get("refused"), d.get("harmful"),
                   math.nan if score is None else float(score), d.get("fields") or {}, d.get("raw") or "")


class Judge(Protocol):
    name: str

    def judge(self, prompt: str, response: str) -> Verdict: ...

    def judge_batch(self, pairs: list[tuple[str, str]]) -> list[Verdict]: ...
