//! What the integration tests share.

use serde_json::Value;
use std::process::Output;

/// The JSON-lines records `tapwatch-edge analyze` wrote.
pub fn records(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}
