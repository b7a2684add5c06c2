"""Talks to a wsloop echo server with the `websockets` package (an independent client).

Usage: python3 echo_client.py ws://127.0.0.1:PORT/path
Exits 0 when every check passes, 1 on the first mismatch, 3 when `websockets` (11 or
newer, for its sync client) is missing.
"""

import inspect
import sys

try:
    from websockets.sync.client import connect
except ImportError as e:
    print(f"cannot import websockets.sync.client ({e}); "
          "install it with: python3 -m pip install websockets", file=sys.stderr)
    sys.exit(3)

TIMEOUT = 5.0


def check(ok, what):
    if not ok:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)
    print(f"ok: {what}")


def main(url):
    kwargs = dict(
        open_timeout=TIMEOUT,
        close_timeout=TIMEOUT,
        ping_interval=None,  # no keepalive pings of its own: only ours are on the wire
        compression=None,  # wsloop does not negotiate permessage-deflate
        max_size=None,
    )
    if "proxy" in inspect.signature(connect).parameters:
        kwargs["proxy"] = None  # never route loopback through an environment proxy
    with connect(url, **kwargs) as ws:
        ws.send("héllo ✓")
        got = ws.recv(timeout=TIMEOUT)
        check(isinstance(got, str) and got == "héllo ✓", f"text echo: {got!r}")

        data = bytes(range(256)) * 64
        ws.send(data)
        got = ws.recv(timeout=TIMEOUT)
        check(isinstance(got, bytes) and got == data, "binary echo (16 KiB)")

        # An iterable is sent as one fragmented message, one frame per item.
        ws.send(["frag", "men", "ted ✓"])
        got = ws.recv(timeout=TIMEOUT)
        check(isinstance(got, str) and got == "fragmented ✓", f"fragmented text: {got!r}")

        parts = [b"\x00" * 1000, b"\x01" * 70000, b"\x02"]
        ws.send(parts)
        got = ws.recv(timeout=TIMEOUT)
        check(isinstance(got, bytes) and got == b"".join(parts), "fragmented binary")

        # The event is set only by a pong carrying the same payload.
        pong = ws.ping(b"py-ping-42")
        check(pong.wait(TIMEOUT), "pong with the ping's payload")

        ws.close(1000, "done")
    check(ws.close_code == 1000, f"server's close code: {ws.close_code}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1])
