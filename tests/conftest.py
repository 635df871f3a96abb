"""Shared test set-up: offline data, a private cache per session, W&B offline.

Tests that need the real data files read them through ``LLMPREP_MIRROR`` (``.ci/run`` and
``make test`` point it at ``../shared/data``); when it is missing they fail, they never skip.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import runpy
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

if TYPE_CHECKING:
    import lightning
    import torch

    from llmprep.model import GPTConfig

ROOT = Path(__file__).resolve().parents[1]
TINY_CLASSIFIER = ("stage=classify", "model=gpt2-tiny", "init_from=null", "data=classify_file")
"""A classifier run of the tiniest model from random weights on a file (``data.path=...``)."""
TINY_INSTRUCT = (
    "stage=instruct",
    "model=gpt2-tiny",
    "init_from=null",
    "data=instruct_file",
    "data.prompt_style=phi3",
    "data.mask_prompt=true",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "stage.sample.count=0",
)
"""An instruct run of the tiniest model from random weights on a file of records
(``data.path=...``), phi3 prompts masked from the loss, two training batches and no samples: a
checkpoint for the tests of what reads one (evaluation, DPO), whose prompt style is not the
default."""
SHARED = ROOT.parent / "shared"

os.environ.setdefault("LLMPREP_MIRROR", str(SHARED / "data"))
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken_cache"))
os.environ["WANDB_MODE"] = "offline"
os.environ["WANDB_SILENT"] = "true"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every test session gets its own empty ``LLMPREP_CACHE``, so no test sees stale files."""
    cache = tmp_path_factory.mktemp("llmprep-cache")
    os.environ["LLMPREP_CACHE"] = str(cache)
    return cache


@pytest.fixture
def mirror() -> Path:
    """The first ``LLMPREP_MIRROR`` folder; fails the test when the real data is not there."""
    folders = [Path(p) for p in os.environ.get("LLMPREP_MIRROR", "").split(":") if p]
    for folder in folders:
        if (folder / "the-verdict.txt").is_file():
            return folder
    pytest.fail(f"LLMPREP_MIRROR={os.environ.get('LLMPREP_MIRROR')!r} holds no data files")


@functools.cache
def _model_group(name: str) -> dict:
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return dict(compose("train", overrides=[f"model={name}"]).model)


def model_size(name: str, **overrides: object) -> GPTConfig:
    """The ``GPTConfig`` of ``model=<name>`` (``conf/model/<name>.yaml``, composed as the command
    line composes it), with ``overrides`` on top."""
    from llmprep.model.init import model_config_from

    return model_config_from({**_model_group(name), **overrides})


def preference_records(n: int) -> list[dict[str, str]]:
    """``n`` pairs whose chosen answer is short and right, the rejected one long and wrong."""
    return [
        {
            "instruction": f"Add one to {i}.",
            "input": "" if i % 3 else "Answer with a number.",
            "output": str(i + 1),
            "chosen": str(i + 1),
            "rejected": f"Well, I believe the answer might be {i + 7}, or perhaps not.",
        }
        for i in range(n)
    ]


def run_cli(
    script: str, *args: str, timeout: int = 300, unset: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """Run ``python <script> <args>`` from the repo root as a user would, capturing its output;
    ``unset`` names environment variables the command runs without."""
    env = {k: v for k, v in os.environ.items() if k not in unset}
    return subprocess.run(
        [sys.executable, script, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )


@dataclass
class CliResult:
    """What a command printed and the status it exited with."""

    code: int
    out: str
    err: str


@pytest.fixture
def cli(capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> Callable[..., CliResult]:
    """Run ``python <script> <args>`` in this process, as ``python`` would run it (``__main__``,
    the real Hydra entry point and its run folder), without a new interpreter's ~10 s of imports.

    An exception other than ``SystemExit`` propagates: a command must never end in a traceback.
    """

    def run(script: str, *args: str) -> CliResult:
        monkeypatch.setattr(sys, "argv", [script, *args])
        capfd.readouterr()
        code = 0
        try:
            runpy.run_path(str(ROOT / script), run_name="__main__")
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        captured = capfd.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


def quiet_trainer(**settings: object) -> lightning.Trainer:
    """A CPU Trainer that writes no logs or checkpoints and prints no progress bar or model
    summary, so a test trains for real without files or console noise; ``settings`` are the
    test's own (``max_steps``, ``callbacks``, ...) and replace these where they overlap.

    Lightning is imported here, so test files that never train do not pay for it.
    """
    import lightning as L

    quiet = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return L.Trainer(**{**quiet, **settings})


def fit_checkpoint(
    task: lightning.LightningModule, path: Path, tokens: torch.Tensor, steps: int
) -> Path:
    """Train ``task`` for ``steps`` real Trainer steps on next-token pairs of ``tokens`` (rows of
    token ids, batches of 4), then save its checkpoint to ``path``.

    Torch is imported here, so test files that never train do not pay for it.
    """
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(tokens, tokens.roll(-1, dims=1)), batch_size=4)
    trainer = quiet_trainer(max_steps=steps, default_root_dir=path.parent)
    trainer.fit(task, train_dataloaders=loader)
    trainer.save_checkpoint(path)
    return path


def tiny_instruct_checkpoint(path: Path, context_length: int = 64, style: str = "phi3") -> Path:
    """An ``instruct`` checkpoint of a tiny GPT with GPT-2's whole vocabulary, prompt style
    ``style``, trained one step on random tokens: a model to use, not a good one."""
    from dataclasses import asdict

    import torch

    from llmprep.stages.instruct.task import InstructTask

    config = model_size("gpt2-tiny", context_length=context_length)
    settings = {
        "optim": {"lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 0, "schedule": "constant"},
        "lora": {"rank": 0},
        "init_from": None,
        "stage": {"name": "instruct"},
    }
    torch.manual_seed(0)
    task = InstructTask(settings, asdict(config), prompt_style=style)
    ids = torch.randint(0, config.vocab_size, (4, 16), generator=torch.Generator().manual_seed(0))
    return fit_checkpoint(task, path, ids, steps=1)


class FakeJudge(ThreadingHTTPServer):
    """A local LLM judge: answers chat requests with queued reply texts, records what it was sent.

    ``/api/chat`` answers in Ollama's streamed form (one JSON object per line, the reply split
    over two), ``/v1/chat/completions`` in OpenAI's; a path starting with ``/slow`` waits
    ``delay`` seconds first; ``/missing/...`` answers 404.
    """

    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), FakeJudgeHandler)
        self.replies: list[str] = []
        self.requests: list[tuple[str, dict, dict]] = []
        self.delay = 0.5

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"

    def handle_error(self, request, client_address) -> None:  # a client that gave up waiting
        pass


class FakeJudgeHandler(BaseHTTPRequestHandler):
    server: FakeJudge

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, body, dict(self.headers)))
        if self.path.startswith("/slow"):
            time.sleep(self.server.delay)
        if self.path.startswith("/missing"):
            self._send(404, b'{"error": "model \\"nope\\" not found"}')
            return
        reply = self.server.replies.pop(0)
        if self.path.endswith("/api/chat"):
            half = len(reply) // 2
            chunks = [reply[:half], reply[half:]]
            lines = [
                {"message": {"role": "assistant", "content": c}, "done": False} for c in chunks
            ]
            payload = "\n".join(json.dumps(line) for line in lines).encode()
        else:
            message = {"role": "assistant", "content": reply}
            payload = json.dumps({"choices": [{"index": 0, "message": message}]}).encode()
        self._send(200, payload)

    def _send(self, code: int, payload: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def judge_server() -> Iterator[FakeJudge]:
    """A running ``FakeJudge`` with no replies queued, shut down after the test."""
    fake = FakeJudge()
    thread = threading.Thread(target=fake.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield fake
    fake.shutdown()
    fake.server_close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A local HTTP server in a thread: (folder it serves, base URL)."""
    root = tmp_path / "served"
    root.mkdir()

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root))
    )
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def compose_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Compose a run config the way ``python train.py <overrides>`` does, with its run folder
    at ``tmp_path/run``, and make it the current Hydra job (so ``train(cfg)`` runs in-process)."""

    def compose_(*overrides: str, config_name: str = "train", run_dir: Path | None = None):
        monkeypatch.setattr(sys, "argv", ["train.py", *overrides])
        with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
            cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
        out = run_dir or tmp_path / "run"
        out.mkdir(parents=True, exist_ok=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(out)
            cfg.hydra.runtime.cwd = str(ROOT)
            cfg.hydra.job.num = 0
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        return cfg

    yield compose_
    HydraConfig.instance().cfg = None
