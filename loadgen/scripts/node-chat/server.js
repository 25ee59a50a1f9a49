// The published Node.js design that this project follows, as loadgen's raw
// mode meets it: a `ws` server that greets every socket with
// "Connected successfully to server <APP_ID>", publishes every text frame to
// Redis, and relays everything it receives from Redis to every local socket
// (the sender included). Used only for loadgen comparisons on loopback:
//   APP_ID=node1 PORT=9601 REDIS_URL=redis://127.0.0.1:6379 node server.js
const WebSocket = require('ws');
const { createClient } = require('redis');

const APP_ID = process.env.APP_ID || 'node1';
const PORT = Number(process.env.PORT || 8080);
const REDIS_URL = process.env.REDIS_URL || 'redis://127.0.0.1:6379';
const CHANNEL = process.env.CHANNEL || 'chat';

async function main() {
  const pub = createClient({ url: REDIS_URL });
  const sub = pub.duplicate();
  await pub.connect();
  await sub.connect();
  const wss = new WebSocket.Server({ host: '127.0.0.1', port: PORT });
  await sub.subscribe(CHANNEL, (message) => {
    for (const client of wss.clients) {
      if (client.readyState === WebSocket.OPEN) client.send(message);
    }
  });
  wss.on('connection', (ws) => {
    ws.send(`Connected successfully to server ${APP_ID}`);
    ws.on('message', (data) => { pub.publish(CHANNEL, data.toString()); });
  });
  console.log(`${APP_ID} listening on ws://127.0.0.1:${PORT}`);
}

main().catch((e) => { console.error(e); process.exit(1); });
