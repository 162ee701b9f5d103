"""Running the engine's tasks on Ray: the address check and one session per sweep
(`petq.sweep.run_sweep`).

`resolve_ray_address` fails at once, with one clear error, for an address that does
not answer. `RaySession` joins (or starts) Ray, probes every node before any work
(paths readable, cache writable, the same library versions, which are part of every
cache key), runs the sweep's tasks with retries and cancels them on an error. Ray is
imported only here, and only when a sweep asks for it.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from petq.engine import (
    Done,
    VariantOutcome,
    VariantTask,
    probe_paths,
    run_variant,
    worker_environment,
)
from petq.errors import SweepError

RAY_CONNECT_TIMEOUT = 5.0  # seconds for the TCP check of a Ray address
RAY_PROBE_TIMEOUT = 120.0  # seconds for every Ray node to answer the pre-flight probe


def resolve_ray_address(address: str | None, timeout: float = RAY_CONNECT_TIMEOUT
                        ) -> str | None:
    """None/`local` (start or reuse a local Ray), or a cluster address that answers on its
    port within `timeout` seconds: `auto` resolves as Ray does (RAY_ADDRESS, then the
    cluster `ray start` left on this machine). SweepError otherwise, at once."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise SweepError("the ray backend needs Ray: pip install 'petq[ray]'") from None
    if address in (None, "", "local"):
        return None
    resolved = address
    if address == "auto":
        try:
            from ray._private.services import get_ray_address_from_environment

            resolved = get_ray_address_from_environment("auto", None)
        except ConnectionError:
            raise SweepError("--ray auto: no Ray cluster found (RAY_ADDRESS is unset and no "
                             "`ray start --head` ran on this machine)") from None
        except (ImportError, AttributeError):  # Ray moved its helper: let ray.init resolve it
            return address
    host, port = _split_address(resolved)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise SweepError(f"no Ray cluster answers at {resolved} within {timeout:g} s "
                         f"({exc.strerror or exc}); start one with `ray start --head` or "
                         "check the address") from None
    return resolved


def join_with_local_token(address: str | None) -> bool:
    """Before joining a Ray cluster that runs on this machine, turn on Ray's token
    authentication when its token is here; return whether it is on.

    `ray start --head` turns token authentication on when a token is found
    (RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH names, or ~/.ray/auth_token, which any
    local `ray.init()` writes), but a driver joining by address turns it on only when
    RAY_AUTH_MODE=token is set. So for a cluster started on this machine, petq does what
    Ray does for `ray.init("auto")`: it joins with that token, and a cluster without
    authentication takes the token too. A remote cluster's address is never sent this
    machine's token unless RAY_AUTH_MODE says so; an explicit RAY_AUTH_MODE always wins.
    """
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None or address is None:  # set by hand, or a new local Ray sets it up
        return (mode or "").lower() == "token"
    if address.startswith("ray://") or not _on_this_machine(_split_address(address)[0]):
        return False
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication, or one that moved it
        return False
    quiet = logging.getLogger(maybe_enable_token_auth_if_token_available.__module__)
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # its "enabled for this cluster" notice is for `ray start`
    try:
        return maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        quiet.setLevel(level)


def _on_this_machine(host: str) -> bool:
    """Is `host` this machine: a loopback address or one of its interfaces' addresses?"""
    import ipaddress

    import psutil

    try:
        ips = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False
    mine = {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs}
    return all(ipaddress.ip_address(ip).is_loopback or ip in mine for ip in ips)


def _split_address(address: str) -> tuple[str, int]:
    text = address.strip()
    client = text.startswith("ray://")
    text = text.removeprefix("ray://")
    host, _, port = text.rpartition(":")
    if not host:
        host, port = text, ("10001" if client else "6379")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise SweepError(f"bad Ray address {address!r}: expected host:port, ray://host:port, "
                         "auto or local") from None


class RaySession:
    """A connection to Ray for one sweep: joins (or starts) it, probes every node, runs
    the tasks with retries, and leaves only what it started."""

    def __init__(self, address: str | None, workers: int | None, threads: int,
                 max_retries: int):
        import ray

        self.ray = ray
        self.threads, self.workers, self.max_retries = threads, workers, max_retries
        self.started = False
        if not ray.is_initialized():
            join_with_local_token(address)
            kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
            if address is None:
                kwargs.update(include_dashboard=False,
                              num_cpus=(workers * threads) if workers else None)
            try:
                ray.init(address=address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise SweepError(
                    f"cannot join the Ray cluster at {address}: {exc} (a remote cluster with "
                    "token authentication, Ray's default, needs RAY_AUTH_MODE=token here and "
                    "its token in ~/.ray/auth_token or RAY_AUTH_TOKEN)") from None
            self.started = True
        self.env = {"env_vars": worker_environment(threads)}
        self.slots = 0
        self.context = ""

    def check_nodes(self, paths: list[str], versions: dict[str, str]) -> None:
        """One probe per alive node: paths readable, cache writable, same library versions
        as this driver (they are part of every cache key). SweepError naming the node."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        ray = self.ray
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        usable = [n for n in nodes if n.get("Resources", {}).get("CPU", 0) >= self.threads]
        if not usable:
            raise SweepError(f"no Ray node has {self.threads} CPU(s) for a task "
                             f"({len(nodes)} node(s) alive)")
        probe = ray.remote(probe_paths)
        refs = [probe.options(num_cpus=0, runtime_env=self.env, max_retries=1,
                              scheduling_strategy=NodeAffinitySchedulingStrategy(
                                  n["NodeID"], soft=False)).remote(*paths) for n in usable]
        try:
            answers = ray.get(refs, timeout=RAY_PROBE_TIMEOUT)
        except ray.exceptions.GetTimeoutError:
            raise SweepError(f"a Ray node did not answer the pre-flight check within "
                             f"{RAY_PROBE_TIMEOUT:g} s") from None
        except ray.exceptions.RayError as exc:
            raise SweepError(f"the pre-flight check failed on a Ray node: {exc}") from None
        problems = []
        for answer in answers:
            problems += [f"{answer.host}: {p}" for p in answer.problems]
            differ = {k: v for k, v in answer.versions.items() if versions.get(k) != v}
            if differ:
                problems.append(f"{answer.host}: library versions differ from this "
                                f"machine's ({differ} against {versions}); cache keys would "
                                "not match")
        if problems:
            raise SweepError("Ray workers cannot run this sweep: " + "; ".join(problems))
        per_node = [int(n["Resources"]["CPU"] // self.threads) for n in usable]
        self.slots = sum(per_node)
        if self.workers:
            self.slots = min(self.slots, self.workers)
        most = max(per_node)
        self.context = ("serial" if most <= 1 else
                        f"parallel: up to {most} tasks per machine ({len(usable)} Ray node(s))")

    def run(self, tasks: dict[int, VariantTask], done: Done) -> None:
        """Each task as a Ray task (`petq.engine.run_variant`); `done(index, outcome)` as
        each ends. A task whose worker died is retried by Ray, `max_retries` times."""
        ray = self.ray
        remote = ray.remote(run_variant).options(num_cpus=self.threads,
                                                 max_retries=self.max_retries,
                                                 retry_exceptions=False, runtime_env=self.env)
        waiting = list(tasks.items())
        flying: dict[Any, int] = {}
        limit = self.workers or len(waiting)
        try:
            while waiting or flying:
                while waiting and len(flying) < limit:
                    i, task = waiting.pop(0)
                    flying[remote.remote(task)] = i
                ready, _ = ray.wait(list(flying), num_returns=1)
                for ref in ready:
                    i = flying.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        outcome = VariantOutcome(error=SweepError(
                            f"Ray gave up after {self.max_retries} retries: "
                            f"{str(exc).splitlines()[0]}"))
                    done(i, outcome)
        except BaseException:
            for ref in flying:
                ray.cancel(ref, force=True)
            raise

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
