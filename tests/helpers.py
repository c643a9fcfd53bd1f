"""Test helpers shared by every capability's tests."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from central.hub import Hub


def token_for(hub: Hub, username: str, role: str = "city_admin", org: str = "/city") -> str:
    """A bearer session token for `username` holding `role` over `org`: creates the org chain, the user
    (no usable password, no forced change) and a root binding when missing. Send it as
    `Authorization: Bearer <token>`."""
    from central.iam.service import service_of

    return service_of(hub).session_for(username, role, org)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wait_for(cond: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll `cond` until it returns something truthy (returned) or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def serve(hub: Hub) -> Iterator[str]:
    """The hub's app served by a real uvicorn (lifespan on: the hub's workers start and stop with it) in a
    thread on a free loopback port; yields its base URL."""
    import uvicorn

    from central.app import create_app

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # the OS picks a free port; uvicorn serves on this very socket (no race)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(hub=hub, start_bridge=False), log_level="warning",
                                           lifespan="on"))
    t = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    t.start()
    try:
        deadline = time.monotonic() + 15
        while not server.started:
            if time.monotonic() > deadline or not t.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(10)
        sock.close()


def stop_processes(procs: list[Any], timeout: float = 30.0) -> None:
    """SIGTERM every process still running, then wait for each; one that outlives `timeout` is killed."""
    import subprocess

    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@contextmanager
def chromium(profile: Path, width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A headless Debian Chromium (chromedriver) with its own profile directory, closed afterwards."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        # `./run test` installs them; a missing browser is a broken set-up, not a reason to pass quietly.
        raise RuntimeError("Debian chromium + chromedriver are not installed (apt-get install chromium "
                           "chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console (errors fail tests)
    drv = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)
