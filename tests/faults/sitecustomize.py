"""Fault injection for end-to-end tests: loaded into a `stylize` subprocess through PYTHONPATH.

STYLIZE_FAULTS is a JSON list of {"op": "write"|"read"|"oom", "match": substring, "times": n, "error": text}:
the first n matching storage calls raise ConnectionError(text), as a flaky network would; with "delay": s
instead of an error they succeed s seconds late, as a slow store would; "oom" makes the first n batch
optimisations raise torch.cuda.OutOfMemoryError, as a full GPU would; "evaluate" with "after": k lets k batched
forward+backward passes through, then fails the next one with ConnectionError(text), as a device or node
lost mid-optimisation would (the batch fails and Prefect retries it); "hang" with "match": a pair id and
"after": k blocks that pair's optimisation for good at its iteration k + 1, in a call no exception can
interrupt, as a GPU that stops answering would ("times": -1 on every attempt).
"""

import json
import os
import time

_plan = json.loads(os.environ.get("STYLIZE_FAULTS") or "[]")

if _plan:
    from flows import storage

    def _wrap(op, real):
        def faulty(uri, *args, **kwargs):
            for fault in _plan:
                if fault["op"] == op and fault["match"] in uri and fault["times"] != 0:
                    fault["times"] -= 1
                    if "delay" in fault:
                        time.sleep(fault["delay"])
                        break
                    raise ConnectionError(fault.get("error", "injected fault"))
            return real(uri, *args, **kwargs)

        return faulty

    storage.write_bytes = _wrap("write", storage.write_bytes)
    storage.read_bytes = _wrap("read", storage.read_bytes)

    if any(f["op"] == "oom" for f in _plan):
        import torch

        from flows import tasks

        real_stylize_batch = tasks.stylize_batch

        def out_of_memory(jobs, *args, **kwargs):
            for fault in _plan:
                if fault["op"] == "oom" and fault["times"] != 0:
                    fault["times"] -= 1
                    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
            return real_stylize_batch(jobs, *args, **kwargs)

        tasks.stylize_batch = out_of_memory

    if any(f["op"] == "evaluate" for f in _plan):
        from stylecore import lockstep

        real_optimise = lockstep.optimise

        def optimise_then_fail(starts, evaluate, **kwargs):
            def faulty(batch):
                for fault in _plan:
                    if fault["op"] == "evaluate" and fault["times"] != 0:
                        fault["after"] -= 1
                        if fault["after"] < 0:
                            fault["times"] -= 1
                            raise ConnectionError(fault.get("error", "injected fault"))
                return evaluate(batch)

            return real_optimise(starts, faulty, **kwargs)

        lockstep.optimise = optimise_then_fail

    if any(f["op"] == "hang" for f in _plan):
        import threading

        from flows.progress import ProgressReporter

        real_report = ProgressReporter.__call__

        def report_or_hang(self, record):
            for fault in _plan:
                if fault["op"] == "hang" and fault["match"] == self.pair_id and fault["times"] != 0 and record.iteration > fault["after"]:
                    fault["times"] -= 1
                    threading.Event().wait()
            return real_report(self, record)

        ProgressReporter.__call__ = report_or_hang
