"""GPT-2 weights in and out of our ``GPT``.

In: OpenAI's GPT-2 from the Hugging Face hub, a local folder in the Hugging Face layout
(``config.json`` + ``model.safetensors``), or the original TensorFlow checkpoint folder the
book's ``gpt_download.py`` fetches. Out: the Hugging Face layout, loadable by
``transformers.GPT2LMHeadModel.from_pretrained``.

Only safetensors and TensorFlow checkpoints are read. Pickled PyTorch files (``.bin``) can run
arbitrary code when opened, so they are refused rather than unpickled.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from llmprep.errors import UserError
from llmprep.files import atomic_paths, json_text
from llmprep.hf_tokenizer import GPT2_EOT_ID, tokenizer_files
from llmprep.model.config import GPTConfig
from llmprep.model.gpt import GPT, LAYER_NORM_EPS, has_classifier_head

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TF_HPARAMS_FILE = "hparams.json"
TF_INDEX_FILE = "checkpoint"

HUB_ALIASES = {"gpt2-small": "openai-community/gpt2"} | {
    name: f"openai-community/{name}" for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
}
"""Bare model names accepted in place of their hub ids."""

_HF_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
"""Causal-mask buffers older ``transformers`` versions saved with the weights; not parameters."""

_HF_MODULES = {
    "tok_emb": "wte",
    "pos_emb": "wpe",
    "blocks": "h",
    "norm1": "ln_1",
    "norm2": "ln_2",
    "query": "c_attn",
    "key": "c_attn",
    "value": "c_attn",
    "out_proj": "c_proj",
    "ff": "mlp",
    "fc": "c_fc",
    "proj": "c_proj",
    "final_norm": "ln_f",
    "out_head": "lm_head",
}
"""Our module names -> Hugging Face GPT-2's; its fused ``c_attn`` holds query, key and value."""


_HF_FIELDS = {
    "n_embd": "emb_dim",
    "n_layer": "n_layers",
    "n_head": "n_heads",
    "n_positions": "context_length",
    "vocab_size": "vocab_size",
}
"""The shape fields of a Hugging Face GPT-2 ``config.json`` -> our ``GPTConfig`` fields."""


def _layout(model: GPT) -> dict[str, list[str]]:
    """``model``'s parameters grouped by the Hugging Face tensor (name without ``transformer.``)
    that holds them, stacked along the first dimension in this order. A tied head is not a
    parameter of its own, so it has no ``lm_head.weight``."""
    layout: dict[str, list[str]] = {}
    for name, _ in model.named_parameters():
        hf = ".".join(_HF_MODULES.get(part, part) for part in name.split("."))
        layout.setdefault(hf, []).append(name)
    return layout


def _transposed(hf: str) -> bool:
    """Whether ``hf`` is a ``Conv1D`` weight, stored [in, out] where ``nn.Linear`` stores
    [out, in]."""
    return ".c_" in hf and hf.endswith(".weight")


def _config_from_hf(
    values: Mapping[str, Any], source: Path, overrides: Mapping[str, Any]
) -> GPTConfig:
    """Our config for a GPT-2 described by a Hugging Face ``config.json`` (``source``).

    Always ``qkv_bias=True`` (GPT-2 has them); the head is tied unless ``tie_word_embeddings``
    is false. GPT-2's dropout rates are ignored: dropout is a training choice, 0.0 unless
    overridden. ``context_length`` may be overridden downwards (the position table is cropped).
    """
    for field in _HF_FIELDS:
        if field not in values:
            raise ValueError(f"{source}: missing field {field!r}")
    supported = {
        "model_type": values.get("model_type", "gpt2") == "gpt2",
        "activation_function": values.get("activation_function", "gelu_new")
        in ("gelu_new", "gelu_pytorch_tanh"),
        "layer_norm_epsilon": math.isclose(
            values.get("layer_norm_epsilon", LAYER_NORM_EPS), LAYER_NORM_EPS
        ),
        "n_inner": values.get("n_inner") in (None, 4 * values["n_embd"]),
        "scale_attn_weights": values.get("scale_attn_weights", True) is True,
        "scale_attn_by_inverse_layer_idx": not values.get("scale_attn_by_inverse_layer_idx", False),
    }
    for field, ok in supported.items():
        if not ok:
            raise ValueError(
                f"{source}: {field}={values[field]!r} is not supported by llmprep's GPT"
            )
    n_positions = values["n_positions"]
    context_length = overrides.get("context_length", n_positions)
    if isinstance(context_length, int) and context_length > n_positions:
        raise ValueError(
            f"context_length={context_length} exceeds the {n_positions} positions the checkpoint "
            f"{source.parent} was trained with"
        )
    base = {ours: values[hf] for hf, ours in _HF_FIELDS.items()}
    base |= {"qkv_bias": True, "tie_weights": bool(values.get("tie_word_embeddings", True))}
    try:
        return GPTConfig.from_dict({**base, **overrides})
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; invalid JSON or another type is an error naming the file."""
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: invalid JSON at line {err.lineno}: {err.msg}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(values).__name__}")
    return values


def _load(
    config: GPTConfig,
    shapes: Mapping[str, tuple[int, ...]],
    read: Callable[[str], torch.Tensor],
    origin: str,
    checkpoint_tied: bool,
) -> GPT:
    """A ``GPT`` with ``config`` holding the checkpoint tensors (Hugging Face names without
    ``transformer.``, their ``shapes``, fetched with ``read``); every mismatch is reported before
    any tensor is read."""
    with torch.device("meta"):
        model = GPT(config)  # no random init: the checkpoint replaces every parameter
    model = model.to_empty(device="cpu")
    if config.tie_weights:
        model.out_head.weight = model.tok_emb.weight  # to_empty gives each its own storage
    layout = _layout(model)
    names = {name for name in shapes if not _HF_BUFFER.fullmatch(name)}
    head_from_wte = "lm_head.weight" in layout and checkpoint_tied and "lm_head.weight" not in names
    if head_from_wte:
        del layout["lm_head.weight"]
    if config.tie_weights and "lm_head.weight" in names:
        if not torch.equal(read("lm_head.weight"), read("wte.weight")):
            raise ValueError(
                f"{origin}: lm_head.weight differs from wte.weight, but the model ties them; "
                "load with tie_weights=False"
            )
        names.discard("lm_head.weight")
    if missing := sorted(layout.keys() - names):
        raise ValueError(f"{origin}: missing tensor(s) {', '.join(missing[:8])} for {config}")
    if unexpected := sorted(names - layout.keys()):
        raise ValueError(f"{origin}: unexpected tensor(s) {', '.join(unexpected[:8])} for {config}")
    params = dict(model.named_parameters())
    for hf, ours in layout.items():
        want = torch.cat([params[name].to("meta") for name in ours]).shape
        want, have = tuple(want[::-1] if _transposed(hf) else want), tuple(shapes[hf])
        cropped_positions = hf == "wpe.weight" and have[0] >= want[0] and have[1:] == want[1:]
        if have != want and not cropped_positions:
            raise ValueError(
                f"{origin}: tensor {hf!r} has shape {list(have)} in the checkpoint but "
                f"the model expects {list(want)}"
            )
    with torch.no_grad():
        for hf, ours in layout.items():
            tensor = read(hf)[: config.context_length] if hf == "wpe.weight" else read(hf)
            parts = (tensor.T if _transposed(hf) else tensor).split(
                [params[name].shape[0] for name in ours]
            )
            for name, part in zip(ours, parts, strict=True):
                params[name].copy_(part)
        if head_from_wte:
            model.out_head.weight.copy_(model.tok_emb.weight)
    return model


def _load_safetensors_folder(folder: Path, overrides: Mapping[str, Any]) -> GPT:
    weights = folder / WEIGHTS_FILE
    for path in (folder / CONFIG_FILE, weights):
        if not path.is_file():
            pickled = [p.name for p in folder.glob("*.bin")]
            hint = f" ({', '.join(pickled)} is pickled and never loaded)" if pickled else ""
            raise FileNotFoundError(
                f"{folder}: no {path.name}{hint}; expected {CONFIG_FILE} + {WEIGHTS_FILE}"
            )
    values = read_json(folder / CONFIG_FILE)
    config = _config_from_hf(values, folder / CONFIG_FILE, overrides)
    try:
        with safe_open(weights, framework="pt") as f:
            keys = f.keys()  # a safe_open handle is not iterable
            stored = {key.removeprefix("transformer."): key for key in keys}
            shapes = {name: tuple(f.get_slice(key).get_shape()) for name, key in stored.items()}
            return _load(
                config,
                shapes,
                lambda name: f.get_tensor(stored[name]),
                str(weights),
                checkpoint_tied=bool(values.get("tie_word_embeddings", True)),
            )
    except SafetensorError as err:
        raise ValueError(f"{weights}: not a readable safetensors file: {err}") from None


def _tf_name_to_hf(name: str) -> str:
    """``model/h3/attn/c_attn/w`` -> ``h.3.attn.c_attn.weight``; ``model/wte`` -> ``wte.weight``.
    Names outside ``model/`` are kept, so they are reported as unexpected."""
    if not name.startswith("model/"):
        return name
    name = re.sub(r"^h(\d+)/", r"h/\1/", name.removeprefix("model/"))
    name = re.sub(r"/[gw]$", "/weight", re.sub(r"/b$", "/bias", name))
    return (name if name.endswith(("/weight", "/bias")) else name + "/weight").replace("/", ".")


def _load_tf_folder(folder: Path, overrides: Mapping[str, Any]) -> GPT:
    """OpenAI's original checkpoint: ``hparams.json`` plus TensorFlow ``model.ckpt.*`` files,
    read one variable at a time with ``tf.train.load_variable``."""
    try:
        import tensorflow as tf
    except ImportError:
        raise ImportError(
            f"{folder} is an OpenAI TensorFlow checkpoint; reading it needs TensorFlow: "
            'pip install "llmprep[tf]"'
        ) from None
    hparams = read_json(folder / TF_HPARAMS_FILE)
    renamed = {"n_vocab": "vocab_size", "n_ctx": "n_positions"}
    values = {renamed.get(key, key): value for key, value in hparams.items()}
    config = _config_from_hf(values, folder / TF_HPARAMS_FILE, overrides)
    prefix = tf.train.latest_checkpoint(str(folder))
    if prefix is None:
        raise FileNotFoundError(f"{folder / TF_INDEX_FILE}: names no model.ckpt files that exist")
    stored: dict[str, str] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for tf_name, shape in tf.train.list_variables(prefix):
        name = _tf_name_to_hf(tf_name)
        stored[name] = tf_name
        shapes[name] = (
            tuple(shape[1:]) if tf_name.endswith("/w") and shape[0] == 1 else tuple(shape)
        )

    def read(name: str) -> torch.Tensor:
        array = tf.train.load_variable(prefix, stored[name])
        return torch.from_numpy(array.reshape(shapes[name]))

    return _load(config, shapes, read, prefix, checkpoint_tied=True)


class HubError(UserError, ConnectionError):
    """Pretrained weights named by a hub id are neither cached nor reachable."""


def _download(repo_id: str, setting: str) -> Path:
    """The local folder holding ``repo_id``'s config and safetensors weights (hub cache);
    ``setting`` is the key the id came from, named in the errors."""
    from huggingface_hub import errors, hf_hub_download

    try:
        hf_hub_download(repo_id, CONFIG_FILE)
        return Path(hf_hub_download(repo_id, WEIGHTS_FILE)).parent
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, ConnectionError):
        offline = os.environ.get("HF_HUB_OFFLINE", "0")
        raise HubError(
            f"{setting}={repo_id!r}: could not reach the Hugging Face hub (HF_HUB_OFFLINE="
            f"{offline}) and it is not in the local hub cache. "
            f"Point {setting} at a local folder holding "
            f"{WEIGHTS_FILE} and {CONFIG_FILE}, or at one of our checkpoints (.ckpt), instead."
        ) from None
    except (errors.RepositoryNotFoundError, errors.HFValidationError):
        raise ValueError(f"{repo_id!r} is neither a local folder nor a model on the hub") from None
    except errors.EntryNotFoundError:
        raise FileNotFoundError(
            f"hub model {repo_id!r} has no {CONFIG_FILE} or {WEIGHTS_FILE}; only safetensors "
            "weights are loaded"
        ) from None


def pretrained_folder(name_or_path: str | Path, setting: str = "init_from") -> Path:
    """The local folder of the pretrained weights ``name_or_path`` names: a folder, or a hub
    id (or a bare name from ``HUB_ALIASES``) downloaded into the hub cache. Anything that looks
    like a path (starts with ``/``, ``.`` or ``~``) is never sent to the hub. ``setting`` is
    the key the name came from, named in the errors."""
    text = str(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(
            f"{path} is a file; load_pretrained reads a folder ({CONFIG_FILE} + {WEIGHTS_FILE}); "
            "for one of our checkpoints (.ckpt) point init_from at it instead"
        )
    if text.startswith(("/", ".", "~")):
        raise FileNotFoundError(f"{setting}={text!r}: no such folder ({path})")
    return _download(HUB_ALIASES.get(text, text), setting)


def weights_file(init_from: str | Path) -> Path:
    """The file holding the weights ``init_from`` names: one of our ``.ckpt`` files, a folder's
    ``model.safetensors`` (or its OpenAI TensorFlow ``model.ckpt.data-*``), or a hub model's
    downloaded ``model.safetensors``."""
    path = Path(str(init_from)).expanduser()
    if path.is_file():
        return path.resolve()
    folder = pretrained_folder(init_from)
    candidates = [folder / WEIGHTS_FILE] if (folder / WEIGHTS_FILE).is_file() else []
    candidates = candidates or sorted(folder.glob("model.ckpt.data-*"))
    if len(candidates) != 1:
        raise FileNotFoundError(
            f"init_from={str(init_from)!r}: no single weights file ({WEIGHTS_FILE} or "
            "model.ckpt.data-*)"
        )
    return candidates[0].resolve()


def load_pretrained(name_or_path: str | Path, **overrides: Any) -> GPT:
    """A ``GPT`` holding GPT-2 weights, in eval mode.

    ``name_or_path`` is anything :func:`pretrained_folder` takes: a local folder (Hugging Face
    layout, or OpenAI's TensorFlow checkpoint recognised by ``hparams.json`` + ``checkpoint``)
    or a hub id such as ``openai-community/gpt2-medium``. ``overrides`` are ``GPTConfig``
    fields, e.g. ``dropout=0.1`` or a smaller ``context_length``.
    """
    folder = pretrained_folder(name_or_path)
    if (folder / TF_HPARAMS_FILE).is_file() and (folder / TF_INDEX_FILE).is_file():
        return _load_tf_folder(folder, overrides).eval()
    return _load_safetensors_folder(folder, overrides).eval()


def save_folder(
    out_dir: str | Path,
    tensors: Mapping[str, torch.Tensor],
    config: Any,
    texts: Mapping[str, str] | None = None,
) -> Path:
    """``tensors`` as ``model.safetensors``, ``config`` as ``config.json`` and each of ``texts``
    (file name -> text) as a UTF-8 file in ``out_dir``; returns ``out_dir``.

    Every file is written under a temporary name first and all are renamed into place only once
    each has been written (``atomic_paths``): an interrupted export never leaves a half-written
    file, nor new weights beside an old tokenizer. Other files in ``out_dir`` are kept."""
    out = Path(out_dir)
    files = {CONFIG_FILE: json_text(config), **(texts or {})}
    with atomic_paths([out / WEIGHTS_FILE, *(out / name for name in files)]) as (weights, *temps):
        save_file(dict(tensors), str(weights), metadata={"format": "pt"})
        for temp, text in zip(temps, files.values(), strict=True):
            temp.write_text(text, encoding="utf-8")
    return out


def hf_config(config: GPTConfig, tied: bool) -> dict[str, Any]:
    """``config.json`` of a ``transformers`` GPT-2 equivalent to a model with ``config``, as
    ``transformers`` writes it itself."""
    from transformers import GPT2Config

    eot = GPT2_EOT_ID if config.vocab_size > GPT2_EOT_ID else None
    return GPT2Config(
        architectures=["GPT2LMHeadModel"],
        **{hf: getattr(config, ours) for hf, ours in _HF_FIELDS.items()},
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        bos_token_id=eot,
        eos_token_id=eot,
        tie_word_embeddings=tied,
    ).to_dict()


def export_hf(model: GPT, out_dir: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` to ``out_dir`` as a ``transformers`` GPT-2 (``config.json`` +
    ``model.safetensors``, see :func:`save_folder`); returns ``out_dir``. ``extra`` plain values
    go into ``config.json`` too (``transformers`` keeps unknown keys as config attributes).

    A model whose vocabulary holds GPT-2's 50,257 tokens also gets GPT-2's tokenizer files and a
    ``generation_config.json`` stopping at ``<|endoftext|>`` (``llmprep.hf_tokenizer``), so
    ``pipeline("text-generation", model=out_dir)`` works offline. A smaller vocabulary (a toy
    model) gets neither: GPT-2's tokenizer would make ids it has no embedding for.

    A model without query/key/value biases gets zero ones (GPT-2 always has them). An untied head
    is written as ``lm_head.weight`` with ``tie_word_embeddings: false``.
    """
    if not isinstance(model, GPT):
        raise TypeError(f"export_hf expects a GPT, got {type(model).__name__}")
    config = model.config
    head = model.out_head
    if has_classifier_head(model) or head.bias is not None:
        raise ValueError(
            f"export_hf writes a language model, but out_head is {head} rather than "
            f"Linear({config.emb_dim}, {config.vocab_size}, bias=False) (a classifier head?)"
        )
    tied = head.weight is model.tok_emb.weight
    params = dict(model.named_parameters())
    tensors = {}
    for hf, ours in _layout(model).items():
        stacked = torch.cat([params[name].detach().cpu() for name in ours])
        key = hf if hf == "lm_head.weight" else f"transformer.{hf}"
        tensors[key] = (stacked.T if _transposed(hf) else stacked).contiguous()
    if not config.qkv_bias:  # GPT-2 always has query/key/value biases: zero ones
        for i in range(config.n_layers):
            zeros = torch.zeros(3 * config.emb_dim, dtype=model.tok_emb.weight.dtype)
            tensors[f"transformer.h.{i}.attn.c_attn.bias"] = zeros
    texts = tokenizer_files(config.context_length) if config.vocab_size > GPT2_EOT_ID else {}
    return save_folder(out_dir, tensors, {**hf_config(config, tied), **(extra or {})}, texts)
