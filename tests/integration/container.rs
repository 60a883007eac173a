//! The container image without a Docker engine: the `Dockerfile`'s checks from `make image-check`
//! (`harness::image::check`) on the real file, and on mutated copies that each break one rule
//! and must be reported naming the problem. `make image-check` also runs the binaries it copies.

use std::collections::BTreeSet;

use harness::image::{self, Check};

/// Where the Dockerfile's `cargo build` names its first package.
const BUILD_PACKAGES: &str = "cargo build --release --locked \\\n    -p oauth-callback ";

/// The workspace's function crates.
fn functions() -> BTreeSet<String> {
    image::function_crates(image::workspace_root()).unwrap()
}

/// The real Dockerfile.
fn dockerfile() -> String {
    std::fs::read_to_string(image::workspace_root().join("Dockerfile")).unwrap()
}

/// The real Dockerfile with the first `from` replaced by `to` (which must be there).
fn mutated(from: &str, to: &str) -> String {
    let real = dockerfile();
    assert!(real.contains(from), "the Dockerfile has no {from:?}");
    real.replacen(from, to, 1)
}

/// The failed checks of `dockerfile`, as `image-check` prints them.
fn failures(dockerfile: &str) -> Vec<String> {
    image::check(dockerfile, &functions())
        .iter()
        .filter(|check| !check.passed())
        .map(Check::to_string)
        .collect()
}

/// Asserts that exactly one check failed and that its line says each of `words`.
fn assert_one_failure(dockerfile: &str, words: &[&str]) {
    let failures = failures(dockerfile);
    assert_eq!(failures.len(), 1, "{failures:#?}");
    for word in words {
        assert!(failures[0].contains(word), "{word:?} not in {failures:#?}");
    }
}

#[test]
fn the_function_crates_are_every_functions_crate_but_local() {
    let functions = functions();
    assert!(functions.contains("oauth-callback"), "{functions:?}");
    assert!(functions.contains("outbound-task"), "{functions:?}");
    assert!(!functions.contains("local"), "{functions:?}");
}

#[test]
fn the_dockerfile_builds_and_ships_every_function_on_distroless_as_nonroot() {
    let checks = image::check(&dockerfile(), &functions());
    assert!(checks.len() > 5, "{checks:#?}");
    assert_eq!(failures(&dockerfile()), Vec::<String>::new());
}

#[test]
fn a_binary_missing_from_the_copy_is_named() {
    let without = mutated("    /src/target/release/inbound-task \\\n", "");
    assert_one_failure(
        &without,
        &[
            "copies exactly the function binaries",
            "missing inbound-task",
        ],
    );
}

#[test]
fn a_binary_copied_under_another_name_or_elsewhere_is_named() {
    let renamed = mutated(
        "/usr/local/bin/\n",
        "/usr/local/bin/\nCOPY --from=build /src/target/release/local /usr/local/bin/omneo-webhook\n",
    );
    assert_one_failure(&renamed, &["local copied to /usr/local/bin/omneo-webhook"]);
    let elsewhere = mutated("    /usr/local/bin/\n", "    /app/\n");
    assert_one_failure(
        &elsewhere,
        &["oauth-callback copied to /app/oauth-callback", "missing"],
    );
}

#[test]
fn a_function_missing_from_the_build_or_an_extra_crate_is_named() {
    let missing = mutated(BUILD_PACKAGES, "cargo build --release --locked \\\n    ");
    assert_one_failure(&missing, &["`cargo build", "missing oauth-callback"]);
    let extra = mutated(
        BUILD_PACKAGES,
        "cargo build --release --locked -p local \\\n    -p oauth-callback ",
    );
    assert_one_failure(&extra, &["`cargo build", "not a function crate: local"]);
    let unlocked = mutated("cargo build --release --locked", "cargo build --release");
    assert_one_failure(&unlocked, &["`cargo build", "no --locked"]);
}

#[test]
fn cooking_after_the_sources_are_copied_is_named() {
    let late = mutated("FROM chef AS build\n", "FROM chef AS build\nCOPY . .\n");
    assert_one_failure(
        &late,
        &["cooked before the sources are copied", "runs after"],
    );
}

#[test]
fn a_shell_image_as_runtime_base_is_named() {
    let debian = mutated(image::RUNTIME_BASE, "debian:bookworm-slim");
    assert_one_failure(
        &debian,
        &[
            "distroless/cc-debian12:nonroot",
            "FROM debian:bookworm-slim",
        ],
    );
}

#[test]
fn a_build_stage_on_another_debian_is_named() {
    let trixie = mutated("FROM rust:1.95-bookworm", "FROM rust:1.95-trixie");
    assert_one_failure(&trixie, &["Debian 12", "FROM rust:1.95-trixie"]);
}

#[test]
fn running_as_root_or_without_user_is_named() {
    let root = mutated("USER nonroot:nonroot", "USER root");
    assert_one_failure(&root, &["runs as nonroot", "USER root"]);
    let unset = mutated("USER nonroot:nonroot\n", "");
    assert_one_failure(&unset, &["runs as nonroot", "no USER"]);
    let numeric = mutated("USER nonroot:nonroot", "USER 65532:65532");
    assert_eq!(failures(&numeric), Vec::<String>::new());
}

#[test]
fn a_run_in_the_runtime_stage_is_named() {
    let run = mutated(
        "ENV PORT=8080\n",
        "ENV PORT=8080\nRUN chmod 755 /usr/local/bin/*\n",
    );
    assert_one_failure(&run, &["no RUN", "RUN chmod 755"]);
}

#[test]
fn a_shell_form_or_foreign_entrypoint_is_named() {
    let shell = mutated(
        r#"ENTRYPOINT ["/usr/local/bin/oauth-callback"]"#,
        "ENTRYPOINT /usr/local/bin/oauth-callback",
    );
    assert_one_failure(
        &shell,
        &["ENTRYPOINT", "ENTRYPOINT /usr/local/bin/oauth-callback"],
    );
    let foreign = mutated(r#"["/usr/local/bin/oauth-callback"]"#, r#"["/function"]"#);
    assert_one_failure(&foreign, &["ENTRYPOINT", "/function"]);
}
