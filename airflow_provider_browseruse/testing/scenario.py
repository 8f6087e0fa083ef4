"""Scripted agent behaviour for the emulator: which prompt gets which outcome, after how long.

A :class:`Scenario` is an ordered list of rules; the first rule whose ``match`` is found in a
task's prompt (a substring, or a regular expression with ``regex=True``) decides the task's
:class:`TaskScript`. Prompts no rule matches get the scenario's default script, which is
deterministic: the same prompt always gets the same output.

In Python::

    scenario = Scenario().add("prices", output_json={"price": 9.5}, duration=0.5)
    scenario.add("login", status="failed", output="Login page did not load")

As a JSON file (``Scenario.from_file``)::

    {"default": {"duration": 1.0},
     "rules": [{"match": "prices", "output_json": {"price": 9.5}},
               {"match": "^log ?in", "regex": true, "status": "failed"}]}
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class OutputFile(BaseModel):
    """A file the agent leaves behind, downloadable through a presigned-style URL."""

    model_config = ConfigDict(extra="forbid")

    file_name: str
    content: str = ""


class TaskScript(BaseModel):
    """What an emulated task does.

    ``output`` is the final text as sent (never checked: use it to emulate an agent that
    answers badly). ``output_json`` is serialised to the output and must match the task's
    ``structuredOutput`` schema, or the create call is refused with a 422 naming the scenario.
    Without either, a deterministic output is made up: text that quotes the prompt, or for a
    structured-output task the simplest instance of its schema.
    """

    model_config = ConfigDict(extra="forbid")

    duration: float = Field(default=0.2, ge=0)
    start_delay: float = Field(default=0.02, ge=0)
    status: Literal["finished", "failed", "stopped"] = "finished"
    output: str | None = None
    output_json: Any = None
    is_success: bool | None = None
    judge_verdict: bool | None = None
    judgement: str | None = None
    cost: str = "0.02"
    #: Cost in USD per second of running instead: the running cost grows at this rate (``cost`` is then unused).
    cost_per_second: str | None = None
    steps: int = Field(default=3, ge=0)
    output_files: list[OutputFile] = Field(default_factory=list)

    def success_claim(self) -> bool | None:
        """The agent's ``isSuccess``: as scripted, else true when finished, false when failed."""
        if self.is_success is not None:
            return self.is_success
        return {"finished": True, "failed": False}.get(self.status)


class ScenarioRule(TaskScript):
    match: str
    regex: bool = False

    @model_validator(mode="after")
    def _check_pattern(self) -> ScenarioRule:
        if self.regex:
            re.compile(self.match)
        return self

    def matches(self, prompt: str) -> bool:
        return bool(re.search(self.match, prompt)) if self.regex else self.match in prompt

    def script(self) -> TaskScript:
        return TaskScript(**self.model_dump(exclude={"match", "regex"}))


class Scenario:
    """Rules mapping task prompts to scripts, first match wins."""

    def __init__(self, default: TaskScript | None = None) -> None:
        self.default = default or TaskScript()
        self.rules: list[ScenarioRule] = []

    def add(self, match: str, *, regex: bool = False, **script: Any) -> Scenario:
        """Add a rule; ``script`` takes the fields of :class:`TaskScript`. Returns self."""
        self.rules.append(ScenarioRule(match=match, regex=regex, **script))
        return self

    def script_for(self, prompt: str) -> TaskScript:
        for rule in self.rules:
            if rule.matches(prompt):
                return rule.script()
        return self.default

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scenario:
        unknown = set(data) - {"default", "rules"}
        if unknown:
            raise ValueError(f"unknown scenario keys {sorted(unknown)}: expected 'default' and 'rules'")
        scenario = cls(TaskScript(**data.get("default", {})))
        scenario.rules = [ScenarioRule(**rule) for rule in data.get("rules", [])]
        return scenario

    @classmethod
    def from_file(cls, path: str | Path) -> Scenario:
        return cls.from_dict(json.loads(Path(path).read_text()))


def default_output(prompt: str, schema: dict[str, Any] | None) -> str:
    """The made-up output of an unscripted task: deterministic for a given prompt and schema."""
    if schema is not None:
        return json.dumps(example_instance(schema, seed=prompt))
    digest = hashlib.sha256(prompt.encode()).hexdigest()[:8]
    return f"Emulated result {digest} for: {prompt[:200]}"


def example_instance(schema: Any, *, seed: str = "", root: dict[str, Any] | None = None) -> Any:
    """The simplest value that matches a JSON Schema (enough for the schemas agents are given)."""
    root = root if root is not None else schema
    if not isinstance(schema, dict):
        return None
    if "$ref" in schema and schema["$ref"].startswith("#/"):
        target: Any = root
        for part in schema["$ref"][2:].split("/"):
            target = target[part]
        return example_instance(target, seed=seed, root=root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for combinator in ("anyOf", "oneOf", "allOf"):
        if schema.get(combinator):
            return example_instance(schema[combinator][0], seed=seed, root=root)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        return {
            name: example_instance(sub, seed=f"{seed}.{name}", root=root)
            for name, sub in (schema.get("properties") or {}).items()
        }
    if kind == "array":
        count = max(1, int(schema.get("minItems", 1)))
        return [example_instance(schema.get("items", {}), seed=seed, root=root) for _ in range(count)]
    if kind == "integer":
        return max(int(schema.get("minimum", 1)), 1)
    if kind == "number":
        return float(schema.get("minimum", 1.5))
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    text = f"example {seed.rsplit('.', 1)[-1]}".strip()
    return text.ljust(int(schema.get("minLength", 0)), "x")
