// PostGraphile 5 for ccoas: the GraphQL plane where the database decides every row.
//
// Reads /etc/ccoas/postgraphile/settings.json (rendered from the plan) and the secret files it
// names. Every request runs in a transaction as a NOLOGIN role: with a valid Directus-issued
// HS256 token as the user role, its claims set as ccoas.* transaction settings (row-level
// security reads them); without a token as the anonymous role (public-read tables only); a
// bad token is refused. Subscriptions (graphql-ws) share one LISTEN per table channel; each
// batch of events is checked in one query for every distinct identity subscribed (its own
// RLS decides; a delete goes only to those who could read the deleted row), and subscriptions
// are bounded per connection and per client address.
// Introspection and GraphiQL only when the stack's environment is dev.
import { createHmac, timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";

import { postgraphile } from "postgraphile";
import { makePgService, PgSubscriber } from "postgraphile/adaptors/pg";
import { jsonParse } from "postgraphile/@dataplan/json";
import { constant, context, listen, SafeError } from "postgraphile/grafast";
import { grafserv } from "postgraphile/grafserv/node";
import { NoSchemaIntrospectionCustomRule } from "postgraphile/graphql";
import { PostGraphileAmberPreset } from "postgraphile/presets/amber";
import { extendSchema, gql } from "postgraphile/utils";
import pg from "pg";

const SETTINGS = JSON.parse(readFileSync(process.env.CCOAS_SETTINGS ?? "/etc/ccoas/postgraphile/settings.json", "utf8"));

function secret(path) {
  const value = readFileSync(path, "utf8").trim();
  if (!value) throw new Error(`postgraphile: the secret file ${path} is empty`);
  return value;
}

const JWT_KEY = secret(SETTINGS.jwt.secret_file);
const pool = new pg.Pool({
  host: SETTINGS.database.host,
  port: SETTINGS.database.port,
  database: SETTINGS.database.name,
  user: SETTINGS.database.user,
  password: secret(SETTINGS.database.password_file),
  max: SETTINGS.database.pool_size,
  application_name: "postgraphile",
});
const subscriber = new PgSubscriber(pool);

class Unauthorized extends Error {
  constructor(message) {
    super(message);
    this.statusCode = 401;
    this.extensions = { code: "UNAUTHENTICATED" };
  }
}

/** The claims of a valid HS256 token signed with the Directus key, else throws Unauthorized. */
function verify(token) {
  const parts = token.split(".");
  if (parts.length !== 3) throw new Unauthorized("malformed token");
  const [head, body, signature] = parts;
  let header, claims;
  try {
    header = JSON.parse(Buffer.from(head, "base64url").toString("utf8"));
    claims = JSON.parse(Buffer.from(body, "base64url").toString("utf8"));
  } catch {
    throw new Unauthorized("malformed token");
  }
  if (header.alg !== "HS256") throw new Unauthorized("only HS256 tokens are accepted");
  const expected = createHmac("sha256", JWT_KEY).update(`${head}.${body}`).digest();
  const given = Buffer.from(signature, "base64url");
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) throw new Unauthorized("invalid token signature");
  const now = Math.floor(Date.now() / 1000);
  if (typeof claims.exp !== "number" || claims.exp <= now) throw new Unauthorized("token expired");
  if (typeof claims.nbf === "number" && claims.nbf > now) throw new Unauthorized("token not yet valid");
  if (SETTINGS.jwt.issuer && claims.iss !== SETTINGS.jwt.issuer) throw new Unauthorized("unexpected token issuer");
  return claims;
}

/** Transaction settings of a request: the role, and each mapped claim as a ccoas.* setting. */
function requestSettings(authorization) {
  if (authorization == null || authorization === "") return { role: SETTINGS.roles.anonymous };
  const match = /^Bearer\s+(\S+)$/i.exec(String(authorization));
  if (!match) throw new Unauthorized("expected Authorization: Bearer <token>");
  const claims = verify(match[1]);
  const settings = { role: SETTINGS.roles.user };
  for (const [claim, setting] of Object.entries(SETTINGS.jwt.claims)) {
    const value = claims[claim];
    settings[setting] = value == null ? "" : String(value);
  }
  if (!settings[SETTINGS.jwt.claims[SETTINGS.jwt.user_claim]]) throw new Unauthorized(`token has no ${SETTINGS.jwt.user_claim} claim`);
  return settings;
}

/** A refusal the client reads as is (not masked): the subscription is not started. */
function refuse(message, code) {
  return new SafeError(message, { code });
}

/** Which request roles may read which tables (privileges, not rows): asked at most once a
 * minute per role (a changed preset is seen without a restart; ccoas.change_audience checks
 * the privilege again for every batch anyway). */
const readable = new Map();
const readableAsked = new Map();
async function mayRead(role, table) {
  if (!readable.has(role) || Date.now() - readableAsked.get(role) > 60_000) {
    readableAsked.set(role, Date.now());
    readable.set(
      role,
      pool
        .query(
          "SELECT t.schema_name || '.' || t.table_name AS name FROM pg_catalog.jsonb_to_recordset($1::jsonb) AS t(schema_name text, table_name text) " +
            "WHERE pg_catalog.has_table_privilege($2, pg_catalog.format('%I.%I', t.schema_name, t.table_name), 'SELECT')",
          [JSON.stringify(SETTINGS.tables.map((t) => ({ schema_name: t.schema, table_name: t.table }))), role],
        )
        .then((result) => new Set(result.rows.map((row) => row.name)))
        .catch((error) => {
          readable.delete(role);
          throw error;
        }),
    );
  }
  return (await readable.get(role)).has(`${table.schema}.${table.table}`);
}

/** Subscriptions held per websocket connection and per client address, each bounded. */
const LIMITS = SETTINGS.subscriptions;
const heldByConnection = new WeakMap();
const heldByClient = new Map();

/** The client's address: Nginx sets X-Real-IP (PostGraphile is reachable only behind it). */
function clientAddress({ ws, http }) {
  const header = ws ? ws.request?.headers?.["x-real-ip"] : http?.getHeader?.("x-real-ip");
  return (Array.isArray(header) ? header[0] : header) || ws?.request?.socket?.remoteAddress || "unknown";
}

/** Take one subscription slot for this connection (a websocket) and client, or refuse;
 * returns the release. */
function holdSlot(request) {
  const socket = request.ws?.socket;
  const client = clientAddress(request);
  const onConnection = socket ? heldByConnection.get(socket) ?? 0 : 0;
  const onClient = heldByClient.get(client) ?? 0;
  if (onConnection >= LIMITS.per_connection) {
    throw refuse(`too many subscriptions on this connection (at most ${LIMITS.per_connection})`, "TOO_MANY_SUBSCRIPTIONS");
  }
  if (onClient >= LIMITS.per_client) {
    throw refuse(`too many subscriptions from this client address (at most ${LIMITS.per_client})`, "TOO_MANY_SUBSCRIPTIONS");
  }
  if (socket) heldByConnection.set(socket, onConnection + 1);
  heldByClient.set(client, onClient + 1);
  let released = false;
  return () => {
    if (released) return;
    released = true;
    if (socket) heldByConnection.set(socket, (heldByConnection.get(socket) ?? 1) - 1);
    const left = (heldByClient.get(client) ?? 1) - 1;
    if (left > 0) heldByClient.set(client, left);
    else heldByClient.delete(client);
  };
}

/**
 * One LISTEN per table channel, shared by all its subscriptions. Events are taken in batches
 * (whatever arrived while the previous batch was being checked) and ONE query decides, for
 * every distinct identity (role and claims) subscribed to the table, which events it may read:
 * ccoas.change_audience (inserts and updates re-read under each identity's own row-level
 * security, deletes judged on the deleted row's image, truncates by table privilege). The
 * cost per event grows with distinct identities inside one SQL call, never with a transaction
 * per subscription. Each subscription numbers its own events (seq 1, 2, …): nothing global.
 */
class TableFeed {
  constructor(table) {
    this.table = table;
    this.subscriptions = new Set();
    this.pending = [];
    this.checking = false;
    this.listening = null;
  }

  add(subscription) {
    this.subscriptions.add(subscription);
    if (!this.listening) this.listen();
  }

  remove(subscription) {
    this.subscriptions.delete(subscription);
    if (this.subscriptions.size === 0 && this.listening) {
      const listening = this.listening;
      this.listening = null;
      listening.return?.();
    }
  }

  listen() {
    const stream = subscriber.subscribe(this.table.channel);
    this.listening = stream;
    (async () => {
      for await (const payload of stream) {
        let event;
        try {
          event = JSON.parse(payload);
        } catch {
          continue;
        }
        if (event.seq == null) continue;
        this.pending.push(event);
        this.check();
      }
    })().catch((error) => console.error(`postgraphile: change feed ${this.table.channel} stopped: ${error.message}`));
  }

  async check() {
    if (this.checking) return;
    this.checking = true;
    try {
      while (this.pending.length) {
        const batch = this.pending.splice(0, SETTINGS.subscriptions.batch_max);
        await this.deliver(batch);
      }
    } finally {
      this.checking = false;
    }
  }

  async deliver(batch) {
    const groups = new Map();
    for (const subscription of this.subscriptions) {
      let group = groups.get(subscription.identityKey);
      if (!group) groups.set(subscription.identityKey, (group = { identity: subscription.identity, members: [] }));
      group.members.push(subscription);
    }
    if (groups.size === 0) return;
    const ordered = [...groups.values()];
    let rows;
    try {
      ({ rows } = await pool.query("SELECT a.identity, a.seq FROM ccoas.change_audience($1::jsonb, $2::bigint[]) AS a", [
        JSON.stringify(ordered.map((group) => group.identity)),
        batch.map((event) => String(event.seq)),
      ]));
    } catch (error) {
      console.error(`postgraphile: audience of ${batch.length} change(s) on ${this.table.schema}.${this.table.table} failed, not delivered: ${error.message}`);
      return;
    }
    const audience = new Map(batch.map((event) => [String(event.seq), new Set()]));
    for (const row of rows) audience.get(String(row.seq))?.add(row.identity);
    // Delivered in slices, the event loop free between them: a crowd's deliveries never hold
    // up another user's request for longer than one slice takes.
    let pushed = 0;
    for (const event of batch) {
      for (const index of audience.get(String(event.seq))) {
        for (const subscription of ordered[index].members) {
          subscription.push(event);
          if (++pushed % SETTINGS.subscriptions.delivery_slice === 0) await new Promise((resolve) => setImmediate(resolve));
        }
      }
    }
  }
}

const feeds = new Map(SETTINGS.tables.map((table) => [table.channel, new TableFeed(table)]));

/**
 * One subscription's stream: the events its feed hands it, numbered 1, 2, … for it alone. An
 * iterator of its own (not an async generator, whose return() would wait for the next event):
 * ending the subscription releases its slot and leaves the feed at once. A subscriber more
 * than queue_max events behind is ended with an error (it resubscribes).
 */
class SubscriptionStream {
  constructor(feed, role, claims, request) {
    this.feed = feed;
    this.identity = { role, settings: claims };
    this.identityKey = JSON.stringify([role, Object.entries(claims).sort()]);
    this.queue = [];
    this.waiting = null;
    this.overflow = false;
    this.done = false;
    this.count = 0;
    this.release = null;
    // Refused here, once, when the subscription starts: a table the role may not read, or
    // one subscription too many for the connection or the client.
    this.ready = mayRead(role, feed.table).then((allowed) => {
      if (!allowed) {
        throw refuse(`${feed.table.schema}.${feed.table.table} cannot be read with this token (or without one): subscription refused`, "FORBIDDEN");
      }
      if (this.done) return;
      this.release = holdSlot(request);
      feed.add(this);
    });
    this.ready.catch(() => this.close());
  }

  [Symbol.asyncIterator]() {
    return this;
  }

  format(event) {
    this.count += 1;
    return JSON.stringify({ op: event.op, key: event.key, seq: String(this.count) });
  }

  push(event) {
    if (this.done) return;
    if (this.waiting) {
      const resolve = this.waiting;
      this.waiting = null;
      resolve({ value: this.format(event), done: false });
    } else if (this.queue.length >= SETTINGS.subscriptions.queue_max) {
      this.overflow = true;
    } else {
      this.queue.push(event);
    }
  }

  async next() {
    await this.ready;
    if (this.queue.length) return { value: this.format(this.queue.shift()), done: false };
    if (this.overflow) {
      this.close();
      throw refuse("subscriber too slow: events were dropped, subscribe again", "OVERFLOW");
    }
    if (this.done) return { value: undefined, done: true };
    return new Promise((resolve) => (this.waiting = resolve));
  }

  async return() {
    this.close();
    return { value: undefined, done: true };
  }

  async throw(error) {
    this.close();
    throw error;
  }

  close() {
    if (this.done) return;
    this.done = true;
    this.feed.remove(this);
    this.release?.();
    if (this.waiting) {
      const resolve = this.waiting;
      this.waiting = null;
      resolve({ value: undefined, done: true });
    }
  }
}

/** The subscriber of one request: each stream carries only the events its identity may read. */
function filteredSubscriber(settings, request) {
  const { role, ...claims } = settings;
  return {
    subscribe(channel) {
      const feed = feeds.get(channel);
      if (!feed) throw refuse("no such change feed", "NOT_FOUND");
      return new SubscriptionStream(feed, role, claims, request);
    },
  };
}

function camel(name) {
  return name.replace(/_([a-z0-9])/g, (_, c) => c.toUpperCase());
}

/** One subscription field per table: <table>Changed { seq op key node }. */
const ChangeFeedPlugin = extendSchema((build) => {
  const resources = Object.values(build.input.pgRegistry.pgResources);
  const fields = [];
  const types = [];
  const objects = { Subscription: { plans: {} } };
  for (const table of SETTINGS.tables) {
    const resource = resources.find(
      (r) => !r.parameters && r.codec.extensions?.pg?.schemaName === table.schema && r.codec.extensions?.pg?.name === table.table,
    );
    if (!resource) continue;
    const typeName = build.inflection.tableType(resource.codec);
    const payload = `${typeName}Change`;
    const field = `${camel(table.table)}Changed`;
    fields.push(`  """Changes to ${table.schema}.${table.table} the subscriber may read (channel ${table.channel}); seq numbers this subscription's events from 1."""\n  ${field}: ${payload}`);
    types.push(`type ${payload} {\n  seq: String!\n  op: String!\n  key: JSON\n  node: ${typeName}\n}`);
    objects.Subscription.plans[field] = {
      subscribePlan() {
        return listen(context().get("ccoasSubscriber"), constant(table.channel), jsonParse);
      },
      plan($event) {
        return $event;
      },
    };
    objects[payload] = {
      plans: {
        seq: ($event) => $event.get("seq"),
        op: ($event) => $event.get("op"),
        key: ($event) => $event.get("key"),
        node($event) {
          const $key = $event.get("key");
          return resource.get(Object.fromEntries(table.key.map((column) => [column, $key.get(column)])));
        },
      },
    };
  }
  return { typeDefs: gql([`extend type Subscription {\n${fields.join("\n")}\n}\n${types.join("\n")}`]), objects };
});

/** Introspection (and so GraphiQL) only in dev: elsewhere the validation rule refuses it. */
const IntrospectionPlugin = {
  name: "CcoasIntrospectionPlugin",
  version: "1.0.0",
  grafserv: {
    middleware: {
      setPreset(next, event) {
        if (!SETTINGS.dev) event.validationRules.push(NoSchemaIntrospectionCustomRule);
        return next();
      },
    },
  },
};

const preset = {
  extends: [PostGraphileAmberPreset],
  plugins: [ChangeFeedPlugin, IntrospectionPlugin],
  disablePlugins: ["NodePlugin"],
  pgServices: [makePgService({ pool, schemas: SETTINGS.schemas })],
  grafserv: {
    port: SETTINGS.port,
    host: "0.0.0.0",
    graphqlPath: SETTINGS.graphql_path,
    eventStreamPath: `${SETTINGS.graphql_path}/stream`,
    graphiql: SETTINGS.dev,
    graphiqlPath: `${SETTINGS.graphql_path}/ui`,
    // Ruru's files under the GraphQL path, where the edge routes them (in dev only).
    graphiqlStaticPath: `${SETTINGS.graphql_path}/ruru-static/`,
    websockets: true,
    watch: false,
  },
  grafast: {
    explain: false,
    context(requestContext) {
      const authorization =
        requestContext.http?.getHeader("authorization") ?? requestContext.ws?.normalizedConnectionParams?.authorization;
      const settings = requestSettings(Array.isArray(authorization) ? authorization[0] : authorization);
      return { pgSettings: settings, ccoasSubscriber: filteredSubscriber(settings, { ws: requestContext.ws, http: requestContext.http }) };
    },
  },
  schema: { exportSchemaSDLPath: undefined, pgForbidSetofFunctionsToReturnNull: false },
};

const pgl = postgraphile(preset);
const serv = pgl.createServ(grafserv);
const handler = serv.createHandler();
const server = createServer((req, res) => {
  if (req.url === "/livez") {
    res.writeHead(200, { "content-type": "text/plain" }).end("ok\n");
  } else {
    handler(req, res);
  }
});
const upgrade = await serv.getUpgradeHandler();
if (upgrade) server.on("upgrade", upgrade);
server.listen(SETTINGS.port, "0.0.0.0", () => console.log(`postgraphile: listening on :${SETTINGS.port}${SETTINGS.graphql_path}`));
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    server.close();
    subscriber.release();
    pgl.release().finally(() => pool.end().finally(() => process.exit(0)));
  });
}
