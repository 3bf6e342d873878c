// Rendered by ccoas from the plan of stack dev (dev): do not edit.
// Directus emits the auth.jwt filter with the payload of every token it signs (HS256, with
// its SECRET, which the GraphQL plane verifies with). This hook adds the user's tenant (the
// user field tenant_id) as the claim tenant_id, read by PostGraphile next to
// Directus's own id claim, and Hasura's claims under Hasura's default namespace: the user's
// id, their tenant, and the one Hasura role app users have.
const NAMESPACE = "https://hasura.io/jwt/claims";
const TENANT_FIELD = "tenant_id";
const ROLE = "user";

export default ({ filter }, { database, logger }) => {
	filter("auth.jwt", async (payload) => {
		if (typeof payload?.id !== "string") return payload; // share tokens name no user
		const claims = { "x-hasura-user-id": payload.id, "x-hasura-default-role": ROLE, "x-hasura-allowed-roles": [ROLE] };
		// ccoas provisions the field through this API after the admin's first login, which
		// signs a token too: until the column exists there is no tenant to add.
		if (!(await database.schema.hasColumn("directus_users", TENANT_FIELD))) return { ...payload, [NAMESPACE]: claims };
		const user = await database.select(TENANT_FIELD).from("directus_users").where({ id: payload.id }).first();
		if (!user?.[TENANT_FIELD]) {
			logger.debug(`ccoas-hasura-claims: user ${payload.id} has no ${TENANT_FIELD}`);
			return { ...payload, [NAMESPACE]: claims };
		}
		const tenant = String(user[TENANT_FIELD]);
		return { ...payload, tenant_id: tenant, [NAMESPACE]: { ...claims, "x-hasura-tenant-id": tenant } };
	});
};
