// Node.js cluster, the best-known peer of connection handoff: a primary and WORKERS workers, each
// answering "hello from PID" (keep-alive unless the request says Connection: close). The scheduling
// policy comes from NODE_CLUSTER_SCHED_POLICY: "rr" (the primary accepts and hands each connection
// to a worker, like `sockshare serve --mode handoff`) or "none" (workers accept on a shared listener,
// like `--mode shared`). Loopback only; runs until killed.
//   NODE_CLUSTER_SCHED_POLICY=rr node cluster.js PORT WORKERS
const cluster = require("node:cluster");
const http = require("node:http");

const port = Number(process.argv[2] || 8760);
const workers = Number(process.argv[3] || 2);

if (cluster.isPrimary) {
  for (let i = 0; i < workers; i++) cluster.fork();
  let ready = 0;
  cluster.on("listening", () => {
    if (++ready === workers) console.log("ready");
  });
  process.on("SIGTERM", () => {
    for (const id in cluster.workers) cluster.workers[id].kill();
    process.exit(0);
  });
} else {
  const body = `hello from ${process.pid}\n`;
  http
    .createServer((request, response) => {
      response.writeHead(200, { "Content-Type": "text/plain", "Content-Length": Buffer.byteLength(body) });
      response.end(body);
    })
    .listen(port, "127.0.0.1");
}
