"""Hypothesis strategies for fleet documents, and for cosmetic rewrites of them.

A *document* is what a user writes in YAML, as plain data: ``{"apiVersion": "lksup/v1",
"kind": "Fleet", "metadata": {...}, "agents": {...}, ...}``. ``fleet_documents()`` generates
valid ones; ``cosmetic_rewrites(doc)`` generates other spellings of the same fleet (keys
reordered, defaults spelled out, durations in other units, load expressions re-spaced, values
moved between ``defaults``, the fleet-wide ``livekit`` block and the agents).

Everything here is written from the documented semantics of a fleet file, not from lksup's
code: the merge rules, the duration and load-expression grammars and the cross-field rules are
re-stated below, so that a property failing means lksup and its documentation disagree.

Merge rules (``normalize``): an agent's own options win over ``defaults``; ``request``,
``permissions``, ``env`` and ``livekit`` are merged one level deep (key by key, each key's value
replaced whole); the fleet-wide ``livekit`` block is merged under the result the same way; an
agent without ``drain_timeout`` gets ``supervisor.drain_timeout``.

Generated documents never contain ``{{``, ``{%`` or ``{#``: such a file is a jinja2 template.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

Doc = dict[str, Any]

TEMPLATE_MARKERS = ("{{", "{%", "{#")
SIGNALS = ("cpu", "memory", "jobs")
SOURCES = ("camera", "microphone", "screen_share", "screen_share_audio")
PLACEHOLDERS = ("{job_id}", "{agent_name}", "{room}")

#: Options merged one level deep (key by key) over ``defaults`` and the fleet's ``livekit``.
MERGED_OPTIONS = frozenset({"request", "permissions", "env", "livekit"})
#: Agent options whose value is replaced whole by a more specific level.
SCALAR_OPTIONS = (
    "prewarm",
    "request_fnc",
    "load",
    "max_jobs",
    "load_threshold",
    "num_idle_processes",
    "job_memory_warn_mb",
    "job_memory_limit_mb",
    "drain_timeout",
    "shutdown_process_timeout",
    "initialize_process_timeout",
    "worker_type",
    "max_retry",
    "working_dir",
)
DURATION_OPTIONS = ("drain_timeout", "shutdown_process_timeout", "initialize_process_timeout")
#: Built-in defaults of the scalar options (``drain_timeout``: see ``builtin_default``).
BUILTIN_DEFAULTS: Mapping[str, Any] = {
    "prewarm": None,
    "request_fnc": None,
    "load": "cpu",
    "max_jobs": None,
    "load_threshold": 0.7,
    "num_idle_processes": "auto",
    "job_memory_warn_mb": 1000,
    "job_memory_limit_mb": 0,
    "shutdown_process_timeout": 10,
    "initialize_process_timeout": 10,
    "worker_type": "room",
    "max_retry": 16,
    "working_dir": None,
}
BUILTIN_REQUEST: Mapping[str, Any] = {
    "room": "*",
    "identity": "agent-{job_id}",
    "name": "",
    "metadata": "",
    "attributes": {},
}
BUILTIN_PERMISSIONS: Mapping[str, Any] = {
    "can_publish": True,
    "can_subscribe": True,
    "can_publish_data": True,
    "can_update_metadata": True,
    "can_publish_sources": [],
    "hidden": False,
}
BUILTIN_SUPERVISOR: Mapping[str, Any] = {
    "http": None,
    "drain_timeout": 3600,
    "memory_budget_mb": None,
    "max_concurrent_initializations": "auto",
}
LIVEKIT_FIELDS = ("url", "api_key", "api_secret")


def has_template_marker(text: str) -> bool:
    """Whether ``text`` would make a fleet file a jinja2 template."""
    return any(marker in text for marker in TEMPLATE_MARKERS)


def _no_marker(text: str) -> bool:
    return not has_template_marker(text)


# --- scalars ----------------------------------------------------------------------------------

#: Any text YAML can carry (control characters included: the dumper escapes them).
texts = st.text(st.characters(codec="utf-8"), max_size=12).filter(_no_marker)
non_empty_texts = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)
non_empty_texts = non_empty_texts.filter(_no_marker)

_IDENT = "[A-Za-z_][A-Za-z0-9_]{0,7}"
identifiers = st.from_regex(f"^{_IDENT}$", fullmatch=True)
import_refs = st.from_regex(rf"^{_IDENT}(\.{_IDENT}){{0,2}}:{_IDENT}(\.{_IDENT})?$", fullmatch=True)
env_names = st.one_of(
    st.sampled_from(["LIVEKIT_API_KEY", "LIVEKIT_API_SECRET", "API_TOKEN", "MODEL", "_X1"]),
    identifiers,
)
file_paths = st.one_of(
    st.sampled_from(["/run/secrets/livekit_secret", "secrets/key", "./k", "C:\\key", "ü.txt"]),
    non_empty_texts,
)


def _is_agent_name(name: str) -> bool:
    return (
        0 < len(name) <= 128
        and all(ch.isprintable() and not ch.isspace() for ch in name)
        and not has_template_marker(name)
    )


#: Names that are valid agent names but special somewhere (YAML, shells, URLs, unicode).
SPECIAL_AGENT_NAMES = (
    "sales",
    "customer-service",
    "客服",
    "agent-ü",
    "😀bot",
    "a.b_c-1",
    "!",
    "<<",
    "=",
    "~",
    "-",
    "?",
    "*x",
    "&y",
    "#z",
    "@x",
    "a:b",
    "null",
    "true",
    "no",
    "123",
    "1e3",
    ".inf",
    "{room}",
    "}{",
    "x" * 128,
    "é" * 128,
)
agent_names = st.one_of(
    st.sampled_from(SPECIAL_AGENT_NAMES),
    st.text(
        st.characters(exclude_categories=("C", "Z")),
        min_size=1,
        max_size=128,
    ),
    st.from_regex(r"^[a-z][a-z0-9-]{0,20}$", fullmatch=True),
).filter(_is_agent_name)


def secret_values() -> st.SearchStrategy[Any]:
    """``{env: NAME}``, ``{file: PATH}`` or a literal string."""
    return st.one_of(
        st.builds(lambda n: {"env": n}, env_names),
        st.builds(lambda p: {"file": p}, file_paths),
        texts,
    )


@st.composite
def urls(draw: st.DrawFn) -> str:
    """A LiveKit URL: ws/wss/http/https, a host, an optional port and base path."""
    scheme = draw(st.sampled_from(["ws", "wss", "http", "https"]))
    host = draw(
        st.one_of(
            st.sampled_from(["localhost", "livekit.example.com", "127.0.0.1", "[::1]", "LK-1.lan"]),
            st.from_regex(r"^[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9-]{0,10}){0,2}$", fullmatch=True),
        )
    )
    port = draw(st.none() | st.integers(1, 65535))
    segments = draw(st.lists(st.from_regex(r"^[A-Za-z0-9_.~-]{1,8}$", fullmatch=True), max_size=3))
    path = "".join("/" + s for s in segments)
    if draw(st.booleans()):
        path += "/"
    return f"{scheme}://{host}{'' if port is None else f':{port}'}{path}"


# --- durations ----------------------------------------------------------------------------

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_INTEGER_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_SPACES = st.sampled_from(["", "", " ", "  "])


@st.composite
def _duration_texts(draw: st.DrawFn) -> str:
    parts = draw(
        st.lists(
            st.tuples(
                st.one_of(
                    st.integers(0, 500).map(str),
                    st.builds(lambda i, f: f"{i}.{f}", st.integers(0, 90), st.integers(0, 99)),
                ),
                st.sampled_from(list(_DURATION_UNITS)),
            ),
            min_size=1,
            max_size=3,
        )
    )
    text = "".join(f"{number}{draw(_SPACES)}{unit}{draw(_SPACES)}" for number, unit in parts)
    return draw(_SPACES) + text


#: A duration as written: seconds as a number, a numeric string, or numbers with units.
durations = st.one_of(
    st.integers(0, 200_000),
    st.floats(0, 200_000, allow_nan=False, allow_infinity=False),
    st.integers(0, 200_000).map(str),
    _duration_texts(),
)

_DURATION_PART = re.compile(r"\s*(\d+)\s*(s|m|h|d)\s*")


def integer_seconds(value: object) -> int | None:
    """The duration ``value`` as whole seconds, if it is written exactly so; else None.

    Only spellings whose float value is exact whatever the arithmetic qualify: integers,
    integral floats, numeric strings of digits, and sums of whole numbers of s/m/h/d.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return int(text)
    pos, total = 0, 0
    while pos < len(text):
        match = _DURATION_PART.match(text, pos)
        if match is None:
            return None
        total += int(match.group(1)) * _INTEGER_UNITS[match.group(2)]
        pos = match.end()
    return total if pos else None


@st.composite
def duration_spellings(draw: st.DrawFn, seconds: int) -> Any:
    """Another spelling of a whole number of seconds: 1800, 1800.0, "1800s", "30m", "1h 1800s"..."""
    kind = draw(st.sampled_from(["int", "float", "digits", "units"]))
    if kind == "int":
        return seconds
    if kind == "float":
        return float(seconds)
    if kind == "digits":
        return f"{draw(_SPACES)}{seconds}{draw(_SPACES)}"
    parts: list[tuple[int, str]] = []
    rest = seconds
    for unit in ("d", "h", "m"):
        size = _INTEGER_UNITS[unit]
        count = draw(st.integers(0, rest // size))
        if count:
            parts.append((count, unit))
            rest -= count * size
    if rest or not parts:
        parts.append((rest, "s"))
    parts = draw(st.permutations(parts))
    return draw(_SPACES) + "".join(f"{n}{draw(_SPACES)}{u}{draw(_SPACES)}" for n, u in parts)


# --- load expressions ---------------------------------------------------------------------


@dataclass(frozen=True)
class Num:
    """A number as written (``0.5``, ``.5``, ``2.``)."""

    text: str


@dataclass(frozen=True)
class Sig:
    """``cpu``, ``memory`` or ``jobs``."""

    name: str


@dataclass(frozen=True)
class Call:
    """``max(...)`` or ``min(...)``."""

    func: str
    args: tuple[Expr, ...]


@dataclass(frozen=True)
class Bin:
    """``left + right`` or ``left * right``."""

    op: str
    left: Expr
    right: Expr


Expr = Num | Sig | Call | Bin

numbers = st.one_of(
    st.integers(0, 100).map(str),
    st.builds(
        lambda i, f: f"{i}.{f}", st.integers(0, 10), st.text("0123456789", min_size=1, max_size=8)
    ),
    st.text("0123456789", min_size=1, max_size=6).map(lambda f: "." + f),
    st.integers(0, 9).map(lambda i: f"{i}."),
    # small and large magnitudes, whose shortest float repr uses an exponent (1e-05, 1e+16)
    st.builds(lambda zeros, d: f"0.{'0' * zeros}{d}", st.integers(3, 9), st.integers(1, 99)),
    st.builds(lambda d, zeros: f"{d}{'0' * zeros}.5", st.integers(1, 9), st.integers(14, 20)),
)

expressions: st.SearchStrategy[Expr] = st.recursive(
    st.one_of(numbers.map(Num), st.sampled_from(SIGNALS).map(Sig)),
    lambda inner: st.one_of(
        st.builds(
            Call,
            st.sampled_from(["max", "min"]),
            st.lists(inner, min_size=1, max_size=3).map(tuple),
        ),
        st.builds(Bin, st.sampled_from(["+", "*"]), inner, inner),
    ),
    max_leaves=6,
)


def signals_of(expr: Expr) -> frozenset[str]:
    """The signals an expression reads."""
    if isinstance(expr, Sig):
        return frozenset({expr.name})
    if isinstance(expr, Call):
        return frozenset().union(*(signals_of(a) for a in expr.args))
    if isinstance(expr, Bin):
        return signals_of(expr.left) | signals_of(expr.right)
    return frozenset()


@st.composite
def _number_spellings(draw: st.DrawFn, text: str) -> str:
    """The same decimal number with zeros added or removed (the same float, exactly)."""
    whole, _, frac = text.partition(".")
    whole = whole.lstrip("0")
    frac = frac.rstrip("0")
    whole = (
        draw(st.sampled_from(["0", "00"])) + whole if not whole or draw(st.booleans()) else whole
    )
    if frac:
        return f"{whole}.{frac}{'0' * draw(st.integers(0, 2))}"
    return whole + draw(st.sampled_from(["", ".", ".0", ".00"]))


@st.composite
def load_spellings(draw: st.DrawFn, expr: Expr, *, plain: bool = False) -> str:
    """A faithful spelling of ``expr``: random whitespace and redundant parentheses.

    ``plain`` prints one space around binary operators and after commas, no extra parens.
    """

    def space() -> str:
        return " " if plain else draw(st.sampled_from(["", " ", " ", "  ", "\t"]))

    def show(node: Expr, context: str) -> str:
        if isinstance(node, Num):
            text = node.text if plain else draw(_number_spellings(node.text))
        elif isinstance(node, Sig):
            text = node.name
        elif isinstance(node, Call):
            sep = ("," + space()) if plain else f"{space()},{space()}"
            body = sep.join(show(arg, "arg") for arg in node.args)
            text = f"{node.func}({'' if plain else space()}{body}{'' if plain else space()})"
        else:
            side = "sum" if node.op == "+" else "product"
            text = f"{show(node.left, side + '-left')}{space()}{node.op}{space()}"
            text += show(node.right, side + "-right")
            needed = node.op == "+" and context in ("sum-right", "product-left", "product-right")
            needed = needed or (node.op == "*" and context == "product-right")
            if needed:
                return f"({text})"
        if not plain and draw(st.integers(0, 5)) == 0:
            return f"({space()}{text}{space()})"
        return text

    return space() + show(expr, "top") + space()


_LOAD_TOKEN = re.compile(r"\s*(?:(\d+(?:\.\d*)?|\.\d+)|([A-Za-z_][A-Za-z_0-9]*)|(\S))")


def parse_load(text: str) -> Expr:
    """Parse a load expression (expr := term (+ term)*, term := factor (* factor)*)."""
    tokens: list[str] = []
    pos = 0
    while (match := _LOAD_TOKEN.match(text, pos)) is not None:
        tokens.append(next(g for g in match.groups() if g is not None))
        pos = match.end()
    cursor = 0

    def take() -> str:
        nonlocal cursor
        cursor += 1
        return tokens[cursor - 1]

    def peek() -> str | None:
        return tokens[cursor] if cursor < len(tokens) else None

    def expr() -> Expr:
        node = term()
        while peek() == "+":
            take()
            node = Bin("+", node, term())
        return node

    def term() -> Expr:
        node = factor()
        while peek() == "*":
            take()
            node = Bin("*", node, factor())
        return node

    def factor() -> Expr:
        token = take()
        if token == "(":
            node = expr()
            take()
            return node
        if token in SIGNALS:
            return Sig(token)
        if token in ("max", "min"):
            take()
            args = [expr()]
            while peek() == ",":
                take()
                args.append(expr())
            take()
            return Call(token, tuple(args))
        return Num(token)

    node = expr()
    if cursor != len(tokens):
        raise ValueError(f"not a load expression: {text!r}")
    return node


@st.composite
def load_texts(draw: st.DrawFn) -> str:
    """A load expression as a user writes it."""
    return draw(load_spellings(draw(expressions), plain=draw(st.booleans())))


# --- sections -----------------------------------------------------------------------------


@st.composite
def templates(draw: st.DrawFn, *, min_size: int) -> str:
    """Literal text (without braces) and {job_id}/{agent_name}/{room} placeholders."""
    literal = texts.filter(lambda t: "{" not in t and "}" not in t)
    pieces = draw(st.lists(st.one_of(literal, st.sampled_from(PLACEHOLDERS)), max_size=4))
    text = "".join(pieces)
    if len(text) < min_size:
        text += draw(st.sampled_from(PLACEHOLDERS))
    return text


livekit_blocks = st.fixed_dictionaries(
    {},
    optional={"url": urls(), "api_key": secret_values(), "api_secret": secret_values()},
)
request_policies = st.fixed_dictionaries(
    {},
    optional={
        "room": texts,
        "identity": templates(min_size=1),
        "name": templates(min_size=0),
        "metadata": texts,
        "attributes": st.dictionaries(texts, texts, max_size=3),
    },
)
permissions = st.fixed_dictionaries(
    {},
    optional={
        **{
            name: st.booleans()
            for name in ("can_publish", "can_subscribe", "can_publish_data", "can_update_metadata")
        },
        "can_publish_sources": st.lists(st.sampled_from(SOURCES), max_size=4),
        "hidden": st.booleans(),
    },
)
env_values = st.one_of(
    texts,
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.builds(lambda n: {"env": n}, env_names),
    st.builds(lambda p: {"file": p}, file_paths),
)


def _nullable(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``strategy``, or now and then an explicit null (the same as leaving the field out)."""
    return st.one_of(strategy, strategy, strategy, strategy, st.none())


agent_option_fields: Mapping[str, st.SearchStrategy[Any]] = {
    "prewarm": _nullable(import_refs),
    "request": request_policies,
    "request_fnc": _nullable(import_refs),
    "load": load_texts(),
    "max_jobs": st.integers(1, 64),
    "load_threshold": st.floats(0, 1, exclude_min=True),
    "num_idle_processes": st.one_of(st.integers(0, 8), st.just("auto")),
    "job_memory_warn_mb": st.integers(0, 4000),
    "job_memory_limit_mb": st.integers(0, 8000),
    "drain_timeout": _nullable(durations),
    "shutdown_process_timeout": durations,
    "initialize_process_timeout": durations,
    "permissions": permissions,
    "worker_type": st.sampled_from(["room", "publisher"]),
    "max_retry": st.integers(0, 100),
    "env": st.dictionaries(env_names, env_values, max_size=3),
    "working_dir": _nullable(st.one_of(st.sampled_from([".", "agents", "/srv/app"]), texts)),
    "livekit": livekit_blocks,
}
agent_options = st.fixed_dictionaries({}, optional=dict(agent_option_fields))
agents = st.fixed_dictionaries({"entrypoint": import_refs}, optional=dict(agent_option_fields))

supervisor_blocks = st.fixed_dictionaries(
    {},
    optional={
        "http": st.builds(
            lambda h, p: f"{h}:{p}",
            st.sampled_from(["127.0.0.1", "0.0.0.0", "localhost", "[::1]"]),
            st.integers(1, 65535),
        ),
        "drain_timeout": durations,
        "memory_budget_mb": st.integers(1, 100_000),
        "max_concurrent_initializations": st.one_of(st.integers(1, 16), st.just("auto")),
    },
)
metadata_blocks = st.fixed_dictionaries(
    {"name": non_empty_texts},
    optional={"labels": st.dictionaries(texts, texts, max_size=3)},
)


# --- semantics ----------------------------------------------------------------------------


def merge_options(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Options over other options: ``MERGED_OPTIONS`` one level deep, the rest replaced."""
    merged = dict(base)
    for key, value in override.items():
        if key in MERGED_OPTIONS and isinstance(merged.get(key), Mapping):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def effective_options(doc: Mapping[str, Any], name: str) -> dict[str, Any]:
    """An agent's options as written in the document, merged over defaults and livekit."""
    merged = merge_options(doc.get("defaults", {}), doc["agents"][name])
    merged["livekit"] = {**doc.get("livekit", {}), **merged.get("livekit", {})}
    return merged


def builtin_default(doc: Mapping[str, Any], field: str) -> Any:
    """The value an agent gets for a scalar option nobody sets (as written)."""
    if field == "drain_timeout":
        return doc.get("supervisor", {}).get("drain_timeout", BUILTIN_SUPERVISOR[field])
    return BUILTIN_DEFAULTS[field]


def repair(doc: Doc) -> Doc:
    """Make every agent of ``doc`` valid across fields by adding to the agent itself.

    ``load`` reading ``jobs`` needs ``max_jobs``; ``job_memory_warn_mb`` must be below a
    non-zero ``job_memory_limit_mb``; ``api_key`` and ``api_secret`` go together.
    """
    for name, agent in doc.get("agents", {}).items():
        options = effective_options(doc, name)
        load = options.get("load")
        uses_jobs = load is not None and "jobs" in signals_of(parse_load(load))
        if uses_jobs and options.get("max_jobs") is None:
            agent["max_jobs"] = 8
        warn = options.get("job_memory_warn_mb", BUILTIN_DEFAULTS["job_memory_warn_mb"])
        limit = options.get("job_memory_limit_mb", BUILTIN_DEFAULTS["job_memory_limit_mb"])
        if warn and limit and warn >= limit:
            agent["job_memory_limit_mb"] = warn + 1
        livekit = options["livekit"]
        for have, missing in (("api_key", "api_secret"), ("api_secret", "api_key")):
            if livekit.get(have) is not None and livekit.get(missing) is None:
                agent.setdefault("livekit", {})[missing] = {"env": "LIVEKIT_" + missing.upper()}
    return doc


@st.composite
def fleet_documents(draw: st.DrawFn, *, min_agents: int = 0, max_agents: int = 4) -> Doc:
    """A valid fleet document (warnings allowed, no errors) as plain YAML data."""
    doc: Doc = {"apiVersion": "lksup/v1", "kind": "Fleet", "metadata": draw(metadata_blocks)}
    if draw(st.booleans()):
        doc["livekit"] = draw(livekit_blocks)
    if draw(st.booleans()):
        doc["supervisor"] = draw(supervisor_blocks)
    if draw(st.booleans()):
        doc["defaults"] = draw(agent_options)
    count = draw(st.integers(min_agents, max_agents))  # spread: not mostly 0 or 1 agents
    members = draw(st.dictionaries(agent_names, agents, min_size=count, max_size=max_agents))
    spelled_out: bool = draw(st.booleans())
    if members or spelled_out:
        doc["agents"] = members
    return repair(doc)


# --- cosmetic rewrites --------------------------------------------------------------------


def _agents(doc: Doc) -> Iterator[dict[str, Any]]:
    yield from doc.get("agents", {}).values()


def _option_blocks(doc: Doc) -> Iterator[dict[str, Any]]:
    """``defaults`` and every agent: the mappings that hold agent options."""
    if "defaults" in doc:
        yield doc["defaults"]
    yield from _agents(doc)


def _move_fleet_livekit(draw: st.DrawFn, doc: Doc) -> None:
    """The fleet-wide livekit block, moved into ``defaults`` or into every agent."""
    shared = doc.pop("livekit", {})
    into_defaults = draw(st.booleans())
    for key, value in shared.items():
        if into_defaults:
            doc.setdefault("defaults", {}).setdefault("livekit", {}).setdefault(key, value)
            continue
        if key in doc.get("defaults", {}).get("livekit", {}):
            continue  # shadowed by defaults for every agent
        for agent in _agents(doc):
            agent.setdefault("livekit", {}).setdefault(key, copy.deepcopy(value))


def _push_defaults_down(draw: st.DrawFn, doc: Doc) -> None:
    """Some fields of ``defaults`` removed and written on every agent instead."""
    defaults = doc.get("defaults", {})
    for field in draw(st.lists(st.sampled_from(sorted(defaults)), unique=True)) if defaults else []:
        value = defaults.pop(field)
        for agent in _agents(doc):
            if field in MERGED_OPTIONS and isinstance(agent.get(field), Mapping):
                agent[field] = {**copy.deepcopy(value), **agent[field]}
            else:
                agent.setdefault(field, copy.deepcopy(value))


def _pull_up_into_defaults(draw: st.DrawFn, doc: Doc) -> None:
    """A value an agent sets becomes the default; agents that relied on the old one keep it."""
    members = list(_agents(doc))
    candidates = sorted({f for agent in members for f in agent if f in SCALAR_OPTIONS})
    if not candidates:
        return
    field = draw(st.sampled_from(candidates))
    value = draw(st.sampled_from([agent[field] for agent in members if field in agent]))
    defaults = doc.setdefault("defaults", {})
    previous = defaults.get(field, builtin_default(doc, field))
    defaults[field] = copy.deepcopy(value)
    for agent in members:
        if field not in agent:
            agent[field] = copy.deepcopy(previous)
        elif agent[field] == value and type(agent[field]) is type(value) and draw(st.booleans()):
            del agent[field]


def _spell_out_defaults(draw: st.DrawFn, doc: Doc) -> None:
    """Built-in defaults written explicitly where nothing else sets them."""
    defaults = doc.get("defaults", {})
    shared_livekit = doc.get("livekit", {})
    blocks = list(_option_blocks(doc))
    for block in blocks:
        in_defaults = block is defaults
        for field in SCALAR_OPTIONS:
            if field in block or (not in_defaults and field in defaults) or draw(st.booleans()):
                continue
            value = builtin_default(doc, field)
            if field == "drain_timeout" and draw(st.booleans()):
                value = None  # the schema's default: "unset = supervisor.drain_timeout"
            block[field] = copy.deepcopy(value)
        for field, builtin in (("request", BUILTIN_REQUEST), ("permissions", BUILTIN_PERMISSIONS)):
            for key, value in builtin.items():
                inherited = not in_defaults and key in defaults.get(field, {})
                if key in block.get(field, {}) or inherited or draw(st.booleans()):
                    continue
                block.setdefault(field, {})[key] = copy.deepcopy(value)
        for key in LIVEKIT_FIELDS:
            inherited = key in shared_livekit or (
                not in_defaults and key in defaults.get("livekit", {})
            )
            if key in block.get("livekit", {}) or inherited or draw(st.booleans()):
                continue
            block.setdefault("livekit", {})[key] = None
        for field in MERGED_OPTIONS:
            if field not in block and draw(st.booleans()):
                block[field] = {}
    supervisor = doc.setdefault("supervisor", {})
    for key, value in BUILTIN_SUPERVISOR.items():
        if key not in supervisor and draw(st.booleans()):
            supervisor[key] = value
    doc["metadata"].setdefault("labels", {})
    for key in ("livekit", "defaults", "agents"):
        doc.setdefault(key, {})


def _respell_scalars(draw: st.DrawFn, doc: Doc) -> None:
    """Durations in other units, load expressions re-spaced, env numbers as strings."""
    supervisor = doc.get("supervisor", {})
    if (seconds := integer_seconds(supervisor.get("drain_timeout"))) is not None:
        supervisor["drain_timeout"] = draw(duration_spellings(seconds))
    for block in _option_blocks(doc):
        for field in DURATION_OPTIONS:
            if (seconds := integer_seconds(block.get(field))) is not None:
                block[field] = draw(duration_spellings(seconds))
        if isinstance(block.get("load"), str):
            block["load"] = draw(load_spellings(parse_load(block["load"])))
        for key, value in block.get("env", {}).items():
            if isinstance(value, bool):
                block["env"][key] = "true" if value else "false"
            elif isinstance(value, int | float) and draw(st.booleans()):
                block["env"][key] = str(value)


def _reorder(draw: st.DrawFn, value: Any) -> Any:
    if isinstance(value, dict):
        keys = draw(st.permutations(list(value)))
        return {key: _reorder(draw, value[key]) for key in keys}
    return value


_REWRITES: tuple[Callable[[st.DrawFn, Doc], None], ...] = (
    _move_fleet_livekit,
    _push_defaults_down,
    _pull_up_into_defaults,
    _spell_out_defaults,
    _respell_scalars,
)


@st.composite
def cosmetic_rewrites(draw: st.DrawFn, doc: Doc) -> Doc:
    """Another spelling of the same fleet: every rewrite keeps each agent's effective options."""
    rewritten = copy.deepcopy(doc)
    for rewrite in _REWRITES:
        if draw(st.booleans()):
            rewrite(draw, rewritten)
    reordered: Doc = _reorder(draw, rewritten)
    return reordered
