//! `GET /users/me` through wrk, an extra beside the hyper generator (issue 10 allows wrk as an
//! extra). wrk is a C load generator: it writes each request and reads each answer with no
//! tasks or channels in between, so it takes less of the CPU it shares with PostgreSQL and
//! Redis. The same server, users and concurrency, measured both ways in one run, show how much
//! of the `me` rate the load generator itself costs.

use std::{path::Path, process::Stdio, time::Duration};

use anyhow::Context;
use serde_json::{Value, json};

use crate::load::cpu_now;

/// Each request sends the next token of `TOKENS_FILE` (one per line) as a bearer token. The
/// requests are formatted once, when the script loads, so each one costs wrk a table lookup.
const SCRIPT: &str = r#"
local requests = {}
for line in io.lines(os.getenv("TOKENS_FILE")) do
  local headers = { ["Authorization"] = "Bearer " .. line }
  requests[#requests + 1] = wrk.format("GET", "/api/v1/users/me", headers)
end
local i = math.random(#requests)
request = function()
  i = i % #requests + 1
  return requests[i]
end
"#;

/// Whether wrk is installed.
pub fn available() -> bool {
    std::process::Command::new("wrk")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// What wrk printed, as numbers.
#[derive(Debug, Default, PartialEq)]
pub struct Summary {
    pub requests: u64,
    pub seconds: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    /// Non-2xx answers and socket errors.
    pub errors: u64,
}

/// Runs wrk against `base` (`http://host:port`) for `warmup` (not recorded), then for
/// `duration`, with `connections` connections on one thread; returns its summary and the
/// server's and the machine's CPU seconds meanwhile. wrk inherits this process's CPUs.
pub async fn me(
    dir: &Path,
    base: &str,
    tokens: &[String],
    connections: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<(Summary, f64, f64)> {
    let script = dir.join("me.lua");
    let tokens_file = dir.join("tokens.txt");
    std::fs::write(&script, SCRIPT)?;
    std::fs::write(&tokens_file, tokens.join("\n") + "\n")?;
    let run = |seconds: u64| {
        let mut command = tokio::process::Command::new("wrk");
        command
            .args(["-t1", &format!("-c{connections}"), &format!("-d{seconds}s")])
            .args(["--latency", "-s"])
            .arg(&script)
            .arg(format!("{base}/"))
            .env("TOKENS_FILE", &tokens_file)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit());
        command
    };
    if !warmup.is_zero() {
        run(warmup.as_secs().max(1)).output().await?;
    }
    let cpu_start = cpu_now();
    let output = run(duration.as_secs().max(1)).output().await?;
    let cpu_end = cpu_now();
    anyhow::ensure!(output.status.success(), "wrk failed: {}", output.status);
    let text = String::from_utf8_lossy(&output.stdout);
    let summary = parse(&text).with_context(|| format!("reading wrk's output:\n{text}"))?;
    Ok((summary, cpu_end.0 - cpu_start.0, cpu_end.1 - cpu_start.1))
}

/// The JSON line of a wrk run, with the fields of the hyper scenarios.
pub fn report(summary: &Summary, connections: usize, server_s: f64, machine_s: f64) -> Value {
    let per_request_us = |seconds: f64| match summary.requests {
        0 => 0.0,
        n => (seconds * 1e7 / n as f64).round() / 10.0,
    };
    json!({
        "scenario": "me_wrk",
        "concurrency": connections,
        "duration_s": summary.seconds,
        "requests": summary.requests,
        "rps": (summary.requests as f64 / summary.seconds.max(f64::EPSILON)).round(),
        "p50_us": summary.p50_us,
        "p90_us": summary.p90_us,
        "p99_us": summary.p99_us,
        "errors": summary.errors,
        "server_cpu_us_per_req": per_request_us(server_s),
        "machine_cpu_us_per_req": per_request_us(machine_s),
    })
}

/// Reads wrk's `--latency` report.
fn parse(text: &str) -> anyhow::Result<Summary> {
    let mut summary = Summary::default();
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", value] => summary.p50_us = micros(value)?,
            ["90%", value] => summary.p90_us = micros(value)?,
            ["99%", value] => summary.p99_us = micros(value)?,
            [count, "requests", "in", seconds, ..] => {
                summary.requests = count.parse()?;
                summary.seconds = seconds
                    .trim_end_matches(',')
                    .trim_end_matches('s')
                    .parse()?;
            }
            ["Non-2xx", "or", "3xx", "responses:", count] => {
                summary.errors += count.parse::<u64>()?
            }
            ["Socket", "errors:", rest @ ..] => {
                // "connect 0, read 0, write 0, timeout 0"
                for pair in rest.chunks(2) {
                    if let [_, count] = pair {
                        summary.errors += count.trim_end_matches(',').parse::<u64>()?;
                    }
                }
            }
            _ => {}
        }
    }
    anyhow::ensure!(summary.requests > 0, "no request count");
    Ok(summary)
}

/// `812.00us`, `4.76ms` or `1.02s` in microseconds.
fn micros(value: &str) -> anyhow::Result<u64> {
    let (number, scale) = if let Some(n) = value.strip_suffix("us") {
        (n, 1.0)
    } else if let Some(n) = value.strip_suffix("ms") {
        (n, 1e3)
    } else if let Some(n) = value.strip_suffix('s') {
        (n, 1e6)
    } else {
        anyhow::bail!("{value:?} is not a duration");
    };
    Ok((number.parse::<f64>()? * scale).round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrk_latency_report_is_read_with_its_errors() {
        let text = "Running 8s test @ http://127.0.0.1:18777/
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.99ms    1.46ms  18.10ms   74.06%
    Req/Sec     6.41k   512.00     7.10k    70.00%
  Latency Distribution
     50%  812.00us
     75%    5.63ms
     90%    6.60ms
     99%    1.02s
  51000 requests in 8.00s, 20.11MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 12
Requests/sec:   6374.72
Transfer/sec:      2.51MB
";
        let summary = parse(text).unwrap();
        assert_eq!(
            summary,
            Summary {
                requests: 51000,
                seconds: 8.0,
                p50_us: 812,
                p90_us: 6600,
                p99_us: 1_020_000,
                errors: 15,
            }
        );
        assert!(parse("Running 8s test\n").is_err());
    }
}
