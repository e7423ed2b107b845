"""Flows defined in YAML: ``load_yaml(path) -> Flow``.

Schema (every mapping refuses unknown keys)::

    id: support                      # the flow id
    description: ...                 # optional
    input: {question: ...}           # optional: the input `flowpoint run` uses by default
    wait_for_input_seconds: 0        # optional: wait this long for a human answer in-process
    checkpoint:                      # optional: CheckpointConfig fields, store as a URL
      enabled: true
      store: "file:.flowpoint/ckpts" # see checkpoint.stores.url.store_from_url
      durability: sync
      max_checkpoints: 10
    nodes:
      - id: fetch
        type: function               # function | agent | map | human_input | subflow
        fn: "mymodule:fetch"         # fn(inputs) or fn(inputs, ctx)
      - id: triage
        type: agent
        depends: [fetch]
        model: {type: scripted, script: [...]}   # or {type: openai, model, base_url, api_key_env}
        tools: ["mymodule:search", "mymodule:approve_refund"]
        system: "You are..."
        prompt: "{input[question]}"
        max_loops: 15
      - id: summaries
        type: map
        over: "input.docs"
        node: {id: summarize, type: function, fn: "mymodule:summarize"}   # or flow: ...
        max_concurrency: 4
      - id: review
        type: human_input
        prompt: "Approve {triage[answer]}?"
        schema: {type: boolean}
      - id: vet
        type: subflow
        flow: vet.yaml               # a path (relative to this file) or an inline {id, nodes}
        input: "triage"              # optional dotted path: the inner flow's input

``module:function`` names are imported when the file is loaded, with the
file's directory first on ``sys.path`` (so a flow file can sit next to its
code). Only files the caller names are read: nothing stored in a checkpoint
ever causes an import.

Every error names the file, the line and the field, e.g.
``flow.yaml:12: nodes[2].fn: 'mod:missing' cannot be imported (...)``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from checkpoint.errors import ConfigError, FlowpointError
from checkpoint.ids import validate_id
from checkpoint.models import CheckpointConfig
from checkpoint.store import CheckpointStore
from checkpoint.stores.url import store_from_url
from flows.agent import Agent
from flows.flow import Flow
from flows.human import HumanInput
from flows.llm import ChatModel, OpenAIChat, ScriptedChat
from flows.map import Map
from flows.node import FunctionNode, Node
from flows.subflow import SubFlow

__all__ = [
    "LoadedFlow",
    "YamlFlowError",
    "YamlProblem",
    "load_flow_file",
    "load_yaml",
    "loads_yaml",
]

Loc = tuple[str | int, ...]


# -- errors --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class YamlProblem:
    """One problem in a flow file: where (line, field) and what."""

    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field else ""
        return f"{self.file}:{self.line}: {where}{self.message}"


class YamlFlowError(ConfigError):
    """A flow file is invalid; ``problems`` lists each one with its line and field.

    The message holds one line per problem: ``file:line: field: message``.
    """

    def __init__(self, problems: Sequence[YamlProblem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))


class _Problem(Exception):
    """A problem found while building nodes, before its line is known."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


# -- the schema ----------------------------------------------------------------------------------


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def _check_id(value: str) -> str:
    try:
        return validate_id(value, "id")
    except FlowpointError as exc:
        raise ValueError(str(exc)) from None


class ScriptedModelSpec(_Spec):
    """``{type: scripted, script: [...]}``: a :class:`~flows.llm.ScriptedChat`."""

    type: Literal["scripted"]
    script: list[Any]


class OpenAIModelSpec(_Spec):
    """``{type: openai, model, base_url, api_key_env, ...}``: an :class:`~flows.llm.OpenAIChat`."""

    type: Literal["openai"]
    model: str
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=5, ge=0)
    temperature: float | None = None
    extra: dict[str, Any] = Field(default_factory=dict)


ModelSpec = Annotated[ScriptedModelSpec | OpenAIModelSpec, Field(discriminator="type")]


class _NodeSpec(_Spec):
    id: str
    depends: list[str] = Field(default_factory=list)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return _check_id(value)


class FunctionSpec(_NodeSpec):
    """``type: function``: a :class:`~flows.node.FunctionNode`."""

    type: Literal["function"]
    fn: str


class AgentSpec(_NodeSpec):
    """``type: agent``: an :class:`~flows.agent.Agent`."""

    type: Literal["agent"]
    model: ModelSpec
    tools: list[str] = Field(default_factory=list)
    system: str | None = None
    prompt: str = "{input[question]}"
    max_loops: int = Field(default=15, ge=1)
    tool_errors: Literal["return", "raise"] = "return"


class HumanInputSpec(_NodeSpec):
    """``type: human_input``: a :class:`~flows.human.HumanInput`."""

    type: Literal["human_input"]
    prompt: str
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")


def _flow_ref_kind(value: Any) -> str:
    return "path" if isinstance(value, str) else "inline"


FlowRef = Annotated[
    Annotated[str, Tag("path")] | Annotated["InlineFlowSpec", Tag("inline")],
    Discriminator(_flow_ref_kind),
]


class MapSpec(_NodeSpec):
    """``type: map``: a :class:`~flows.map.Map` over a node or a flow."""

    type: Literal["map"]
    over: str
    node: NodeSpec | None = None
    flow: FlowRef | None = None
    max_concurrency: int = Field(default=4, ge=1)

    @model_validator(mode="after")
    def _one_target(self) -> MapSpec:
        if (self.node is None) == (self.flow is None):
            raise ValueError("a map needs exactly one of 'node' (a node) or 'flow' (a sub-flow)")
        return self


class SubFlowSpec(_NodeSpec):
    """``type: subflow``: a :class:`~flows.subflow.SubFlow`."""

    type: Literal["subflow"]
    flow: FlowRef
    input: str | None = None


NodeSpec = Annotated[
    FunctionSpec | AgentSpec | MapSpec | HumanInputSpec | SubFlowSpec,
    Field(discriminator="type"),
]


class InlineFlowSpec(_Spec):
    """A flow written inside another (a sub-flow, a map's per-item flow)."""

    id: str
    description: str | None = None
    nodes: list[NodeSpec] = Field(min_length=1)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return _check_id(value)


class FlowSpec(InlineFlowSpec):
    """A flow file."""

    checkpoint: dict[str, Any] | None = None
    wait_for_input_seconds: float = Field(default=0, ge=0)
    input: Any = None


MapSpec.model_rebuild()
SubFlowSpec.model_rebuild()
InlineFlowSpec.model_rebuild()
FlowSpec.model_rebuild()

# Names pydantic puts in error locations for union members; they are not YAML keys.
_TAGS = frozenset(
    {"function", "agent", "map", "human_input", "subflow", "scripted", "openai", "path", "inline"}
)


# -- locating errors -----------------------------------------------------------------------------


def _field_name(parts: Sequence[str | int]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _locate(root: yaml.Node | None, loc: Loc) -> tuple[int, str]:
    """The 1-based line and the field name of ``loc`` in the composed YAML tree."""
    if root is None:
        return 1, _field_name([p for p in loc if p not in _TAGS])
    node: yaml.Node | None = root
    line = root.start_mark.line + 1
    parts: list[str | int] = []
    for element in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(element, str):
            match = next((kv for kv in node.value if kv[0].value == element), None)
            if match is not None:
                parts.append(element)
                line = match[0].start_mark.line + 1
                node = match[1]
                continue
            if element in _TAGS:
                continue
            parts.append(element)
            node = None  # a missing key: the error sits on its mapping's line
        elif isinstance(node, yaml.SequenceNode) and isinstance(element, int):
            parts.append(element)
            if 0 <= element < len(node.value):
                node = node.value[element]
                line = node.start_mark.line + 1
            else:
                node = None
        elif isinstance(element, str) and element in _TAGS:
            continue
        else:
            if node is not None or not parts or parts[-1] != element:
                parts.append(element)
            node = None
    return line, _field_name(parts)


def _message(error: Any) -> str:
    kind = error.get("type")
    ctx = error.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown field (check the spelling; see flows.yaml_loader for the schema)"
    if kind == "missing":
        return "required field is missing"
    if kind == "union_tag_invalid":
        return f"type must be one of {ctx.get('expected_tags')}, got {ctx.get('tag')!r}"
    if kind == "union_tag_not_found":
        discriminator = ctx.get("discriminator", "'type'")
        return f"needs a {discriminator} field"
    message = str(error.get("msg", "invalid value"))
    return message.removeprefix("Value error, ")


def _validation_problems(
    exc: ValidationError, root: yaml.Node | None, file: str, prefix: Loc = ()
) -> list[YamlProblem]:
    problems: list[YamlProblem] = []
    for error in exc.errors():
        loc: Loc = prefix + tuple(error["loc"])
        if error.get("type") in ("union_tag_invalid",):
            loc = (*loc, "type")
        line, field = _locate(root, loc)
        problems.append(YamlProblem(file, line, field, _message(error)))
    return problems


# -- building ------------------------------------------------------------------------------------


@contextmanager
def _importable_from(directory: Path) -> Iterator[None]:
    entry = str(directory)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added:
            try:
                sys.path.remove(entry)
            except ValueError:
                pass


def _shadowed(module_name: str, directory: Path) -> str | None:
    """Where an already imported module comes from, if the flow's directory has another one."""
    top = module_name.partition(".")[0]
    loaded = sys.modules.get(top)
    if loaded is None:
        return None
    for local in (directory / f"{top}.py", directory / top / "__init__.py"):
        if local.is_file():
            origin = getattr(loaded, "__file__", None)
            if origin is None or Path(origin).resolve() != local.resolve():
                return str(origin or "a built-in module")
    return None


def _import(ref: str, loc: Loc, directory: Path) -> Any:
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise _Problem(loc, f"{ref!r} is not a 'module:function' reference")
    other = _shadowed(module_name, directory)
    if other is not None:
        # Python would silently hand back the module already loaded under that name.
        raise _Problem(
            loc,
            f"{ref!r}: a module named {module_name.partition('.')[0]!r} is already imported "
            f"from {other}, not from the flow file's directory; rename the module",
        )
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:
        raise _Problem(loc, f"{ref!r} cannot be imported ({type(exc).__name__}: {exc})") from None
    value: Any = module
    for part in attr.split("."):
        try:
            value = getattr(value, part)
        except AttributeError:
            raise _Problem(
                loc, f"{ref!r} cannot be imported: module {module_name!r} has no {attr!r}"
            ) from None
    if not callable(value):
        raise _Problem(loc, f"{ref!r} is not callable ({type(value).__name__})")
    return value


@dataclass(slots=True)
class _Builder:
    file: str
    directory: Path
    stack: tuple[Path, ...]

    def attempt(self, loc: Loc, make: Callable[[], Any]) -> Any:
        try:
            return make()
        except _Problem:
            raise
        except YamlFlowError:
            raise
        except FlowpointError as exc:
            raise _Problem(loc, str(exc)) from None
        except (TypeError, ValueError) as exc:
            raise _Problem(loc, f"{type(exc).__name__}: {exc}") from None

    def model(self, spec: ScriptedModelSpec | OpenAIModelSpec, loc: Loc) -> ChatModel:
        if isinstance(spec, ScriptedModelSpec):
            return self.attempt((*loc, "script"), lambda: ScriptedChat(spec.script))  # type: ignore[no-any-return]
        return self.attempt(  # type: ignore[no-any-return]
            loc,
            lambda: OpenAIChat(
                spec.model,
                base_url=spec.base_url,
                api_key_env=spec.api_key_env,
                timeout=spec.timeout,
                max_retries=spec.max_retries,
                temperature=spec.temperature,
                extra=spec.extra,
            ),
        )

    def flow_ref(self, ref: str | InlineFlowSpec, loc: Loc) -> Flow:
        if isinstance(ref, str):
            path = (self.directory / ref).resolve()
            if path in self.stack:
                chain = " -> ".join(p.name for p in (*self.stack, path))
                raise _Problem(loc, f"flow files include each other: {chain}")
            if not path.is_file():
                raise _Problem(loc, f"flow file {ref!r} not found (looked at {path})")
            return _load_path(path, self.stack, nested=True)
        return self.flow(ref, loc)

    def flow(self, spec: InlineFlowSpec, loc: Loc, **extra: Any) -> Flow:
        # Graph problems first: they are the easiest to fix and point at one field each.
        seen: dict[str, int] = {}
        for i, node_spec in enumerate(spec.nodes):
            if node_spec.id in seen:
                raise _Problem(
                    (*loc, "nodes", i, "id"),
                    f"duplicate node id {node_spec.id!r} (also nodes[{seen[node_spec.id]}])",
                )
            seen[node_spec.id] = i
        for i, node_spec in enumerate(spec.nodes):
            for j, dep in enumerate(node_spec.depends):
                where = (*loc, "nodes", i, "depends", j)
                if dep == node_spec.id:
                    raise _Problem(where, f"node {dep!r} depends on itself")
                if dep in node_spec.depends[:j]:
                    raise _Problem(where, f"{dep!r} is listed twice")
                if dep not in seen:
                    raise _Problem(
                        where, f"unknown node {dep!r}; node ids in this flow: {sorted(seen)}"
                    )
        nodes = [self.node(n, (*loc, "nodes", i)) for i, n in enumerate(spec.nodes)]
        return self.attempt(  # type: ignore[no-any-return]
            (*loc, "nodes"),
            lambda: Flow(id=spec.id, nodes=nodes, name=spec.description, **extra),
        )

    def node(self, spec: Any, loc: Loc) -> Node:
        depends = spec.depends

        def at(*more: str | int) -> Loc:
            return (*loc, *more)

        if isinstance(spec, FunctionSpec):
            fn = _import(spec.fn, at("fn"), self.directory)
            return self.attempt(  # type: ignore[no-any-return]
                at("fn"), lambda: FunctionNode(id=spec.id, fn=fn, depends=depends)
            )
        if isinstance(spec, AgentSpec):
            model = self.model(spec.model, at("model"))
            tools = [
                _import(ref, at("tools", j), self.directory) for j, ref in enumerate(spec.tools)
            ]
            return self.attempt(  # type: ignore[no-any-return]
                at("tools"),
                lambda: Agent(
                    id=spec.id,
                    model=model,
                    tools=tools,
                    system=spec.system,
                    prompt=spec.prompt,
                    max_loops=spec.max_loops,
                    depends=depends,
                    tool_errors=spec.tool_errors,
                ),
            )
        if isinstance(spec, MapSpec):
            inner: Node | Flow
            if spec.node is not None:
                inner = self.node(spec.node, at("node"))
            else:
                assert spec.flow is not None
                inner = self.flow_ref(spec.flow, at("flow"))
            return self.attempt(  # type: ignore[no-any-return]
                loc,
                lambda: Map(
                    id=spec.id,
                    over=spec.over,
                    node=inner,
                    max_concurrency=spec.max_concurrency,
                    depends=depends,
                ),
            )
        if isinstance(spec, HumanInputSpec):
            return self.attempt(  # type: ignore[no-any-return]
                at("schema"),
                lambda: HumanInput(
                    id=spec.id, prompt=spec.prompt, schema=spec.schema_, depends=depends
                ),
            )
        assert isinstance(spec, SubFlowSpec)
        sub = self.flow_ref(spec.flow, at("flow"))
        return self.attempt(  # type: ignore[no-any-return]
            loc, lambda: SubFlow(id=spec.id, flow=sub, depends=depends, input=spec.input)
        )

    def checkpoint(
        self, data: dict[str, Any] | None, store: str | CheckpointStore | None
    ) -> CheckpointConfig | None:
        if data is None and store is None:
            return None
        doc = dict(data or {})
        url = doc.pop("store", None)
        if store is not None:
            doc["enabled"] = True
        if url is not None and not isinstance(url, str):
            raise _Problem(("checkpoint", "store"), "store must be a URL string (e.g. file:ckpts)")
        chosen: Any = store if store is not None else url
        if isinstance(chosen, str) and doc.get("enabled"):
            target = chosen
            chosen = self.attempt(("checkpoint", "store"), lambda: store_from_url(target))
        elif isinstance(chosen, str):
            chosen = None  # disabled: do not open (or create) anything
        doc["store"] = chosen
        try:
            return CheckpointConfig.model_validate(doc)
        except ValidationError as exc:
            raise _Validation(exc, ("checkpoint",)) from None


class _Validation(Exception):
    def __init__(self, exc: ValidationError, prefix: Loc) -> None:
        super().__init__(str(exc))
        self.exc = exc
        self.prefix = prefix


def _parse(text: str, file: str) -> tuple[yaml.Node | None, Any]:
    try:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = " ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise YamlFlowError([YamlProblem(file, line, "", f"invalid YAML: {problem}")]) from None
    except yaml.YAMLError as exc:
        raise YamlFlowError([YamlProblem(file, 1, "", f"invalid YAML: {exc}")]) from None
    return root, data


@dataclass(frozen=True, slots=True)
class LoadedFlow:
    """A flow file, built: the flow and the file's default ``input`` (None when absent)."""

    flow: Flow
    input: Any
    path: str


def _build(
    text: str,
    *,
    file: str,
    directory: Path,
    stack: tuple[Path, ...],
    store: str | CheckpointStore | None,
    nested: bool,
) -> LoadedFlow:
    root, data = _parse(text, file)
    if not isinstance(data, dict):
        raise YamlFlowError(
            [YamlProblem(file, 1, "", "a flow file must be a mapping with 'id' and 'nodes'")]
        )
    try:
        spec = FlowSpec.model_validate(data)
    except ValidationError as exc:
        raise YamlFlowError(_validation_problems(exc, root, file)) from None
    builder = _Builder(file=file, directory=directory, stack=stack)
    try:
        with _importable_from(directory):
            config = None if nested else builder.checkpoint(spec.checkpoint, store)
            extra: dict[str, Any] = {"checkpoint": config}
            if spec.wait_for_input_seconds:
                extra["wait_for_input_seconds"] = spec.wait_for_input_seconds
            return LoadedFlow(builder.flow(spec, (), **extra), spec.input, file)
    except _Problem as problem:
        line, field = _locate(root, problem.loc)
        raise YamlFlowError([YamlProblem(file, line, field, problem.message)]) from None
    except _Validation as wrapped:
        raise YamlFlowError(_validation_problems(wrapped.exc, root, file, wrapped.prefix)) from None


def _load_path(path: Path, stack: tuple[Path, ...], *, nested: bool = False) -> Flow:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read flow file {str(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise YamlFlowError([YamlProblem(path.name, 1, "", f"not UTF-8 text: {exc}")]) from None
    return _build(
        text,
        file=str(path),
        directory=path.parent,
        stack=(*stack, path),
        store=None,
        nested=nested,
    ).flow


def load_yaml(path: str | Path, *, store: str | CheckpointStore | None = None) -> Flow:
    """Build the :class:`~flows.flow.Flow` described by the YAML file at ``path``.

    ``store`` (a store URL or a store) overrides the file's ``checkpoint.store``
    and turns checkpointing on. Raises :class:`YamlFlowError` (a
    :class:`~checkpoint.errors.ConfigError`) naming the line and field of
    each problem.
    """
    return load_flow_file(path, store=store).flow


def load_flow_file(path: str | Path, *, store: str | CheckpointStore | None = None) -> LoadedFlow:
    """:func:`load_yaml`, also returning the file's default ``input`` (for the CLI)."""
    resolved = Path(path).resolve()
    try:
        text = resolved.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read flow file {str(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise YamlFlowError([YamlProblem(str(path), 1, "", f"not UTF-8 text: {exc}")]) from None
    return _build(
        text,
        file=str(path),
        directory=resolved.parent,
        stack=(resolved,),
        store=store,
        nested=False,
    )


def loads_yaml(
    text: str,
    *,
    name: str = "<string>",
    directory: str | Path = ".",
    store: str | CheckpointStore | None = None,
) -> Flow:
    """:func:`load_yaml` for YAML text; ``directory`` resolves imports and included files."""
    base = Path(directory).resolve()
    return _build(text, file=name, directory=base, stack=(), store=store, nested=False).flow
