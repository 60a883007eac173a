//! The short variant of `make fuzz`: every fuzz target's body ([`harness::fuzzing`]) over every
//! seed in `tests/fuzz/corpus/<target>/` (and every other target's seeds: a body must take any
//! bytes), then over a few thousand deterministic mutations of them (a fixed-seed xorshift: the
//! same inputs on every run, no timing). Nothing may panic; a panic names the target and the input
//! in hex, to be added to the corpus and pinned by a named test below.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use harness::fuzzing::{Input, TARGETS, Target};
use shared::api_error::parse_json;
use shared::receivers::klaviyo::SystemDelivery;
use shared::receivers::omneo::ChangedProfile;

/// Mutations per target.
const MUTATIONS: usize = 3_000;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}

/// The seeds of `target`, sorted by file name.
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir().join(target);
    let mut seeds: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("a directory entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("a readable seed"))
        })
        .collect();
    seeds.sort();
    seeds
}

/// Runs `body` on `data`; a panic fails the test naming the target, the input's origin and its
/// bytes.
fn run(name: &str, body: Target, origin: &str, data: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| body(data))).is_err() {
        panic!(
            "fuzz target {name} panicked on {origin}; input (hex): {}",
            hex::encode(data)
        );
    }
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Bytes that make JSON, numbers and strings interesting.
const INTERESTING: &[&[u8]] = &[
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"\\u0000",
    b"\\ud800",
    b"null",
    b"true",
    b"-0",
    b"1e999",
    b"-9223372036854775809",
    b"18446744073709551616",
    b"0.0000000000000000000001",
    b"\"\"",
    b"{}",
    b"[]",
    b"\xff",
    b"\xe2\x80",
    b"  ",
    b"\"var\"",
    b"{\"var\":\"\"}",
    b"\"in\"",
    b"\"9999-12-31T23:59:59Z\"",
    b"\"-009999-01-01T00:00:00Z\"",
];

/// One to four random edits of `data`, sometimes splicing in a part of `other`.
fn mutate(rng: &mut Rng, data: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(8) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.next() as u8;
            }
            2 => {
                let end = (at + 1 + rng.below(16)).min(out.len());
                out.drain(at.min(end)..end);
            }
            3 => {
                let token = INTERESTING[rng.below(INTERESTING.len())];
                out.splice(at..at, token.iter().copied());
            }
            4 if !other.is_empty() => {
                let start = rng.below(other.len());
                let end = (start + 1 + rng.below(64)).min(other.len());
                out.splice(at..at, other[start..end].iter().copied());
            }
            5 => out.truncate(at),
            6 if !out.is_empty() => out[0] = rng.next() as u8,
            _ => {
                // A JSON token replaced: the bytes from `at` to the next delimiter.
                let end = out[at..]
                    .iter()
                    .position(|b| b",:]}".contains(b))
                    .map_or(out.len(), |n| at + n);
                let token = INTERESTING[rng.below(INTERESTING.len())];
                out.splice(at..end, token.iter().copied());
            }
        }
    }
    out
}

#[test]
fn every_target_takes_every_seed() {
    let all: Vec<(String, Vec<u8>)> = TARGETS
        .iter()
        .flat_map(|(target, _)| {
            seeds(target)
                .into_iter()
                .map(move |(name, data)| (format!("{target}/{name}"), data))
        })
        .collect();
    for (target, _) in TARGETS {
        assert!(
            !seeds(target).is_empty(),
            "tests/fuzz/corpus/{target} has no seeds"
        );
    }
    for (name, body) in TARGETS {
        for (origin, data) in &all {
            run(name, body, origin, data);
        }
    }
}

#[test]
fn every_target_takes_mutations_of_its_seeds() {
    for (index, (name, body)) in TARGETS.into_iter().enumerate() {
        let seeds = seeds(name);
        let mut rng = Rng(0x5eed_f022 + index as u64);
        for n in 0..MUTATIONS {
            let (seed, data) = &seeds[n % seeds.len()];
            let (_, other) = &seeds[rng.below(seeds.len())];
            let mutated = mutate(&mut rng, data, other);
            run(name, body, &format!("mutation {n} of {seed}"), &mutated);
        }
    }
}

/// The seeds are what they claim: the genuine payloads parse, so the mutations start from inputs
/// that reach the code behind the parsers.
#[test]
fn the_genuine_seeds_are_well_formed() {
    let klaviyo = seeds("klaviyo_webhook");
    let batch = &klaviyo
        .iter()
        .find(|(name, _)| name == "system-batch-signed")
        .expect("the system batch seed")
        .1;
    let batch = Input::of(batch).body;
    parse_json::<SystemDelivery>(batch).expect("the batch parses as a delivery");
    let batch: serde_json::Value = serde_json::from_slice(batch).unwrap();
    assert_eq!(batch["data"].as_array().map(Vec::len), Some(5));
    for (name, data) in seeds("omneo_webhook") {
        if name.starts_with("profile-updated") {
            parse_json::<ChangedProfile>(Input::of(&data).body)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
    for (name, data) in seeds("omneo_event_context") {
        let body = Input::of(&data).body;
        serde_json::from_slice::<shared::omneo::models::Profile>(body)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for name in ["put-full", "put-logic-text"] {
        let data = std::fs::read(corpus_dir().join("settings").join(name)).unwrap();
        let body: serde_json::Value = serde_json::from_slice(Input::of(&data).body).unwrap();
        shared::settings::Settings::from_json(&body).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for (name, data) in seeds("exclude_logic") {
        let rule = String::from_utf8(Input::of(&data).field.to_vec()).unwrap();
        let settings = shared::settings::Settings {
            exclude_logic: Some(rule),
            ..Default::default()
        };
        settings
            .validate()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}
