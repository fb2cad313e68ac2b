"""argparse flags generated from frozen dataclass configs (a small, dependency-free tyro).

Each config field carries its help text in ``metadata["help"]`` (use :func:`arg`), so the
documentation lives next to the field and every flag has help. Flags not given stay absent from
the namespace (so ``none`` can be given explicitly);
:func:`apply_overrides` replaces only the given fields of a preset, nested dataclasses included
(their fields become flags of their own, without a prefix).

Type mapping: ``bool`` -> ``--flag/--no-flag``; ``Literal`` -> choices; ``X | None`` -> X or the word
``none``; ``tuple[X, ...]`` -> one or more values; ``tuple[X, Y]`` -> exactly two values;
``metadata["parse"]`` -> a custom parser, with ``metadata["append"]`` for repeatable flags;
``metadata["flag"]`` / ``metadata["metavar"]`` rename the flag / its placeholder;
``metadata["positional"]`` makes a (required) positional argument. The defaults shown
in ``--help`` are the dataclass defaults; a preset's values take precedence.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

__all__ = [
    "arg",
    "add_config_arguments",
    "apply_overrides",
    "config_parser",
    "exit_if_printing",
    "parse_config",
    "preset_parser",
    "parse_preset_config",
]

_NESTED = "__"


def arg(default: Any = dataclasses.MISSING, help: str = "", **metadata: Any) -> Any:  # noqa: A002 - argparse's name
    """A dataclass field with CLI help (``default`` may be a tuple; it is immutable)."""
    if not help:
        raise ValueError("every config field needs help text")
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


def _is_optional(hint: Any) -> tuple[bool, Any]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return True, args[0]
    return False, hint


def _noneable(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.lower() == "none" else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _kwargs(hint: Any, metadata: dict[str, Any]) -> dict[str, Any]:
    """argparse keyword arguments for a field's type hint."""
    if "parse" in metadata:
        return {"type": metadata["parse"], "action": "append" if metadata.get("append") else "store"}
    optional, hint = _is_optional(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin is Literal:
        kwargs = {"choices": list(args), "type": type(args[0])}
    elif origin is tuple:
        many = len(args) == 2 and args[1] is Ellipsis
        kwargs = {"type": args[0], "nargs": "+" if many else len(args)}
    else:
        kwargs = {"type": hint}
    if optional:
        kwargs["type"] = _noneable(kwargs["type"])
        kwargs.pop("choices", None)
    return kwargs


def add_config_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    skip: tuple[str, ...] = (),
    prefix: str = "",
    require_missing: bool = False,
) -> None:
    """Adds one flag per field of dataclass ``cls`` (recursing into nested dataclass fields).

    Args:
        parser: Parser or argument group to add to.
        cls: A dataclass whose fields were declared with :func:`arg`.
        skip: Field names to leave out.
        prefix: Internal: destination prefix of nested fields.
        require_missing: Fields without a default become required flags (no preset fills them).
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            group = parser.add_argument_group(f.metadata.get("help", f.name))
            add_config_arguments(group, hint, prefix=f"{prefix}{f.name}{_NESTED}")
            continue
        if "help" not in f.metadata:
            raise ValueError(f"{cls.__name__}.{f.name} has no help text; declare it with arg(..., help=...)")
        missing = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        required = missing and require_missing
        default = f.default if f.default is not dataclasses.MISSING else None
        shown = "required" if missing else _show(default if f.default_factory is dataclasses.MISSING else "preset")
        text = f"{f.metadata['help'].replace('%', '%%')} ({shown if missing else f'default: {shown}'})"
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        kwargs = _kwargs(hint, dict(f.metadata))
        if f.metadata.get("positional"):  # e.g. input files: ``cmd FILE [FILE ...]``
            parser.add_argument(
                prefix + f.name, metavar=f.metadata.get("metavar", f.name.upper()), help=text, **kwargs
            )
            continue
        if required:
            kwargs["required"] = True
        if kwargs.get("action") not in (argparse.BooleanOptionalAction,) and "choices" not in kwargs:
            kwargs["metavar"] = f.metadata.get("metavar", f.name.upper())
        parser.add_argument(flag, dest=prefix + f.name, default=argparse.SUPPRESS, help=text, **kwargs)


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value) or "none"
    return str(value).replace("%", "%%")


def apply_overrides(config: Any, args: argparse.Namespace, prefix: str = "") -> Any:
    """``config`` with every field given on the command line replaced (nested dataclasses too)."""
    changes: dict[str, Any] = {}
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        if dataclasses.is_dataclass(hints[f.name]):
            nested = apply_overrides(getattr(config, f.name), args, prefix=f"{prefix}{f.name}{_NESTED}")
            if nested is not getattr(config, f.name):
                changes[f.name] = nested
            continue
        if hasattr(args, prefix + f.name):  # flags not given are absent (default=SUPPRESS), so None can be given
            value = getattr(args, prefix + f.name)
            changes[f.name] = tuple(value) if isinstance(value, list) else value
    return dataclasses.replace(config, **changes) if changes else config


def config_parser(cls: type, description: str | None) -> argparse.ArgumentParser:
    """A parser with ``description`` shown as written (a module docstring), one flag per field of
    ``cls``, and ``--print-config``."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_arguments(parser, cls, require_missing=True)
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    return parser


def exit_if_printing(config: Any, args: argparse.Namespace) -> Any:
    """With ``--print-config``: prints ``config`` as JSON (its ``to_dict()`` where it has one) and
    exits (status 0); else returns it."""
    if getattr(args, "print_config", False):
        payload = config.to_dict() if hasattr(config, "to_dict") else dataclasses.asdict(config)
        print(json.dumps(payload, indent=2, default=str))
        raise SystemExit(0)
    return config


def preset_parser(
    cls: type, presets: Mapping[str, Any], default: str, description: str | None
) -> argparse.ArgumentParser:
    """:func:`config_parser` with ``--preset`` first: the flags given override the chosen preset."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--preset", choices=sorted(presets), default=default, help=f"base configuration (default: {default})"
    )
    add_config_arguments(parser, cls)
    parser.add_argument("--print-config", action="store_true", help="print the resolved configuration and exit")
    return parser


def parse_preset_config(
    cls: type, presets: Mapping[str, Any], default: str, argv: Sequence[str] | None, description: str | None
) -> Any:
    """The ``--preset`` with the flags of ``argv`` applied; ``--print-config`` prints it and exits."""
    args = preset_parser(cls, presets, default, description).parse_args(argv)
    return exit_if_printing(apply_overrides(presets[args.preset], args), args)


def parse_config(cls: type, argv: Sequence[str] | None, description: str | None) -> Any:
    """``cls(**flags of argv)`` (None = ``sys.argv``; fields without a default are required flags; see
    :func:`config_parser`); ``--print-config`` prints it and exits."""
    args = config_parser(cls, description).parse_args(argv)
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    config = cls(**{name: tuple(v) if isinstance(v, list) else v for name, v in given.items()})
    return exit_if_printing(config, args)
