"""Most unit tests build a Flask app of their own (tests/support/builders.py make_app), and
werkzeug compiles two URL-builder functions for every route when the app is made: about a
third of the fast suite's CPU went there, for `url_for` calls almost no test makes. In the
test process only, each rule compiles its builders the first time it builds a URL instead.
Matching is untouched, and a built URL is the same as before (the builders are werkzeug's
own, just made later); the broker itself runs werkzeug as it is."""

from __future__ import annotations

from typing import Any

from werkzeug.routing.rules import Rule


class _LazyBuilder:
    """Rule._build / Rule._build_unknown, compiled on first use and kept on the rule."""

    def __init__(self, append_unknown: bool) -> None:
        self.append_unknown = append_unknown
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, rule: Rule | None, owner: type | None = None) -> Any:
        if rule is None:
            return self
        built = rule._compile_builder(self.append_unknown).__get__(rule, None)
        rule.__dict__[self.name] = built
        return built


def _stub(*_args: Any, **_kwargs: Any) -> Any:
    return _stub


_compile = Rule.compile


def _compile_without_builders(self: Rule) -> None:
    self._compile_builder = _stub  # type: ignore[method-assign]
    try:
        _compile(self)
    finally:
        del self._compile_builder
    # Drop the placeholders compile() assigned: the class-level lazy builders take over.
    self.__dict__.pop("_build", None)
    self.__dict__.pop("_build_unknown", None)


def install() -> None:
    if Rule.compile is _compile_without_builders:
        return
    Rule._build = _LazyBuilder(False)  # type: ignore[assignment]
    Rule._build.__set_name__(Rule, "_build")
    Rule._build_unknown = _LazyBuilder(True)  # type: ignore[assignment]
    Rule._build_unknown.__set_name__(Rule, "_build_unknown")
    Rule.compile = _compile_without_builders  # type: ignore[method-assign]
