//! dbping: an example service of a ccoas stack's own (stacks/examples/dbping.yaml).
//!
//! A small HTTP service on the stack's db network that says whether Postgres answers:
//!
//! - `GET /health`: 200 when Postgres answers its protocol (an SSLRequest gets its one-byte
//!   reply: `S` or `N`), 503 otherwise. No credentials: it is what the health check asks.
//! - `GET /status`: the same with the time Postgres took, for a caller that sends
//!   `Authorization: Bearer <key>`, the key ccoas generated into Vault and mounted as the
//!   file `DBPING_AUTH_FILE` (read at each request, so a rotated key applies at once); 401
//!   otherwise.
//!
//! `dbping --check` asks the running service's `/health` and exits 0 only on a 200: the
//! container's health check (the image has no curl).
//!
//! Settings (environment): `DBPING_LISTEN` (default `0.0.0.0:8080`), `DBPING_POSTGRES`
//! (default `postgres:5432`), `DBPING_AUTH_FILE` (default `/run/secrets/dbping_api_key`).

use std::env;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(3);
/// All a Postgres probe may take: the answer comes within a health check's default 5 s.
const PROBE_BUDGET: Duration = Duration::from_secs(3);
const MAX_HEAD: usize = 8192;
/// The SSLRequest message: length 8, code 80877103. Any Postgres answers it with one byte.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

fn setting(name: &str, default: &str) -> String {
    env::var(name).unwrap_or_else(|_| default.to_string())
}

/// Whether Postgres at `address` answers its protocol, and how long it took; within
/// `PROBE_BUDGET` in all, name resolution included (a stopped container's name can take the
/// resolver longer than a health check may wait).
fn postgres_answers(address: &str) -> Result<Duration, String> {
    let started = Instant::now();
    let left = |what: &str| {
        PROBE_BUDGET.checked_sub(started.elapsed()).filter(|d| !d.is_zero()).ok_or_else(|| format!("{what} {address}: no answer within {PROBE_BUDGET:?}"))
    };
    let (sender, receiver) = mpsc::channel();
    let name = address.to_string();
    thread::spawn(move || {
        let _ = sender.send(name.to_socket_addrs().map(|mut found| found.next()));
    });
    let target = match receiver.recv_timeout(left("resolve")?) {
        Ok(Ok(Some(target))) => target,
        Ok(Ok(None)) => return Err(format!("{address} resolves to nothing")),
        Ok(Err(e)) => return Err(format!("cannot resolve {address}: {e}")),
        Err(_) => return Err(format!("resolve {address}: no answer within {PROBE_BUDGET:?}")),
    };
    let mut stream = TcpStream::connect_timeout(&target, left("connect")?).map_err(|e| format!("connect {address}: {e}"))?;
    stream.set_write_timeout(Some(left("write")?)).map_err(|e| e.to_string())?;
    stream.write_all(&SSL_REQUEST).map_err(|e| format!("write to {address}: {e}"))?;
    stream.set_read_timeout(Some(left("read")?)).map_err(|e| e.to_string())?;
    let mut reply = [0u8; 1];
    stream.read_exact(&mut reply).map_err(|e| format!("read from {address}: {e}"))?;
    match reply[0] {
        b'S' | b'N' => Ok(started.elapsed()),
        other => Err(format!("{address} answered {other:#04x}, not Postgres")),
    }
}

struct Request {
    method: String,
    path: String,
    bearer: Option<String>,
}

fn read_request(stream: &mut TcpStream) -> Option<Request> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_string(), first.next()?.to_string());
    let bearer = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("authorization"))
        .and_then(|(_, value)| value.trim().strip_prefix("Bearer ").map(|token| token.trim().to_string()));
    Some(Request { method, path, bearer })
}

/// Equal keys, compared in a time that does not depend on where they first differ.
fn same_key(given: &[u8], wanted: &[u8]) -> bool {
    given.len() == wanted.len() && given.iter().zip(wanted).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

fn respond(stream: &mut TcpStream, status: &str, body: &str) {
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes());
}

fn json_text(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '"' | '\\' => format!("\\{c}"),
            c if c.is_control() => format!("\\u{:04x}", c as u32),
            c => c.to_string(),
        })
        .collect()
}

fn serve(mut stream: TcpStream, postgres: &str, auth_file: &str) {
    let _ = stream.set_read_timeout(Some(TIMEOUT));
    let _ = stream.set_write_timeout(Some(TIMEOUT));
    let Some(request) = read_request(&mut stream) else {
        return respond(&mut stream, "400 Bad Request", "{\"error\":\"bad request\"}\n");
    };
    if request.method != "GET" {
        return respond(&mut stream, "405 Method Not Allowed", "{\"error\":\"GET only\"}\n");
    }
    match request.path.as_str() {
        "/health" => match postgres_answers(postgres) {
            Ok(_) => respond(&mut stream, "200 OK", "{\"postgres\":\"answers\"}\n"),
            Err(e) => respond(&mut stream, "503 Service Unavailable", &format!("{{\"postgres\":\"silent\",\"error\":\"{}\"}}\n", json_text(&e))),
        },
        "/status" => {
            let wanted = match fs::read_to_string(auth_file) {
                Ok(key) if !key.trim().is_empty() => key.trim().to_string(),
                _ => return respond(&mut stream, "500 Internal Server Error", "{\"error\":\"no key file\"}\n"),
            };
            match request.bearer {
                Some(given) if same_key(given.as_bytes(), wanted.as_bytes()) => match postgres_answers(postgres) {
                    Ok(took) => respond(&mut stream, "200 OK", &format!("{{\"postgres\":\"answers\",\"ms\":{:.3}}}\n", took.as_secs_f64() * 1000.0)),
                    Err(e) => respond(&mut stream, "503 Service Unavailable", &format!("{{\"postgres\":\"silent\",\"error\":\"{}\"}}\n", json_text(&e))),
                },
                _ => respond(&mut stream, "401 Unauthorized", "{\"error\":\"a bearer key is required\"}\n"),
            }
        }
        _ => respond(&mut stream, "404 Not Found", "{\"error\":\"not found\"}\n"),
    }
}

/// `--check`: GET the running service's /health on loopback; success only on a 200.
fn check(listen: &str) -> ExitCode {
    let port = listen.rsplit(':').next().unwrap_or("8080");
    let result = (|| -> Result<String, String> {
        let target = format!("127.0.0.1:{port}").parse().map_err(|e| format!("{e}"))?;
        let mut stream = TcpStream::connect_timeout(&target, TIMEOUT).map_err(|e| e.to_string())?;
        stream.set_read_timeout(Some(Duration::from_millis(4500))).map_err(|e| e.to_string())?;
        stream.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").map_err(|e| e.to_string())?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).map_err(|e| e.to_string())?;
        Ok(reply)
    })();
    match result {
        Ok(reply) if reply.starts_with("HTTP/1.1 200 ") => ExitCode::SUCCESS,
        Ok(reply) => {
            eprintln!("dbping: /health answered {}", reply.lines().last().unwrap_or(""));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("dbping: /health unreachable: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let listen = setting("DBPING_LISTEN", "0.0.0.0:8080");
    if env::args().nth(1).as_deref() == Some("--check") {
        return check(&listen);
    }
    let postgres = setting("DBPING_POSTGRES", "postgres:5432");
    let auth_file = setting("DBPING_AUTH_FILE", "/run/secrets/dbping_api_key");
    let listener = match TcpListener::bind(&listen) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("dbping: cannot listen on {listen}: {e}");
            return ExitCode::FAILURE;
        }
    };
    eprintln!("dbping: listening on {listen}, asking Postgres at {postgres}");
    for stream in listener.incoming().flatten() {
        let (postgres, auth_file) = (postgres.clone(), auth_file.clone());
        thread::spawn(move || serve(stream, &postgres, &auth_file));
    }
    ExitCode::SUCCESS
}
