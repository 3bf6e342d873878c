// The crowd of bench_crowd.py: many real websocket clients (graphql-ws for PostGraphile, the
// Directus realtime protocol over `ws`), each bound to its user's client address where one is
// given, plus the writers' inserts and deletes. Reads its configuration (JSON) from the file
// named by argv[2]; prints one JSON summary on stdout. Asserts nothing: bench_crowd.py reports.
//
// Config: {kind: "graphql"|"directus", ws_url, write_url, ca, users: [{id, token, address}],
//          per_user, writers, inserts_per_writer, insert_gap_ms, delete, settle_ms, timeout_ms,
//          connect_parallel}
import { readFileSync } from "node:fs";
import http from "node:http";
import https from "node:https";

import { createClient } from "graphql-ws";
import WebSocket from "ws";

const cfg = JSON.parse(readFileSync(process.argv[2], "utf8"));
const ca = cfg.ca ? readFileSync(cfg.ca) : undefined;
const now = () => performance.timeOrigin + performance.now();
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Options every socket and request of one client address shares. */
function transport(address) {
  return { ca, family: 4, ...(address ? { localAddress: address } : {}) };
}

/** One JSON request (a GraphQL mutation or a Directus REST call) from `address`. */
function request(method, url, body, token, address) {
  const target = new URL(url);
  const lib = target.protocol === "https:" ? https : http;
  const data = body == null ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = lib.request(
      target,
      {
        method,
        ...transport(address),
        headers: { "content-type": "application/json", authorization: `Bearer ${token}`, ...(data ? { "content-length": Buffer.byteLength(data) } : {}) },
      },
      (res) => {
        let text = "";
        res.on("data", (chunk) => (text += chunk));
        res.on("end", () => {
          let body = null;
          try {
            body = text ? JSON.parse(text) : null;
          } catch {
            body = { text: text.slice(0, 100) }; // e.g. Nginx's 429 page
          }
          resolve({ status: res.statusCode, body });
        });
      },
    );
    req.on("error", reject);
    req.end(data);
  });
}

const stats = { connected: 0, connectedBy: new Map(), refused: 0, refusals: {}, events: [], closed_early: 0 };
const inserted = new Map(); // body -> {owner, sent, id}
const deleted = new Map(); // id -> {owner, sent}
const clients = [];

function refuse(reason) {
  stats.refused += 1;
  const key = String(reason).slice(0, 120);
  stats.refusals[key] = (stats.refusals[key] ?? 0) + 1;
}

/** Settles one client's connection once: counted as connected (per user) or refused. */
function outcome(user, resolve) {
  const done = (ok, reason) => {
    if (done.settled) return;
    done.settled = true;
    if (ok) {
      stats.connected += 1;
      stats.connectedBy.set(user.id, (stats.connectedBy.get(user.id) ?? 0) + 1);
    } else {
      done.refused = true;
      refuse(reason);
    }
    resolve();
  };
  done.settled = false;
  return done;
}

function record(user, op, row) {
  stats.events.push({ at: now(), user: user.id, op, ...row });
}

/** A graphql-ws client of one user subscribed to notesChanged; resolves once acknowledged. */
function graphqlSubscriber(user) {
  const options = transport(user.address);
  class BoundWebSocket extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols, options);
    }
  }
  return new Promise((resolve) => {
    const done = outcome(user, resolve);
    const client = createClient({
      url: cfg.ws_url,
      webSocketImpl: BoundWebSocket,
      connectionParams: { Authorization: `Bearer ${user.token}` },
      lazy: false,
      retryAttempts: 0,
      keepAlive: 0,
      on: {
        connected: () => done(true),
        closed: (event) => {
          if (!done.settled) done(false, `closed ${event?.code ?? ""} ${event?.reason ?? ""}`.trim());
          else stats.closed_early += 1;
        },
        error: (error) => done(false, error?.message ?? "error"),
      },
    });
    clients.push(client);
    client.subscribe(
      { query: "subscription { notesChanged { op seq key node { rowId ownerId body } } }" },
      {
        next: (message) => {
          const change = message?.data?.notesChanged;
          if (!change) {
            refuse(`subscription error: ${JSON.stringify(message?.errors ?? message).slice(0, 100)}`);
            return;
          }
          record(user, change.op, { id: change.node?.rowId ?? change.key?.id ?? null, owner: change.node?.ownerId ?? null, body: change.node?.body ?? null, seq: change.seq });
        },
        // a socket refused at connection (already counted) errors its subscription too
        error: (error) => (done.refused ? undefined : refuse(`subscription error: ${JSON.stringify(error?.message ?? error).slice(0, 100)}`)),
        complete: () => {},
      },
    );
  });
}

/** A Directus realtime client of one user subscribed to notes (uid "notes"). */
function directusSubscriber(user) {
  return new Promise((resolve) => {
    const done = outcome(user, resolve);
    const ws = new WebSocket(cfg.ws_url, transport(user.address));
    clients.push(ws);
    ws.on("open", () => ws.send(JSON.stringify({ type: "auth", access_token: user.token })));
    ws.on("unexpected-response", (_req, res) => done(false, `HTTP ${res.statusCode}`));
    ws.on("error", (error) => done(false, error.message));
    ws.on("close", (code) => (done.settled ? (stats.closed_early += 1) : done(false, `closed ${code}`)));
    ws.on("message", (data) => {
      const message = JSON.parse(String(data));
      if (message.type === "ping") return ws.send(JSON.stringify({ type: "pong" }));
      if (message.type === "auth") {
        if (message.status !== "ok") return done(false, `auth ${JSON.stringify(message.error ?? message)}`);
        return ws.send(JSON.stringify({ type: "subscribe", collection: "notes", uid: "notes", query: { fields: ["id", "owner_id", "body"] } }));
      }
      if (message.type !== "subscription") return message.status === "error" ? done(false, JSON.stringify(message.error)) : undefined;
      if (message.event === "init") return done(true);
      if (message.event === "delete") {
        for (const key of message.data ?? []) record(user, "DELETE", { id: String(key), owner: null, body: null });
        return;
      }
      for (const item of message.data ?? []) record(user, message.event === "create" ? "INSERT" : "UPDATE", { id: item.id, owner: item.owner_id, body: item.body });
    });
  });
}

async function insert(user, body) {
  const sent = now();
  inserted.set(body, { owner: user.id, sent, id: null });
  const answer =
    cfg.kind === "graphql"
      ? await request("POST", cfg.write_url, { query: "mutation($o: UUID!, $b: String!) { createNote(input: {note: {ownerId: $o, body: $b}}) { note { rowId } } }", variables: { o: user.id, b: body } }, user.token, user.address)
      : await request("POST", cfg.write_url, { body }, user.token, user.address);
  const id = cfg.kind === "graphql" ? answer.body?.data?.createNote?.note?.rowId : answer.body?.data?.id;
  if (!id) throw new Error(`insert refused: HTTP ${answer.status} ${JSON.stringify(answer.body).slice(0, 200)}`);
  inserted.get(body).id = id;
}

async function remove(user, id) {
  deleted.set(String(id), { owner: user.id, sent: now() });
  const answer =
    cfg.kind === "graphql"
      ? await request("POST", cfg.write_url, { query: "mutation($id: UUID!) { deleteNoteByRowId(input: {rowId: $id}) { note { rowId } } }", variables: { id } }, user.token, user.address)
      : await request("DELETE", `${cfg.write_url}/${id}`, null, user.token, user.address);
  if (answer.status >= 300 || answer.body?.errors) throw new Error(`delete refused: HTTP ${answer.status} ${JSON.stringify(answer.body).slice(0, 200)}`);
}

/** A write's outcome, handled at once: null, or why it failed. */
function settled(write) {
  return write.then(
    () => null,
    (error) => String(error.message),
  );
}

function percentile(sorted, q) {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((q / 100) * sorted.length) - 1))];
}

async function main() {
  const began = now();
  const subscriber = cfg.kind === "graphql" ? graphqlSubscriber : directusSubscriber;
  const queue = [];
  for (let round = 0; round < cfg.per_user; round++) for (const user of cfg.users) queue.push(user);
  const workers = Array.from({ length: cfg.connect_parallel }, async () => {
    while (queue.length) await subscriber(queue.shift());
  });
  await Promise.all(workers);
  const connectSeconds = (now() - began) / 1000;
  await sleep(cfg.settle_ms);

  const writers = cfg.users.slice(0, cfg.writers);
  const writes = [];
  let n = 0;
  for (let round = 0; round < cfg.inserts_per_writer; round++) {
    for (const user of writers) {
      writes.push(settled(insert(user, `crowd ${user.id.slice(0, 8)} ${round} ${n++} ${Math.random().toString(36).slice(2, 8)}`)));
      await sleep(cfg.insert_gap_ms);
    }
  }
  const writeErrors = (await Promise.all(writes)).filter(Boolean);
  if (cfg.delete) {
    await sleep(cfg.settle_ms);
    const removals = [];
    for (const row of inserted.values()) {
      if (!row.id) continue;
      removals.push(settled(remove(cfg.users.find((u) => u.id === row.owner), row.id)));
      await sleep(cfg.insert_gap_ms);
    }
    writeErrors.push(...(await Promise.all(removals)).filter(Boolean));
  }
  await sleep(cfg.timeout_ms);

  // Judge every event: it must be one of the subscriber's own rows, once per subscription.
  const byId = new Map([...inserted.values()].filter((r) => r.id).map((r) => [String(r.id), r]));
  const latencies = [];
  const byOp = { INSERT: [], DELETE: [] };
  let leaks = 0;
  let unrelated = 0;
  const leakSamples = [];
  for (const event of stats.events) {
    if (event.op === "DELETE") {
      const row = deleted.get(String(event.id));
      if (!row) {
        unrelated += 1;
        continue;
      }
      if (row.owner !== event.user) {
        leaks += 1;
        if (leakSamples.length < 5) leakSamples.push(event);
        continue;
      }
      latencies.push(event.at - row.sent);
      byOp.DELETE.push(event.at - row.sent);
      continue;
    }
    const row = inserted.get(event.body) ?? byId.get(String(event.id));
    if (!row) {
      unrelated += 1;
      continue;
    }
    if (row.owner !== event.user || (event.owner && event.owner !== event.user)) {
      leaks += 1;
      if (leakSamples.length < 5) leakSamples.push(event);
      continue;
    }
    latencies.push(event.at - row.sent);
    byOp.INSERT.push(event.at - row.sent);
  }
  const writes_done = [...inserted.values()].filter((r) => r.id).length;
  const audience = (owner) => stats.connectedBy.get(owner) ?? 0;
  let expected = 0;
  for (const row of inserted.values()) if (row.id) expected += audience(row.owner);
  for (const row of deleted.values()) expected += audience(row.owner);
  latencies.sort((a, b) => a - b);
  for (const values of Object.values(byOp)) values.sort((a, b) => a - b);
  for (const client of clients) (client.dispose ?? client.terminate)?.call(client);
  process.stdout.write(
    JSON.stringify({
      kind: cfg.kind,
      sockets: cfg.users.length * cfg.per_user,
      connected: stats.connected,
      refused: stats.refused,
      refusals: stats.refusals,
      closed_early: stats.closed_early,
      connect_seconds: connectSeconds,
      inserts: writes_done,
      deletes: cfg.delete ? deleted.size : 0,
      write_errors: writeErrors.slice(0, 5),
      write_error_count: writeErrors.length,
      expected,
      got: latencies.length,
      leaks,
      leak_samples: leakSamples,
      unrelated,
      p50_ms: percentile(latencies, 50),
      p95_ms: percentile(latencies, 95),
      p99_ms: percentile(latencies, 99),
      max_ms: latencies.at(-1) ?? null,
      by_op: Object.fromEntries(Object.entries(byOp).map(([op, values]) => [op, { n: values.length, p50_ms: percentile(values, 50), p95_ms: percentile(values, 95) }])),
    }) + "\n",
  );
  process.exit(0);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
