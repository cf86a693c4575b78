//! The README's Rust example is the crate's tested documentation example: every statement of
//! the README's program must appear in the crate docs (with the file path, the server's URL
//! and the token that the doctest takes from its own server), so the README cannot drift from
//! what `cargo test` runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn the_readme_example_is_the_tested_crate_example() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("the README is readable");
    let lib = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/lib.rs"))
        .expect("the crate source is readable");
    let start = readme
        .find("```rust\n")
        .expect("the README has a Rust example")
        + 8;
    let end = start + readme[start..].find("```").expect("the example ends");
    let docs: Vec<&str> = lib
        .lines()
        .filter_map(|l| l.trim_start().strip_prefix("//!"))
        .map(str::trim)
        .collect();
    let mut checked = 0;
    for line in readme[start..end].lines().map(str::trim) {
        let line = line
            .replace("\"bugs.blazedb\"", "&path")
            .replace("\"ws://127.0.0.1:7420\"", "url");
        let line = line.as_str();
        let skip = line.is_empty()
            || line.starts_with("fn main")
            || line.starts_with("let token")
            || line == "Ok(())"
            || line == "}";
        if skip {
            continue;
        }
        assert!(
            docs.contains(&line),
            "README line {line:?} is not in the crate's tested example"
        );
        checked += 1;
    }
    assert!(checked >= 8, "only {checked} lines compared");
}
