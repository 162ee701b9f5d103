"""A spawned Python process that runs tasks one at a time, for the engine (petq.engine).

The engine's converter process is one of these. It is owned through multiprocessing's
public API (a `Process` and a `Pipe`), so it can be stopped at any time, and its loss is an
outcome of its tasks, not a crash of the caller:

- a task's exception comes back as that exception (a `PetqError` keeps its type), never as
  text to parse;
- a process that dies (killed, out of memory) or stays silent for `silence_s` while it has
  work (no result, no progress report) is stopped, and every task it had not finished
  fails with `ProcessLost`; the caller then does that work itself;
- every wait on it is bounded by that silence, and closing it waits at most that long.

Tasks report progress (`reporter`) on the same pipe: at most one report per REPORT_S
between each stage's first and last, so a caller that waits can show it as it goes.
"""

from __future__ import annotations

import multiprocessing
import pickle
import queue
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from concurrent import futures
from concurrent.futures import Future
from multiprocessing.connection import Connection, wait
from typing import Any

from petq.errors import PetqError
from petq.runtime import first_line

REPORT_S = 0.2  # how often a task reports its progress, at most
SILENCE_S = 300.0  # a busy process that says nothing for this long is taken as hung
STOP_S = 10.0  # how long a stopped process gets to end before it is killed

Stage = Callable[[str, int, int], None]  # progress(stage, done, total)


class ProcessLost(PetqError):
    """The task process ended, or was stopped as hung, before it finished a task."""


class TaskFailed(PetqError):
    """A task raised an exception that is not a PetqError (a bug or a library failure)."""


_connection: Connection | None = None  # in the task process: the pipe to the caller
_send_lock = threading.Lock()


def _send(message: tuple) -> None:
    assert _connection is not None
    with _send_lock:
        _connection.send(message)


def reporter(name: str) -> Stage | None:
    """In a task process, a progress callback that sends (name, stage, done, total) to the
    caller (`TaskProcess.take`): each stage's first and last call, and at most one call
    every REPORT_S between. None elsewhere."""
    if _connection is None:
        return None
    return throttled(lambda *report: _send(("report", name, *report)))


def throttled(send: Stage, period: float | None = None) -> Stage:
    """`send`, called for each stage's first and last count and at most once per `period`
    (default REPORT_S) between."""
    last = {"stage": "", "at": 0.0}

    def report(stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        gap = REPORT_S if period is None else period
        if stage == last["stage"] and done < total and now - last["at"] < gap:
            return
        last.update(stage=stage, at=now)
        send(stage, done, total)

    return report


def portable(exc: BaseException) -> PetqError:
    """`exc` if it survives pickling, else a TaskFailed naming it and where it was raised."""
    if isinstance(exc, PetqError):
        try:
            pickle.loads(pickle.dumps(exc))
            return exc
        except Exception:  # a subclass with another constructor
            return PetqError(str(exc))
    last = traceback.extract_tb(exc.__traceback__)[-1:]
    where = f" (at {last[0].filename.rsplit('/', 1)[-1]}:{last[0].lineno})" if last else ""
    return TaskFailed(f"{type(exc).__name__}: {exc}{where}")


def _serve(connection: Connection, initializer: Callable | None, initargs: tuple) -> None:
    """The task process: run each task the caller sends, in order, and send back its value
    or its exception. A `None` from the caller (or a closed pipe) drops what is queued."""
    global _connection
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the caller, who decides
    if initializer is not None:
        initializer(*initargs)
    _connection = connection
    tasks: queue.Queue = queue.Queue()
    closing = threading.Event()

    def receive() -> None:  # a thread, so a large task never waits for a busy process
        while True:
            try:
                message = connection.recv()
            except (EOFError, OSError):
                message = None
            if message is None:
                closing.set()
                tasks.put(None)
                return
            tasks.put(message)

    threading.Thread(target=receive, daemon=True).start()
    while not closing.is_set():
        message = tasks.get()
        if message is None or closing.is_set():
            break
        number, task, argument = message
        try:
            reply: tuple = ("done", number, task(argument))
        except BaseException as exc:  # noqa: BLE001 - sent to the caller, who decides
            reply = ("failed", number, portable(exc))
        try:
            _send(reply)
        except (OSError, ValueError):  # the caller is gone
            break


class TaskProcess:
    """One spawned process running the tasks given it (`submit`) in order.

    `initializer(*initargs)` runs there first. Futures of tasks it does not finish (it
    died, or was stopped) fail with ProcessLost; `wait_for` bounds every wait by
    `silence_s` of silence while it has work.
    """

    def __init__(self, initializer: Callable | None = None, initargs: tuple = (),
                 silence_s: float = SILENCE_S, name: str = "task process"):
        context = multiprocessing.get_context("spawn")  # TensorFlow and fork do not mix
        self._connection, child = context.Pipe()
        self.name = name
        self._process = context.Process(target=_serve, args=(child, initializer, initargs),
                                         name=f"petq {name}", daemon=True)
        self._process.start()
        child.close()
        self.silence_s = silence_s
        self.futures: list[Future] = []
        self._pending: dict[int, Future] = {}
        self._reports: dict[str, tuple[str, int, int]] = {}  # name -> its last report
        self._lock = threading.Lock()
        self._heard = time.monotonic()
        self._lost: str | None = None
        self._closed = False
        self._reader = threading.Thread(target=self._read, name=f"{name}-reader", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    @property
    def alive(self) -> bool:
        """Started, not lost, not closed: it takes tasks."""
        return self._lost is None and not self._closed

    @property
    def running(self) -> bool:
        """Whether the operating system's process is still there."""
        return not self._ended()

    def _ended(self, timeout: float = 0.0) -> bool:
        """Whether the process has ended, waiting up to `timeout` s. Read from its sentinel,
        not by joining: only the reader thread joins (reaps) it, so no other thread sees it
        alive in the moment between another's reaping and its exit code being set."""
        return bool(wait([self._process.sentinel], timeout))

    @property
    def busy(self) -> bool:
        return any(not future.done() for future in self.futures)

    def submit(self, task: Callable[[Any], Any], argument: Any) -> Future:
        """`task(argument)` there, after the tasks given before; a future of its value."""
        future: Future = Future()
        future.set_running_or_notify_cancel()
        with self._lock:
            self.futures.append(future)
            if not self.alive:
                future.set_exception(ProcessLost(f"the {self.name} {self._lost or 'was closed'}"))
                return future
            if not self._pending:
                self._heard = time.monotonic()  # silence counts from here: it had no work
            number = len(self.futures)
            self._pending[number] = future
        try:
            self._connection.send((number, task, argument))
        except (OSError, ValueError) as exc:
            self._lose(f"could not be sent its work ({exc})")
        return future

    def take(self, name: str) -> tuple[str, int, int] | None:
        """`name`'s last progress report (stage, done, total) not handed out yet, if any."""
        with self._lock:
            return self._reports.pop(name, None)

    def wait_for(self, waited: Iterable[Future], name: str | None = None,
                 progress: Stage | None = None) -> None:
        """Until `waited` are done, passing to `progress` what the task process reports of
        `name` as it comes. Bounded: a process silent for `silence_s` while it has work is
        stopped, which fails its unfinished futures."""
        pending = set(waited)
        while pending:
            _, pending = futures.wait(pending, timeout=REPORT_S)
            report = self.take(name) if name is not None else None
            if progress is not None and report is not None:
                progress(*report)
            if pending and self._pending and time.monotonic() - self._heard > self.silence_s:
                self.stop(f"said nothing for {self.silence_s:g} s with work to do, and was "
                          "stopped as hung")

    def close(self, wait: bool = True) -> None:
        """Drop the tasks not started; with `wait`, let one in progress finish (at most
        `silence_s` of silence). An idle process is not waited for: it ends on its own."""
        if self._closed:
            return
        busy = bool(self._pending)
        self._closed = True
        try:
            self._connection.send(None)
        except (OSError, ValueError):
            pass
        if wait and busy:
            deadline = time.monotonic() + self.silence_s
            while self._pending and not self._ended(REPORT_S):
                if time.monotonic() > max(deadline, self._heard + self.silence_s):
                    self.stop("did not finish its task after the run ended, and was stopped")
                    break
        self._lose("was closed")

    def stop(self, why: str = "was stopped") -> None:
        """End the process now, whatever it is doing; its unfinished tasks fail."""
        self._closed = True
        with self._lock:
            self._lost = self._lost or why  # the reason its tasks fail, not its exit code
        if not self._ended():
            self._process.terminate()
            if not self._ended(STOP_S):
                self._process.kill()
                self._ended(STOP_S)
        self._lose(why)

    # ---------------------------------------------------------------- the caller's side

    def _read(self) -> None:
        """The reader thread: results and reports as they come; at the process's end, its
        unfinished tasks fail."""
        connection, sentinel = self._connection, self._process.sentinel
        while True:
            try:
                ready = wait([connection, sentinel])
                if connection not in ready:
                    break  # ended, and everything it sent is read
                message = connection.recv()
            except (EOFError, OSError):
                break
            except Exception as exc:  # a reply that cannot be read here: nothing to trust
                self.stop(f"sent a reply that could not be read ({first_line(exc)})")
                break
            self._heard = time.monotonic()
            kind, *rest = message
            with self._lock:
                if kind == "report":
                    name, *report = rest
                    self._reports[name] = tuple(report)
                    continue
                number, value = rest
                future = self._pending.pop(number, None)
            if future is None:
                continue
            if kind == "done":
                future.set_result(value)
            else:
                future.set_exception(value)
        self._process.join(STOP_S)
        code = self._process.exitcode
        self._lose("ended" if code in (0, None) else f"ended with exit code {code}")
        connection.close()

    def _lose(self, why: str) -> None:
        """No more work there: every unfinished task fails with ProcessLost, saying why."""
        with self._lock:
            self._lost = self._lost or why
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ProcessLost(
                        f"the {self.name} {self._lost} before it finished"))
            self._pending.clear()
