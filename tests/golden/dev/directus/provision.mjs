// Rendered by ccoas from the plan of stack dev (dev): do not edit.
// Makes Directus enforce access.json through its own REST API on localhost, as the user
// ccoas-provisioning (its static token read here from the secret file, never passed in): the
// users' tenant field, the role app-user with its policy, the item permissions of that policy
// and of the public policy on the app tables, and the project owner (the admin e-mail). A
// second run changes nothing; a changed preset or table converges (permissions of these
// policies that access.json no longer holds are deleted).
import { readFileSync } from "node:fs";

const api = "http://127.0.0.1:8055";
const access = JSON.parse(readFileSync(new URL("./access.json", import.meta.url), "utf8"));
const counts = { created: 0, updated: 0, deleted: 0 };

function secret(path) {
	const value = readFileSync(path, "utf8").trim();
	if (!value) throw new Error(`the secret file ${path} is empty`);
	return value;
}

let token = null;

async function call(method, path, body) {
	const response = await fetch(api + path, {
		method,
		headers: { "content-type": "application/json", ...(token ? { authorization: `Bearer ${token}` } : {}) },
		body: body === undefined ? undefined : JSON.stringify(body),
	});
	const text = await response.text();
	if (!response.ok) {
		const error = new Error(`${method} ${path}: HTTP ${response.status} ${text.slice(0, 500)}`);
		error.status = response.status;
		throw error;
	}
	return text ? JSON.parse(text).data : null;
}

const query = (filter) => `filter=${encodeURIComponent(JSON.stringify(filter))}&limit=-1`;

async function ensureOne(collection, filter, wanted) {
	const [found] = await call("GET", `/${collection}?${query(filter)}`);
	if (!found) {
		counts.created += 1;
		return call("POST", `/${collection}`, wanted);
	}
	const changed = Object.fromEntries(Object.entries(wanted).filter(([key, value]) => JSON.stringify(found[key]) !== JSON.stringify(value)));
	if (Object.keys(changed).length === 0) return found;
	counts.updated += 1;
	return call("PATCH", `/${collection}/${found.id}`, changed);
}

async function ensureTenantField(field) {
	try {
		await call("GET", `/fields/directus_users/${field.field}`);
	} catch (error) {
		if (error.status !== 403 && error.status !== 404) throw error;
		counts.created += 1;
		await call("POST", "/fields/directus_users", {
			field: field.field,
			type: field.type,
			schema: { is_nullable: true },
			meta: { interface: "input", note: field.note, special: null },
		});
	}
}

// Directus stores an empty filter or field list in more than one way: compare meaning.
const empty = (value) => value === null || value === undefined || (typeof value === "object" && Object.keys(value).length === 0);
const same = (a, b) => (empty(a) && empty(b)) || JSON.stringify(a) === JSON.stringify(b);
const fields = (value) => (value === null || value === undefined ? null : [...value].sort());

async function converge(policy, wanted, manages) {
	const existing = (await call("GET", `/permissions?${query({ policy: { _eq: policy } })}`)).filter(manages);
	const key = (p) => `${p.collection}\u0000${p.action}`;
	const byKey = new Map(existing.map((p) => [key(p), p]));
	for (const permission of wanted) {
		const body = { ...permission, policy };
		const found = byKey.get(key(permission));
		byKey.delete(key(permission));
		if (!found) {
			counts.created += 1;
			await call("POST", "/permissions", body);
		} else if (
			!same(found.permissions, permission.permissions) ||
			!same(found.validation, permission.validation) ||
			!same(found.presets, permission.presets) ||
			JSON.stringify(fields(found.fields)) !== JSON.stringify(fields(permission.fields))
		) {
			counts.updated += 1;
			await call("PATCH", `/permissions/${found.id}`, body);
		}
	}
	for (const stale of byKey.values()) {
		counts.deleted += 1;
		await call("DELETE", `/permissions/${stale.id}`);
	}
}

// Provisioning authenticates as ccoas-provisioning: an administrator with no email and no
// password, so no login reaches it and no run of failed logins (Directus suspends a user after
// AUTH_LOGIN_ATTEMPTS) can lock it out; only its static token, kept in Vault, opens it. The
// first run (or a stack from before it existed) logs in once as the admin to create it.
const PROVISIONER = "ccoas-provisioning";
const provisionToken = secret(process.env.CCOAS_PROVISION_TOKEN_FILE);

async function provisionerWorks() {
	token = provisionToken;
	try {
		return (await call("GET", "/users/me?fields=id,status")).status === "active";
	} catch (error) {
		if (error.status === 401 || error.status === 403) return false;
		throw error;
	}
}

if (!(await provisionerWorks())) {
	token = null;
	const email = process.env.ADMIN_EMAIL;
	const password = secret(process.env.ADMIN_PASSWORD_FILE);
	token = (await call("POST", "/auth/login", { email, password })).access_token;
	const { role } = await call("GET", "/users/me?fields=role");
	const wanted = { first_name: PROVISIONER, title: PROVISIONER, status: "active", role, token: provisionToken };
	const [found] = await call("GET", `/users?${query({ title: { _eq: PROVISIONER } })}`);
	if (found) await call("PATCH", `/users/${found.id}`, wanted);
	else await call("POST", "/users", wanted);
	counts.created += found ? 0 : 1;
	counts.updated += found ? 1 : 0;
	if (!(await provisionerWorks())) throw new Error(`the static token of ${PROVISIONER} does not authenticate after it was set`);
}

await ensureTenantField(access.tenant_field);
const policy = await ensureOne("policies", { name: { _eq: access.policy.name } }, access.policy);
const role = await ensureOne("roles", { name: { _eq: access.role.name } }, access.role);
await ensureOne("access", { _and: [{ role: { _eq: role.id } }, { policy: { _eq: policy.id } }] }, { role: role.id, policy: policy.id });
await converge(policy.id, access.permissions, () => true);

// The public policy is the one attached to no role and no user. Only its permissions on app
// tables are ccoas's (every collection not Directus's own): an administrator keeps the rest.
const [publicAccess] = await call("GET", `/access?${query({ _and: [{ role: { _null: true } }, { user: { _null: true } }] })}`);
if (!publicAccess) throw new Error("Directus has no public policy (an access row with no role and no user)");
await converge(publicAccess.policy, access.public_permissions, (p) => !p.collection.startsWith("directus_"));

// The project owner: Directus 11.17 greets an administrator with a license modal ("You have
// not set a project owner") at every login until directus_settings.project_owner is set. It
// is set here with a plain settings update, which sends nothing anywhere. Never PROJECT_OWNER
// nor POST /settings/owner: both call SettingsService.setOwner, which posts the owner to
// Directus's compliance service and, when that fails, marks project_status "pending" for a
// daily retry (whatever TELEMETRY says). project_status stays null: nothing to retry.
const owner = { project_owner: process.env.ADMIN_EMAIL, project_usage: null, org_name: null, product_updates: false, project_status: null };
const settings = await call("GET", `/settings?fields=${Object.keys(owner).join(",")}`);
const ownerChanges = Object.fromEntries(Object.entries(owner).filter(([key, value]) => settings[key] !== value));
if (Object.keys(ownerChanges).length > 0) {
	counts.updated += 1;
	await call("PATCH", "/settings", ownerChanges);
}

console.log(`directus provision: ${counts.created} created, ${counts.updated} updated, ${counts.deleted} deleted`);
