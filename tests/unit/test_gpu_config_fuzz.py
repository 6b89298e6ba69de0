"""Property-based fuzzing of the GPU config file (GPUHUB_GPU_CONFIG) through `gpu_config.load`.

The contract: bad input stops the hub with a clear one-line error naming what is wrong, never a
stack trace. So for any file:

1. `load()` either succeeds or raises GPUConfigError, whose message is one short, non-empty line;
   for a valid config with one thing changed the message names the changed key (or its section);
2. whatever loads is usable: the inventory, ledger, profiles, quotas, admission, culling and
   spawner traits the hub builds from it come up without an exception;
3. the same holds for the file itself: any bytes, invalid JSON (or YAML), an empty file, a directory.

Derandomized, without an example database: the same cases on every run. How many cases each test
ran is printed after the module's last test (also: `--hypothesis-show-statistics`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jupyterhub.traitlets import ByteSpecification
from traitlets import Callable, Dict, Float, HasTraits, List, Unicode, Union
from traitlets.config import Config

from spawner import admission, budget, culling, gpu_config, inventory, profiles, quota
from spawner.allocator import Ledger
from spawner.devices import Device
from spawner.gpu_config import GPUConfigError

FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)
MAX_MESSAGE = 500
HUB_IDLE_TIMEOUT = 7200  # the profiles' idle_timeout must stay below it
CASES: Counter[str] = Counter()

# A valid config using every part of the schema.
VALID = {
    "profiles": [
        {"slug": "cpu", "display_name": "CPU", "description": "no GPU", "default": True, "idle_timeout": "20m"},
        {
            "slug": "mig",
            "display_name": "MIG slice",
            "gpu": {"count": 1, "mig_profile": "1g.10gb"},
            "mem_limit": "16G",
            "cpu_limit": 4,
            "image": "gpuhub/notebook:latest",
            "gpu_idle_timeout": "30m",
            "gpu_idle_threshold": 5,
            "max_runtime": "8h",
        },
        {
            "slug": "a100x2",
            "display_name": "2 x A100",
            "gpu": {"count": 2, "model": "NVIDIA A100"},
            "cpu_limit": 1.5,
            "max_runtime": 3600,
        },
    ],
    "gpus": [
        "GPU-a",
        {"uuid": "GPU-b", "model": "NVIDIA A100", "memory_mib": 81920},
        {"uuid": "GPU-c", "model": "NVIDIA A100", "memory_mib": 81920},
        {"uuid": "MIG-d", "mig_profile": "1g.10gb", "parent": "GPU-e", "model": "NVIDIA H100", "memory_mib": 9984},
        {"uuid": "MIG-f", "mig_profile": "1g.10gb", "parent": "GPU-e"},
    ],
    "exclude": ["GPU-a"],
    "quota": {
        "default": {"profiles": ["cpu"], "max_devices_per_user": 0, "gpu_hours_per_user": "20/week"},
        "groups": {
            "students": {
                "profiles": ["cpu", "mig"],
                "max_devices_per_user": 1,
                "max_devices_per_group": 14,
                "priority": -5,
                "gpu_hours_per_group": {"hours": 500, "period": "month"},
            },
            "researchers": {"profiles": "*", "max_devices_per_user": None, "priority": 10},
        },
    },
}

# What NVML "finds" when the file lists no gpus.
NVML = (
    Device("GPU-n0", "NVIDIA A100", 81920, index=0),
    Device("MIG-n1", "NVIDIA H100", 9984, "1g.10gb", "GPU-n9", index=0, parent_index=1),
)


def discover(exclude=()):
    excluded = {inventory.canonical_uuid(u) for u in exclude}
    return inventory.Inventory(
        tuple(d for d in NVML if d.uuid not in excluded), "nvml", mig_profiles=frozenset({"1g.10gb", "3g.40gb"})
    )


# --- strategies -------------------------------------------------------------------------------

KEY_WORDS = sorted(
    gpu_config.KEYS
    | profiles._KEYS
    | set(quota.KEYS)
    | {"count", "mig_profile", "model", "uuid", "memory_mib", "parent", "default", "groups", "hours", "period"}
)
# Values that broke, or could break, a validator: wrong types, the edges of each range, numbers no
# float or engine can hold, control characters, a newline after a valid name, very long text.
ODD_STRINGS = (
    ["", " ", "\n", "a\nb", "\r\n", "\t", "\x00", "\x1b[31m", "\u2028", "\x85", "\ud800", "é", "😀", "\u202e"]
    + ["'\"\\", "x" * 600, "9" * 400, "9" * 400 + "G", "1e999", "-1", "0", "NaN", "*", "cpu", "cpu\n", "mig", "CPU"]
    + ["GPU-a", "GPU-a\n", "gpu-a", "GPU-", "MIG-d", "MIG-x\n", "GPU-e", "1g.10gb", "1g.10gb\n", "9g.99gb", "16"]
    + ["16G ", " 16G", "16g", "0G", "1.5T", "30m", "0s", "366d", "20/week", "20/fortnight", "-1/day", "1e400/day"]
)
ODD_NUMBERS = [0, -1, 1, 2, 7, 100, 101, 1000, 1001, -1001, 2**31, 2**63, 10**400, -(10**400), 0.5, -0.0, 1e-300]
ODD_NUMBERS += [1e308, float("inf"), float("-inf"), float("nan")]
ODD_VALUES = [None, True, False, [], {}, [1], {"a": 1}] + ODD_NUMBERS + ODD_STRINGS
# The few that stand for each kind, tried in every place of the valid config.
SWEEP = [None, True, 0, -1, -0.0, 10**400, 1e308, float("nan"), float("inf"), "", " ", "a\nb", "x" * 600]
SWEEP += ["9" * 400 + "G", "16", "cpu\n", "GPU-a\n", "1g.10gb\n", [1], {"a": 1}]

keys = st.one_of(st.sampled_from(KEY_WORDS), st.sampled_from(ODD_STRINGS), st.text(max_size=12))
scalars = st.one_of(
    st.sampled_from(ODD_VALUES),
    st.sampled_from(KEY_WORDS),
    st.integers(),
    st.floats(),  # NaN and infinities too: Python's json writes and reads them
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=10,
)


def paths(value, prefix=()):
    """Every place in a JSON document: tuples of dict keys and list indices."""
    found = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for k, v in items:
        found.append(prefix + (k,))
        found.extend(paths(v, prefix + (k,)))
    return found


def containers(value, prefix=()):
    """Every dict in a JSON document (where a key may be added), the top level included."""
    found = [prefix] if isinstance(value, dict) else []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for k, v in items:
        found.extend(containers(v, prefix + (k,)))
    return found


def at(doc, path):
    for k in path:
        doc = doc[k]
    return doc


def replaced(path, value):
    doc = copy.deepcopy(VALID)
    at(doc, path[:-1])[path[-1]] = value
    return doc


@st.composite
def mutation(draw, doc):
    """Change `doc` in place once; returns (what, path, new key or value)."""
    what = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
    if what == "add":
        path = draw(st.sampled_from(containers(doc)))
        key = draw(keys)
        value = draw(json_values)
        at(doc, path)[key] = value
        return what, path + (key,), value
    path = draw(st.sampled_from(paths(doc)))
    parent = at(doc, path[:-1])
    if what == "delete":
        del parent[path[-1]]
        return what, path, None
    value = draw(st.one_of(st.sampled_from(ODD_VALUES), json_values))
    parent[path[-1]] = value
    return what, path, value


@st.composite
def mutated(draw, max_changes=1):
    doc = copy.deepcopy(VALID)
    changes = [draw(mutation(doc)) for _ in range(draw(st.integers(1, max_changes)))]
    return doc, changes


# --- what a load must give --------------------------------------------------------------------


def write(path, doc):
    path.write_text(json.dumps(doc), encoding="utf-8")  # NaN and Infinity as Python's json writes them
    return str(path)


def load(path):
    """Load; on GPUConfigError check the message and return it (None when the file loaded)."""
    try:
        loaded = gpu_config.load(path, discover=discover, hub_idle_timeout=HUB_IDLE_TIMEOUT)
    except GPUConfigError as e:
        check_message(str(e), path)
        return str(e)
    use(loaded)
    return None


def check_message(message, path):
    assert message.startswith(f"{path}: "), message
    assert message[len(path) + 2 :].strip(), message
    assert len(message) < MAX_MESSAGE, message
    assert message.splitlines() == [message], f"not one line: {message!r}"
    assert message.isprintable(), f"unprintable characters: {message!r}"


def variants(name):
    """How a message may spell a key: as written, escaped, with spaces, singular ('profiles' -> 'profile')."""
    words = {name, name.replace("_", " "), escaped(name), repr(name)[1:-1]}
    if name.endswith("s") and len(name) > 3 and name != "gpus":
        words.add(name[:-1])
    return words


def escaped(text):
    """Unprintable characters as Python escapes them, the way a one-line message shows them."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


def named_where(message, what, path, value):
    """Does the message name the changed key or its parent (a key, or a list entry: by its number,
    its section or what it is called), or the new value?"""
    wanted: set[str] = set()
    for depth in range(max(0, len(path) - 2), len(path)):
        k, within = path[depth], path[:depth]
        if isinstance(k, str):
            wanted |= variants(k) | ({"static device"} if k == "gpus" else set())
            continue
        entry = at(VALID, within + (k,)) if exists(within + (k,)) else None
        if within == ("profiles",):
            wanted |= {f"profile #{k + 1}", "profile"} | ({entry["slug"]} if isinstance(entry, dict) else set())
        elif within == ("gpus",):
            wanted |= {f"static device #{k + 1}", "static device"}
            if entry is not None:
                wanted.add(entry if isinstance(entry, str) else entry["uuid"])
        else:
            wanted |= variants(str(within[-1]))
    if isinstance(value, str):
        wanted |= {escaped(value), repr(value)[1:-1]}
    if what == "add" and len(path) == 1:
        wanted.add("unknown keys")  # a top-level key that shows as nothing (" "): the file is the place
    message = message.lower()
    return any(w.strip() and w.lower()[:20] in message for w in wanted)


def exists(path):
    try:
        at(VALID, path)
        return True
    except (KeyError, IndexError, TypeError):
        return False


class SpawnerTraits(HasTraits):
    """The traits jupyterhub_config.py sets from a loaded file (as GPUDockerSpawner and DockerSpawner
    define them), and the per-start limits the spawner sets from a profile."""

    profile_list = List(Dict())
    gpus = List(Union([Unicode(), Dict()]))
    gpu_exclude = List(Unicode())
    mem_limit = Union([Callable(), ByteSpecification()])
    cpu_limit = Union([Callable(), Float(allow_none=True)])


def use(loaded):
    """Build what the hub builds from a loaded file; any exception fails the test."""
    for line in loaded["disabled"]:
        assert line.splitlines() == [line] and line.isprintable(), line
    traits = SpawnerTraits(profile_list=loaded["profiles"], gpus=loaded["gpus"], gpu_exclude=loaded["exclude"])
    config = Config()
    config.GPUQuota.default = loaded["default"]
    config.GPUQuota.groups = loaded["groups"]
    quotas = quota.GPUQuota(config=config)

    # The spawner's first inventory is the one load found; a static one is read the same way again.
    found = gpu_config.take_loaded(traits.gpus, traits.gpu_exclude)
    assert found is loaded["inventory"]
    if traits.gpus:
        again = inventory.from_static(traits.gpus, traits.gpu_exclude)
        assert again.devices == found.devices
    for d in found.devices:
        assert re.fullmatch(r"(GPU|MIG)-[0-9A-Za-z-]+", d.uuid), d
        assert d.mig_profile is None or re.fullmatch(r"\d+g\.\d+gb([+-][a-z.]+)?", d.mig_profile), d
    ledger = Ledger(found.devices)

    choices = profiles.parse(traits.profile_list, found)
    for p in choices:
        assert re.fullmatch(r"[a-z0-9-]{1,64}", p.slug), p
        # The spawner puts a profile's limits on DockerSpawner's traits; DockerSpawner (and the
        # Swarm spawner) turn the CPU limit into whole numbers for the engine.
        if p.mem_limit is not None:
            traits.mem_limit = p.mem_limit
        if p.cpu_limit is not None:
            traits.cpu_limit = p.cpu_limit
            assert int(traits.cpu_limit * 100_000) >= 0 and round(traits.cpu_limit * 1e9) >= 0
        if p.limits:
            watch = culling.Watch("alice", started=1_700_000_000, limits=p.limits, devices=("GPU-n0",))
            for now in (1_700_000_000, 1_700_000_000 + 400 * 86400):
                culling.observe(watch, {"GPU-n0": culling.Activity(True, 0.0)}, now)
                culling.evaluate(watch, now, warning=300, last_activity=1_700_000_000)

    groups = sorted(quotas.groups)  # a member of no group, and of every group
    for memberships in ({}, {g: None for g in groups}):
        found_quotas, problems = quota.quotas_for(quotas.default, quotas.groups, memberships)
        assert not problems, problems
        for q in found_quotas:
            # As the admin views show it, and as an admin may write it back.
            assert quota.parse(quota.written_quota(q), "round trip") == {k: getattr(q, k) for k in quota.KEYS}
            for b in q.budgets.values():
                budget.window(b.period, 1_700_000_000)
                str(b)
        admission.offered(choices, quotas.default, quotas.groups, memberships, ledger.usable)
        for p in choices:
            plan = admission.admit(
                username="alice",
                user_options={"profile": p.slug},
                profile_list=choices,
                default_image="gpuhub/notebook",
                home_path="/home/jovyan",
                quota_default=quotas.default,
                quota_groups=quotas.groups,
                user_groups=memberships,
                usage=admission.Usage(),
                usable=ledger.usable,
            )
            if isinstance(plan, admission.SpawnPlan) and plan.request is not None:
                lease = ledger.request("alice", plan.request, plan.priority, plan.charged_to)
                assert lease is not None and len(lease.devices) == plan.request.count, (plan, lease)
                ledger.release(lease.id)


# --- the tests --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "gpus.json"


@pytest.fixture(scope="module", autouse=True)
def report_cases(request):
    yield
    lines = [f"  {name}: {n}" for name, n in sorted(CASES.items())] + [f"  total: {sum(CASES.values())}"]
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\ngpu config fuzz, generated cases:\n" + "\n".join(lines))


def test_the_valid_config_loads_and_is_usable(config_path):
    assert load(write(config_path, VALID)) is None


@pytest.mark.parametrize("path", paths(VALID), ids=lambda path: ".".join(map(str, path)))
def test_every_odd_value_anywhere_in_a_valid_config_is_named_in_the_error(config_path, path):
    """Not random: each place in the valid config gets each kind of odd value in turn."""
    for value in SWEEP:
        CASES["every odd value in every place"] += 1
        message = load(write(config_path, replaced(path, value)))
        if message is not None:
            assert named_where(message, "replace", path, value), f"{path!r} -> {value!r}: {message}"


@settings(FUZZ, max_examples=700)
@given(case=mutated())
def test_one_change_to_a_valid_config_is_named_in_the_error(config_path, case):
    doc, [(what, path, value)] = case
    CASES["one change to a valid config"] += 1
    message = load(write(config_path, doc))
    if message is not None:
        assert named_where(message, what, path, value), f"{what} {path!r} -> {value!r}: {message}"


@settings(FUZZ, max_examples=150)
@given(case=mutated(max_changes=4))
def test_several_changes_to_a_valid_config_load_or_give_one_line(config_path, case):
    CASES["several changes to a valid config"] += 1
    load(write(config_path, case[0]))


@settings(FUZZ, max_examples=200)
@given(doc=json_values)
def test_any_json_document_loads_or_gives_one_line(config_path, doc):
    CASES["any JSON document"] += 1
    load(write(config_path, doc))


@settings(FUZZ, max_examples=150)
@given(doc=st.fixed_dictionaries({}, optional={key: json_values for key in sorted(gpu_config.KEYS)}))
def test_any_values_under_the_top_level_keys_load_or_give_one_line(config_path, doc):
    CASES["any values under the top-level keys"] += 1
    load(write(config_path, doc))


@settings(FUZZ, max_examples=300)
@given(data=st.binary(max_size=200))
def test_any_bytes_give_one_line(config_path, data):
    CASES["any bytes"] += 1
    config_path.write_bytes(data)
    load(str(config_path))


@settings(FUZZ, max_examples=250)
@given(
    cut=st.integers(0, len(json.dumps(VALID))),
    length=st.integers(0, 8),
    insert=st.one_of(st.text(max_size=4), st.sampled_from(list('{}[]",:\\') + ["\xff", "NaN", "//", "\ufeff"])),
    encoding=st.sampled_from(["utf-8", "utf-16", "latin-1"]),
)
def test_damaged_json_text_gives_one_line(config_path, cut, length, insert, encoding):
    CASES["damaged JSON text"] += 1
    text = json.dumps(VALID)
    text = text[:cut] + insert + text[cut + length :]
    config_path.write_bytes(text.encode(encoding, errors="replace" if encoding == "latin-1" else "surrogatepass"))
    load(str(config_path))


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b" \n",
        b"\xef\xbb\xbf{}",  # a UTF-8 byte-order mark
        b"\xff\xfe{\x00}\x00",  # UTF-16
        b"\x80abc",  # not UTF-8
        b"\x00" * 10,
        b"[" * 100_000,  # nested deeper than the parser's recursion
        b'{"profiles": ' * 50_000,
        b"1" * 5000,  # more digits than Python turns into an int
        b'{"gpus": [{"uuid": "GPU-a", "memory_mib": ' + b"9" * 5000 + b"}]}",
        b"profiles:\n  - slug: cpu\n    display_name: CPU\n",  # YAML: the file is JSON
        b"--- {profiles: []}\n",
        b"NaN",
        b"null",
        b'"profiles"',
        b"{}{}",
        b'{"profiles": [], "profiles": 1}',
    ],
)
def test_odd_files_give_one_line(config_path, content):
    config_path.write_bytes(content)
    load(str(config_path))


def test_a_directory_or_a_missing_file_gives_one_line(tmp_path):
    for path in (str(tmp_path), str(tmp_path / "missing.json"), str(tmp_path / "missing" / "gpus.json")):
        message = load(path)
        assert message and "cannot read it" in message
