"""Where trials run. One interface, two implementations:

- ``InProcessExecutor``: one trial at a time in the driver's process (tests, one CPU, debugging);
- ``RayExecutor``: ``workers`` trials at once on a local Ray (``--workers N``) or an existing cluster
  (``--address auto``). A trial asks Ray for ``gpus_per_trial`` GPUs (a fraction shares a GPU) where
  the cluster has GPUs, else for ``cpus_per_trial`` CPUs and sets torch's threads to that.

The driver alone talks to Optuna. Intermediate reports travel worker → driver and the prune answer
back (``on_report(number, step, value) -> prune?``): in process a direct call; on Ray through a small
``_Channel`` actor that only holds messages. A worker that dies gives a ``failed`` outcome that says so.
"""
from __future__ import annotations

import abc
import time
from collections import deque
from typing import Callable, Deque, Dict, List, Optional

from nlsearch.cluster import check_address
from nlsearch.runtime import reclaim_sigterm
from nlsearch.search.space import Resources
from nlsearch.search.trial import TrialJob, TrialOutcome, run_trial

OnReport = Callable[[int, int, float], bool]
ANSWER_TIMEOUT_S = 300.0                 # a worker waits this long for the driver's prune answer


class Executor(abc.ABC):
    """Runs TrialJobs; ``wait`` returns the outcomes that finished (possibly none before ``timeout``)."""

    slots: int = 1

    def start(self, on_report: OnReport) -> None:
        self.on_report = on_report

    @abc.abstractmethod
    def submit(self, job: TrialJob) -> None: ...

    @abc.abstractmethod
    def running(self) -> int: ...

    @abc.abstractmethod
    def wait(self, timeout: float) -> List[TrialOutcome]: ...

    def cancel_all(self) -> List[int]:
        """Stops every running trial (Ctrl-C); returns their numbers."""
        return []

    def shutdown(self) -> None:
        pass

    def describe(self) -> str:
        return type(self).__name__

    def threads(self) -> Optional[int]:
        """torch threads a trial should use (None: the budget's)."""
        return None


class InProcessExecutor(Executor):
    """One trial at a time, synchronously inside ``wait``; KeyboardInterrupt reaches the driver."""

    def __init__(self, threads: Optional[int] = None):
        self.queue: Deque[TrialJob] = deque()
        self._threads = threads

    def submit(self, job: TrialJob) -> None:
        self.queue.append(job)

    def running(self) -> int:
        return len(self.queue)

    def wait(self, timeout: float) -> List[TrialOutcome]:
        if not self.queue:
            return []
        job = self.queue[0]
        outcome = run_trial(job, lambda step, value: self.on_report(job.number, step, value))
        self.queue.popleft()
        return [outcome]

    def cancel_all(self) -> List[int]:
        numbers = [job.number for job in self.queue]
        self.queue.clear()
        return numbers

    def describe(self) -> str:
        return "in-process (1 worker)"

    def threads(self) -> Optional[int]:
        return self._threads


def _channel_class():
    import ray

    @ray.remote(num_cpus=0)
    class _Channel:
        """Holds messages between workers and the driver; never touches the study."""

        def __init__(self):
            self.reports: List[tuple] = []
            self.answers: Dict[tuple, bool] = {}

        def put(self, number: int, step: int, value: float) -> None:
            self.reports.append((number, step, value))

        def drain(self) -> List[tuple]:
            out, self.reports = self.reports, []
            return out

        def answer(self, number: int, step: int, prune: bool) -> None:
            self.answers[(number, step)] = prune

        def take(self, number: int, step: int) -> Optional[bool]:
            return self.answers.pop((number, step), None)

    return _Channel


def nlsearch_trial(job: TrialJob, channel) -> TrialOutcome:
    """The Ray task (its process is titled ``ray::nlsearch_trial`` while it runs)."""
    import ray

    lost = []                            # the channel died (its node went away): train on, unpruned

    def report(step: int, value: float) -> bool:
        if lost:
            return False
        try:
            ray.get(channel.put.remote(job.number, step, value))
            deadline = time.monotonic() + ANSWER_TIMEOUT_S
            while time.monotonic() < deadline:
                answer = ray.get(channel.take.remote(job.number, step))
                if answer is not None:
                    return answer
                time.sleep(0.05)
        except ray.exceptions.RayActorError:
            lost.append(step)
        return False
    return run_trial(job, report)


class RayExecutor(Executor):
    def __init__(self, workers: int = 2, address: Optional[str] = None, resources: Resources = Resources(),
                 use_gpus: bool = True):
        """``use_gpus=False`` (``--device cpu``): trials ask Ray for CPUs even where it sees GPUs."""
        import ray

        self.ray = ray
        self.address, self.resources = address, resources
        if not ray.is_initialized():
            if address:
                check_address(address)
                ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
            else:
                ray.init(num_cpus=workers * resources.cpus_per_trial, include_dashboard=False,
                         log_to_driver=False, configure_logging=False)
            reclaim_sigterm()                     # Ray's own SIGTERM handler would exit without clean-up
        total = ray.cluster_resources()
        self.gpus = total.get("GPU", 0.0) if use_gpus else 0.0
        if self.gpus > 0:
            self.options = {"num_cpus": 1, "num_gpus": resources.gpus_per_trial}
            capacity = self.gpus / resources.gpus_per_trial
        else:
            self.options = {"num_cpus": resources.cpus_per_trial}
            capacity = total.get("CPU", 1) // resources.cpus_per_trial
        self.slots = max(1, int(capacity)) if address else workers
        self.remote = ray.remote(max_retries=0)(nlsearch_trial).options(**self.options)
        self.channel = self._new_channel()
        self.futures: Dict[object, int] = {}

    def _new_channel(self):
        """The channel asks to live on the driver's node, so that a worker node that goes away does not
        take it along; Ray may still place it elsewhere (soft affinity), so its death is survived too."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
        here = NodeAffinitySchedulingStrategy(node_id=self.ray.get_runtime_context().get_node_id(), soft=True)
        return _channel_class().options(scheduling_strategy=here).remote()

    def submit(self, job: TrialJob) -> None:
        self.futures[self.remote.remote(job, self.channel)] = job.number

    def running(self) -> int:
        return len(self.futures)

    def _relay_reports(self) -> None:
        """Relays the workers' reports to ``on_report``. A channel that died with its node is replaced
        for the trials submitted from now on; the running trials that held it train on unpruned."""
        try:
            reports = self.ray.get(self.channel.drain.remote())
        except self.ray.exceptions.RayActorError:
            self.channel = self._new_channel()
            return
        for number, step, value in reports:
            prune = self.on_report(number, step, value)
            self.channel.answer.remote(number, step, bool(prune))

    def _collect(self, ref) -> TrialOutcome:
        number = self.futures.pop(ref)
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayError as err:
            kind = type(err).__name__
            lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
            detail = lines[-1][:300] if lines else ""
            return TrialOutcome(number, "failed", reason=f"worker died ({kind}): {detail}")

    def wait(self, timeout: float) -> List[TrialOutcome]:
        deadline = time.monotonic() + timeout
        while True:
            self._relay_reports()
            ready, _ = self.ray.wait(list(self.futures), num_returns=1, timeout=0.1) if self.futures else ([], [])
            if ready or time.monotonic() >= deadline:
                return [self._collect(ref) for ref in ready]

    def cancel_all(self) -> List[int]:
        numbers = list(self.futures.values())
        for ref in list(self.futures):
            self.ray.cancel(ref, force=True)
        self.futures.clear()
        return numbers

    def shutdown(self) -> None:
        if not self.address:
            self.ray.shutdown()

    def describe(self) -> str:
        where = f"cluster {self.address}" if self.address else "local Ray"
        unit = f"{self.options.get('num_gpus')} GPU" if self.gpus else f"{self.resources.cpus_per_trial} CPU"
        return f"{where}, {self.slots} workers, {unit} per trial"

    def threads(self) -> Optional[int]:
        return None if self.gpus else self.resources.cpus_per_trial
