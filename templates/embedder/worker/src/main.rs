//! The ccoas embedding worker.
//!
//! For every embedded column of the stack (given as JSON in CCOAS_EMBED_TABLES) it fills rows
//! whose embedding IS NULL: it LISTENs to each table's change-feed channel and, on every
//! notification, on start and every CCOAS_EMBED_POLL_SECONDS, reads the key and source of such
//! rows, asks Ollama's /api/embed for their vectors and writes them. The UPDATE repeats the
//! source text it embedded, so a row whose text changed meanwhile is left for the next round.
//! A lost connection (Postgres or Ollama restarting) is retried; since the rows to do are
//! read from the table itself, nothing is lost. A batch that fails while both answer is done
//! again one row at a time, and a row that fails alone (a text Ollama refuses, a write the
//! database refuses) is skipped and logged until its text changes, so it holds back no other.

use std::{collections::HashSet, env, fs, thread, time::Duration};

use fallible_iterator::FallibleIterator;
use postgres::{Client, NoTls};
use serde::Deserialize;

#[derive(Deserialize, Clone)]
struct Target {
    schema: String,
    table: String,
    key: Vec<String>,
    /// The key columns' types (from the stack file's closed list), to compare them as such
    key_types: Vec<String>,
    source: String,
    column: String,
    model: String,
    channel: String,
}

struct Settings {
    targets: Vec<Target>,
    ollama: String,
    batch: i64,
    poll: Duration,
}

fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn settings() -> Result<Settings, String> {
    let raw = env::var("CCOAS_EMBED_TABLES").map_err(|_| "CCOAS_EMBED_TABLES is not set".to_string())?;
    let targets: Vec<Target> = serde_json::from_str(&raw).map_err(|e| format!("CCOAS_EMBED_TABLES: {e}"))?;
    let number = |name: &str, default: u64| env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    Ok(Settings {
        targets,
        ollama: env::var("CCOAS_OLLAMA_URL").unwrap_or_else(|_| "http://ollama:11434".into()),
        batch: number("CCOAS_EMBED_BATCH", 32) as i64,
        poll: Duration::from_secs(number("CCOAS_EMBED_POLL_SECONDS", 30)),
    })
}

fn connect() -> Result<Client, String> {
    let file = env::var("CCOAS_PG_PASSWORD_FILE").map_err(|_| "CCOAS_PG_PASSWORD_FILE is not set".to_string())?;
    let password = fs::read_to_string(&file).map_err(|e| format!("{file}: {e}"))?;
    let mut config = postgres::Config::new();
    config
        .host(&env::var("PGHOST").unwrap_or_else(|_| "postgres".into()))
        .port(env::var("PGPORT").ok().and_then(|p| p.parse().ok()).unwrap_or(5432))
        .dbname(&env::var("PGDATABASE").unwrap_or_else(|_| "postgres".into()))
        .user(&env::var("PGUSER").map_err(|_| "PGUSER is not set".to_string())?)
        .password(password.trim_end())
        .application_name("ccoas-embedder")
        .connect_timeout(Duration::from_secs(10));
    config.connect(NoTls).map_err(|e| format!("connect: {e}"))
}

fn embed(settings: &Settings, model: &str, texts: &[String]) -> Result<Vec<Vec<f32>>, String> {
    #[derive(Deserialize)]
    struct Answer {
        embeddings: Vec<Vec<f32>>,
    }
    let answer: Answer = ureq::post(&format!("{}/api/embed", settings.ollama))
        .timeout(Duration::from_secs(120))
        .send_json(serde_json::json!({"model": model, "input": texts}))
        .map_err(|e| format!("ollama: {e}"))?
        .into_json()
        .map_err(|e| format!("ollama answer: {e}"))?;
    if answer.embeddings.len() != texts.len() {
        return Err(format!("ollama returned {} embeddings for {} texts", answer.embeddings.len(), texts.len()));
    }
    Ok(answer.embeddings)
}

fn vector_literal(values: &[f32]) -> String {
    let parts: Vec<String> = values.iter().map(|v| v.to_string()).collect();
    format!("[{}]", parts.join(","))
}

/// A row of a target: its key (as text) and its source text.
type Row = (Vec<String>, String);

/// The SQL of a target: the rows to do, and the write of one row's vector.
struct Statements {
    table: String,
    select: String,
    update: String,
}

fn statements(target: &Target) -> Statements {
    let table = format!("{}.{}", ident(&target.schema), ident(&target.table));
    let keys: Vec<String> = target.key.iter().map(|k| format!("{}::text", ident(k))).collect();
    let select = format!(
        "SELECT {keys}, {source} FROM {table} WHERE {column} IS NULL AND {source} IS NOT NULL LIMIT $1",
        keys = keys.join(", "),
        source = ident(&target.source),
        column = ident(&target.column),
    );
    let matches: Vec<String> = target
        .key
        .iter()
        .zip(&target.key_types)
        .enumerate()
        .map(|(i, (k, t))| format!("{} = ${}::text::{}", ident(k), i + 3, t))
        .collect();
    let update = format!(
        "UPDATE {table} SET {column} = $1::text::vector WHERE {source} = $2 AND {column} IS NULL AND {matches}",
        column = ident(&target.column),
        source = ident(&target.source),
        matches = matches.join(" AND "),
    );
    Statements { table, select, update }
}

/// A Postgres error as the server said it (the crate's own text is only "db error").
fn pg_error(table: &str, e: postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{table}: {db}"),
        None => format!("{table}: {e}"),
    }
}

/// Embeds `rows` in one request and writes their vectors in one transaction; the rows written.
fn embed_and_write(client: &mut Client, settings: &Settings, target: &Target, sql: &Statements, rows: &[Row]) -> Result<u64, String> {
    let texts: Vec<String> = rows.iter().map(|(_, text)| text.clone()).collect();
    let vectors = embed(settings, &target.model, &texts)?;
    let mut transaction = client.transaction().map_err(|e| pg_error(&sql.table, e))?;
    let mut changed = 0;
    for ((key, text), vector) in rows.iter().zip(vectors) {
        let literal = vector_literal(&vector);
        let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![&literal, text];
        for k in key {
            params.push(k);
        }
        changed += transaction.execute(sql.update.as_str(), &params).map_err(|e| pg_error(&sql.table, e))?;
    }
    transaction.commit().map_err(|e| pg_error(&sql.table, e))?;
    Ok(changed)
}

/// Whether Ollama embeds a known text and Postgres answers: then a failed batch is the fault
/// of one of its rows, not of a service that is down.
fn services_answer(client: &mut Client, settings: &Settings, target: &Target) -> bool {
    !client.is_closed() && client.simple_query("SELECT 1").is_ok() && embed(settings, &target.model, &["ccoas".to_string()]).is_ok()
}

/// Embeds every row of `target` whose embedding is NULL, a batch at a time. Returns how many
/// rows it wrote. A batch that fails while Ollama and Postgres answer is done again one row at
/// a time; a row that fails alone is put in `skipped` (with its text: it is tried again when
/// its text changes, or when the worker restarts) and said in the log, so it never holds back
/// the others.
fn fill(client: &mut Client, settings: &Settings, target: &Target, skipped: &mut HashSet<Row>) -> Result<u64, String> {
    let sql = statements(target);
    let n = target.key.len();
    let mut written = 0;
    loop {
        // skipped rows still match the query: read past them
        let limit = settings.batch + skipped.len() as i64;
        let found = client.query(sql.select.as_str(), &[&limit]).map_err(|e| pg_error(&sql.table, e))?;
        let rows: Vec<Row> = found
            .iter()
            .map(|r| ((0..n).map(|i| r.get::<_, String>(i)).collect(), r.get::<_, String>(n)))
            .filter(|row| !skipped.contains(row))
            .take(settings.batch as usize)
            .collect();
        if rows.is_empty() {
            return Ok(written);
        }
        let changed = match embed_and_write(client, settings, target, &sql, &rows) {
            Ok(changed) => changed,
            Err(e) if rows.len() > 1 && services_answer(client, settings, target) => {
                eprintln!("ccoas-embedder: {}: a batch of {} failed ({e}); doing its rows one at a time", sql.table, rows.len());
                let mut changed = 0;
                for row in &rows {
                    match embed_and_write(client, settings, target, &sql, std::slice::from_ref(row)) {
                        Ok(one) => changed += one,
                        Err(e) if services_answer(client, settings, target) => {
                            eprintln!("ccoas-embedder: {}: row {:?} skipped: {e} (tried again when its text changes)", sql.table, row.0);
                            skipped.insert(row.clone());
                        }
                        Err(e) => return Err(e),
                    }
                }
                changed
            }
            Err(e) if rows.len() == 1 && services_answer(client, settings, target) => {
                eprintln!("ccoas-embedder: {}: row {:?} skipped: {e} (tried again when its text changes)", sql.table, rows[0].0);
                skipped.insert(rows[0].clone());
                0
            }
            Err(e) => return Err(e),
        };
        written += changed;
        if changed == 0 && !rows.iter().any(|row| skipped.contains(row)) {
            // every row of the batch changed its text meanwhile: the next round reads them again
            return Ok(written);
        }
    }
}

fn run(settings: &Settings, skipped: &mut [HashSet<Row>]) -> Result<(), String> {
    let mut client = connect()?;
    for target in &settings.targets {
        client.batch_execute(&format!("LISTEN {}", ident(&target.channel))).map_err(|e| e.to_string())?;
    }
    eprintln!("ccoas-embedder: listening on {} table(s)", settings.targets.len());
    loop {
        for (target, skipped) in settings.targets.iter().zip(skipped.iter_mut()) {
            let written = fill(&mut client, settings, target, skipped)?;
            if written > 0 {
                eprintln!("ccoas-embedder: {}.{}: {} row(s) embedded", target.schema, target.table, written);
            }
        }
        // wait for a notification or the poll interval, then drain what is queued: one sweep
        // answers them all (the rows to do are read from the table, not from the payloads)
        let mut notifications = client.notifications();
        notifications.timeout_iter(settings.poll).next().map_err(|e| format!("listen: {e}"))?;
        let mut pending = notifications.iter();
        while pending.next().map_err(|e| format!("listen: {e}"))?.is_some() {}
    }
}

fn main() {
    let settings = match settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ccoas-embedder: {e}");
            std::process::exit(2);
        }
    };
    if env::args().nth(1).as_deref() == Some("--check") {
        // health check: the database answers with our role's credentials
        match connect().and_then(|mut c| c.simple_query("SELECT 1").map_err(|e| e.to_string())) {
            Ok(_) => std::process::exit(0),
            Err(e) => {
                eprintln!("ccoas-embedder: {e}");
                std::process::exit(1);
            }
        }
    }
    // per target: the rows that failed alone, kept across reconnections
    let mut skipped: Vec<HashSet<Row>> = settings.targets.iter().map(|_| HashSet::new()).collect();
    loop {
        if let Err(e) = run(&settings, &mut skipped) {
            eprintln!("ccoas-embedder: {e}; retrying in 2 s");
            thread::sleep(Duration::from_secs(2));
        }
    }
}
