// PostGraphile 5 for ccoas: the GraphQL plane where the database decides every row.
//
// Reads /etc/ccoas/postgraphile/settings.json (rendered from the plan) and the secret files it
// names. Every request runs in a transaction as a NOLOGIN role: with a valid Directus-issued
// HS256 token as the user role, its claims set as ccoas.* transaction settings (row-level
// security reads them); without a token as the anonymous role (public-read tables only); a
// bad token is refused. Subscriptions (graphql-ws) LISTEN on the change feed's channels and
// pass an event on only when the subscriber may read the row (re-read through its own RLS).
// Introspection and GraphiQL only when the stack's environment is dev.
import { createHmac, timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";

import { postgraphile } from "postgraphile";
import { makePgService, PgSubscriber } from "postgraphile/adaptors/pg";
import { jsonParse } from "postgraphile/@dataplan/json";
import { constant, context, listen } from "postgraphile/grafast";
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

/** Whether the subscriber may read the row of a change event now (its own role and claims). */
async function visible(event, table, settings) {
  if (event.op === "DELETE" || event.op === "TRUNCATE") return true; // the key only, as LISTEN tells anyone
  if (event.key == null) return false;
  const client = await pool.connect();
  try {
    await client.query("BEGIN");
    for (const [name, value] of Object.entries(settings)) {
      await client.query("SELECT pg_catalog.set_config($1, $2, true)", [name, value]);
    }
    const where = table.key.map((column, i) => `t.${pg.escapeIdentifier(column)} = $${i + 1}`).join(" AND ");
    const qualified = `${pg.escapeIdentifier(table.schema)}.${pg.escapeIdentifier(table.table)}`;
    const found = await client.query(`SELECT 1 FROM ${qualified} AS t WHERE ${where}`, table.key.map((c) => event.key[c]));
    await client.query("COMMIT");
    return found.rowCount > 0;
  } catch (error) {
    await client.query("ROLLBACK").catch(() => {});
    console.error(`postgraphile: visibility check on ${table.schema}.${table.table} failed: ${error.message}`);
    return false;
  } finally {
    client.release();
  }
}

/** A subscriber whose streams carry only the events this request may see. */
function filteredSubscriber(settings) {
  return {
    subscribe(channel) {
      const table = SETTINGS.tables.find((t) => t.channel === channel);
      const inner = subscriber.subscribe(channel);
      return (async function* () {
        try {
          for await (const payload of inner) {
            let event;
            try {
              event = JSON.parse(payload);
            } catch {
              continue;
            }
            if (table && (await visible(event, table, settings))) yield payload;
          }
        } finally {
          await inner.return?.();
        }
      })();
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
    fields.push(`  """Changes to ${table.schema}.${table.table} the subscriber may read (channel ${table.channel})."""\n  ${field}: ${payload}`);
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
      return { pgSettings: settings, ccoasSubscriber: filteredSubscriber(settings) };
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
