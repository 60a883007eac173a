//! The container image: what the `Dockerfile` builds and ships, checked against the workspace
//! without a Docker engine (platform.md: the Dockerfile is checked by review and by building the
//! binaries it copies). `image-check` and the `container` integration tests run [`check`].

use std::collections::BTreeSet;
use std::fmt;
use std::path::Path;

use anyhow::Context as _;

/// The base of the runtime stage (platform.md): glibc, no shell, user `nonroot`.
pub const RUNTIME_BASE: &str = "gcr.io/distroless/cc-debian12:nonroot";

/// Where the image keeps the function binaries: each Cloud Run service's command is
/// `/usr/local/bin/<name>`.
pub const BIN_DIR: &str = "/usr/local/bin";

/// How the runtime stage may name distroless's `nonroot` user (uid and gid 65532).
const NONROOT: [&str; 4] = ["nonroot", "nonroot:nonroot", "65532", "65532:65532"];

/// The `functions/*` crate that is not deployed: the all-in-one process of `make dev`.
const DEV_CRATE: &str = "local";

/// Where the build stages' glibc must come from: the runtime's Debian 12.
const BUILD_DEBIAN: &str = "-bookworm";

/// `cargo chef cook`: the dependencies of the named packages, from the recipe.
const CHEF_COOK: &str = "cargo chef cook";
/// `cargo build`: the binaries the runtime stage copies.
const CARGO_BUILD: &str = "cargo build";

/// One check's outcome: what was checked and, when it failed, why.
#[derive(Debug)]
pub struct Check {
    /// What was checked, e.g. `Dockerfile: the runtime stage has no RUN`.
    pub what: String,
    /// Why it failed; `None` when it passed.
    pub problem: Option<String>,
}

impl Check {
    /// The check of `what`, failed when `problem` is `Some`.
    pub fn new(what: impl Into<String>, problem: Option<String>) -> Self {
        Self {
            what: what.into(),
            problem,
        }
    }

    /// The check of `what`, failed when there are `problems` (joined with `; `).
    fn of(what: impl Into<String>, problems: &[String]) -> Self {
        Self::new(what, (!problems.is_empty()).then(|| problems.join("; ")))
    }

    /// Whether it passed.
    pub fn passed(&self) -> bool {
        self.problem.is_none()
    }
}

impl fmt::Display for Check {
    /// `ok   what`, or `FAIL what: problem`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            None => write!(f, "ok   {}", self.what),
            Some(problem) => write!(f, "FAIL {}: {problem}", self.what),
        }
    }
}

/// The workspace this harness was built from (the parent of `tests/`).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
}

/// The package names of the workspace's function crates: every `functions/*` crate but `local`.
pub fn function_crates(workspace: &Path) -> anyhow::Result<BTreeSet<String>> {
    let mut crates = BTreeSet::new();
    let functions = workspace.join("functions");
    for entry in
        std::fs::read_dir(&functions).with_context(|| format!("reading {}", functions.display()))?
    {
        let manifest = entry?.path().join("Cargo.toml");
        if !manifest.is_file() {
            continue;
        }
        let name = package_name(&std::fs::read_to_string(&manifest)?)
            .with_context(|| format!("no package name in {}", manifest.display()))?;
        if name != DEV_CRATE {
            crates.insert(name);
        }
    }
    Ok(crates)
}

/// The `name` of a manifest's `[package]` table.
fn package_name(manifest: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package
            && let Some((key, value)) = line.split_once('=')
            && key.trim() == "name"
        {
            return Some(value.trim().trim_matches('"').to_owned());
        }
    }
    None
}

/// Checks `dockerfile` against the function crates `functions`: the runtime stage is
/// [`RUNTIME_BASE`], has no `RUN`, runs as nonroot, copies exactly the function binaries to
/// [`BIN_DIR`] and its `ENTRYPOINT` (if any) is one of them; the build stages are on bookworm;
/// `cargo chef cook` and `cargo build` (both `--release --locked`) name exactly the function
/// crates, the cook before the sources are copied.
pub fn check(dockerfile: &str, functions: &BTreeSet<String>) -> Vec<Check> {
    let stages = parse(dockerfile);
    let Some((runtime, builds)) = stages.split_last() else {
        return vec![Check::new("Dockerfile: has stages", Some("no FROM".into()))];
    };
    vec![
        check_runtime_base(runtime),
        check_no_run(runtime),
        check_user(runtime),
        check_build_bases(builds),
        check_cargo(builds, CHEF_COOK, functions),
        check_cargo(builds, CARGO_BUILD, functions),
        check_cook_first(builds),
        check_copies(runtime, functions),
        check_entrypoint(runtime, functions),
    ]
}

/// One Dockerfile instruction (continuation lines joined).
#[derive(Debug)]
struct Instruction {
    /// The keyword in upper case (`RUN`, `COPY`…).
    keyword: String,
    /// The rest of the instruction.
    args: String,
    /// The line it starts on.
    line: usize,
}

/// A build stage: its `FROM` and the instructions after it.
#[derive(Debug)]
struct Stage {
    /// The image (or earlier stage) it starts from.
    base: String,
    /// Its `AS` name.
    name: Option<String>,
    /// The line of its `FROM`.
    line: usize,
    /// Its instructions, `FROM` excluded.
    instructions: Vec<Instruction>,
}

impl Instruction {
    /// Whether it is a `RUN` of `command`.
    fn runs(&self, command: &str) -> bool {
        self.keyword == "RUN" && self.args.contains(command)
    }
}

impl Stage {
    /// Its instructions with `keyword`.
    fn all<'a>(&'a self, keyword: &'a str) -> impl Iterator<Item = &'a Instruction> {
        self.instructions
            .iter()
            .filter(move |instruction| instruction.keyword == keyword)
    }
}

/// The stages of a Dockerfile. Comment lines are dropped (also inside continued instructions,
/// as Docker does); instructions before the first `FROM` (global `ARG`s) are ignored.
fn parse(dockerfile: &str) -> Vec<Stage> {
    let mut stages = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (index, raw) in dockerfile.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (start, mut text) = pending.take().unwrap_or((index + 1, String::new()));
        let (part, continued) = match line.strip_suffix('\\') {
            Some(part) => (part, true),
            None => (line, false),
        };
        text.push_str(part.trim());
        text.push(' ');
        if continued {
            pending = Some((start, text));
        } else {
            push_instruction(&mut stages, start, text.trim());
        }
    }
    if let Some((start, text)) = pending {
        push_instruction(&mut stages, start, text.trim());
    }
    stages
}

/// Adds one instruction: a new stage for `FROM`, else to the current stage.
fn push_instruction(stages: &mut Vec<Stage>, line: usize, text: &str) {
    let (keyword, args) = text.split_once(' ').unwrap_or((text, ""));
    let keyword = keyword.to_ascii_uppercase();
    if keyword == "FROM" {
        let words: Vec<&str> = args
            .split_whitespace()
            .filter(|word| !word.starts_with("--"))
            .collect();
        let name = match words.as_slice() {
            [_, r#as, name] if r#as.eq_ignore_ascii_case("as") => Some((*name).to_owned()),
            _ => None,
        };
        stages.push(Stage {
            base: words.first().copied().unwrap_or_default().to_owned(),
            name,
            line,
            instructions: Vec::new(),
        });
    } else if let Some(stage) = stages.last_mut() {
        stage.instructions.push(Instruction {
            keyword,
            args: args.trim().to_owned(),
            line,
        });
    }
}

/// Checks that the runtime stage is [`RUNTIME_BASE`].
fn check_runtime_base(runtime: &Stage) -> Check {
    Check::new(
        format!("Dockerfile: the runtime stage is FROM {RUNTIME_BASE}"),
        (runtime.base != RUNTIME_BASE)
            .then(|| format!("it is FROM {} (line {})", runtime.base, runtime.line)),
    )
}

/// Checks that the runtime stage runs nothing (there is no shell to run it).
fn check_no_run(runtime: &Stage) -> Check {
    let runs: Vec<String> = runtime
        .all("RUN")
        .map(|run| format!("RUN {} (line {})", run.args, run.line))
        .collect();
    Check::of(
        "Dockerfile: the runtime stage has no RUN (distroless has no shell)",
        &runs,
    )
}

/// Checks that the runtime stage's last `USER` is `nonroot` (or 65532).
fn check_user(runtime: &Stage) -> Check {
    let problem = match runtime.all("USER").last() {
        None => Some("no USER".to_owned()),
        Some(user) if NONROOT.contains(&user.args.as_str()) => None,
        Some(user) => Some(format!("USER {} (line {})", user.args, user.line)),
    };
    Check::new("Dockerfile: the runtime stage runs as nonroot", problem)
}

/// Checks that every build stage is on bookworm, or on an earlier stage.
fn check_build_bases(builds: &[Stage]) -> Check {
    let mut named = BTreeSet::new();
    let mut problems = Vec::new();
    for stage in builds {
        if !named.contains(stage.base.as_str()) && !stage.base.ends_with(BUILD_DEBIAN) {
            problems.push(format!("FROM {} (line {})", stage.base, stage.line));
        }
        named.extend(stage.name.as_deref());
    }
    Check::of(
        format!(
            "Dockerfile: the build stages are on Debian 12 (`*{BUILD_DEBIAN}`), the runtime's glibc"
        ),
        &problems,
    )
}

/// The invocations of `command` (e.g. `cargo build`) in the build stages' `RUN`s, each as its
/// line and its arguments up to the end of that shell command.
fn invocations<'a>(builds: &'a [Stage], command: &str) -> Vec<(usize, Vec<&'a str>)> {
    let command: Vec<&str> = command.split_whitespace().collect();
    let mut found = Vec::new();
    for run in builds.iter().flat_map(|stage| stage.all("RUN")) {
        let words: Vec<&str> = run.args.split_whitespace().collect();
        for start in 0..words.len() {
            if words[start..].starts_with(&command) {
                let args = words[start + command.len()..]
                    .iter()
                    .copied()
                    .take_while(|word| !["&&", "||", ";", "|"].contains(word))
                    .collect();
                found.push((run.line, args));
            }
        }
    }
    found
}

/// Checks that `command` runs with `--release --locked` and names exactly `functions` as its
/// packages (`-p`, `--package`).
fn check_cargo(builds: &[Stage], command: &str, functions: &BTreeSet<String>) -> Check {
    let runs = invocations(builds, command);
    let mut problems = Vec::new();
    if runs.is_empty() {
        problems.push(format!("no RUN runs `{command}`"));
    }
    let mut packages = BTreeSet::new();
    for (line, args) in &runs {
        for flag in ["--release", "--locked"] {
            if !args.contains(&flag) {
                problems.push(format!("line {line}: no {flag}"));
            }
        }
        if args.contains(&"--workspace") {
            problems.push(format!("line {line}: --workspace"));
        }
        let mut words = args.iter();
        while let Some(word) = words.next() {
            match *word {
                "-p" | "--package" => packages.extend(words.next().map(|name| name.to_string())),
                _ => packages.extend(word.strip_prefix("--package=").map(str::to_owned)),
            }
        }
    }
    problems.extend(set_problems(&packages, functions));
    Check::of(
        format!("Dockerfile: `{command} --release --locked` names exactly the function crates"),
        &problems,
    )
}

/// Checks that the stage that runs `cargo build` cooks the dependencies before it copies the
/// sources (`COPY . .`), so a change to the sources reuses the cooked layer.
fn check_cook_first(builds: &[Stage]) -> Check {
    let problem = match builds
        .iter()
        .find(|stage| stage.instructions.iter().any(|i| i.runs(CARGO_BUILD)))
    {
        None => Some(format!("no stage runs `{CARGO_BUILD}`")),
        Some(stage) => {
            let cook = stage.instructions.iter().position(|i| i.runs(CHEF_COOK));
            let copy = stage
                .instructions
                .iter()
                .position(|i| i.keyword == "COPY" && i.args.split_whitespace().next() == Some("."));
            match (cook, copy) {
                (Some(cook), Some(copy)) if cook < copy => None,
                (None, _) => Some(format!(
                    "the stage of `{CARGO_BUILD}` runs no `{CHEF_COOK}`"
                )),
                _ => Some(format!("`{CHEF_COOK}` runs after the sources are copied")),
            }
        }
    };
    Check::new(
        "Dockerfile: the dependencies are cooked before the sources are copied",
        problem,
    )
}

/// Checks that the runtime stage copies exactly the function binaries, each under its own name,
/// into [`BIN_DIR`].
fn check_copies(runtime: &Stage, functions: &BTreeSet<String>) -> Check {
    let mut copied = BTreeSet::new();
    let mut problems = Vec::new();
    for copy in runtime.all("COPY") {
        let words: Vec<&str> = copy
            .args
            .split_whitespace()
            .filter(|word| !word.starts_with("--"))
            .collect();
        let Some((destination, sources)) = words.split_last() else {
            continue;
        };
        for source in sources {
            let name = file_name(source);
            let target = match destination.strip_suffix('/') {
                Some(dir) => format!("{dir}/{name}"),
                None => (*destination).to_owned(),
            };
            match target
                .strip_prefix(BIN_DIR)
                .and_then(|n| n.strip_prefix('/'))
            {
                Some(copied_as) if copied_as == name => {
                    copied.insert(name.to_owned());
                }
                _ => problems.push(format!("line {}: {source} copied to {target}", copy.line)),
            }
        }
    }
    problems.extend(set_problems(&copied, functions));
    Check::of(
        format!(
            "Dockerfile: the runtime stage copies exactly the function binaries to {BIN_DIR}/<name>"
        ),
        &problems,
    )
}

/// Checks that the `ENTRYPOINT`, if any, is in exec form (there is no shell) and runs a function.
fn check_entrypoint(runtime: &Stage, functions: &BTreeSet<String>) -> Check {
    let problem = runtime.all("ENTRYPOINT").last().and_then(|entrypoint| {
        let program = serde_json::from_str::<Vec<String>>(&entrypoint.args)
            .ok()
            .and_then(|exec| exec.into_iter().next());
        let runs_a_function = program.as_deref().is_some_and(|program| {
            functions
                .iter()
                .any(|name| program == format!("{BIN_DIR}/{name}"))
        });
        (!runs_a_function)
            .then(|| format!("ENTRYPOINT {} (line {})", entrypoint.args, entrypoint.line))
    });
    Check::new(
        "Dockerfile: the default ENTRYPOINT (exec form) runs a function binary",
        problem,
    )
}

/// The last part of a path.
fn file_name(path: &str) -> &str {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(path)
}

/// What `found` lacks of `functions`, and what it has beyond them.
fn set_problems(found: &BTreeSet<String>, functions: &BTreeSet<String>) -> Vec<String> {
    let list = |names: Vec<&String>| {
        names
            .iter()
            .map(|name| name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let missing: Vec<&String> = functions.difference(found).collect();
    let extra: Vec<&String> = found.difference(functions).collect();
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!("missing {}", list(missing)));
    }
    if !extra.is_empty() {
        problems.push(format!("not a function crate: {}", list(extra)));
    }
    problems
}
