"""``python -m llmprep.generate ckpt_path=... prompt="..."`` (also ``llmprep-generate``): continue
prompts with a trained model.

``ckpt_path`` is anything :func:`llmprep.inference.load_model` takes: one of our checkpoints, an
exported folder or a hub id. An instruction-tuned model gets each prompt in the style it was
tuned with, unless ``raw=true``. Decoding is greedy by default (``temperature=0``, the book's
choice, reproducible); ``temperature`` above 0 samples, from ``top_k``/``top_p`` when set, and
``seed`` makes a sample repeatable, alone or in any batch.

Output: one ``prompt`` streams its continuation to stdout as it is generated. A
``prompts_file`` (one prompt per line of a ``.txt`` file, or the ``prompt_field`` of the records
of a CSV, TSV, JSON, JSONL or Parquet file) is answered ``batch_size`` prompts at a time (any
lengths batch together) and printed as JSON lines, ``{"prompt", "completion",
"prompt_tokens", "completion_tokens", "finish_reason"}`` per prompt in file order; ``output=``
writes those lines to a file instead (atomically). The continuation is printed exactly as
generated, without the prompt.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from llmprep.commands import command_main, setting
from llmprep.data.records import read_records
from llmprep.files import atomic_path
from llmprep.inference import Completion, LoadedModel, Sampling, load_model
from llmprep.training.progress import progress


@dataclass
class ModelSettings:
    """The settings ``generate`` and ``chat`` share: the model and how it continues a prompt."""

    ckpt_path: str = setting(help="our checkpoint (.ckpt), an exported folder or a hub id")
    max_new_tokens: int = setting(100, "most new tokens per answer")
    temperature: float = setting(0.0, "0 = greedy; above 0 samples")
    top_k: int | None = setting(None, "sample from the k most likely tokens")
    top_p: float | None = setting(None, "sample from the nucleus of this probability mass")
    seed: int | None = setting(None, "seed of each answer's sampling")
    stop: list[str] = setting([], "stop before any of these strings, e.g. stop=[###]")
    device: str = setting("auto", "auto (the GPU if there is one), cpu, cuda, cuda:1, ...")

    def sampling(self) -> Sampling:
        return Sampling(
            self.max_new_tokens,
            self.temperature,
            self.top_k,
            self.top_p,
            self.seed,
            tuple(self.stop),
        )


@dataclass
class GenerateSettings(ModelSettings):
    prompt: str | None = setting(None, "the prompt to continue")
    prompts_file: str | None = setting(None, "prompts: a .txt file (one per line) or records")
    prompt_field: str = setting("prompt", "the field holding the prompt in a records file")
    output: str | None = setting(None, "write the JSON lines to this file instead of stdout")
    raw: bool = setting(False, "send prompts as they are, not in the model's prompt style")
    batch_size: int = setting(8, "prompts generated together")


DESCRIPTION = "Continue prompts with a trained model (see llmprep/generate.py's docstring)."
EXAMPLES = (
    'python -m llmprep.generate ckpt_path=openai-community/gpt2 prompt="Every effort moves you"',
    "python -m llmprep.generate ckpt_path=outputs/instruct/.../checkpoints/best.ckpt "
    'prompt="Name the capital of France."',
    "python -m llmprep.generate ckpt_path=exported prompts_file=prompts.txt temperature=0.8 "
    "top_p=0.95 seed=1 output=answers.jsonl",
)


def read_prompts(path: str | Path, field: str) -> list[str]:
    """The prompts of ``path``: each non-blank line of a ``.txt`` file, or each record's
    ``field`` in a records file (errors name the file, line and field)."""
    path = Path(path)
    if path.suffix == ".txt":
        lines = path.read_text(encoding="utf-8").splitlines()
        prompts = [line for line in lines if line.strip()]
        if not prompts:
            raise ValueError(f"prompts_file={str(path)!r}: no prompts (every line is blank)")
        return prompts
    _, records = read_records(path, {"prompt": field}, nonblank=("prompt",))
    return [record["prompt"] for record in records]


def complete_all(
    loaded: LoadedModel, prompts: Sequence[str], settings: GenerateSettings
) -> list[Completion]:
    """Every prompt's completion, in order, ``batch_size`` at a time (prompts of near lengths
    together, so little padding), with a progress bar on stderr."""
    if settings.batch_size < 1:
        raise ValueError(f"batch_size={settings.batch_size}: expected an integer >= 1")
    ids = [loaded.prompt_ids(prompt, settings.raw) for prompt in prompts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    done: dict[int, Completion] = {}
    with progress(len(ids), "generating", stderr=True) as advance:
        for start in range(0, len(order), settings.batch_size):
            group = order[start : start + settings.batch_size]
            answers = loaded.answers([ids[i] for i in group], [settings.sampling()] * len(group))
            done.update(zip(group, answers.completions(), strict=True))
            advance(len(group))
    return [done[i] for i in range(len(ids))]


def stream_one(loaded: LoadedModel, prompt: str, settings: GenerateSettings) -> Completion:
    """Generate one prompt's continuation, writing it to stdout as it comes."""
    answers = loaded.answers([loaded.prompt_ids(prompt, settings.raw)], [settings.sampling()])
    for (piece,) in answers:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return answers.completions()[0]


def generate(settings: GenerateSettings) -> None:
    """The command's work on parsed ``settings``."""
    if (settings.prompt is None) == (settings.prompts_file is None):
        raise ValueError('give either prompt="..." or prompts_file=<file>')
    settings.sampling()  # bad settings fail before the model loads
    loaded = load_model(settings.ckpt_path, settings.device)
    if settings.prompt is not None and settings.output is None:
        stream_one(loaded, settings.prompt, settings)
        return
    prompts = (
        [settings.prompt]
        if settings.prompt is not None
        else read_prompts(settings.prompts_file, settings.prompt_field)
    )
    lines = [
        json.dumps({"prompt": prompt, "completion": c.text, **_counts(c)}, ensure_ascii=False)
        for prompt, c in zip(prompts, complete_all(loaded, prompts, settings), strict=True)
    ]
    text = "".join(line + "\n" for line in lines)
    if settings.output is None:
        sys.stdout.write(text)
        return
    with atomic_path(settings.output) as temp:
        temp.write_text(text, encoding="utf-8")
    print(f"{len(lines)} completions written to {settings.output}", file=sys.stderr)


def _counts(completion: Completion) -> dict[str, object]:
    fields = asdict(completion)
    del fields["text"]
    return fields


main = command_main(GenerateSettings, generate, "python -m llmprep.generate", DESCRIPTION, EXAMPLES)


if __name__ == "__main__":
    sys.exit(main())
