import json
import sys
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub.constants
import pytest
import torch
from conftest import model_size
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from llmprep.model import GPT
from llmprep.model.weights import export_hf, load_pretrained

VOCAB = 101


def randomize(model: nn.Module) -> None:
    """Give every parameter (biases and LayerNorms included) distinct random values, so a
    tensor mapped to the wrong place changes the logits."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.1)


@pytest.fixture(scope="module")
def hf_model() -> GPT2LMHeadModel:
    config = GPT2Config(
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=64,
        vocab_size=VOCAB,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(config).eval()
    randomize(model)
    return model


@pytest.fixture(scope="module")
def hf_dir(hf_model: GPT2LMHeadModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hf")
    hf_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(0))


def hf_logits(model: GPT2LMHeadModel, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(idx).logits


def our_logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(idx)


def copy_folder(src: Path, dst: Path, edit: object = None) -> Path:
    """``src`` copied to ``dst``, its tensors passed through ``edit`` (a dict -> dict function)."""
    dst.mkdir()
    tensors = load_file(src / "model.safetensors")
    save_file(edit(tensors) if edit else tensors, dst / "model.safetensors", {"format": "pt"})
    (dst / "config.json").write_text((src / "config.json").read_text())
    return dst


def test_loads_transformers_weights_with_equal_logits(
    hf_model: GPT2LMHeadModel, hf_dir: Path, tokens: torch.Tensor
) -> None:
    model = load_pretrained(hf_dir)
    assert not model.training
    assert model.config.qkv_bias and model.config.tie_weights
    assert model.out_head.weight is model.tok_emb.weight
    torch.testing.assert_close(
        our_logits(model, tokens), hf_logits(hf_model, tokens), atol=1e-5, rtol=0
    )


def test_accepts_the_hub_layout_with_mask_buffers(
    hf_model: GPT2LMHeadModel, hf_dir: Path, tokens: torch.Tensor, tmp_path: Path
) -> None:
    def hub_layout(tensors: dict) -> dict:
        renamed = {k.removeprefix("transformer."): v for k, v in tensors.items()}
        return renamed | {
            "h.0.attn.bias": torch.ones(1, 1, 64, 64),
            "h.1.attn.masked_bias": torch.tensor(-1e4),
        }

    model = load_pretrained(copy_folder(hf_dir, tmp_path / "hub", hub_layout))
    torch.testing.assert_close(
        our_logits(model, tokens), hf_logits(hf_model, tokens), atol=1e-5, rtol=0
    )


def test_overrides_shrink_the_context_and_set_dropout(
    hf_model: GPT2LMHeadModel, hf_dir: Path, tokens: torch.Tensor
) -> None:
    model = load_pretrained(hf_dir, context_length=32, dropout=0.1)
    assert model.pos_emb.weight.shape == (32, 64) and model.config.dropout == 0.1
    short = tokens[:, :32]
    torch.testing.assert_close(
        our_logits(model, short), hf_logits(hf_model, short), atol=1e-5, rtol=0
    )
    with pytest.raises(ValueError, match="context_length=128 exceeds the 64 positions"):
        load_pretrained(hf_dir, context_length=128)


def test_untying_override_copies_the_embedding_into_the_head(hf_dir: Path) -> None:
    model = load_pretrained(hf_dir, tie_weights=False)
    assert model.out_head.weight is not model.tok_emb.weight
    assert torch.equal(model.out_head.weight, model.tok_emb.weight)


@pytest.mark.parametrize(
    ("tie", "qkv_bias"), [(True, True), (True, False), (False, True), (False, False)]
)
def test_export_loads_in_transformers_with_equal_logits(
    tie: bool, qkv_bias: bool, tokens: torch.Tensor, tmp_path: Path
) -> None:
    config = model_size(
        "gpt2-tiny",
        vocab_size=VOCAB,
        context_length=64,
        n_heads=4,
        qkv_bias=qkv_bias,
        tie_weights=tie,
    )
    model = GPT(config).eval()
    randomize(model)
    out = export_hf(model, tmp_path / "export")
    written = json.loads((out / "config.json").read_text())
    assert written["tie_word_embeddings"] is tie and written["model_type"] == "gpt2"
    assert ("lm_head.weight" in load_file(out / "model.safetensors")) is not tie
    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    expected = our_logits(model, tokens)
    torch.testing.assert_close(hf_logits(hf, tokens), expected, atol=1e-5, rtol=0)
    reloaded = load_pretrained(out)
    assert reloaded.config.tie_weights is tie
    torch.testing.assert_close(our_logits(reloaded, tokens), expected, atol=1e-5, rtol=0)


def test_export_keeps_other_files_and_leaves_no_temporaries(tmp_path: Path) -> None:
    model = GPT(model_size("gpt2-tiny", vocab_size=VOCAB))
    (tmp_path / "tokenizer.json").write_text("{}")
    export_hf(model, tmp_path)
    export_hf(model, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]


def test_export_refuses_a_classifier_head(tmp_path: Path) -> None:
    model = GPT(model_size("gpt2-tiny", vocab_size=VOCAB))
    model.out_head = nn.Linear(64, 2)
    with pytest.raises(ValueError, match="classifier head"):
        export_hf(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_shape_mismatch_names_the_tensor_and_both_shapes(hf_dir: Path, tmp_path: Path) -> None:
    def narrow_fc(tensors: dict) -> dict:
        key = "transformer.h.1.mlp.c_fc.weight"
        return tensors | {key: tensors[key][:, :128].contiguous()}

    folder = copy_folder(hf_dir, tmp_path / "bad", narrow_fc)
    with pytest.raises(
        ValueError, match=r"'h\.1\.mlp\.c_fc\.weight' has shape \[64, 128\].*expects \[64, 256\]"
    ):
        load_pretrained(folder)


def test_missing_and_unexpected_tensors_are_named(hf_dir: Path, tmp_path: Path) -> None:
    def drop(tensors: dict) -> dict:
        return {k: v for k, v in tensors.items() if k != "transformer.ln_f.bias"}

    with pytest.raises(ValueError, match=r"missing tensor\(s\) ln_f\.bias"):
        load_pretrained(copy_folder(hf_dir, tmp_path / "missing", drop))
    with pytest.raises(ValueError, match=r"unexpected tensor\(s\) h\.0\.attn\.c_attn\.bias"):
        load_pretrained(hf_dir, qkv_bias=False)


def test_differing_head_cannot_be_tied(hf_dir: Path, tmp_path: Path) -> None:
    def add_head(tensors: dict) -> dict:
        return tensors | {"lm_head.weight": torch.zeros(VOCAB, 64)}

    with pytest.raises(ValueError, match=r"lm_head\.weight differs from wte\.weight"):
        load_pretrained(copy_folder(hf_dir, tmp_path / "head", add_head))


def test_unsupported_and_broken_configs_are_named(hf_dir: Path, tmp_path: Path) -> None:
    folder = copy_folder(hf_dir, tmp_path / "relu")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"activation_function": "relu"}))
    with pytest.raises(ValueError, match=r"config\.json: activation_function='relu'"):
        load_pretrained(folder)
    (folder / "config.json").write_text('{\n  "n_embd": 64,\n}')
    with pytest.raises(ValueError, match=r"config\.json: invalid JSON at line 3"):
        load_pretrained(folder)


def test_pickled_weights_are_never_loaded(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not opened")
    with pytest.raises(
        FileNotFoundError, match=r"no model\.safetensors \(pytorch_model\.bin is pickled"
    ):
        load_pretrained(tmp_path)


def test_missing_folder_is_not_sent_to_the_hub(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such folder"):
        load_pretrained(str(tmp_path / "nope"))


def test_offline_hub_id_explains_the_local_alternatives(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ConnectionError) as err:
        load_pretrained("gpt2")
    message = str(err.value)
    assert "init_from='openai-community/gpt2': could not reach the Hugging Face hub" in message
    assert "init_from" in message and "model.safetensors" in message and ".ckpt" in message


def tf_folder(folder: Path) -> Path:
    folder.mkdir()
    (folder / "hparams.json").write_text(
        json.dumps({"n_vocab": VOCAB, "n_ctx": 64, "n_embd": 64, "n_head": 4, "n_layer": 2})
    )
    (folder / "checkpoint").write_text('model_checkpoint_path: "model.ckpt"\n')
    return folder


def test_tensorflow_checkpoint_without_tensorflow_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(ImportError, match=r'pip install "llmprep\[tf\]"'):
        load_pretrained(tf_folder(tmp_path / "tf"))


def test_tensorflow_checkpoint_names_map_to_our_model(
    monkeypatch: pytest.MonkeyPatch, hf_model: GPT2LMHeadModel, tokens: torch.Tensor, tmp_path: Path
) -> None:
    """OpenAI's variable names and [1, in, out] conv shapes, served by a stand-in for
    ``tf.train`` (TensorFlow itself is an optional extra)."""
    variables = {}
    for key, value in hf_model.transformer.state_dict().items():
        parts = key.split(".")
        if parts[0] == "h":
            parts[0:2] = [f"h{parts[1]}"]
        suffix = {"weight": "w" if parts[-2].startswith("c_") else "g", "bias": "b"}[parts[-1]]
        name = "model/" + (
            "/".join(parts[:-1]) if parts[0] in ("wte", "wpe") else "/".join([*parts[:-1], suffix])
        )
        variables[name] = value.numpy()[None] if suffix == "w" else value.numpy()
    folder = tf_folder(tmp_path / "tf")
    prefix = str(folder / "model.ckpt")
    train = SimpleNamespace(
        latest_checkpoint=lambda path: prefix if path == str(folder) else None,
        list_variables=lambda p: [(name, list(v.shape)) for name, v in variables.items()],
        load_variable=lambda p, name: variables[name],
    )
    monkeypatch.setitem(sys.modules, "tensorflow", SimpleNamespace(train=train))
    model = load_pretrained(folder)
    torch.testing.assert_close(
        our_logits(model, tokens), hf_logits(hf_model, tokens), atol=1e-5, rtol=0
    )
