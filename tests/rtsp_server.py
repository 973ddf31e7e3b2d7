"""A real RTSP server for the live-stream tests: serves the H.264 track of an mp4 at its own frame rate.

Run it with Debian's system Python (it needs GStreamer's gst-rtsp-server through python3-gi, which the project's venv
cannot import):

    /usr/bin/python3 tests/rtsp_server.py VIDEO PORT [PATH] [--loop]

It listens on 127.0.0.1:PORT and serves rtsp://127.0.0.1:PORT/PATH. Every client gets its own playback from the
video's first frame, without re-encoding, paced by the clock the way a camera sends (one frame every 1/fps s); at the
end of the video the stream ends (an RTCP BYE), or with --loop it starts again from the first frame with timestamps
that keep increasing, for ever. It prints "ready" once it listens and runs until it is killed: SIGTERM or SIGKILL drops
every connection at once, like a camera that loses power.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstApp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstApp, GstRtspServer  # noqa: E402

# One client's pipeline: the H.264 access units of the mp4 as they are (avc, no decoding), with SPS/PPS put before
# every keyframe by h264parse (as cameras send them, so a client can start again after a loss) and payloaded as pay0.
# The server's sinks send each packet at its time, so the stream plays at the video's frame rate.
LAUNCH = (
    "( appsrc name=src format=time block=true max-bytes=1000000"
    " ! h264parse config-interval=-1 ! rtph264pay name=pay0 pt=96 )"
)


class Feeder:
    """Reads the mp4's H.264 track (qtdemux, no decoding) and pushes it into one client's appsrc; loops if asked."""

    def __init__(self, video: Path, appsrc: GstApp.AppSrc, loop: bool) -> None:
        self.appsrc = appsrc
        self.loop = loop
        self.offset = 0  # ns added to every timestamp: the length of the passes before this one
        self.first = Gst.CLOCK_TIME_NONE  # the track's first and end PTS (ns), seen in the first pass
        self.last = 0
        self.caps_set = False
        self.pipeline = Gst.parse_launch("filesrc name=file ! qtdemux ! video/x-h264 ! appsink name=sink sync=false")
        self.pipeline.get_by_name("file").set_property("location", str(video))
        sink = self.pipeline.get_by_name("sink")
        sink.set_property("emit-signals", True)
        sink.set_property("max-buffers", 4)
        sink.connect("new-sample", self.on_sample)
        bus = self.pipeline.get_bus()
        bus.add_signal_watch()
        bus.connect("message", self.on_message)

    def start(self) -> None:
        self.pipeline.set_state(Gst.State.PLAYING)

    def stop(self) -> None:
        bus = self.pipeline.get_bus()
        bus.remove_signal_watch()
        self.pipeline.set_state(Gst.State.NULL)

    def on_sample(self, sink: GstApp.AppSink) -> Gst.FlowReturn:
        sample = sink.emit("pull-sample")
        if sample is None:
            return Gst.FlowReturn.EOS
        if not self.caps_set:
            self.appsrc.set_caps(sample.get_caps())
            self.caps_set = True
        buffer = sample.get_buffer().copy()  # new metadata, same memory: the timestamps below are ours to change
        # The track's own timestamps (never negative: qtdemux starts DTS at 0 and PTS after it when there are
        # B-frames), moved on by the length of the passes before this one.
        if buffer.pts != Gst.CLOCK_TIME_NONE:
            duration = buffer.duration if buffer.duration != Gst.CLOCK_TIME_NONE else 0
            self.first = min(self.first, buffer.pts)
            self.last = max(self.last, buffer.pts + duration)
            buffer.pts += self.offset
        if buffer.dts != Gst.CLOCK_TIME_NONE:
            buffer.dts += self.offset
        return self.appsrc.push_buffer(buffer)

    def on_message(self, _bus: Gst.Bus, message: Gst.Message) -> None:
        if message.type == Gst.MessageType.EOS:
            if self.loop:
                self.offset += self.last - self.first
                self.pipeline.seek_simple(Gst.Format.TIME, Gst.SeekFlags.FLUSH | Gst.SeekFlags.KEY_UNIT, 0)
            else:
                self.appsrc.end_of_stream()
        elif message.type == Gst.MessageType.ERROR:
            error, debug = message.parse_error()
            print(f"rtsp_server: {error.message} ({debug})", file=sys.stderr, flush=True)
            self.appsrc.end_of_stream()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("video", type=Path, help="an mp4 (or mov) with an H.264 track")
    parser.add_argument("port", type=int, help="TCP port on 127.0.0.1")
    parser.add_argument("path", nargs="?", default="/cam", help="mount point (default /cam)")
    parser.add_argument("--loop", action="store_true", help="start the video again at its end, for ever")
    args = parser.parse_args()
    if not args.video.is_file():
        parser.error(f"no such file: {args.video}")

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(LAUNCH)
    factory.set_shared(False)  # every client gets its own playback from the first frame

    def on_media_configure(_factory: GstRtspServer.RTSPMediaFactory, media: GstRtspServer.RTSPMedia) -> None:
        appsrc = media.get_element().get_by_name_recurse_up("src")
        feeder = Feeder(args.video.resolve(), appsrc, args.loop)
        media.connect("unprepared", lambda *_: feeder.stop())
        feeder.start()

    factory.connect("media-configure", on_media_configure)
    path = args.path if args.path.startswith("/") else "/" + args.path
    server.get_mount_points().add_factory(path, factory)
    if server.attach(None) == 0:
        sys.exit(f"rtsp_server: cannot listen on 127.0.0.1:{args.port}")
    print("ready", flush=True)
    loop: Any = GLib.MainLoop()
    loop.run()


if __name__ == "__main__":
    main()
