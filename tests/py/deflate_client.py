"""permessage-deflate against `wsloop echo --compression shared|dedicated` (tests/deflate.rs).

1. Python websockets (offers permessage-deflate by default): compressed echoes of text
   and binary, small and large, several times (in dedicated mode later echoes refer
   back to earlier ones); a client offering nothing still gets plain echoes.
2. Raw frames (stdlib zlib): RSV1 on a control or continuation frame is 1002, corrupt
   data 1007, a small frame inflating past max_message 1009, non-UTF-8 text after
   inflation 1007, also from the first fragment of a message that never ends.
   Usage: deflate_client.py URL MAX_MESSAGE MODE
"""
import asyncio, base64, json, os, socket, struct, sys, zlib
from urllib.parse import urlparse
from websockets.asyncio.client import connect

URL, MAX, MODE = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ANSWER = {
    "shared": "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
    "dedicated": "permessage-deflate; client_no_context_takeover",
}[MODE]

async def websockets_client():
    async with connect(URL) as ws:
        ext = ws.response.headers.get("Sec-WebSocket-Extensions")
        assert ext == ANSWER, ext
        for size in (10, 100, 5000, 60000):
            msg = json.dumps([{"id": i, "name": "item", "v": i * 3} for i in range(size // 30 + 1)])[:size]
            for _ in range(3):
                await ws.send(msg)
                assert await ws.recv() == msg
                await ws.send(msg.encode())
                assert await ws.recv() == msg.encode()
    async with connect(URL, compression=None) as ws:
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
        await ws.send("plain")
        assert await ws.recv() == "plain"

def deflate(data):
    c = zlib.compressobj(wbits=-15)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]

def frame(b0, payload):
    key = os.urandom(4)
    n = len(payload)
    head = bytes([b0]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536 else bytes([0x80 | 127]) + struct.pack(">Q", n))
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))

def raw(frames, offer=True):
    """Sends the frames after an upgrade; returns the close code the server sends."""
    u = urlparse(URL)
    s = socket.create_connection((u.hostname, u.port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    ext = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if offer else ""
    s.sendall(f"GET / HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(4096)
    head, buf = buf.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 101"), head
    assert (b"permessage-deflate" in head) == offer, head
    s.sendall(b"".join(frames))
    while True:
        while len(buf) < 2:
            chunk = s.recv(65536)
            if not chunk:
                return None
            buf += chunk
        n, hl = buf[1] & 0x7f, 2
        if n == 126:
            n, hl = struct.unpack(">H", buf[2:4])[0], 4
        elif n == 127:
            n, hl = struct.unpack(">Q", buf[2:10])[0], 10
        while len(buf) < hl + n:
            buf += s.recv(65536)
        op, payload, buf = buf[0] & 0x0f, buf[hl:hl + n], buf[hl + n:]
        if op == 8:
            s.close()
            return struct.unpack(">H", payload[:2])[0]

def raw_cases():
    z = deflate(b"hello")
    cases = [
        ("RSV1 without negotiation", [frame(0xC1, z)], False, 1002),
        ("RSV1 on a ping", [frame(0xC9, b"p")], True, 1002),
        ("RSV1 on a continuation", [frame(0x41, z[:2]), frame(0xC0, z[2:])], True, 1002),
        ("corrupt data", [frame(0xC1, b"\xff\xff\xff\xff")], True, 1007),
        ("inflates past max_message", [frame(0xC2, deflate(b"a" * (MAX * 50)))], True, 1009),
        ("not UTF-8 after inflation", [frame(0xC1, deflate(b"ok \xff"))], True, 1007),
        # The first fragment inflates to a bad byte; the message never ends, so only a
        # server that inflates fragments as they come can answer.
        ("not UTF-8 in a first fragment", [frame(0x41, deflate(b"ok \xff" + b"x" * 1000))], True, 1007),
        ("a good message, then a clean close", [frame(0xC1, z), frame(0x88, struct.pack(">H", 1000))], True, 1000),
    ]
    for name, frames, offer, want in cases:
        assert len(b"".join(frames)) < MAX, name
        got = raw(frames, offer)
        assert got == want, f"{name}: close {got}, want {want}"
        print("ok:", name, got)

asyncio.run(websockets_client())
raw_cases()
print("all ok")
