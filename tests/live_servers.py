"""Real servers on loopback for the live-stream tests: an RTSP camera (GStreamer) and an MQTT broker (mosquitto).

Each runs as a subprocess on 127.0.0.1 and a free port, and can be stopped, restarted, paused and resumed in the
middle of a test, so a client's reconnects and timeouts meet a real server. They need Debian's packages (APT_PACKAGES,
which .ci/run installs): a test calls servers_missing() (or one of the two checks under it) and skips with its reason.

    with RtspServer(video, loop=True) as camera:
        container = av.open(camera.url, options={"rtsp_transport": "tcp"}, timeout=(5, 5))
        ...
        camera.restart()  # the stream drops, as when a camera reboots
"""

from __future__ import annotations

import functools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import av
import numpy as np
import pytest

HOST = "127.0.0.1"
APT_PACKAGES = "gir1.2-gst-rtsp-server-1.0 python3-gi mosquitto"
SYSTEM_PYTHON = Path("/usr/bin/python3")  # Debian's: the one python3-gi is for (the venv's Python cannot import gi)
RTSP_SCRIPT = Path(__file__).with_name("rtsp_server.py")

# What rtsp_server.py needs from GStreamer, checked without starting a server.
_GST_CHECK = """
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstApp, GstRtspServer
Gst.init(None)
needed = ("filesrc", "qtdemux", "appsink", "appsrc", "h264parse", "rtph264pay")
missing = [name for name in needed if not Gst.ElementFactory.find(name)]
if missing:
    raise SystemExit("missing GStreamer elements: " + ", ".join(missing))
"""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def write_h264(path: Path, frames: np.ndarray, fps: int = 25, gop: int = 25) -> Path:
    """Writes frames ((n, H, W) grey or (n, H, W, 3) RGB uint8, even H and W) as an H.264 mp4, a keyframe every gop."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        layout = "gray" if frames.ndim == 3 else "rgb24"
        for array in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format=layout)))
        container.mux(stream.encode(None))
    return path


def mosquitto_binary() -> str | None:
    """mosquitto's path: Debian puts it in /usr/sbin, which a user's PATH may lack."""
    found = shutil.which("mosquitto")
    if found is None and os.access("/usr/sbin/mosquitto", os.X_OK):
        found = "/usr/sbin/mosquitto"
    return found


@functools.cache
def rtsp_server_missing() -> str | None:
    """Why RtspServer cannot run here, or None when it can."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"no {SYSTEM_PYTHON} for the RTSP server (apt-get install {APT_PACKAGES})"
    try:
        check = subprocess.run(
            [str(SYSTEM_PYTHON), "-c", _GST_CHECK], capture_output=True, text=True, timeout=60, check=False
        )
    except subprocess.TimeoutExpired:
        return "checking GStreamer's RTSP server took over 60 s"
    if check.returncode != 0:
        lines = check.stderr.strip().splitlines() or [f"exit code {check.returncode}"]
        return f"GStreamer's RTSP server is not usable ({lines[-1]}; apt-get install {APT_PACKAGES})"
    return None


def mqtt_broker_missing() -> str | None:
    """Why MqttBroker cannot run here, or None when it can."""
    if mosquitto_binary() is None:
        return f"no mosquitto MQTT broker (apt-get install {APT_PACKAGES})"
    return None


def servers_missing() -> str | None:
    """Why RtspServer or MqttBroker cannot run here (for pytest.skip), or None when both can."""
    return rtsp_server_missing() or mqtt_broker_missing()


def require(missing: str | None) -> None:
    """Skip a test whose server cannot run here, with the reason; in CI (``CALLM_REQUIRE_SERVERS=1``, set by
    .ci/run, which installs the servers) fail instead: there a missing server is a broken CI, not a skip."""
    if missing is None:
        return
    if os.environ.get("CALLM_REQUIRE_SERVERS") == "1":
        pytest.fail(f"CI needs this server: {missing}")
    pytest.skip(missing)


class _Server:
    """A server subprocess listening on HOST:port; start() returns once the port accepts connections."""

    name = "server"

    def __init__(self, port: int | None, start_timeout: float) -> None:
        self.host = HOST
        self.port = free_port() if port is None else port
        self.start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def _command(self) -> list[str]:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> Self:
        if self.running:
            return self
        self.stop()  # the leftovers of a server that died by itself
        # stderr goes to a file, so a chatty server never blocks on a full pipe; stop() closes it
        self._log = tempfile.TemporaryFile()  # noqa: SIM115
        self._process = subprocess.Popen(
            self._command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._log
        )
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self._process.poll() is not None:
                message = f"{self.name} exited with code {self._process.returncode}: {self._stderr()}"
                self.stop()
                raise RuntimeError(message)
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(
                    f"{self.name} did not listen on {self.host}:{self.port} within {self.start_timeout} s"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """Ends the server at once (SIGTERM, then SIGKILL): every connection drops, as when a device loses power."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            process.send_signal(signal.SIGCONT)  # a paused process only acts on SIGTERM once it runs again
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def restart(self) -> None:
        """Stops the server and starts it again on the same port."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """Freezes the server (SIGSTOP): connections stay open but nothing comes, as from a hung device."""
        if self._process is not None:
            self._process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """Lets a paused server run again (SIGCONT)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGCONT)

    def _stderr(self) -> str:
        if self._log is None:
            return ""
        self._log.seek(0)
        return self._log.read().decode(errors="replace").strip()[-2000:]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


class RtspServer(_Server):
    """An RTSP camera at rtsp://127.0.0.1:PORT/PATH sending a video's H.264 at its frame rate (tests/rtsp_server.py).

    Every client gets the video from its first frame; at its end the stream ends, or with loop=True it goes on
    from the first frame again for ever, with timestamps that keep increasing.
    """

    name = "RTSP server"

    def __init__(
        self,
        video: Path,
        port: int | None = None,
        path: str = "/cam",
        loop: bool = False,
        start_timeout: float = 15.0,
    ) -> None:
        super().__init__(port, start_timeout)
        self.video = Path(video)
        self.path = path if path.startswith("/") else "/" + path
        self.loop = loop

    @property
    def url(self) -> str:
        return f"rtsp://{self.host}:{self.port}{self.path}"

    def _command(self) -> list[str]:
        command = [str(SYSTEM_PYTHON), str(RTSP_SCRIPT), str(self.video.resolve()), str(self.port), self.path]
        return [*command, "--loop"] if self.loop else command


class MqttBroker(_Server):
    """A mosquitto MQTT broker on 127.0.0.1:PORT: anonymous clients allowed, nothing kept on disk."""

    name = "mosquitto"

    def __init__(self, port: int | None = None, start_timeout: float = 10.0) -> None:
        super().__init__(port, start_timeout)
        self._config_dir: Path | None = None

    def _command(self) -> list[str]:
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError(f"no mosquitto (apt-get install {APT_PACKAGES})")
        self._config_dir = Path(tempfile.mkdtemp(prefix="callm-mosquitto-"))
        config = self._config_dir / "mosquitto.conf"
        config.write_text(
            f"listener {self.port} {self.host}\n"
            "allow_anonymous true\n"
            "persistence false\n"
            # run as whoever starts it: no switch to a 'mosquitto' user, which may not exist
            f"user {pwd.getpwuid(os.getuid()).pw_name}\n"
            "log_dest stderr\n"
            "log_type error\n"
            "log_type warning\n"
        )
        return [binary, "-c", str(config)]

    def stop(self) -> None:
        super().stop()
        if self._config_dir is not None:
            shutil.rmtree(self._config_dir, ignore_errors=True)
            self._config_dir = None
