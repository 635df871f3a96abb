"""Settings of the commands that use a model (``export``, ``generate``, ``chat``, ``serve``):
``key=value`` words on the command line, as ``train.py`` takes its overrides, read into a
dataclass.

These commands run no training, so they get no Hydra run folder: a dataclass is their schema,
and OmegaConf reads the words into it, which types each value (``temperature=0.7`` is a float,
``stop=[a,b]`` a list) and refuses an unknown key or a value of the wrong type with a message
naming the key. A text setting (a ``str`` field) takes its value verbatim, so a prompt such as
``prompt="Translate: yes"`` stays that text instead of becoming YAML (``null`` still means
none for a field that may be None). ``--help`` lists the keys, their defaults and what each
means (a field's ``metadata["help"]``).
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from llmprep.errors import is_user_error, one_line, quiet_libraries

T = TypeVar("T")


def setting(default: Any = MISSING, help: str = "") -> Any:
    """A dataclass field of a command's settings: its default (none: required) and help."""
    if isinstance(default, list | dict):
        return dataclasses.field(
            default_factory=lambda: type(default)(default), metadata={"help": help}
        )
    return dataclasses.field(default=default, metadata={"help": help})


class UsageError(ValueError):
    """A command line the command cannot run; the message says what to type instead."""


def usage(schema: type, prog: str, description: str, examples: Sequence[str] = ()) -> str:
    """The ``--help`` text of a command whose settings are ``schema``."""
    lines = [f"usage: {prog} key=value ...", "", description, "", "settings:"]
    for field in dataclasses.fields(schema):
        default = field.default
        if field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        shown = "required" if default is MISSING else f"default {default!r}"
        lines.append(f"  {field.name:<16} {field.metadata.get('help', '')} ({shown})")
    if examples:
        lines += ["", "examples:", *(f"  {example}" for example in examples)]
    return "\n".join(lines)


def parse_settings(schema: type[T], argv: Sequence[str]) -> T:
    """``argv``'s ``key=value`` words as an instance of the dataclass ``schema``; a bad word, an
    unknown key, a wrong type or a missing required key is a :class:`UsageError` naming it."""
    words = list(argv)
    if bad := [word for word in words if "=" not in word or word.startswith("=")]:
        raise UsageError(f"{bad[0]!r}: expected key=value")
    hints = typing.get_type_hints(schema)
    names = [field.name for field in dataclasses.fields(schema)]
    if unknown := [w.partition("=")[0] for w in words if w.partition("=")[0] not in names]:
        raise UsageError(f"unknown key {unknown[0]!r}; the keys are {', '.join(names)}")
    texts, typed = {}, []
    for word in words:
        key, _, value = word.partition("=")
        nullable = hints.get(key) == str | None
        if (hints.get(key) is str or nullable) and not (nullable and value == "null"):
            texts[key] = value
        else:
            typed.append(word)
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.from_dotlist(typed))
        if missing := sorted(OmegaConf.missing_keys(merged) - set(texts)):
            raise UsageError(f"missing {' and '.join(f'{key}=...' for key in missing)}")
        for key in texts:
            merged[key] = ""  # a placeholder: the text itself is never parsed
        return dataclasses.replace(OmegaConf.to_object(merged), **texts)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or ""
        message = str(err).splitlines()[0]
        raise UsageError(f"{key}: {message}" if key else message) from None


def command_settings(
    schema: type[T],
    argv: Sequence[str] | None,
    prog: str,
    description: str,
    examples: Sequence[str] = (),
) -> T:
    """The settings of a command from its command line (``sys.argv[1:]`` when ``argv`` is None):
    ``--help`` prints :func:`usage` and exits 0; a :class:`UsageError` prints the usage line and
    the error and exits 2, as argparse does."""
    words = list(sys.argv[1:] if argv is None else argv)
    if {"-h", "--help"} & set(words):
        print(usage(schema, prog, description, examples))
        raise SystemExit(0)
    try:
        return parse_settings(schema, words)
    except UsageError as err:
        print(f"usage: {prog} key=value ... (--help lists the keys)", file=sys.stderr)
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def run_command(command: Callable[[], int | None]) -> int:
    """Run a command's work and return its exit status: 0, or what ``command`` returns; a user
    error or an unreadable file prints ``error: <one line>`` to stderr and gives 1, Ctrl-C
    outside the command's own handling gives 130, never a traceback."""
    quiet_libraries()
    try:
        return command() or 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if not (is_user_error(err) or isinstance(err, OSError)):
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 1


def command_main(
    schema: type[T],
    work: Callable[[T], int | None],
    prog: str,
    description: str,
    examples: Sequence[str] = (),
) -> Callable[..., int]:
    """The ``main(argv=None) -> int`` of the command ``prog``: its settings read into ``schema``
    by :func:`command_settings`, then ``work(settings)`` under :func:`run_command`."""

    def main(argv: Sequence[str] | None = None) -> int:
        settings = command_settings(schema, argv, prog, description, examples)
        return run_command(lambda: work(settings))

    main.__doc__ = f"The ``{prog}`` command."
    return main
