"""The :class:`HumanInput` node: ask a person, and output their (validated) answer.

The node calls ``ctx.interrupt(prompt, schema)``: the first time the run
ends ``pending_input`` with the question at the node's path; a resume with
``inputs={path: answer}`` (or an answer submitted to the store, e.g. through
the sidecar's ``POST /v1/runs/{id}/inputs``) checks the answer against the
schema and makes it the node's output. A node asked again after a resume
that did not answer it re-asks the same prompt, with ``metadata["resumed"]``
set, so a UI can tell a reminder from a new question.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jsonschema

from checkpoint.errors import ConfigError, FlowpointError
from flows.context import NodeContext
from flows.node import Node

__all__ = ["HumanInput"]

PromptSpec = str | Callable[[dict[str, Any]], str]


class HumanInput(Node):
    """A question for a human; the output is the answer.

    ``prompt`` is a ``str.format`` template over the node inputs
    (``"Approve {plan[title]}?"``) or a callable ``prompt(inputs)``;
    ``schema`` is the JSON schema answers must match (None: any JSON value).

    >>> HumanInput(id="review", prompt="Approve the plan?", schema={"type": "boolean"})
    HumanInput(id='review', depends=[])
    """

    def __init__(
        self,
        id: str,
        prompt: PromptSpec,
        schema: dict[str, Any] | None = None,
        depends: Sequence[str] = (),
        *,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(id, depends)
        if not (isinstance(prompt, str) or callable(prompt)):
            raise ConfigError(f"human input {self.id!r}: prompt must be a string or a callable")
        if schema is not None:
            if not isinstance(schema, dict):
                raise ConfigError(f"human input {self.id!r}: schema must be a JSON schema dict")
            try:
                jsonschema.validators.validator_for(schema).check_schema(schema)
            except jsonschema.SchemaError as exc:
                raise ConfigError(
                    f"human input {self.id!r}: invalid JSON schema: {exc.message}"
                ) from exc
        self.prompt = prompt
        self.schema = schema
        self.metadata = dict(metadata or {})

    def render_prompt(self, inputs: dict[str, Any]) -> str:
        """The question as asked: the template filled from ``inputs``."""
        if callable(self.prompt):
            text = self.prompt(inputs)
            if not isinstance(text, str):
                raise FlowpointError(
                    f"human input {self.id!r}: the prompt callable returned "
                    f"{type(text).__name__}, not a string"
                )
            return text
        try:
            return self.prompt.format(**inputs)
        except (KeyError, IndexError, AttributeError, ValueError, TypeError) as exc:
            raise FlowpointError(
                f"human input {self.id!r}: prompt {self.prompt!r} cannot be filled from the "
                f"inputs (available: {sorted(inputs)}): {type(exc).__name__}: {exc}"
            ) from exc

    async def execute(self, inputs: dict[str, Any], ctx: NodeContext) -> Any:
        metadata = {**self.metadata, "resumed": ctx.resumed}
        return ctx.interrupt(self.render_prompt(inputs), schema=self.schema, metadata=metadata)
