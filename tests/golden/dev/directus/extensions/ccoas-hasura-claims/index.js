// Rendered by ccoas from the plan of stack dev (dev): do not edit.
// Directus emits the auth.jwt filter with the payload of every token it signs (HS256, with
// its SECRET, which Hasura is configured to verify with). This hook adds Hasura's claims
// under Hasura's default namespace: the user's id, their tenant (the user field
// tenant_id), and the one Hasura role app users have.
const NAMESPACE = "https://hasura.io/jwt/claims";
const TENANT_FIELD = "tenant_id";
const ROLE = "user";

export default ({ filter }, { database, logger }) => {
	filter("auth.jwt", async (payload) => {
		if (typeof payload?.id !== "string") return payload; // share tokens name no user
		const claims = { "x-hasura-user-id": payload.id, "x-hasura-default-role": ROLE, "x-hasura-allowed-roles": [ROLE] };
		const user = await database.select(TENANT_FIELD).from("directus_users").where({ id: payload.id }).first();
		if (user?.[TENANT_FIELD]) claims["x-hasura-tenant-id"] = String(user[TENANT_FIELD]);
		else logger.debug(`ccoas-hasura-claims: user ${payload.id} has no ${TENANT_FIELD}`);
		return { ...payload, [NAMESPACE]: claims };
	});
};
