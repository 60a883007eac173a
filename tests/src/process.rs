//! A function binary run as its own process, as Cloud Run runs it: a minimal environment on a
//! free port, `GET /health` polled until it answers, SIGTERM to stop it. The benchmark binaries
//! and `image-check` share it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// The variables a function needs to start without any cloud (`PORT` and `PUBLIC_URL` aside):
/// the memory store, the in-process queue, client credentials, a key and an operator token.
pub const MINIMAL_ENV: [(&str, &str); 6] = [
    ("STORE", "memory"),
    ("QUEUE", "local"),
    ("KLAVIYO_CLIENT_ID", "client-id"),
    ("KLAVIYO_CLIENT_SECRET", "client-secret"),
    (
        "ENCRYPTION_KEY",
        "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    ),
    ("OPERATOR_TOKEN", "operator-token-0123456789"),
];

/// How often [`wait_for`] and [`wait_exit`] look again.
const POLL: Duration = Duration::from_micros(500);

/// How long a `GET /health` exchange may wait for the answer.
const HEALTH_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `binary` with only [`MINIMAL_ENV`], `PORT=port` and `PUBLIC_URL` (the rest of the
/// environment cleared); stdio is left to the caller.
pub fn function_command(binary: &Path, port: u16) -> Command {
    let mut command = Command::new(binary);
    command
        .env_clear()
        .envs(MINIMAL_ENV)
        .env("PORT", port.to_string())
        .env("PUBLIC_URL", format!("http://127.0.0.1:{port}"));
    command
}

/// Polls `probe` until it answers `Some`, failing when `child` exits first or `deadline` passes.
pub fn wait_for<T>(
    child: &mut Child,
    deadline: Instant,
    mut probe: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    loop {
        if let Some(answer) = probe() {
            return Ok(answer);
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("exited with {status} before answering");
        }
        if Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            anyhow::bail!("did not answer in time");
        }
        std::thread::sleep(POLL);
    }
}

/// Waits for `child` to exit within `timeout`; kills it (and fails) when it does not.
pub fn wait_exit(child: &mut Child, timeout: Duration) -> anyhow::Result<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            anyhow::bail!("still running {timeout:?} later (killed)");
        }
        std::thread::sleep(POLL);
    }
}

/// Sends SIGTERM to `child`, as Cloud Run does on scale-down.
pub fn terminate(child: &Child) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -TERM {} failed", child.id());
    Ok(())
}

/// Whether `GET /health` on `127.0.0.1:port` answers 200 (a plain blocking HTTP/1.1 exchange
/// reading only the status line, so a start-up measurement does not wait on a client library).
pub fn health_ok(port: u16) -> bool {
    let mut head = [0u8; 12];
    request_health(port).is_some_and(|mut stream| {
        stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
    })
}

/// The body of `GET /health` on `127.0.0.1:port` when it answers 200.
pub fn health_body(port: u16) -> Option<String> {
    let mut response = String::new();
    request_health(port)?.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// A connection to `127.0.0.1:port` that has sent `GET /health` (`Connection: close`).
fn request_health(port: u16) -> Option<TcpStream> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(HEALTH_READ_TIMEOUT)).ok()?;
    let request = b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    stream.write_all(request).ok()?;
    Some(stream)
}

/// A process's peak resident set (`VmHWM`), in MiB.
pub fn peak_rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .ok_or_else(|| anyhow::anyhow!("no VmHWM in /proc/{pid}/status"))?;
    let kib: f64 = line
        .split_whitespace()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("no VmHWM value"))?
        .parse()?;
    Ok(kib / 1024.0)
}
