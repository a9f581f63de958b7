// A Node.js broadcast server (node:http for SSE and publishing, the `ws` package for WebSocket)
// with mcp-stream's streaming interface, for side-by-side latency runs with `mcp-stream bench`:
//
//   GET  /stream/sse?topic=T   Server-Sent Events: id:, event:, data: <envelope> per event
//   GET  /stream/ws            WebSocket: {"type":"join","room":T} -> {"type":"joined","room":T},
//                              then every event of T as its envelope; {"type":"publish",...} ->
//                              {"type":"published","topic":T,"id":ID}; {"type":"ping"} -> pong
//   POST /stream/publish       one event or an array -> 202 {"ids":[...]}
//
// The envelope {"type":"event","topic":T,"event":E,"id":ID,"data":X} and the SSE block are built
// once per publish. Written the way the packages' docs show; Node buffers without bound for a
// client that does not read, as it does by default.
//
// node server.js [--listen HOST:PORT]   (default 127.0.0.1:8080); prints "listening on http://ADDR"

'use strict';

const http = require('node:http');
const { WebSocketServer } = require('ws');

const args = process.argv.slice(2);
const at = args.indexOf('--listen');
const listen = at >= 0 ? args[at + 1] : '127.0.0.1:8080';
const colon = listen.lastIndexOf(':');
const host = listen.slice(0, colon);
const port = Number(listen.slice(colon + 1));

const epoch = (Date.now() >>> 0).toString(16).padStart(8, '0');
let seq = 0;

/** topic -> { sse: Set<ServerResponse>, ws: Set<WebSocket> } */
const topics = new Map();

function topic(name) {
  let t = topics.get(name);
  if (!t) {
    t = { sse: new Set(), ws: new Set() };
    topics.set(name, t);
  }
  return t;
}

const validTopic = (t) => typeof t === 'string' && /^[A-Za-z0-9_.:/-]{1,128}$/.test(t);

function publish(name, event, data) {
  const id = `${epoch}-${++seq}`;
  const envelope = JSON.stringify({ type: 'event', topic: name, event, id, data });
  const t = topics.get(name);
  if (t) {
    const block = `id: ${id}\nevent: ${event}\ndata: ${envelope}\n\n`;
    for (const res of t.sse) res.write(block);
    for (const ws of t.ws) ws.send(envelope);
  }
  return id;
}

function json(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(text),
  });
  res.end(text);
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://peer');
  if (req.method === 'GET' && url.pathname === '/stream/sse') {
    const name = url.searchParams.get('topic');
    if (!validTopic(name)) return json(res, 400, { error: 'missing or invalid topic' });
    res.writeHead(200, {
      'Content-Type': 'text/event-stream',
      'Cache-Control': 'no-cache',
      Connection: 'keep-alive',
    });
    res.write('event: connected\ndata: {"status":"connected"}\n\n');
    const subs = topic(name).sse;
    subs.add(res);
    req.on('close', () => subs.delete(res));
    return;
  }
  if (req.method === 'POST' && url.pathname === '/stream/publish') {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      let body;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      } catch {
        return json(res, 400, { error: 'invalid JSON' });
      }
      const items = Array.isArray(body) ? body : [body];
      if (!items.every((i) => i && validTopic(i.topic))) {
        return json(res, 400, { error: 'invalid event' });
      }
      const ids = items.map((i) => publish(i.topic, i.event || 'message', i.data ?? null));
      json(res, 202, { ids });
    });
    return;
  }
  json(res, 404, { error: 'not found' });
});
// The publisher's keep-alive connection may sit idle while thousands of subscribers connect.
server.keepAliveTimeout = 600_000;

const wss = new WebSocketServer({ noServer: true });
server.on('upgrade', (req, socket, head) => {
  if (new URL(req.url, 'http://peer').pathname !== '/stream/ws') return socket.destroy();
  wss.handleUpgrade(req, socket, head, (ws) => wss.emit('connection', ws, req));
});

wss.on('connection', (ws) => {
  const rooms = new Set();
  ws.send(JSON.stringify({ type: 'welcome', data: 'Connected', id: '0' }));
  ws.on('message', (raw, isBinary) => {
    let m;
    try {
      m = JSON.parse(raw.toString());
    } catch {
      return ws.send(JSON.stringify({ type: 'error', error: 'not JSON' }));
    }
    if (isBinary || !m || typeof m !== 'object') {
      return ws.send(JSON.stringify({ type: 'error', error: 'bad message' }));
    }
    switch (m.type) {
      case 'join':
        if (!validTopic(m.room)) return ws.send(JSON.stringify({ type: 'error', error: 'invalid room' }));
        topic(m.room).ws.add(ws);
        rooms.add(m.room);
        return ws.send(JSON.stringify({ type: 'joined', room: m.room }));
      case 'leave':
        topic(m.room).ws.delete(ws);
        rooms.delete(m.room);
        return ws.send(JSON.stringify({ type: 'left', room: m.room }));
      case 'publish': {
        if (!validTopic(m.topic)) return ws.send(JSON.stringify({ type: 'error', error: 'invalid topic' }));
        const id = publish(m.topic, m.event || 'message', m.data ?? null);
        return ws.send(JSON.stringify({ type: 'published', topic: m.topic, id }));
      }
      case 'ping':
        return ws.send(JSON.stringify({ type: 'pong' }));
      default:
        return ws.send(JSON.stringify({ type: 'error', error: 'unknown type' }));
    }
  });
  ws.on('close', () => {
    for (const r of rooms) topic(r).ws.delete(ws);
  });
});

server.listen(port, host, () => {
  const a = server.address();
  const shown = a.family === 'IPv6' ? `[${a.address}]` : a.address;
  process.stdout.write(`listening on http://${shown}:${a.port}\n`);
});
