"""The package's layers: a module imports only from its own layer or the layers below it."""

from __future__ import annotations

import ast

from conftest import ROOT

LAYERS = [
    {"errors", "files", "logs", "tokenizer", "hf_tokenizer", "checkpoints", "data", "model"},
    {"training"},
    {"stages"},
    {"run", "export"},
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


def test_a_stage_imports_no_other_stage() -> None:
    wrong = []
    for path in sorted((ROOT / "llmprep" / "stages").glob("*/*.py")):
        stage = path.parent.name
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith("llmprep.stages.")
                and node.module.split(".")[2] != stage
            ):
                wrong.append(f"{path.relative_to(ROOT)} imports {node.module}")
    assert not wrong, "\n".join(wrong)
