"""The method registry: every pruning method registers itself here, once, with its options.

A method is one function ``run(ctx: SearchContext) -> MethodResult`` decorated with
:func:`register_method`::

    @dataclass
    class MyOptions:
        steps: int = option(10, "how many refinement steps", minimum=1)

    @register_method("my-method", options=MyOptions, summary="one line for --help")
    def run(ctx):
        ...  # ctx.options is a validated MyOptions instance

``api.prune``, the command line (``--method`` choices, ``--option`` help, ``gcnprune methods``)
and the benchmarks read the registry; nothing outside a method's own module names it.

Options are dataclasses whose fields are made with :func:`option` (default, help text, and
optional ``minimum`` / ``choices``). :meth:`MethodSpec.parse_options` checks names, types and
ranges before any heavy work and converts command-line strings to the field's type.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

__all__ = ["option", "register_method", "unregister_method", "get_method", "method_names",
           "default_method", "demo_methods", "MethodSpec", "NoOptions", "BUDGET_KINDS"]

BUDGET_KINDS = ("flops", "params", "latency")

_REGISTRY: Dict[str, "MethodSpec"] = {}


def option(default: Any, help: str, *, minimum: Optional[float] = None,
           choices: Optional[Sequence[Any]] = None) -> Any:
    """A method option: a dataclass field with its default, help text and optional checks
    (``minimum`` for numbers, ``choices`` for a closed set of values)."""
    meta = {"help": help, "minimum": minimum, "choices": None if choices is None else tuple(choices)}
    return field(default=default, metadata=meta)


@dataclass
class NoOptions:
    """Options of a method that has none."""


def _base_type(annotation) -> Tuple[type, bool]:
    """(python type, optional?) of an option annotation such as ``int`` or ``Optional[str]``."""
    optional = False
    origin = typing.get_origin(annotation)
    if origin is typing.Union or str(origin) == "types.UnionType":
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        annotation = args[0] if len(args) == 1 else object
    return (annotation if isinstance(annotation, type) else object), optional


def _convert_text(name: str, text: str, kind: type, optional: bool):
    """A command-line string to the option's type."""
    if optional and text.lower() in ("none", "null"):
        return None
    if kind is bool:
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"option {name} expects true or false, got {text!r}")
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"option {name} expects {'an integer' if kind is int else 'a number'}, "
                             f"got {text!r}") from None
    return text


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its name, entry point, options type and what it supports.

    supports_resume: the method can continue from ``checkpoint_dir`` after an interruption.
    needs_data: the method reads the loader (False: weights only, e.g. filter norms).
    budget_kinds: which budgets it accepts (``BUDGET_KINDS``).
    """

    name: str
    run: Callable[..., Any]
    options: type
    summary: str
    supports_resume: bool = False
    needs_data: bool = True
    budget_kinds: Tuple[str, ...] = BUDGET_KINDS
    is_default: bool = False
    in_demo: bool = False

    def option_fields(self) -> Tuple[dataclasses.Field, ...]:
        return dataclasses.fields(self.options)

    def has_option(self, name: str) -> bool:
        return any(f.name == name for f in self.option_fields())

    def parse_options(self, values: Optional[Mapping[str, Any]] = None) -> Any:
        """Validated options instance from ``values`` (Python values or command-line strings).

        Raises:
            TypeError: an unknown option name, or a value of the wrong type.
            ValueError: a value below ``minimum`` or outside ``choices``.
        """
        values = dict(values or {})
        fields = {f.name: f for f in self.option_fields()}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise TypeError(f"unknown option(s) {unknown} for method {self.name!r}; valid options: "
                            f"{sorted(fields) or 'none'}")
        hints = typing.get_type_hints(self.options)
        parsed = {}
        for name, value in values.items():
            f = fields[name]
            kind, optional = _base_type(hints.get(name, object))
            if isinstance(value, str) and kind is not str:
                value = _convert_text(name, value, kind, optional)
            parsed[name] = _check_value(self.name, f, kind, optional, value)
        return self.options(**parsed)

    def resolve_options(self, options: Any) -> Any:
        """``options`` as this method's options instance: an instance passes through, a mapping
        (or None) is parsed with :meth:`parse_options`."""
        if isinstance(options, self.options):
            return options
        if options is None or isinstance(options, Mapping):
            return self.parse_options(options)
        raise TypeError(f"options of method {self.name!r} must be a {self.options.__name__} or a "
                        f"dict, got {type(options).__name__}")

    def options_help(self) -> str:
        """One line per option: ``name=default  help`` (what ``gcnprune methods`` prints)."""
        lines = []
        for f in self.option_fields():
            extra = f" (one of {', '.join(map(str, f.metadata['choices']))})" \
                if f.metadata.get("choices") else ""
            lines.append(f"  {f.name}={f.default!r}  {f.metadata.get('help', '')}{extra}")
        return "\n".join(lines) or "  (no options)"


def _check_value(method: str, f: dataclasses.Field, kind: type, optional: bool, value):
    where = f"method {method!r} option {f.name}"
    if value is None:
        if optional:
            return None
        raise TypeError(f"{where} must not be None")
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is not object and (not isinstance(value, kind) or (kind is not bool and isinstance(value, bool))):
        raise TypeError(f"{where} must be {kind.__name__}, got {value!r} ({type(value).__name__})")
    minimum = f.metadata.get("minimum")
    if minimum is not None and value < minimum:
        raise ValueError(f"{where} must be >= {minimum}, got {value!r}")
    choices = f.metadata.get("choices")
    if choices is not None and value not in choices:
        raise ValueError(f"{where} must be one of {list(choices)}, got {value!r}")
    return value


def register_method(name: str, *, options: type = NoOptions, summary: str = "",
                    supports_resume: bool = False, needs_data: bool = True,
                    budget_kinds: Sequence[str] = BUDGET_KINDS, is_default: bool = False,
                    in_demo: bool = False) -> Callable:
    """Decorator: register ``run(ctx) -> MethodResult`` under ``name``. Returns ``run``."""
    if not dataclasses.is_dataclass(options):
        raise TypeError(f"method {name!r}: options must be a dataclass, got {options!r}")
    bad = sorted(set(budget_kinds) - set(BUDGET_KINDS))
    if bad:
        raise ValueError(f"method {name!r}: unknown budget kinds {bad}; known: {list(BUDGET_KINDS)}")

    def decorate(run: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name].run is not run:
            raise ValueError(f"a method named {name!r} is already registered "
                             f"({_REGISTRY[name].run.__module__})")
        if is_default and any(s.is_default and s.name != name for s in _REGISTRY.values()):
            raise ValueError(f"method {name!r}: another method is already the default")
        _REGISTRY[name] = MethodSpec(name, run, options, summary or (run.__doc__ or "").strip()
                                     .split("\n")[0], supports_resume, needs_data,
                                     tuple(budget_kinds), is_default, in_demo)
        return run
    return decorate


def unregister_method(name: str) -> None:
    """Remove a method (tests and notebooks that register throw-away methods)."""
    _REGISTRY.pop(name, None)


def _load_builtin() -> None:
    import gcnprune_fast.methods  # noqa: F401  (importing the package registers the built-ins)


def get_method(name: str) -> MethodSpec:
    """The spec of method ``name``; ValueError listing the valid names otherwise."""
    _load_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; valid methods: {list(method_names())}")
    return _REGISTRY[name]


def method_names() -> Tuple[str, ...]:
    """Registered method names, the default first, then in registration order."""
    _load_builtin()
    return tuple(sorted(_REGISTRY, key=lambda n: not _REGISTRY[n].is_default))


def default_method() -> str:
    """The name of the default method (the one registered with ``is_default=True``)."""
    _load_builtin()
    return next(s.name for s in _REGISTRY.values() if s.is_default)


def demo_methods() -> Tuple[str, ...]:
    """The methods the demo compares (registered with ``in_demo=True``), default first."""
    return tuple(n for n in method_names() if _REGISTRY[n].in_demo)
