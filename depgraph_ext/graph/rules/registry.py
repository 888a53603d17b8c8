"""The rule table: which rule maps each op, by op name (overload first, then packet)."""

from __future__ import annotations

from collections.abc import Callable

from ..trace import Node
from .context import RuleContext

Rule = Callable[[RuleContext, Node], None]


class RuleTable:
    """Rules by op name, and the rule of each op object once looked up (an op's names are
    built on every call); every change to the table forgets the latter."""

    def __init__(self) -> None:
        self._by_name: dict[str, Rule] = {}
        self._by_op: dict = {}

    def register(self, name: str, rule: Rule) -> None:
        self._by_name[name] = rule
        self._by_op.clear()

    def unregister(self, name: str) -> Rule | None:
        self._by_op.clear()
        return self._by_name.pop(name, None)

    def named(self, name: str) -> Rule | None:
        return self._by_name.get(name)

    def lookup(self, node: Node) -> Rule | None:
        """The rule for a node; an in-place variant (``aten.add_``) shares its op's rule."""
        try:
            return self._by_op[node.op]
        except (KeyError, TypeError):  # TypeError: an op object that cannot be a key
            pass
        by_name = self._by_name
        found = by_name.get(node.name) or by_name.get(node.packet)
        if found is None and node.packet.endswith("_"):
            found = by_name.get(node.packet[:-1])
        try:
            self._by_op[node.op] = found
        except TypeError:
            pass
        return found


RULES = RuleTable()


def register_rule(op, rule: Rule | None = None):
    """Register ``rule(ctx, node)`` for an op (an OpOverload, OpOverloadPacket or its name).

    Usable as a decorator. Names are matched without the overload (``"aten.add"``), or with it
    (``"aten.add.Tensor"``), the latter taking precedence.
    """

    def register(fn: Rule) -> Rule:
        RULES.register(str(op), fn)
        return fn

    return register if rule is None else register(rule)


def unregister_rule(op) -> Rule | None:
    """Remove the rule registered for ``op`` (as named in ``register_rule``); returns it."""
    return RULES.unregister(str(op))


def registered_rule(op) -> Rule | None:
    """The rule registered under exactly this name (no fallback to the packet)."""
    return RULES.named(str(op))


def rule_for(node: Node) -> Rule | None:
    """The rule for a traced node (None: the op is opaque)."""
    return RULES.lookup(node)


def register_many(names, rule: Rule) -> None:
    for name in names:
        RULES.register(name, rule)
