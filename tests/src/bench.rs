//! What the benchmark binaries (`tests/src/bin/bench-*.rs`) share.

use std::io::{Read, Write};
use std::net::TcpStream;

/// Whether `GET /health` on `127.0.0.1:port` answers 200 (a plain blocking HTTP/1.1 exchange, so
/// a start-up measurement does not wait on a client library).
pub fn health_ok(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let request = b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if stream.write_all(request).is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}
