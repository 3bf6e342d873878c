// Rendered by ccoas from the plan of stack prod (prod): do not edit.
// Directus 11 sends a collection subscription every delete's keys (event.keys), unfiltered:
// an item event is read with the subscriber's permissions, a delete cannot be. This hook
// wraps each websocket client's send (it sees the client in the websocket.message filter,
// before the subscribe handler does) and remembers, per subscription uid, the keys of the
// items that subscription was shown (its init payload, its create and update events). A
// delete message keeps only those keys, and is not sent when none is left. A subscription
// without a uid, or whose query leaves out the primary key, is shown no deletes at all.
const WRAPPED = Symbol("ccoas-websocket-deletes");
const SHOWN_MAX = 10000; // keys remembered per subscription, oldest forgotten first

export default ({ filter }, { getSchema, logger }) => {
	filter("websocket.message", async (message, { client }) => {
		if (!client) return message;
		if (!client[WRAPPED]) wrap(client);
		const type = String(message?.type ?? "").toLowerCase();
		if (type === "subscribe" && message.uid != null && typeof message.collection === "string") {
			const schema = await getSchema();
			const primary = schema.collections[message.collection]?.primary;
			client[WRAPPED].set(String(message.uid), { primary, shown: new Set() });
		} else if (type === "unsubscribe" && message.uid != null) {
			client[WRAPPED].delete(String(message.uid));
		}
		return message;
	});

	function wrap(client) {
		const subscriptions = new Map();
		client[WRAPPED] = subscriptions;
		const send = client.send.bind(client);
		client.send = (data, ...rest) => {
			let message;
			try {
				message = typeof data === "string" ? JSON.parse(data) : null;
			} catch {
				message = null;
			}
			if (message?.type !== "subscription") return send(data, ...rest);
			const subscription = message.uid == null ? undefined : subscriptions.get(String(message.uid));
			if (message.event === "delete") {
				if (!Array.isArray(message.data)) return send(data, ...rest); // an item subscription: its own item
				const told = subscription ? message.data.filter((key) => subscription.shown.delete(String(key))) : [];
				if (told.length === 0) {
					logger.debug(`ccoas-websocket-deletes: ${message.data.length} deleted key(s) withheld from subscription ${message.uid}`);
					return;
				}
				return send(JSON.stringify({ ...message, data: told }), ...rest);
			}
			if (subscription?.primary && ["init", "create", "update"].includes(message.event)) {
				const items = Array.isArray(message.data) ? message.data : message.data ? [message.data] : [];
				for (const item of items) {
					const key = item?.[subscription.primary];
					if (key == null) continue;
					if (subscription.shown.size >= SHOWN_MAX) subscription.shown.delete(subscription.shown.values().next().value);
					subscription.shown.add(String(key));
				}
			}
			return send(data, ...rest);
		};
	}
};
