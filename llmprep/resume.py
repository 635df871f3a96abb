"""Resuming a run from its checkpoint alone: what ``ckpt_path=`` and ``resume=auto`` do to the
command line before Hydra composes it, and what a resumed run may change.

Every checkpoint stores the Hydra command-line overrides of its run (``"overrides"``, secrets
redacted, beside the resolved run config under ``"config"``). ``python train.py
ckpt_path=<last.ckpt>`` re-composes the run those overrides made: :func:`prepare_command` puts
the checkpoint's overrides before the user's (a key the user gives is the user's), so the model,
stage, data and optimizer come from the checkpoint, and the command line only says what changes
(``trainer.max_steps=...``). ``hydra.*``, ``ckpt_path`` and ``resume`` are never carried, nor a
redacted value (a secret is given again). A checkpoint written before llmprep stored overrides
gives ``stage=``, ``model=`` and its architecture values from its stored config.

What the weights fix cannot change on resume (:data:`FIXED_KEYS`: stage, model and its
architecture, LoRA): a different value on the command line is refused by :func:`check_changes`
in the run, with the way out named, instead of a failed load. The values the command line does
change are logged, ``key: checkpoint's → command line's``.

``resume=auto`` resumes the newest ``last.ckpt`` (by time written) among the run folders this
command's ``hydra.run.dir`` makes (``outputs/<stage>/*/*``, or the one folder a fixed
``hydra.run.dir=`` names), from a run of the same command: the same overrides but for
:data:`FREE_KEYS` (the training limits, raised to train on), ``ckpt_path`` and ``resume``. It
says which it picked; with none it starts a fresh run, as litgpt's ``--resume auto`` does. An
explicit ``ckpt_path=`` wins over ``resume=auto``.

A finished run (its step or epoch already at the resumed run's ``trainer.max_steps`` or
``trainer.max_epochs``) is not started again: the command says which limit it reached and how
to go on, and exits with status 0 before Hydra makes a run folder.

``python evaluate.py ckpt_path=...`` without ``stage=`` gets the checkpoint's stage.

Skipped: ``--help`` and the other flags that run nothing, and the extra DDP ranks (Lightning
re-runs them with the composed command, see :func:`llmprep.run.pin_worker_command`). A ``-m``
sweep, ``--cfg`` and ``--info`` get the checkpoint's overrides but no finished check. A
checkpoint that cannot be read is left to the run, which names the problem.
"""

from __future__ import annotations

import glob
import logging
import os
import pickle
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException
from omegaconf import OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from llmprep.errors import CheckpointError, UserError
from llmprep.training.config import REDACTED

OVERRIDES_KEY = "overrides"
"""The checkpoint entry holding its run's command-line overrides."""
RESUME_KEYS = ("ckpt_path", "resume")
"""Keys naming what to resume: never carried from a checkpoint."""
FREE_KEYS = ("trainer.max_steps", "trainer.max_epochs")
"""Keys ``resume=auto`` ignores when matching earlier runs: the limits raised to train on."""
FIXED_KEYS = ("stage", "model", "lora")
"""Keys (with ``lora.*`` and the model's architecture keys) whose value a resumed run must
keep: they shape the stored weights."""
_UNSET = object()
log = logging.getLogger(__name__)
_NOW = re.compile(r"\$\{now:[^}]*\}")


def override_key(override: Override) -> str:
    """The key (or group, with its package) an override sets."""
    key = override.key_or_group
    return key if override.package is None else f"{key}@{override.package}"


def _parse(overrides: Sequence[str]) -> dict[str, Override]:
    return {override_key(o): o for o in OverridesParser.create().parse_overrides(list(overrides))}


def _text(override: Override) -> str:
    """The value an override gives, as typed (``~key`` deletes)."""
    return override.input_line.split("=", 1)[1] if "=" in override.input_line else "(deleted)"


def _carried(key: str) -> bool:
    return key not in RESUME_KEYS and not key.startswith("hydra.")


def read_stored(path: str | Path) -> dict[str, Any] | None:
    """The contents of local checkpoint ``path`` without reading its tensors (memory-mapped,
    ``weights_only``), or None when it is not a readable llmprep checkpoint."""
    import torch

    local = Path(path).expanduser()
    if not local.is_file():
        return None
    try:
        ckpt = torch.load(local, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError):
        return None
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("config"), Mapping):
        return None
    return dict(ckpt)


def stored_overrides(ckpt: Mapping[str, Any]) -> list[str]:
    """The overrides a resume of ``ckpt`` re-composes its run from (see the module docstring)."""
    from llmprep.model.init import ARCH_KEYS

    stored = ckpt.get(OVERRIDES_KEY)
    if stored is None:
        config = ckpt["config"]
        model = config.get("model", {})
        stored = [f"stage={config['stage']['name']}"]
        if "name" in model:
            stored.append(f"model={model['name']}")
        stored += [f"model.{k}={model[k]}" for k in ARCH_KEYS if k in model]
    parsed = _parse([o for o in stored if REDACTED not in o])
    return [o.input_line for key, o in parsed.items() if _carried(key)]


def checkpoint_value(key: str, carried: Mapping[str, Override], config: Mapping[str, Any]) -> Any:
    """What the checkpoint's run had at ``key``: its override's value, else its stored config's
    value (a group's ``name``), else ``_UNSET`` (shown as ``default``: a group without a name,
    a key the run did not have)."""
    if key in carried:
        return carried[key].value()
    value = OmegaConf.select(OmegaConf.create(dict(config)), key.split("@")[0], default=_UNSET)
    if OmegaConf.is_dict(value):
        return value.get("name", _UNSET)
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _fixed(key: str) -> bool:
    from llmprep.model.init import ARCH_KEYS

    return key in FIXED_KEYS or key.startswith("lora.") or key in {f"model.{k}" for k in ARCH_KEYS}


def check_changes(
    ckpt_path: str, ckpt: Mapping[str, Any], overrides: Sequence[str]
) -> list[tuple[str, str, str]]:
    """The values the run's ``overrides`` change from the checkpoint's run, as ``(key, its
    value, the command line's)``; a change of a :data:`FIXED_KEYS` key is refused."""
    carried = _parse(stored_overrides(ckpt))
    changes = []
    for key, override in _parse(overrides).items():
        if not _carried(key) or (key in carried and carried[key].input_line == override.input_line):
            continue
        before = checkpoint_value(key, carried, ckpt["config"])
        if before == override.value():
            continue
        shown = "default" if before is _UNSET else _text(carried[key]) if key in carried else before
        if _fixed(key):
            raise CheckpointError(
                f"{override.input_line} cannot change on resume: ckpt_path={ckpt_path!r} was "
                f"trained with {key}={shown}. Drop {override.input_line} to resume it (the "
                f"checkpoint gives its settings), or start a new run from its weights with "
                f"init_from={ckpt_path}"
            )
        changes.append((key, str(shown), _text(override)))
    return changes


def announce_resume(ckpt_path: str, overrides: Sequence[str]) -> None:
    """Before a resumed run builds anything: refuse a command-line change of a fixed key and log
    the values the command line changes (``key: before → after``). A checkpoint that cannot be
    read is left to :func:`llmprep.run.resume_checkpoint`, which names the problem."""
    from llmprep.checkpoints import local_checkpoint

    ckpt = read_stored(local_checkpoint(ckpt_path, "ckpt_path"))
    if ckpt is None:
        return
    changes = check_changes(ckpt_path, ckpt, overrides)
    said = ", ".join(f"{key}: {before} → {after}" for key, before, after in changes)
    log.info(
        "Resuming %s (step %d, epoch %d) with its run's settings; %s",
        ckpt_path,
        ckpt.get("global_step", 0),
        ckpt.get("epoch", 0),
        f"the command line changes {said}" if said else "the command line changes none of them",
    )


def finished_limit(ckpt: Mapping[str, Any], trainer: Mapping[str, Any]) -> str | None:
    """The limit of the ``trainer`` config ``ckpt``'s run already reached (as Lightning's fit
    loop decides it: the step, or the epochs processed), e.g. ``trainer.max_epochs=2``."""
    max_steps = trainer.get("max_steps", -1)
    if max_steps is not None and max_steps != -1 and ckpt.get("global_step", 0) >= max_steps:
        return f"trainer.max_steps={max_steps}"
    max_epochs = trainer.get("max_epochs")
    if max_epochs is None:
        max_epochs = 1000 if max_steps in (None, -1) else -1
    progress = ckpt.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {})
    epochs = progress.get("current", {}).get("processed", 0)
    if max_epochs != -1 and epochs >= max_epochs:
        return f"trainer.max_epochs={max_epochs}"
    return None


def _compose(config_dir: Path, config_name: str, overrides: list[str], hydra: bool = False):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir)):
        return compose(config_name, overrides=overrides, return_hydra_config=hydra)


def _matching_form(overrides: Sequence[str]) -> dict[str, str]:
    """What two runs must share for ``resume=auto`` to take one for the other."""
    parsed = _parse([o for o in overrides if REDACTED not in o])
    return {k: o.input_line for k, o in parsed.items() if _carried(k) and k not in FREE_KEYS}


def auto_checkpoint(config_dir: Path, config_name: str, overrides: list[str]) -> Path | None:
    """The checkpoint ``resume=auto`` resumes for the command of ``overrides`` (see the module
    docstring), or None."""
    cfg = _compose(config_dir, config_name, overrides, hydra=True)
    template = OmegaConf.to_container(cfg.hydra.run, resolve=False)["dir"]
    with open_dict(cfg):
        cfg.resume_folders = _NOW.sub("*", str(template))
        folders = str(cfg.resume_folders)
    wanted = _matching_form(overrides)
    found = []
    for name in glob.glob(os.path.join(folders, "checkpoints", "last.ckpt")):
        ckpt = read_stored(name)
        if ckpt and OVERRIDES_KEY in ckpt and _matching_form(stored_overrides(ckpt)) == wanted:
            found.append(Path(name))
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def _say(message: str) -> None:
    """A line to the console before Hydra's logging exists (there is no run folder yet)."""
    print(f"[llmprep] {message}", file=sys.stderr, flush=True)


def prepare_command(config_name: str, config_dir: Path) -> None:
    """Rewrite ``sys.argv`` of ``train.py`` (``config_name="train"``) or ``evaluate.py`` as the
    module docstring says, before ``hydra.main`` composes it; exit 0 for a finished run."""
    from hydra._internal.utils import get_args_parser

    if os.environ.get("LOCAL_RANK", "0") != "0":
        return
    args, _ = get_args_parser().parse_known_args(sys.argv[1:])
    runs_nothing = args.help or args.hydra_help or args.shell_completion
    if runs_nothing or args.config_path or args.config_dir or args.config_name:
        return
    try:
        given = _parse(args.overrides)
    except HydraException:
        return  # Hydra names the bad override
    try:
        added = _resume_overrides(config_name, config_dir, args, given)
    except (HydraException, OmegaConfBaseException, UserError, OSError, KeyError, TypeError):
        return  # the run composes the command again and names the problem
    if added:
        at = _block_start(sys.argv, args.overrides)
        sys.argv[at:at] = added


def _block_start(argv: list[str], overrides: list[str]) -> int:
    """Where the overrides start in ``argv`` (argparse takes them as one run of words)."""
    for at in range(1, len(argv)):
        if argv[at : at + len(overrides)] == overrides:
            return at
    return len(argv)


def _resume_overrides(
    config_name: str, config_dir: Path, args: Any, given: dict[str, Override]
) -> list[str]:
    """The overrides to put before the command line's (``ckpt_path=`` from ``resume=auto``
    included); exits for a finished run."""
    sweep = args.multirun or any(o.is_sweep_override() for o in given.values())
    added = []
    if "ckpt_path" not in given and "resume" in given and given["resume"].value() == "auto":
        if sweep:
            return []
        picked = auto_checkpoint(config_dir, config_name, list(args.overrides))
        if picked is None:
            _say("resume=auto: no earlier run of this command has a last.ckpt; starting fresh")
            return []
        _say(f"resume=auto: resuming the newest last.ckpt of this command, {picked}")
        added.append(f"ckpt_path={picked}")
        given = {**given, "ckpt_path": _parse(added)["ckpt_path"]}
    ckpt_path = given.get("ckpt_path")
    if ckpt_path is None or ckpt_path.is_sweep_override() or not ckpt_path.value():
        return added
    from llmprep.checkpoints import local_checkpoint

    ckpt = read_stored(local_checkpoint(str(ckpt_path.value()), "ckpt_path"))
    if ckpt is None:
        return added
    if config_name != "train":
        stage = ckpt["config"]["stage"].get("name")
        return added if "stage" in given or not stage else [*added, f"stage={stage}"]
    stored = _parse(stored_overrides(ckpt))
    carried = [o.input_line for key, o in stored.items() if key not in given]
    if not (sweep or args.cfg or args.info or _refused(ckpt, given)):
        composed = [*carried, *added, *(o.input_line for k, o in given.items() if _carried(k))]
        trainer = _compose(config_dir, config_name, composed).trainer
        limit = finished_limit(ckpt, OmegaConf.to_container(trainer, resolve=True))
        if limit is not None:
            _finished(str(ckpt_path.value()), ckpt, limit)
    return [*carried, *added]


def _refused(ckpt: Mapping[str, Any], given: Mapping[str, Override]) -> bool:
    """True when the run will refuse the command (:func:`check_changes`): it says why, even
    for a finished run."""
    try:
        check_changes("", ckpt, [o.input_line for o in given.values()])
    except CheckpointError:
        return True
    return False


def _finished(ckpt_path: str, ckpt: Mapping[str, Any], limit: str) -> None:
    key, value = limit.split("=")
    _say(
        f"ckpt_path={ckpt_path} is a finished run: it reached {limit} (step "
        f"{ckpt.get('global_step', 0)}, epoch {ckpt.get('epoch', 0)}); nothing to train. To "
        f"train on, raise the limit, e.g. python train.py ckpt_path={ckpt_path} "
        f"{key}={int(value) * 2}"
    )
    sys.exit(0)
