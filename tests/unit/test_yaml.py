"""YAML flows: the same checkpoints as the Python flows, and errors that name line and field."""

from __future__ import annotations

import importlib
import json
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from checkpoint import CheckpointConfig, CheckpointStatus, checkpoint_to_bytes
from checkpoint.codec import canonical_json
from checkpoint.store import BaseStore
from checkpoint.stores.memory import MemoryStore
from flows import Agent, Flow, HumanInput, Map, SubFlow, load_yaml
from flows.yaml_loader import YamlFlowError, load_flow_file, loads_yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
TIMESTAMP_KEYS = frozenset({"created_at", "started_at", "finished_at", "requested_at"})


@pytest.fixture
def examples() -> Iterator[Callable[[str], Any]]:
    """Import an example module the way its YAML file does (examples/ on sys.path)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(str(EXAMPLES))


def normalized(raw: bytes) -> bytes:
    """Checkpoint wire bytes with timestamps and the trace context blanked out."""

    def walk(value: Any, key: str | None = None) -> Any:
        if key in TIMESTAMP_KEYS:
            return "T"
        if isinstance(value, dict):
            if value.get("$t") == "datetime":
                return "T"
            return {k: walk(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    doc = json.loads(raw)
    doc["trace_context"] = None
    return canonical_json(walk(doc))


async def all_checkpoints(store: BaseStore, run_id: str) -> list[bytes]:
    out = []
    for summary in sorted(await store.list_checkpoints(run_id, limit=1000), key=lambda s: s.seq):
        cp = await store.get(run_id, summary.seq)
        assert cp is not None
        out.append(normalized(checkpoint_to_bytes(cp)))
    return out


@pytest.mark.parametrize(
    ("name", "run_input", "answer"),
    [
        ("research_agent", {"question": "Why checkpoint?"}, {"approved": True}),
        ("nested_approval", {"customer": "Bo", "text": "refund"}, {"approved": False}),
        ("map_documents", {"docs": ["One. Two.", "Three four. Five.", "Six."]}, None),
    ],
)
async def test_a_yaml_flow_and_its_python_twin_write_identical_checkpoints(
    examples: Callable[[str], Any],
    name: str,
    run_input: Any,
    answer: Any,
) -> None:
    module = examples(name)
    py_store, yaml_store = MemoryStore(), MemoryStore()
    py_flow: Flow = module.build_flow(py_store)
    py_flow.checkpoint.max_checkpoints = 1000  # type: ignore[union-attr]
    yaml_flow = load_yaml(EXAMPLES / f"{name}.yaml", store=yaml_store)
    yaml_flow.checkpoint.max_checkpoints = 1000  # type: ignore[union-attr]
    assert yaml_flow.graph_fingerprint == py_flow.graph_fingerprint

    results = []
    for flow in (py_flow, yaml_flow):
        first = await flow.run(run_input, run_id="twin")
        if first.status is CheckpointStatus.PENDING_INPUT:
            first = await flow.resume("twin", inputs={p.path: answer for p in first.pending_inputs})
        assert first.status is CheckpointStatus.COMPLETED
        results.append(first.output)
    assert results[0] == results[1]
    py_cps = await all_checkpoints(py_store, "twin")
    yaml_cps = await all_checkpoints(yaml_store, "twin")
    assert len(py_cps) >= 4
    assert py_cps == yaml_cps


def test_the_examples_load_with_their_node_types() -> None:
    research = load_flow_file(EXAMPLES / "research_agent.yaml", store="memory://")
    assert isinstance(research.flow.by_id["research"], Agent)
    assert research.input == {"question": "How do agent workflows survive crashes?"}
    assert research.flow.checkpoint is not None and research.flow.checkpoint.active
    nested = load_yaml(EXAMPLES / "nested_approval.yaml", store="memory://")
    vet = nested.by_id["vet"]
    assert isinstance(vet, SubFlow) and isinstance(vet.flow.by_id["triage"], Agent)
    docs = load_yaml(EXAMPLES / "map_documents.yaml", store="memory://")
    summaries = docs.by_id["summaries"]
    assert isinstance(summaries, Map) and summaries.max_concurrency == 3


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(YamlFlowError) as caught:
        load_yaml(path)
    return [str(p) for p in caught.value.problems]


def test_an_import_failure_names_the_line_and_the_field(tmp_path: Path) -> None:
    (tmp_path / "yaml_etl_steps.py").write_text(
        "def fetch(inputs):\n    return 1\n", encoding="utf-8"
    )
    path = write(
        tmp_path,
        "flow.yaml",
        """
        id: etl
        nodes:
          - id: fetch
            type: function
            fn: "yaml_etl_steps:fetch"
          - id: clean
            type: function
            depends: [fetch]
            fn: "mod:missing"
        """,
    )
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}:9: nodes[1].fn: 'mod:missing' cannot be imported")
    assert "No module named 'mod'" in problem
    # The file's own directory is importable only while it loads.
    assert str(tmp_path) not in sys.path


def test_schema_errors_point_at_each_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bad.yaml",
        """
        id: support
        checkpoint:
          enabled: true
          durability: sometimes
        nodes:
          - id: triage
            type: agent
            model: {type: scripted, script: ["hi"]}
            max_loops: 0
          - id: ask
            type: human_input
            promt: "typo?"
          - id: weird
            type: teleport
        """,
    )
    assert problems_of(path) == [
        f"{path}:9: nodes[0].max_loops: Input should be greater than or equal to 1",
        f"{path}:10: nodes[1].prompt: required field is missing",
        f"{path}:12: nodes[1].promt: unknown field (check the spelling; see flows.yaml_loader "
        "for the schema)",
        f"{path}:14: nodes[2].type: type must be one of 'function', 'agent', 'map', "
        "'human_input', 'subflow', got 'teleport'",
    ]
    # The checkpoint block is checked once the nodes are valid: fix them and it is reported.
    fixed = path.read_text().replace("max_loops: 0", "max_loops: 2").replace("promt", "prompt")
    fixed = fixed.replace("type: teleport", "type: human_input\n    prompt: ok?")
    path.write_text(fixed)
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}:4: checkpoint.durability: Input should be 'sync'")


def test_graph_errors_name_the_dependency_and_duplicates(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "graph.yaml",
        """
        id: g
        nodes:
          - id: a
            type: human_input
            prompt: "?"
          - id: b
            type: human_input
            prompt: "?"
            depends: [a, nope]
        """,
    )
    assert problems_of(path) == [
        f"{path}:9: nodes[1].depends[1]: unknown node 'nope'; node ids in this flow: ['a', 'b']"
    ]
    path.write_text(path.read_text().replace("[a, nope]", "[b]"))
    assert problems_of(path) == [f"{path}:9: nodes[1].depends[0]: node 'b' depends on itself"]
    path.write_text(path.read_text().replace("id: b", "id: a").replace("depends: [b]", ""))
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}:6: nodes[1].id: duplicate node id 'a'")


def test_yaml_syntax_errors_and_bad_values(tmp_path: Path) -> None:
    path = write(tmp_path, "syntax.yaml", "id: x\nnodes:\n  - id: [unclosed\n")
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}:4: invalid YAML") or problem.startswith(
        f"{path}:3: invalid YAML"
    )
    path = write(
        tmp_path,
        "values.yaml",
        """
        id: v
        nodes:
          - id: m
            type: map
            over: input.docs
          - id: s
            type: agent
            model:
              type: scripted
              script: [{bogus: 1}]
          - id: "bad id!"
            type: human_input
            prompt: "?"
        """,
    )
    problems = problems_of(path)
    assert any(p.startswith(f"{path}:3: nodes[0]: a map needs exactly one of") for p in problems)
    assert any(p.startswith(f"{path}:11: nodes[2].id: invalid id 'bad id!'") for p in problems)
    path.write_text(
        path.read_text()
        .replace('"bad id!"', "ok")
        .replace(
            "over: input.docs",
            "over: input.docs\n    node: {id: n, type: human_input, prompt: '?'}",
        )
    )
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}:11: nodes[1].model.script: ScriptedChat script[0]")


def test_sub_flow_files_are_included_relative_to_the_including_file(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    write(
        tmp_path / "sub",
        "inner.yaml",
        """
        id: inner
        checkpoint: {enabled: false}
        nodes:
          - id: review
            type: human_input
            prompt: "Approve {input}?"
        """,
    )
    path = write(
        tmp_path,
        "outer.yaml",
        """
        id: outer
        nodes:
          - id: vet
            type: subflow
            flow: sub/inner.yaml
          - id: each
            type: map
            over: input.items
            flow: sub/inner.yaml
        """,
    )
    flow = load_yaml(path, store=MemoryStore())
    result = flow.run_sync({"items": ["x"]}, run_id="r")
    assert [p.path for p in result.pending_inputs] == ["vet/review", "each[0]/review"]
    assert result.status is CheckpointStatus.PENDING_INPUT
    broken = write(
        tmp_path / "sub",
        "inner.yaml",
        "id: inner\nnodes:\n  - id: x\n    type: function\n    fn: 'nowhere:fn'\n",
    )
    problems = problems_of(path)
    assert problems[0].startswith(f"{broken}:5: nodes[0].fn: 'nowhere:fn' cannot be imported")
    write(
        tmp_path / "sub",
        "inner.yaml",
        "id: inner\nnodes:\n  - id: x\n    type: subflow\n    flow: ../outer.yaml\n",
    )
    assert (
        "flow files include each other: outer.yaml -> inner.yaml -> outer.yaml"
        in problems_of(path)[0]
    )


def test_checkpoint_settings_come_from_the_file(tmp_path: Path) -> None:
    text = """
        id: settings
        wait_for_input_seconds: 1.5
        checkpoint:
          enabled: true
          store: "sqlite:{db}"
          durability: async
          max_checkpoints: 7
          exclude_nodes: [ask]
        nodes:
          - id: ask
            type: human_input
            prompt: "?"
            schema: {{type: boolean}}
        """.format(db=tmp_path / "c.db")
    flow = loads_yaml(textwrap.dedent(text), name="inline.yaml")
    config = flow.checkpoint
    assert isinstance(config, CheckpointConfig)
    assert (config.durability, config.max_checkpoints, config.exclude_nodes) == (
        "async",
        7,
        ["ask"],
    )
    assert type(config.store).__name__ == "SQLiteStore"
    assert flow.wait_for_input_seconds == 1.5
    ask = flow.by_id["ask"]
    assert isinstance(ask, HumanInput) and ask.schema == {"type": "boolean"}
    nodes = "nodes: [{id: a, type: human_input, prompt: p}]\n"
    disabled = loads_yaml("id: d\ncheckpoint: {enabled: false, store: 'file:x'}\n" + nodes)
    assert disabled.checkpoint is not None and disabled.checkpoint.store is None
    with pytest.raises(YamlFlowError, match=r"inline.yaml:2: checkpoint.store: unknown store URL"):
        loads_yaml(
            "id: d\ncheckpoint: {enabled: true, store: 'ftp://x'}\n" + nodes, name="inline.yaml"
        )


def test_a_module_shadowed_by_one_already_imported_is_refused(tmp_path: Path) -> None:
    # Python would return the stdlib json module, not the flow's own json.py.
    (tmp_path / "json.py").write_text("def loads(inputs):\n    return 1\n", encoding="utf-8")
    path = write(
        tmp_path, "shadow.yaml", "id: s\nnodes:\n  - {id: a, type: function, fn: 'json:loads'}\n"
    )
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}:3: nodes[0].fn: 'json:loads': a module named 'json' is")
    assert "rename the module" in problem
