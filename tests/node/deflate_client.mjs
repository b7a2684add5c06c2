// permessage-deflate with Node's `ws` client against `wsloop echo` (tests/deflate.rs).
// Usage: node deflate_client.mjs URL MODE (shared | dedicated)
//
// 1. ws offers permessage-deflate (its default offer, and one with
//    server_no_context_takeover); the answer names exactly what the server applies;
//    text and binary echoes, small and large, come back equal and compressed.
// 2. A ws client that offers nothing still gets plain echoes.
import WebSocket from "ws";

const [url, mode] = process.argv.slice(2);

function open(opts) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, opts);
    const headers = {};
    ws.on("upgrade", (res) => Object.assign(headers, res.headers));
    ws.on("open", () => resolve({ ws, headers }));
    ws.on("error", reject);
  });
}

function echo(ws, msg, binary) {
  return new Promise((resolve, reject) => {
    ws.once("message", (data, isBinary) => {
      if (isBinary !== binary) return reject(new Error(`echo binary=${isBinary}, want ${binary}`));
      resolve(data);
    });
    // threshold 0: ws compresses everything it sends.
    ws.send(msg, { binary, compress: true });
  });
}

function json(size) {
  const items = [];
  for (let i = 0; items.join(",").length < size; i++) items.push(JSON.stringify({ id: i, name: "item", v: i * 3 }));
  return ("[" + items.join(",") + "]").slice(0, size);
}

function assert(cond, what) {
  if (!cond) throw new Error(what);
}

async function exchange(ws) {
  for (const size of [10, 100, 5000, 60000]) {
    const msg = json(size);
    // Several times each: with context takeover, later echoes refer back to earlier ones.
    for (let k = 0; k < 3; k++) {
      const before = ws._socket.bytesRead;
      const t = await echo(ws, msg, false);
      assert(t.toString() === msg, `text echo of ${size} differs`);
      // The echo came compressed (JSON-like text shrinks several times).
      const wire = ws._socket.bytesRead - before;
      if (size >= 5000) assert(wire * 3 < size, `echo of ${size} took ${wire} bytes on the wire`);
      const b = await echo(ws, Buffer.from(msg), true);
      assert(Buffer.compare(b, Buffer.from(msg)) === 0, `binary echo of ${size} differs`);
    }
  }
}

const expected = {
  shared: "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
  dedicated: "permessage-deflate; client_no_context_takeover",
}[mode];
assert(expected, `unknown mode ${mode}`);

{
  const { ws, headers } = await open({ perMessageDeflate: { threshold: 0 } });
  const ext = headers["sec-websocket-extensions"];
  assert(ext === expected, `answer ${ext}, want ${expected}`);
  await exchange(ws);
  ws.close(1000);
  console.log("ok: default offer,", ext);
}
{
  // Asking the server not to keep context is honoured in either mode.
  const { ws, headers } = await open({ perMessageDeflate: { threshold: 0, serverNoContextTakeover: true } });
  const ext = headers["sec-websocket-extensions"];
  assert(ext === "permessage-deflate; server_no_context_takeover; client_no_context_takeover", `answer ${ext}`);
  await exchange(ws);
  ws.close(1000);
  console.log("ok: server_no_context_takeover offer,", ext);
}
{
  const { ws, headers } = await open({ perMessageDeflate: false });
  assert(headers["sec-websocket-extensions"] === undefined, "an answer to no offer");
  const t = await echo(ws, "plain", false);
  assert(t.toString() === "plain", "plain echo differs");
  ws.close(1000);
  console.log("ok: no offer, plain echo");
}
console.log("all ok");
