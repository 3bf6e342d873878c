// Rendered by ccoas: do not edit.
// Directus handles SIGTERM (it closes its server and database connections and logs "Directus
// shut down OK") but leaves handles open, so the process never exits and every stop ended in a
// kill after the timeout. Once the signal arrives, give Directus's own shutdown a few seconds,
// then exit. The timer is unref'd: a process that ends by itself is not held up by it.
"use strict";
for (const signal of ["SIGTERM", "SIGINT"]) {
	process.once(signal, () => {
		setTimeout(() => process.exit(0), 5000).unref();
	});
}
