"""Checks for a notebook's parameters: one spelling of each rule and one message format.

Each paper module's parameter dataclass checks its fields with these in ``__post_init__``, so that a bad
value from a parameters cell, a tier YAML or a sweep fails before anything trains, with a message naming
the parameter, the value and what would have been valid::

    rounds = 0 is invalid: expected an integer ≥ 1
    dataset = 'imagenet-xl' is invalid: choose one of cifar10, mnist, ...
    noise_multipliers[1] = -0.5 is invalid: expected a finite number > 0

The rules every checker shares:

* ``bool`` is not a number: Python counts ``True`` as the integer 1, a notebook never means it as a round
  count or a learning rate;
* ``None`` passes only where ``optional=True`` says it means something ("all", "as another parameter");
* a list parameter is a list or a tuple, never a string (``"fgsm"`` would be read as five one-letter names);
  its entries are checked one by one and a bad one is named by its index, ``name[i]``;
* a range is an interval: ``low``/``high`` with ``*_open`` saying whether the end itself is excluded. An
  infinite end is included unless it is open, so ``number(name, x, low=0)`` accepts ``inf`` and
  ``high_open=True`` makes it "finite". NaN fails every range, as it fails every comparison.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, NoReturn, Sequence, TypeVar

import torch

T = TypeVar("T")


def refuse(name: str, value: Any, valid: str) -> NoReturn:
    """Raise the one ValueError format: ``{name} = {value!r} is invalid: {valid}``."""
    raise ValueError(f"{name} = {value!r} is invalid: {valid}")


def require(ok: bool, name: str, value: Any, valid: str) -> None:
    """:func:`refuse` unless ``ok``: for a rule no checker below spells (one field against another)."""
    if not ok:
        refuse(name, value, valid)


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _integer_range(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"an integer from {minimum} to {maximum}"
    if minimum is not None:
        return f"an integer ≥ {minimum}"
    return "an integer" if maximum is None else f"an integer ≤ {maximum}"


def _integer_ok(value: Any, minimum: int | None, maximum: int | None) -> bool:
    return (_is_integer(value) and (minimum is None or value >= minimum)
            and (maximum is None or value <= maximum))


def integer(name: str, value: Any, minimum: int | None = None, maximum: int | None = None, *,
            optional: bool = False) -> None:
    """An ``int`` (not a bool) in ``[minimum, maximum]`` (either end None: unbounded); None if ``optional``."""
    if optional and value is None:
        return
    if not _integer_ok(value, minimum, maximum):
        refuse(name, value, f"expected {_integer_range(minimum, maximum)}{', or None' if optional else ''}")


def _number_range(low: float, high: float, low_open: bool, high_open: bool) -> str:
    if low == -math.inf and high == math.inf:
        return "a finite number" if low_open and high_open else "a number"
    if high == math.inf:
        return f"a {'finite ' if high_open else ''}number {'>' if low_open else '≥'} {low:g}"
    if low == -math.inf:
        return f"a {'finite ' if low_open else ''}number {'<' if high_open else '≤'} {high:g}"
    return f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"


def _number_ok(value: Any, low: float, high: float, low_open: bool, high_open: bool) -> bool:
    # written as comparisons that hold, so that NaN (for which every comparison fails) is refused
    return (_is_number(value) and (value > low if low_open else value >= low)
            and (value < high if high_open else value <= high))


def number(name: str, value: Any, low: float = -math.inf, high: float = math.inf, *, low_open: bool = False,
           high_open: bool = False, optional: bool = False) -> None:
    """An ``int`` or ``float`` (not a bool) in the interval from ``low`` to ``high``; None if ``optional``.

    ``number("lr", lr, 0, low_open=True)`` is lr > 0; ``number("momentum", m, 0, 1, high_open=True)`` is
    0 ≤ m < 1.
    """
    if optional and value is None:
        return
    if not _number_ok(value, low, high, low_open, high_open):
        valid = _number_range(low, high, low_open, high_open)
        refuse(name, value, f"expected {valid}{', or None' if optional else ''}")


def _sequence(name: str, values: Any, what: str, nonempty: bool) -> list:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or (nonempty and not values):
        refuse(name, values, f"expected a {'non-empty ' if nonempty else ''}list of {what}")
    return list(values)


def integers(name: str, values: Any, minimum: int | None = None, maximum: int | None = None, *,
             nonempty: bool = False) -> list[int]:
    """A list (or tuple) of integers, each as :func:`integer` checks it; returned as a list."""
    what = _integer_range(minimum, maximum).replace("an integer", "integers", 1)
    values = _sequence(name, values, what, nonempty)
    for index, value in enumerate(values):
        integer(f"{name}[{index}]", value, minimum, maximum)
    return values


def numbers(name: str, values: Any, low: float = -math.inf, high: float = math.inf, *, low_open: bool = False,
            high_open: bool = False, nonempty: bool = False) -> list[float]:
    """A list (or tuple) of numbers, each as :func:`number` checks it; returned as a list."""
    what = _number_range(low, high, low_open, high_open)
    what = what.replace("a finite number", "finite numbers", 1).replace("a number", "numbers", 1)
    values = _sequence(name, values, what, nonempty)
    for index, value in enumerate(values):
        number(f"{name}[{index}]", value, low, high, low_open=low_open, high_open=high_open)
    return values


def _choices(choices: Iterable[str]) -> str:
    return ", ".join(map(str, choices))


def choice(name: str, value: Any, choices: Iterable[str], *, optional: bool = False) -> None:
    """One of ``choices`` (a tuple, a dict's keys, or a :class:`~fedrepro.registry.Registry`, whose own
    ``in`` decides: registries ignore case); None if ``optional``."""
    if optional and value is None:
        return
    if not (isinstance(value, str) and value in choices):
        refuse(name, value, f"choose {'None or ' if optional else ''}one of {_choices(choices)}")


def names(name: str, values: Any, allowed: Iterable[str] | None = None, *, nonempty: bool = False,
          unique: bool = False) -> list[str]:
    """A list (or tuple) of names, each one of ``allowed`` (None: any string); returned as a list.

    ``unique`` refuses a name listed twice (a section run twice would overwrite its own results).
    """
    values = _sequence(name, values, "names" if allowed is None else f"names from {_choices(allowed)}", nonempty)
    for index, value in enumerate(values):
        if allowed is None:
            require(isinstance(value, str), f"{name}[{index}]", value, "expected a name")
        else:
            choice(f"{name}[{index}]", value, allowed)
    if unique:
        twice = sorted({value for value in values if values.count(value) > 1})
        require(not twice, name, values, f"each name at most once ({', '.join(twice)} twice)")
    return values


def text(name: str, value: Any, what: str, *, optional: bool = False, empty: bool = False) -> None:
    """A string (a dataset name, a folder), non-empty unless ``empty``; None if ``optional``. ``what`` says
    which, for the message."""
    if optional and value is None:
        return
    require(isinstance(value, str) and (empty or bool(value)), name, value,
            f"expected {what}{', or None' if optional else ''}")


def device(name: str, value: Any) -> None:
    """``"auto"`` or anything :class:`torch.device` accepts: ``cpu``, ``cuda``, ``cuda:1``."""
    try:
        torch.device(value if value != "auto" else "cpu")
    except (RuntimeError, TypeError):
        refuse(name, value, "expected 'auto', 'cpu', 'cuda' or 'cuda:<index>'")


def parsed(name: str, value: Any, parse: Callable[[str], T], what: str) -> T:
    """``parse(value)`` for a string in a small grammar (a defense spec, a policy); its ValueError, or a
    value that is not a string, is refused under ``name``. ``what`` is an example of a valid value."""
    if not isinstance(value, str):
        refuse(name, value, f"expected {what}")
    try:
        return parse(value)
    except ValueError as error:
        refuse(name, value, str(error))
