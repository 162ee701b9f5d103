"""Joining a Ray cluster as users start it: `ray start --head` with a token on this machine
turns token authentication on, and `petq sweep --ray auto` joins it with that token
without RAY_AUTH_MODE set by hand (petq.raysweep.join_with_local_token)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

from browser import free_port
from petq.raysweep import join_with_local_token

ROOT = Path(__file__).resolve().parent.parent
RAY = shutil.which("ray")


@pytest.fixture()
def home() -> Path:
    """A home of its own, and a short path: Ray's sockets live under its temp folder."""
    folder = Path(tempfile.mkdtemp(prefix="pq", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def ray_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return dict(env, HOME=str(home), RAY_USAGE_STATS_ENABLED="0", **extra)


@pytest.fixture()
def head(home: Path) -> str:
    """`ray start --head` as a user runs it, after a token was made the way Ray makes it
    (`ray get-auth-token --generate` writes ~/.ray/auth_token), in its own temp folder and
    on a free port; stopped at the end through its own process group only (not
    `ray stop`, which would stop every Ray cluster on the machine)."""
    if RAY is None:
        pytest.skip("the ray command is not installed")
    subprocess.run([RAY, "get-auth-token", "--generate"], env=ray_env(home), check=True,
                   capture_output=True, timeout=60)
    assert (home / ".ray" / "auth_token").stat().st_size > 0
    port = free_port()
    log = open(home / "ray-start.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [RAY, "start", "--head", f"--port={port}", f"--temp-dir={home / 'r'}", "--num-cpus=1",
         "--include-dashboard=false", "--disable-usage-stats", "--block"],
        env=ray_env(home), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        text = wait_until_started(home / "ray-start.log", process, 120)
        assert "Token authentication is enabled" in text, text[-3000:]
        yield f"127.0.0.1:{port}"
    finally:
        with_group(process, signal.SIGTERM)
        try:
            process.wait(60)  # Ray drains its node for up to 30 s
        except subprocess.TimeoutExpired:
            with_group(process, signal.SIGKILL)
            process.wait(10)
        with_group(process, signal.SIGKILL)  # what the drain left
        log.close()


def with_group(process: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def wait_until_started(log: Path, process: subprocess.Popen, timeout: float) -> str:
    """The log of `ray start` once it says the runtime started (its last step)."""
    from waiting import wait_until

    def started() -> str:
        assert process.poll() is None, log.read_text(errors="replace")[-3000:]
        text = log.read_text(errors="replace")
        return text if "Ray runtime started" in text else ""

    return wait_until(started, timeout, interval=0.5,
                      message=lambda: log.read_text(errors="replace")[-3000:])


JOIN = """
    import os
    from petq.raysweep import RaySession, resolve_ray_address
    session = RaySession(resolve_ray_address("auto"), None, 1, 0)
    try:
        ray = session.ray
        print(os.environ.get("RAY_AUTH_MODE"), len(ray.nodes()),
              ray.get(ray.remote(lambda: 6 * 7).remote(), timeout=120))
    finally:
        session.close()
"""


@pytest.mark.slow
@pytest.mark.xdist_group("ray")  # one Ray at a time on the machine (pytest -n)
def test_sweep_joins_a_plain_ray_start_with_its_token(head, home):
    joined = subprocess.run([sys.executable, "-c", textwrap.dedent(JOIN)], cwd=ROOT,
                            env=ray_env(home, RAY_ADDRESS=head), capture_output=True,
                            text=True, timeout=240)
    assert joined.returncode == 0, joined.stderr[-3000:]
    assert joined.stdout.split() == ["token", "1", "42"], joined.stdout


def test_an_explicit_auth_mode_wins(monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert join_with_local_token("127.0.0.1:6379") is False
    assert os.environ["RAY_AUTH_MODE"] == "disabled"
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert join_with_local_token("10.1.2.3:6379") is True


def test_no_token_is_sent_to_a_cluster_not_on_this_machine(monkeypatch, home):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    (home / ".ray").mkdir()
    (home / ".ray" / "auth_token").write_text("f" * 64)
    monkeypatch.setenv("HOME", str(home))
    assert join_with_local_token("192.0.2.77:6379") is False  # not an address of this machine
    assert join_with_local_token("ray://127.0.0.1:10001") is False  # Ray Client: not joined
    assert join_with_local_token(None) is False  # a new local Ray: ray.init sets it up
    assert "RAY_AUTH_MODE" not in os.environ
