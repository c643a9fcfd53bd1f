"""A real RTSP server on loopback for the capture tests: GStreamer's RTSP server (Debian packages
gir1.2-gst-rtsp-server-1.0, gstreamer1.0-plugins-base/-good, python3-gi), run by the SYSTEM python3
(python3-gi is not in the project's venv). Serves a moving test pattern as RTP/JPEG at rtsp://127.0.0.1:PORT/cam.

    /usr/bin/python3 tests/video/rtsp_server.py PORT [WIDTH HEIGHT FPS]

Prints "ready" once it listens; runs until killed.
"""

import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> None:
    port = sys.argv[1]
    w, h, fps = (sys.argv[2:5] + ["320", "240", "10"][len(sys.argv[2:5]):])
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(port)
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f"( videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width={w},height={h},"
                       f"framerate={fps}/1 ! jpegenc quality=80 ! rtpjpegpay name=pay0 pt=26 )")
    factory.set_shared(True)
    server.get_mount_points().add_factory("/cam", factory)
    if server.attach(None) == 0:
        print("cannot listen", flush=True)
        sys.exit(1)
    print("ready", flush=True)
    GLib.MainLoop().run()


if __name__ == "__main__":
    main()
