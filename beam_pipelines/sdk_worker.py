"""One Beam Python SDK worker process, as `beam_pipelines.worker_pool` starts them:

    python -m beam_pipelines.sdk_worker --control_endpoint=HOST:PORT --worker_id=ID [--state_cache_bytes=N]

The same `SdkHarness` Beam's own pool starts, with one change: the user-state cache weighs values without
walking every loaded module. Beam's cache weighs each value it stores (`statecache.get_deep_size`, once per
key and bundle for keyed state) with `objsize.get_deep_size`, whose default first collects the globals of
every module in `sys.modules` (thousands in a worker that imported Beam, pydantic and boto) to exclude them;
py-spy of the KPI job put 30 % of the worker's CPU in that walk (`_iter_modules_globals`,
`_update_exclude_set`). Here the set of module-globals ids is computed once and again only when a module was
imported since, and passed to objsize as its exclude set: the same weights, without the walk per value
(`tests/unit/test_sdk_worker.py` checks both).

    python -m beam_pipelines.sdk_worker --standby [--state_cache_bytes=N]

starts a worker ahead of time: it imports Beam's harness and the pipelines' modules (what unpickling a job's
steps imports), then waits for one line on stdin, `{"control_endpoint": ..., "worker_id": ...}`, and runs as
above (end of input: it exits). The pool keeps one such spare, so a job's start or restart does not wait for a new
interpreter's imports (3-5 s on two busy cores, in the path of every restart after a fault).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, List, Optional, Set

_excluded: Set[int] = set()
_modules_seen = -1


def _module_globals_ids() -> Set[int]:
    """ids of every loaded module's globals dict (what objsize's exclude_modules_globals collects), plus None."""
    global _excluded, _modules_seen
    if len(sys.modules) != _modules_seen:
        ids = {id(None)}
        for mod in list(sys.modules.values()):
            try:
                ids.add(id(vars(mod)))
            except TypeError:
                pass
        _excluded, _modules_seen = ids, len(sys.modules)
    return _excluded


def get_deep_size(*objs: Any) -> int:
    """Beam's `statecache.get_deep_size` (its size, referents and filter functions), without the walk per call."""
    import objsize
    from apache_beam.runners.worker import statecache

    # objsize only reads the exclude set (adding id(None), already in it): one shared set is safe.
    return objsize.get_deep_size(*objs, get_size_func=statecache._size_func,
                                 get_referents_func=statecache._get_referents_func,
                                 filter_func=statecache._filter_func, exclude_modules_globals=False,
                                 exclude_set=_module_globals_ids())


def install() -> None:
    """Make Beam's state cache weigh values with `get_deep_size` above (it calls the module-level name)."""
    from apache_beam.runners.worker import statecache

    statecache.get_deep_size = get_deep_size


# What unpickling a job's steps imports (each pipeline module imports its transforms, sinks and schemas).
WARM_MODULES = ("beam_pipelines.kpi", "beam_pipelines.frontend", "beam_pipelines.billing", "beam_pipelines.archive",
                "beam_pipelines.leads")


def warm_up() -> None:
    """Import Beam's harness and the pipelines' modules now; one that fails to import is left to the job."""
    import importlib
    import logging

    from apache_beam.runners.worker import sdk_worker  # noqa: F401

    for name in WARM_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the job imports it again and reports the error where it belongs
            logging.exception("standby SDK worker: importing %s failed", name)


def wait_for_assignment(stream=None) -> Optional[dict]:
    """The pool's one line naming the worker this standby process becomes; None at end of input (not needed)."""
    import json

    line = (stream or sys.stdin).readline()
    if not line.strip():
        return None
    got = json.loads(line)
    return {"control_endpoint": str(got["control_endpoint"]), "worker_id": str(got["worker_id"])}


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--control_endpoint")
    ap.add_argument("--worker_id")
    ap.add_argument("--standby", action="store_true",
                    help="import everything, then read the control endpoint and worker id as JSON from stdin")
    ap.add_argument("--state_cache_bytes", type=int, default=0)
    ap.add_argument("--data_buffer_time_limit_ms", type=int, default=-1)
    ap.add_argument("--stock_state_weigher", action="store_true", help="keep Beam's weighing (A/B benchmarks)")
    args = ap.parse_args(argv)
    if not args.standby and not (args.control_endpoint and args.worker_id):
        ap.error("--control_endpoint and --worker_id are required (or --standby)")
    if args.standby:
        warm_up()
        assignment = wait_for_assignment()
        if assignment is None:
            return
        args.control_endpoint, args.worker_id = assignment["control_endpoint"], assignment["worker_id"]
    if not args.stock_state_weigher:
        install()
    from apache_beam.runners.worker.sdk_worker import SdkHarness

    SdkHarness(args.control_endpoint, worker_id=args.worker_id, state_cache_size=args.state_cache_bytes,
               data_buffer_time_limit_ms=args.data_buffer_time_limit_ms).run()


if __name__ == "__main__":
    main()
