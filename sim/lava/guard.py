"""The guard around a Lava run (docs/lava.md, "Failure behaviour"): an exception in a process
model deadlocks the run, Lava's watchdog only prints, and `stop()` after a failure waits forever.
So the run is started without blocking and watched against a wall-clock limit; a model's
exception, a Lava process that dies, an error from the runtime, or the limit ends every Lava
child process, shuts the shared-memory manager (which unlinks the segments) and raises a
SimulationError carrying the model's own exception text. `stop()` is called only after a run
that finished normally. Shared by the feed-forward (sim.lava.runner) and the recurrent
(sim.lava.recurrent) runs.

SIGTERM and SIGHUP during a run raise `sim.errors.Terminated` (where no handler of the caller's
is installed), which ends the run like Ctrl-C's KeyboardInterrupt; what must hold even when the
process is killed outright (children that die with it, named segments, the sweep of a dead run's
segments) is sim.lava.lifetime's. Lava prints a start-up failure's traceback on stdout; the
guard keeps it off stdout (the error carries it: `lava_traceback`, shown by the CLI's --debug).
"""
from __future__ import annotations

import contextlib
import io
import multiprocessing
import queue
import threading
import time

import numpy as np

from sim.errors import SimulationError, raise_on_termination
from sim.lava import lifetime

TAGS = ("fixed_pt", "floating_pt")
POLL_S = 0.05            # how often a waiting run checks the Lava processes and the clock
ERROR_TEXT_WAIT_S = 2.0  # how long to wait for a failed model's exception to arrive
START_WAIT_S = 30.0      # how long an abort waits for a start-up still forking children
MAC_SECONDS = 5e-8       # timeout allowance per multiply-accumulate (numpy: ~1 ns)


def default_timeout(steps: int, processes: int, macs: int = 0) -> float:
    """A generous limit: start-up plus 2 ms per process and step (Lava needs ~0.1 ms), plus
    MAC_SECONDS per multiply-accumulate of the whole run (B lanes make each step B× the work)."""
    return 60.0 + 2e-3 * steps * processes + MAC_SECONDS * macs


def check_tag(tag: str) -> None:
    if tag not in TAGS:
        raise SimulationError(f"unknown Lava tag {tag!r}; use one of {', '.join(TAGS)}")


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
        self.run = None
        self.starting = None

    @contextlib.contextmanager
    def watching(self):
        """Turn a Failure inside the block into its SimulationError, and any other exception
        (KeyboardInterrupt, Terminated by SIGTERM or SIGHUP included) into an abort, ending
        every Lava process either way. Segments a dead run left behind are removed first."""
        lifetime.sweep_stale()
        self.run = lifetime.Run()
        try:
            with raise_on_termination():
                try:
                    yield
                except Failure as failure:
                    raise self.abort(failure) from None
                except BaseException as exc:
                    self.abort(Failure(f"interrupted by {type(exc).__name__}: {exc}"))
                    raise
        finally:
            self.run.close()

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
        # Its end is an Event, not Thread.join: a KeyboardInterrupt that interrupts a join
        # leaves a running thread reported as ended on Python 3.11 (bpo-45274), and an abort
        # must wait for the start-up to finish forking before it ends the processes.
        outcome = {}
        lifetime.install()
        done = self.starting = threading.Event()

        def start():
            try:
                with lifetime.forking(self.run), contextlib.redirect_stdout(io.StringIO()):
                    self.root.run(condition, run_cfg=self.run_cfg)
            except BaseException as exc:  # reported to the guarding thread
                outcome["error"] = exc
            finally:
                done.set()

        threading.Thread(target=start, name=lifetime.START_THREAD, daemon=True).start()
        done.wait(self._left())
        self.runtime = self.root.runtime
        if not done.is_set():
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
        if self.starting is not None:
            self.starting.wait(START_WAIT_S)   # let a start-up finish forking before ending all
        runtime = self.runtime = self.root.runtime if self.runtime is None else self.runtime
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
