"""`python -m llmprep.generate`: prompts continued by a checkpoint, a folder or a batch file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tiny_instruct_checkpoint
from transformers import pipeline

from llmprep.export import main as export
from llmprep.generate import main
from llmprep.inference import Sampling, load_model

PROMPTS = ["Name a colour.", "Add one to 41.", "Hi", "Write one long sentence about the sea."]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_instruct_checkpoint(tmp_path_factory.mktemp("generate") / "instruct.ckpt")


def run(capfd: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    capfd.readouterr()
    code = main(list(args))
    out, err = capfd.readouterr()
    return code, out, err


def reference(ckpt: Path, prompt: str, sampling: Sampling, raw: bool = False) -> str:
    loaded = load_model(str(ckpt), "cpu")
    return loaded.answers([loaded.prompt_ids(prompt, raw)], [sampling]).completions()[0].text


def test_one_prompt_streams_the_models_answer_in_its_style(
    ckpt: Path, capfd: pytest.CaptureFixture
) -> None:
    code, out, _ = run(capfd, f"ckpt_path={ckpt}", f"prompt={PROMPTS[0]}", "max_new_tokens=9")
    assert code == 0
    assert out == reference(ckpt, PROMPTS[0], Sampling(9)) + "\n"
    code, raw, _ = run(
        capfd, f"ckpt_path={ckpt}", f"prompt={PROMPTS[0]}", "max_new_tokens=9", "raw=true"
    )
    assert raw == reference(ckpt, PROMPTS[0], Sampling(9), raw=True) + "\n" != out


def test_a_prompts_file_gives_json_lines_in_file_order_whatever_the_batch(
    ckpt: Path, capfd: pytest.CaptureFixture, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join([PROMPTS[0], "", *PROMPTS[1:]]) + "\n", encoding="utf-8")
    settings = (f"ckpt_path={ckpt}", f"prompts_file={prompts}", "max_new_tokens=6")
    sampled = ("temperature=1.0", "top_p=0.9", "seed=3")
    code, out, _ = run(capfd, *settings, *sampled, "batch_size=3")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [row["prompt"] for row in rows] == PROMPTS
    expected = [
        reference(ckpt, p, Sampling(6, temperature=1.0, top_p=0.9, seed=3)) for p in PROMPTS
    ]
    assert [row["completion"] for row in rows] == expected
    assert {row["completion_tokens"] for row in rows} == {6}
    assert {row["finish_reason"] for row in rows} == {"length"}
    records = tmp_path / "prompts.jsonl"
    records.write_text("".join(json.dumps({"q": p}) + "\n" for p in PROMPTS), encoding="utf-8")
    output = tmp_path / "out" / "answers.jsonl"
    code, out, err = run(
        capfd, *settings[:1], f"prompts_file={records}", "prompt_field=q", "max_new_tokens=6",
        *sampled, "batch_size=1", f"output={output}",
    )  # fmt: skip
    assert code == 0 and out == "" and f"4 completions written to {output}" in err
    assert [json.loads(line) for line in output.read_text().splitlines()] == rows


def test_the_exported_folders_transformers_pipeline_writes_what_generate_writes(
    ckpt: Path, capfd: pytest.CaptureFixture, tmp_path: Path
) -> None:
    """Offline (conftest sets ``HF_HUB_OFFLINE=1``): the folder alone is the model."""
    assert export([f"ckpt_path={ckpt}", f"out_dir={tmp_path / 'hf'}"]) == 0
    text = "Every effort moves you"
    hf = pipeline("text-generation", model=str(tmp_path / "hf"), device="cpu")
    expected = hf(text, do_sample=False, max_new_tokens=12, return_full_text=False)
    for source in (ckpt, tmp_path / "hf"):
        code, out, _ = run(
            capfd, f"ckpt_path={source}", f"prompt={text}", "raw=true", "max_new_tokens=12"
        )
        assert code == 0
        assert out == expected[0]["generated_text"] + "\n"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        ((), 1, 'give either prompt="..." or prompts_file=<file>'),
        (("prompt=a", "prompts_file=b.txt"), 1, "give either"),
        (("prompt=a", "max_new_tokens=0"), 1, "max_new_tokens=0: expected an integer >= 1"),
        (("prompt=a", "temperature=hot"), 2, "temperature: Value 'hot'"),
        (("prompt=a", "beams=4"), 2, "unknown key 'beams'; the keys are ckpt_path, max_new"),
        (("prompt=a", "top_p=1.5"), 1, "top_p must be in (0, 1] or None, got 1.5"),
    ],
)
def test_bad_settings_are_named_and_exit_without_a_traceback(
    ckpt: Path, capfd: pytest.CaptureFixture, args: tuple, code: int, message: str
) -> None:
    try:
        status, _, err = run(capfd, f"ckpt_path={ckpt}", *args)
    except SystemExit as exit_:
        status, err = exit_.code, capfd.readouterr().err
    assert status == code
    assert message in err


def test_bad_prompts_files_are_named(
    ckpt: Path, capfd: pytest.CaptureFixture, tmp_path: Path
) -> None:
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n", encoding="utf-8")
    code, _, err = run(capfd, f"ckpt_path={ckpt}", f"prompts_file={blank}")
    assert code == 1 and f"prompts_file={str(blank)!r}: no prompts" in err
    records = tmp_path / "r.jsonl"
    records.write_text('{"text": "a"}\n', encoding="utf-8")
    code, _, err = run(capfd, f"ckpt_path={ckpt}", f"prompts_file={records}")
    assert code == 1 and "r.jsonl" in err and "prompt" in err and "missing" in err
    code, _, err = run(capfd, f"ckpt_path={tmp_path / 'none.ckpt'}", "prompt=a")
    assert code == 1 and "none.ckpt" in err and "no such file" in err
    code, _, err = run(capfd, "ckpt_path=./no-folder", "prompt=a")
    assert code == 1 and "error: ckpt_path='./no-folder': no such folder" in err
    code, _, err = run(capfd, "ckpt_path=openai-community/gpt2", "prompt=a")  # offline here
    assert code == 1 and "Point ckpt_path at a local folder holding model.safetensors" in err
