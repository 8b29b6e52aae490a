"""The SDK worker's state-cache weighing (beam_pipelines/sdk_worker.py) gives Beam's weights without the walk."""

import subprocess
import sys

from apache_beam.runners.worker import statecache

from beam_pipelines import sdk_worker
from transforms.keyed_totals import _KeyState


def _values():
    s = _KeyState({"turns": 3, "ids": ["a" * 40, "b" * 40]})
    s.seen = {i: 1_700_000_000_000 + i for i in range(50)}
    return [s, {"k": list(range(100))}, "x" * 1000, (1, 2.5, None), [s, s], sys.modules[__name__].__dict__]


def test_weights_equal_beams():
    for v in _values():
        assert sdk_worker.get_deep_size(v) == statecache.get_deep_size(v), v if not isinstance(v, dict) else "dict"


def test_the_exclude_set_follows_new_imports():
    before = set(sdk_worker._module_globals_ids())
    import types

    mod = types.ModuleType("iheardai_test_fresh_module")
    sys.modules[mod.__name__] = mod
    try:
        assert id(vars(mod)) in sdk_worker._module_globals_ids()
        assert id(vars(mod)) not in before
        assert sdk_worker.get_deep_size(vars(mod)) == statecache.get_deep_size(vars(mod)) == 0
    finally:
        del sys.modules[mod.__name__]


def test_install_replaces_the_function_the_cache_calls():
    original = statecache.get_deep_size
    try:
        sdk_worker.install()
        cache = statecache.StateCache(1 << 20)
        cache.put("key", _values()[0])
        assert statecache.get_deep_size is sdk_worker.get_deep_size
        assert cache.size() == 1 and cache.describe_stats()
    finally:
        statecache.get_deep_size = original


def test_the_worker_command_the_pool_runs_parses_its_flags():
    out = subprocess.run([sys.executable, "-m", "beam_pipelines.sdk_worker", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "--control_endpoint" in out.stdout
