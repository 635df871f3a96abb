"""Generation speed of our engine against ``transformers``' ``generate`` on the same weights.

gpt2-small with seeded random weights (our pretraining default: untied head, no qkv bias) is
exported to a Hugging Face folder (``export_hf``) and loaded back as ``GPT2LMHeadModel``. Both
engines decode greedily, exactly ``--new-tokens`` new tokens (no end-of-text stop), for one
prompt and for a batch of 8 prompts of different lengths (both left-padded with an attention
mask). Our engine runs twice: as it ships, and with ``torch.backends.mkldnn`` off, which sends
its fp32 CPU linear layers back to ``F.linear`` (MKL), the baseline of ``model.gpt.Linear``'s
oneDNN path. Rounds interleave the contenders so that a change in the machine's speed hits all
alike; the table gives the median over rounds of new tokens/s, the machine, and whether each
engine's greedy tokens match transformers'.

    python bench/bench_generate.py [--device cuda] [--new-tokens 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a plain checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_model import machine, timed
from transformers import GPT2LMHeadModel

from llmprep.model import GPT, GPTConfig
from llmprep.model.generate import generate, left_pad
from llmprep.model.weights import export_hf

SINGLE_PROMPT_TOKENS = 16
BATCH_PROMPT_TOKENS = (16, 23, 30, 37, 44, 51, 58, 65)
PAD_ID = 50256


def ours(
    model: GPT, prompts: list[list[int]], new_tokens: int, device: torch.device, onednn: bool
) -> tuple[torch.Tensor, float]:
    """Our new tokens [B, new_tokens] and the seconds they took; ``onednn=False`` runs the
    linear layers on ``F.linear``."""
    idx, mask = left_pad(prompts, PAD_ID, device)
    was_enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = onednn  # not mkldnn.flags(), which warns about TF32
    try:
        generate(model, idx, 2, attention_mask=mask)  # warm-up
        result = {}
        seconds = timed(
            lambda: result.update(out=generate(model, idx, new_tokens, attention_mask=mask)),
            device,
        )
    finally:
        torch.backends.mkldnn.enabled = was_enabled
    return result["out"][:, idx.shape[1] :].cpu(), seconds


def hugging_face(
    model: GPT2LMHeadModel, prompts: list[list[int]], new_tokens: int, device: torch.device
) -> tuple[torch.Tensor, float]:
    """``transformers``' new tokens [B, new_tokens] and the seconds they took."""
    idx, mask = left_pad(prompts, PAD_ID, device)
    settings = {"do_sample": False, "pad_token_id": PAD_ID, "attention_mask": mask.long()}
    with torch.no_grad():
        model.generate(idx, max_new_tokens=2, **settings)  # warm-up
        result = {}
        seconds = timed(
            lambda: result.update(out=model.generate(idx, max_new_tokens=new_tokens, **settings)),
            device,
        )
    return result["out"][:, idx.shape[1] :].cpu(), seconds


def agreement(a: torch.Tensor, b: torch.Tensor) -> str:
    """Whether two engines' tokens agree, else where each row first differs."""
    if torch.equal(a, b):
        return "identical"
    firsts = [
        str(int((x != y).nonzero()[0])) if not torch.equal(x, y) else "-"
        for x, y in zip(a, b, strict=True)
    ]
    return "first difference per row at step " + ", ".join(firsts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--new-tokens", type=int, default=200, help="tokens to generate")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = GPT(GPTConfig()).eval().to(device)
    with tempfile.TemporaryDirectory() as folder:
        export_hf(model, folder)
        hf = GPT2LMHeadModel.from_pretrained(folder, torch_dtype=torch.float32).eval().to(device)
    hf.generation_config.eos_token_id = None  # exactly --new-tokens tokens, as ours
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(1)
    single = [torch.randint(0, vocab, (SINGLE_PROMPT_TOKENS,), generator=generator).tolist()]
    batch = [
        torch.randint(0, vocab, (n,), generator=generator).tolist() for n in BATCH_PROMPT_TOKENS
    ]
    contenders = {
        "ours": lambda prompts: ours(model, prompts, args.new_tokens, device, onednn=True),
        "ours, F.linear": lambda prompts: ours(model, prompts, args.new_tokens, device, False),
        "transformers": lambda prompts: hugging_face(hf, prompts, args.new_tokens, device),
    }
    cases = {"1 prompt": single, "8 prompts of different lengths": batch}
    seconds = {(case, name): [] for case in cases for name in contenders}
    tokens = {}
    for _ in range(args.rounds):
        for case, prompts in cases.items():
            for name, run in contenders.items():
                tokens[case, name], took = run(prompts)
                seconds[case, name].append(took)

    rate = {
        key: len(cases[key[0]]) * args.new_tokens / statistics.median(took)
        for key, took in seconds.items()
    }
    print(
        f"gpt2-small, greedy, {args.new_tokens} new tokens per prompt, median of {args.rounds} "
        f"interleaved rounds; {machine(device)}\n"
    )
    print("| prompts | ours (new tokens/s) | ours, F.linear | transformers | ours / transformers |")
    print("|---|---:|---:|---:|---:|")
    for case in cases:
        ours_rate, mkl_rate, hf_rate = (rate[case, name] for name in contenders)
        print(
            f"| {case} | {ours_rate:,.1f} | {mkl_rate:,.1f} | {hf_rate:,.1f} | "
            f"{ours_rate / hf_rate:.2f}x |"
        )
    single_case, batch_case = cases
    print(
        f"\n8 prompts / 1 prompt, ours: {rate[batch_case, 'ours'] / rate[single_case, 'ours']:.1f}x"
    )
    for case in cases:
        for name in ("ours", "ours, F.linear"):
            same = agreement(tokens[case, name], tokens[case, "transformers"])
            print(f"{case}, {name}: greedy tokens vs transformers: {same}")


if __name__ == "__main__":
    main()
