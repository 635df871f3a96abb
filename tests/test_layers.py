"""The package's layers: a module imports only from its own layer or the layers below it."""

from __future__ import annotations

import ast

from conftest import ROOT

LAYERS = [
    {
        "errors",
        "files",
        "logs",
        "tokenizer",
        "hf_tokenizer",
        "checkpoints",
        "commands",
        "data",
        "model",
    },
    {"training", "resume"},
    {"stages"},
    {"run", "export", "inference"},
    {"generate", "chat", "serve"},
]
"""Bottom to top, by the first name after ``llmprep.``."""


def layer(name: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if name in names)


def test_no_module_imports_from_a_layer_above_it() -> None:
    wrong = []
    for path in sorted((ROOT / "llmprep").rglob("*.py")):
        parts = path.relative_to(ROOT / "llmprep").with_suffix("").parts
        if parts == ("__init__",):
            continue
        own = layer(parts[0])
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name.startswith("llmprep.") and layer(name.split(".")[1]) > own:
                    wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(wrong)


def _builds_on(stage: str) -> set[str]:
    """The stages ``stage``'s ``__init__`` names in ``BUILDS_ON`` (read, not imported)."""
    tree = ast.parse((ROOT / "llmprep" / "stages" / stage / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "BUILDS_ON" for t in node.targets
        ):
            return set(ast.literal_eval(node.value))
    return set()


def test_a_stage_imports_only_the_stages_it_builds_on() -> None:
    wrong = []
    for path in sorted((ROOT / "llmprep" / "stages").glob("*/*.py")):
        stage = path.parent.name
        allowed = {stage} | _builds_on(stage)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith("llmprep.stages.")
                and node.module.split(".")[2] not in allowed
            ):
                wrong.append(f"{path.relative_to(ROOT)} imports {node.module}")
            if (
                isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith("llmprep.stages.")
                and stage in _builds_on(node.module.split(".")[2])
            ):
                wrong.append(f"{path.relative_to(ROOT)} imports {node.module}, which builds on it")
    assert not wrong, "\n".join(wrong)
    assert _builds_on("dpo") == {"instruct"} and _builds_on("instruct") == set()
