"""sim.lava.run: execute an artifact as a Lava process graph (Loihi2SimCfg), under a guard.

Every sample is in the source from the start and samples are pipelined: every timestep carries
B = `lanes` samples side by side (sim.lava.graph; B = 1 is one sample per timestep at T = 1), so
Lava's per-step cost (~0.1 ms per process) is shared by B samples; the readout's accumulator is
read once after the run. The result does not depend on B. Recurrent artifacts run as one cell
process over batches of trials (sim.lava.recurrent), under the same guard. The result is a
sim.cpu `SimResult` (same output, accumulator and per-node statistics) so the two backends
compare directly.

The guard (notes/lava.md, "Failure behaviour"): an exception in a process model deadlocks the
run, Lava's watchdog only prints, and `stop()` after a failure waits forever. So the run is
started without blocking and watched against a wall-clock limit; a model's exception, a Lava
process that dies, an error from the runtime, or the limit ends every Lava child process, shuts
the shared-memory manager (which unlinks the segments) and raises a SimulationError carrying the
model's own exception text. `stop()` is called only after a run that finished normally.
"""
from __future__ import annotations

import contextlib

import multiprocessing
import queue
import threading
import time

import numpy as np

from sim import semantics
from sim.artifact import Artifact
from sim.cpu.runner import LayerStats, SimResult, prepare_run
from sim.lava import graph
from sim.lava.compat import load_lava
from toolchain.errors import SimulationError

TAGS = ("fixed_pt", "floating_pt")
PROGRESS_SAMPLES = 256   # samples per run() call when progress is reported
POLL_S = 0.05            # how often a waiting run checks the Lava processes and the clock
ERROR_TEXT_WAIT_S = 2.0  # how long to wait for a failed model's exception to arrive
MAC_SECONDS = 5e-8       # timeout allowance per multiply-accumulate (numpy: ~1 ns)


def default_timeout(steps: int, processes: int, macs: int = 0) -> float:
    """A generous limit: start-up plus 2 ms per process and step (Lava needs ~0.1 ms), plus
    MAC_SECONDS per multiply-accumulate of the whole run (B lanes make each step B× the work)."""
    return 60.0 + 2e-3 * steps * processes + MAC_SECONDS * macs


def run(art: Artifact, x: np.ndarray, timesteps: int = 1, binary: bool = False,
        tag: str = "fixed_pt", timeout: float | None = None, progress=None,
        batch: int | None = None, lanes: int | None = None) -> SimResult:
    """Run `art` on float inputs x (N, *input_shape) as Lava processes; see the module docstring.

    `tag` selects the ProcessModels ("fixed_pt": bit-exact to sim.cpu; "floating_pt": float64
    neurons, see sim.lava.procs.models). `timeout` bounds the whole run in seconds (default:
    `default_timeout`). `progress(n)` is called as n more samples complete. `lanes` (B) is the
    number of samples every Lava timestep carries side by side: default
    min(N, graph.DEFAULT_LANES = 64), always capped so one (B, *shape) message of the widest
    layer stays under graph.MESSAGE_BYTES (1 MiB); lanes=1 is one sample per timestep.

    A recurrent artifact (a Delay node) takes x (N, T, *input_shape), one trial per row, and
    returns per-step outputs (N, T, *output_shape) like sim.cpu; it runs as a source, one cell
    process and a sink with `batch` trials side by side (sim.lava.recurrent); `lanes`, when
    given and `batch` is not, is that number.
    """
    if art.recurrent:
        from sim.lava import recurrent
        return recurrent.run(art, x, timesteps, binary, tag, timeout, progress,
                             lanes if batch is None else batch)
    plan = graph.plan(art, timesteps, binary)  # refuses unmapped nodes before anything else
    x, stats = prepare_run(art, x, timesteps)
    if tag not in TAGS:
        raise SimulationError(f"unknown Lava tag {tag!r}; use one of {', '.join(TAGS)}")
    plan.lanes = graph.choose_lanes(plan, len(x), lanes)
    readout = art.node(art.output)
    if len(x) == 0:
        empty = np.zeros((0,) + tuple(readout.shape))
        return SimResult(empty.astype(np.float32), empty.astype(np.int64), stats, 0, timesteps)
    load_lava()
    from lava.magma.core.run_configs import Loihi2SimCfg

    from sim.lava.builder import build

    net = build(plan, x)
    total = plan.num_steps(len(x))
    limit = default_timeout(total, len(net.processes),
                            plan.macs_per_sample() * len(x) * timesteps) \
        if timeout is None else float(timeout)
    guarded = GuardedRun(net.readout, Loihi2SimCfg(select_tag=tag), limit)
    with guarded.watching():
        done = 0
        for end in _run_ends(plan, len(x), progress is not None):
            guarded.advance(end - done)
            if progress is not None:
                progress(_completed(plan, end, len(x)) - _completed(plan, done, len(x)))
            done = end
        accumulator = np.rint(guarded.receive(net.readout.result)).astype(np.int64)
        _collect_stats(plan, net, stats)
        guarded.stop()
    output = semantics.readout(accumulator, readout.bias[None], readout.scale[None], timesteps)
    return SimResult(output, accumulator, stats, len(x), timesteps)


def _completed(plan: graph.Plan, steps: int, samples: int) -> int:
    """Samples whose readout is complete after `steps` Lava steps."""
    return min(samples, max(0, steps - plan.latency) // plan.timesteps * plan.lanes)


def _run_ends(plan: graph.Plan, samples: int, chunked: bool) -> list[int]:
    """Step counts at which run() calls end: one call, or one per ⌈PROGRESS_SAMPLES / B⌉ groups
    of B samples."""
    total = plan.num_steps(samples)
    if not chunked:
        return [total]
    every = -(-PROGRESS_SAMPLES // plan.lanes) * plan.timesteps
    return list(range(plan.latency + every, total, every)) + [total]


def _collect_stats(plan: graph.Plan, net, stats: dict[str, LayerStats]) -> None:
    """Per-node statistics from the stage processes' Vars (each read once)."""
    for stage in plan.stages:
        proc = net.layers.get(stage.node.name, net.readout)
        synops = proc.synops.get()
        for node, count in zip(stage.chain.nodes, synops):
            stats[node.name].synops += int(count)
        if stage.node.kind == "neuron":
            st = stats[stage.node.name]
            st.spikes = int(proc.spikes.get()[0])
            st.payload = int(proc.payload_total.get()[0])
            st.saturations = int(proc.saturations.get()[0])


class Failure(Exception):
    """Why a guarded run is being ended; `expect_model_error` says a model's exception text is
    on its way (a model raised or a process died) and worth waiting for."""

    def __init__(self, reason: str, expect_model_error: bool = False, cause=None):
        super().__init__(reason)
        self.expect_model_error = expect_model_error
        self.cause = cause


class GuardedRun:
    """One Lava execution of the graph around `root` under a wall-clock limit (module docstring).

    Lava's runtime exposes no public handle on its OS processes or its shared memory, so the
    guard reads `runtime._messaging_infrastructure` (the actors and the shared-memory manager)
    and waits on the runtime's response port without consuming it.
    """

    def __init__(self, root, run_cfg, timeout: float):
        self.root = root
        self.run_cfg = run_cfg
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout
        self.runtime = None

    @contextlib.contextmanager
    def watching(self):
        """Turn a Failure inside the block into its SimulationError, and any other exception
        (KeyboardInterrupt included) into an abort, ending every Lava process either way."""
        try:
            yield
        except Failure as failure:
            raise self.abort(failure) from None
        except BaseException as exc:
            self.abort(Failure(f"interrupted by {type(exc).__name__}: {exc}"))
            raise

    def _left(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def advance(self, steps: int) -> None:
        """Run `steps` more steps (the first call compiles and starts the processes)."""
        from lava.magma.core.run_conditions import RunSteps

        condition = RunSteps(num_steps=steps, blocking=False)
        if self.runtime is None:
            self._start(condition)
        else:
            self.root.run(condition)
        self._await()

    def _start(self, condition) -> None:
        # Compiling and forking the processes happen in a helper thread so that a start-up
        # that never returns (a process dying before it reports) is bounded by the limit too.
        outcome = {}

        def start():
            try:
                self.root.run(condition, run_cfg=self.run_cfg)
            except BaseException as exc:  # reported to the guarding thread
                outcome["error"] = exc

        thread = threading.Thread(target=start, name="sim.lava start", daemon=True)
        thread.start()
        thread.join(self._left())
        self.runtime = self.root.runtime
        if thread.is_alive():
            raise Failure(f"the Lava processes did not start within {self.timeout:g} s")
        if "error" in outcome:
            exc = outcome["error"]
            raise Failure(f"Lava could not start the network: {type(exc).__name__}: {exc}",
                          expect_model_error=True, cause=exc)

    def _await(self) -> None:
        from lava.magma.runtime.mgmt_token_enums import MGMT_RESPONSE, enum_equal

        for port in self.runtime.service_to_runtime:
            self._wait_token(port)
            if not enum_equal(port.peek(), MGMT_RESPONSE.DONE):
                raise Failure("the Lava runtime reported an error", expect_model_error=True)
        self.runtime.wait()

    def _wait_token(self, csp_port) -> None:
        """Block until `csp_port` (a host-side Lava channel end) holds a message, without
        consuming it, checking the processes and the clock every POLL_S seconds."""
        while True:
            try:
                csp_port._queue.get(timeout=POLL_S, peek=True)
                return
            except queue.Empty:
                self._check_processes()

    def receive(self, out_port) -> np.ndarray:
        """The one message a process sends through `out_port`'s external pipe."""
        csp_port = out_port.external_pipe_csp_recv_port
        self._wait_token(csp_port)
        data = csp_port.recv()
        csp_port.join()  # ends the port's listener thread
        return data

    def _actors(self) -> list:
        infra = self.runtime._messaging_infrastructure if self.runtime else None
        return list(infra.actors) if infra is not None else []

    def _check_processes(self) -> None:
        for actor in self._actors():
            if actor.exception is not None or actor.exitcode is not None:
                raise Failure("a Lava process ended during the run", expect_model_error=True)
        if time.monotonic() > self.deadline:
            raise Failure(f"the Lava run did not finish within {self.timeout:g} s")

    def _model_errors(self, wait: float) -> list[tuple[str, BaseException, str]]:
        """(process name, exception, traceback) of every model that raised, waiting up to
        `wait` seconds for the first to arrive through its process's pipe."""
        names = [p.name for p in self.runtime._executable.proc_builders] if self.runtime else []
        until = time.monotonic() + wait
        while True:
            errors = []
            for i, actor in enumerate(self._actors()):
                report = actor.exception
                if report is not None:
                    exc, trace = report
                    errors.append((names[i] if i < len(names) else "runtime service", exc, trace))
            if errors or time.monotonic() >= until:
                return errors
            time.sleep(0.01)

    def abort(self, failure: Failure) -> SimulationError:
        """End every Lava process and free the shared memory; return the error to raise."""
        errors = self._model_errors(ERROR_TEXT_WAIT_S if failure.expect_model_error else 0.0)
        self._end_processes()
        cause = failure.cause
        if errors:
            name, exc, trace = errors[0]
            message = f"Lava process {name!r} failed: {type(exc).__name__}: {exc}"
        elif cause is not None and getattr(cause, "trace", None):
            message, trace = str(failure), cause.trace
        else:
            message, trace = str(failure), None
        error = SimulationError(f"{message} (every Lava process was ended)")
        error.lava_traceback = trace
        return error

    def _end_processes(self) -> None:
        runtime = self.runtime
        if runtime is None:
            return
        actors = self._actors()
        for actor in actors:
            if actor.is_alive():
                actor.terminate()
        for actor in actors:
            multiprocessing.Process.join(actor, 2.0)
            if actor.is_alive():
                actor.kill()
                multiprocessing.Process.join(actor, 2.0)
        # Lava's stop() (also called by Process.__del__) would talk to the dead processes and
        # wait forever; marked as stopped, it only releases what is left.
        runtime._is_running = runtime._is_started = False
        runtime.join()  # ends the runtime's own port threads
        for proc in runtime._executable.proc_builders:
            for port in proc.out_ports.members:
                if hasattr(port, "external_pipe_csp_recv_port"):
                    port.external_pipe_csp_recv_port.join()
        infra = runtime._messaging_infrastructure
        if infra is not None and infra.smm is not None:
            infra.stop()  # joins the ended actors, shuts the manager down: segments unlinked
        runtime._watchdog_manager.stop()

    def stop(self) -> None:
        """Stop a run that finished normally."""
        self.root.stop()
