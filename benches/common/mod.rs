//! Shared by the loopback benchmarks: the real server binary as a child process with a config
//! of the benchmark's, its resident memory, and percentile lines.

#![allow(dead_code)] // each benchmark uses a different part of this module

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The server binary, killed when this drops.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the server on a port the kernel picks, with `config` as its config file.
pub fn start_server(config: serde_json::Value) -> ServerProcess {
    let file = std::env::temp_dir().join(format!("mcp-stream-bench-{}.json", std::process::id()));
    std::fs::write(&file, config.to_string()).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_mcp-stream"))
        .args(["--listen", "127.0.0.1:0", "--log-level", "warn", "--config"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("server starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = std::fs::remove_file(&file);
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .expect("the listening line")
        .parse()
        .unwrap();
    ServerProcess { child, addr }
}

/// The resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Prints p50, p99, min and max of `samples`.
pub fn show(label: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "  {label:<28} p50 {:>9.3} ms   p99 {:>9.3} ms   min {:>8.3} ms   max {:>8.3} ms",
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples[0].as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3,
    );
}
