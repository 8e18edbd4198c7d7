//! Shared fixtures of the criterion benchmarks (`cargo bench -p idres-benches`).
//! Load tests against running servers live in the shell scripts beside
//! this file (`handle/run.sh`, `dns/run.sh`, …).

use idres_model::HandleValue;

/// A typical product record: a URL and a description.
pub fn product_values(i: u32) -> Vec<HandleValue> {
    let mut url = HandleValue::new(1, "URL", format!("https://registry.example/p/{i}"));
    url.timestamp = 1_767_225_600;
    let mut desc = HandleValue::new(2, "DESC", format!("product {i} batch {}", i % 977));
    desc.timestamp = 1_767_225_600;
    vec![url, desc]
}
