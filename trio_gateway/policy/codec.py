"""The one codec of the gateway's files (SPEC 3, 6, 7, 12): attrs classes <-> decoded JSON.

`gateway.json`, a scenario's tables, delivery entries, session files and their PostgreSQL rows
are all structured and unstructured here, so they follow one set of rules: camelCase keys (a
class setting `__snake_keys__ = True` keeps its attribute names, as SPEC 3 spells the work kinds
under `recovery`), no unknown key, no coercion between types (`"5"` is not a number, `4.9` is
not a port), finite numbers, valid Unicode, times in ISO 8601 with an offset.

Pure: decoded JSON values in and out. Bytes stay with the callers: input from people goes
through `strict_json` first, the gateway's own files through `json` and an atomic write.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal, TypeVar, get_args

import attrs
import cattrs
from cattrs.cols import list_structure_factory
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.preconf.json import make_converter

from trio_gateway.errors import ConfigError

T = TypeVar("T")


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def key_name(cls: type, attribute: str) -> str:
    """How an attribute of `cls` is spelled in the file."""
    return attribute if getattr(cls, "__snake_keys__", False) else camel(attribute)


# --- strict hooks: a wrong type is an error, never a silent conversion ------------------------


def _strict_bool(value: object, _: type) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"expected true or false, got {json.dumps(value)}")
    return value


def _strict_int(value: object, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected a whole number, got {json.dumps(value)}")
    return value


def _strict_float(value: object, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {json.dumps(value)}")
    try:
        number = float(value)  # an int of 400 digits overflows here, not in a later sleep
    except OverflowError:
        raise ValueError("expected a finite number") from None
    if not math.isfinite(number):
        raise ValueError("expected a finite number")
    return number


def _strict_str(value: object, _: type) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {json.dumps(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate reads fine and then breaks every write of it (logs, sessions).
        raise ValueError(f"not valid Unicode: {value!a}") from None
    return value


def _strict_datetime(value: object, _: type) -> dt.datetime:
    # Every time the gateway stores is UTC with an offset; a naive one cannot be compared
    # with them (TypeError at the first comparison), so it is refused where it is read.
    if not isinstance(value, str):
        raise TypeError(f"expected an ISO 8601 time, got {json.dumps(value)}")
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"expected a time with a timezone offset, got {json.dumps(value)}")
    return parsed


def _strict_literal(value: object, tp: Any) -> object:
    allowed = get_args(tp)
    if value not in allowed or isinstance(value, bool):
        raise ValueError(f"expected one of {', '.join(json.dumps(a) for a in allowed)}, got {json.dumps(value)}")
    return value


def _is_list(tp: Any) -> bool:
    """`list[X]`, as a field is typed."""
    origin: object = typing.get_origin(tp)
    return origin is list


def _make_converter() -> cattrs.Converter:
    conv = make_converter(forbid_extra_keys=True, prefer_attrib_converters=False)
    conv.register_structure_hook(bool, _strict_bool)
    conv.register_structure_hook(int, _strict_int)
    conv.register_structure_hook(float, _strict_float)
    conv.register_structure_hook(str, _strict_str)
    conv.register_structure_hook(dt.datetime, _strict_datetime)
    conv.register_structure_hook_func(lambda t: getattr(t, "__origin__", None) is Literal, _strict_literal)

    def renames(cls: type) -> dict[str, Any]:
        # A field added after files were written may say `omit_if_default` in its metadata:
        # unset, it is not written, so a file from before it reads and writes back the same.
        return {
            a.name: override(rename=key_name(cls, a.name), omit_if_default=a.metadata.get("omit_if_default"))
            for a in attrs.fields(cls)
        }

    def structure_factory(cls: type) -> Any:
        return make_dict_structure_fn(cls, conv, _cattrs_forbid_extra_keys=True, **renames(cls))

    def unstructure_factory(cls: type) -> Any:
        write: Callable[[Any], Any] = make_dict_unstructure_fn(cls, conv, **renames(cls))

        def unstructure(obj: Any) -> Any:
            # A field typed as a base class may hold a subclass (an account of one channel
            # kind, with its own keys): written as what it is, so no key is lost.
            return write(obj) if type(obj) is cls else conv.unstructure(obj, unstructure_as=type(obj))

        return unstructure

    def list_factory(tp: Any) -> Any:
        items = list_structure_factory(tp, conv)

        def structure(value: object, _: type) -> Any:
            # A string is iterable: `"allowFrom": "123"` would otherwise become ["1", "2", "3"].
            if not isinstance(value, list):
                raise TypeError(f"expected a list, got {json.dumps(value)}")
            return items(value, tp)

        return structure

    conv.register_structure_hook_factory(_is_list, list_factory)
    conv.register_structure_hook_factory(attrs.has, structure_factory)
    conv.register_unstructure_hook_factory(attrs.has, unstructure_factory)
    return conv


# One converter for every file: its hooks are built per class on first use and only ever read
# after, so sharing it across threads (session files load in worker threads) is safe.
_CONVERTER = _make_converter()


def structure(data: object, cls: type[T]) -> T:
    """A file the gateway wrote, read back. Raises `cattrs` errors, `TypeError`, `ValueError`
    or `KeyError` on anything malformed: the caller quarantines such a file, never crashes."""
    return _CONVERTER.structure(data, cls)


def unstructure(obj: object) -> Any:
    return _CONVERTER.unstructure(obj)


# --- input from people: the first bad key, named as the file spells it --------------------------


def structure_input(raw: object, cls: type[T]) -> T:
    """Structure `raw` into `cls` or raise `ConfigError` naming the first bad key."""
    if not isinstance(raw, Mapping):
        raise ConfigError("(top level)", f"expected a JSON object, got {type(raw).__name__}")
    try:
        return _CONVERTER.structure(raw, cls)
    except (cattrs.BaseValidationError, TypeError, ValueError, KeyError) as exc:
        raise ConfigError(*_first_error(exc, cls)) from None


def _describe(exc: BaseException, _type: type | None) -> str:
    if isinstance(exc, KeyError):
        return "required key missing"
    if isinstance(exc, cattrs.ForbiddenExtraKeysError):
        return f"unknown key(s): {', '.join(sorted(exc.extra_fields))}"
    if isinstance(exc, (TypeError, ValueError)) and exc.args:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


def _first_error(exc: BaseException, cls: type) -> tuple[str, str]:
    """(`key.path`, `what`) of the first problem cattrs found, in the file's own spelling."""
    lines = cattrs.transform_error(exc, path="$", format_exception=_describe)
    if not lines:
        return "(top level)", str(exc)
    what, _, where = lines[0].rpartition(" @ ")
    return _spell_path(where, cls), what


def _spell_path(where: str, cls: type) -> str:
    """`$.gateway.stalled_task_detection['x']` -> `gateway.stalledTaskDetection.x`: attribute
    names as the file spells them (following the types down from `cls`), dict keys as written,
    list indexes as `[i]`."""
    parts = re.findall(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[['\"]([^'\"]*)['\"]\]|\[(\d+)\]", where)
    out = ""
    tp: Any = cls
    for attr, key, index in parts:
        if attr:
            holder = _unoptional(tp)
            out += f".{key_name(holder, attr) if isinstance(holder, type) else camel(attr)}"
            tp = _attribute_type(holder, attr)
        else:
            out += f"[{index}]" if index else f".{key}"
            args = get_args(_unoptional(tp))
            tp = args[-1] if args else None  # a list's items, a dict's values
    return out.lstrip(".") or "(top level)"


def _unoptional(tp: Any) -> Any:
    """`X | None` -> `X`; anything else unchanged."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        rest = [a for a in get_args(tp) if a is not type(None)]
        return rest[0] if len(rest) == 1 else tp
    return tp


def _attribute_type(holder: Any, attr: str) -> Any:
    if not attrs.has(holder):
        return None
    try:
        return typing.get_type_hints(holder).get(attr)
    except Exception:  # an annotation that does not resolve: spell the rest in camelCase
        return None
