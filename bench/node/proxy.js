// The Node stack a user would otherwise put in front of the Bee Flow service: Express 4 and
// http-proxy-middleware 3 (the reference connector's proxy stack), nothing else. The bench
// installs the pinned packages of package-lock.json into a cache directory outside the
// repository and runs this file with NODE_PATH pointing there.
//
//   node proxy.js --upstream http://127.0.0.1:PORT (--port 0 | --unix PATH)
//
// Prints `READY <port or path>` once it listens; SIGTERM stops it.
'use strict';

const http = require('http');
const express = require('express');
const { createProxyMiddleware } = require('http-proxy-middleware');

function option(name, fallback) {
  const at = process.argv.indexOf(name);
  return at >= 0 && at + 1 < process.argv.length ? process.argv[at + 1] : fallback;
}

const upstream = option('--upstream');
const unix = option('--unix');
const port = Number(option('--port', '0'));
if (!upstream) {
  process.stderr.write('--upstream is required\n');
  process.exit(2);
}

// The reference connector's keep-alive agent (keepAlive, keepAliveMsecs 10000,
// maxFreeSockets 8), except that concurrent sockets are not capped at 64: the bench holds
// 200 and more event streams open at once, and each needs its own upstream connection.
const agent = new http.Agent({
  keepAlive: true,
  keepAliveMsecs: 10000,
  maxSockets: Infinity,
  maxFreeSockets: Number(process.env.BENCH_NODE_MAX_FREE_SOCKETS || 8),
});

const app = express();
app.use(
  createProxyMiddleware({
    target: upstream,
    changeOrigin: true,
    agent,
    pathFilter: '/api',
  }),
);

const server = http.createServer(app);
server.on('listening', () => {
  const where = unix ? unix : server.address().port;
  process.stdout.write(`READY ${where}\n`);
});
if (unix) {
  server.listen({ path: unix, backlog: 4096 });
} else {
  server.listen({ host: '127.0.0.1', port, backlog: 4096 });
}
process.on('SIGTERM', () => process.exit(0));
