//! The Terraform in `infra/` checked against the code it deploys, without any cloud access: the
//! HCL is parsed (`hcl-rs`) and the parts that must agree with the code are evaluated with
//! stand-ins for what only Google Cloud knows (project number, service account emails).
//!
//! [`problems`] lists every disagreement; the real configuration has none, and mutated copies
//! (an environment variable removed, a task service made public, a queue's rate changed, …) each
//! show theirs — so a drift between code and infra fails the build.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use harness::image::{BIN_DIR, function_crates, workspace_root};
use hcl::eval::{Context, Evaluate, FuncArgs, FuncDef, ParamType};
use hcl::{Attribute, Block, Body, Expression, Value};
use secrecy::ExposeSecret as _;
use shared::config::{Config, QueueConfig, StoreConfig};
use shared::crypto::new_keyring_spec;
use shared::domain::TenantId;
use shared::queue::{Direction, QueueSettings, TenantQueues};
use shared::reconcile::SWEEP_PATH;
use shared::settings::Settings;
use shared::store::{FailureQuery, TTL_FIELDS};

/// The functions anyone on the internet may call (product.md §1: they authenticate callers
/// themselves); the others take only Cloud Tasks' and Cloud Scheduler's OIDC-authenticated pushes.
const PUBLIC_FUNCTIONS: [&str; 3] = ["oauth-callback", "klaviyo-webhook", "omneo-webhook"];

/// The files the configuration is split into, one per concern.
const FILES: [&str; 10] = [
    "versions",
    "variables",
    "outputs",
    "apis",
    "iam",
    "firestore",
    "secrets",
    "tasks",
    "run",
    "scheduler",
];

/// The runtime service account's project roles: exactly these (least privilege).
const RUNTIME_ROLES: [&str; 3] = [
    "roles/datastore.user",
    "roles/cloudtasks.enqueuer",
    "${google_project_iam_custom_role.queue_provisioner.name}",
];

/// The custom role install provisions queues with: `UpdateQueue` creates or updates a queue
/// (`shared/src/queue/cloud_tasks.rs`); nothing may delete, pause or purge one.
const QUEUE_PROVISIONER_PERMISSIONS: [&str; 3] = [
    "cloudtasks.queues.create",
    "cloudtasks.queues.get",
    "cloudtasks.queues.update",
];

/// `infra/*.tf` and `infra/deploy.sh`, by file name.
fn real_files() -> BTreeMap<String, String> {
    let dir = workspace_root().join("infra");
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(&dir).expect("infra/ exists") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "tf") || path.ends_with(DEPLOY_SCRIPT) {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            files.insert(name, std::fs::read_to_string(&path).unwrap());
        }
    }
    files
}

/// The function binaries (each crate's binary has its package's name), as the Dockerfile ships them.
fn function_binaries() -> BTreeSet<String> {
    function_crates(workspace_root()).expect("the function crates")
}

/// The text of every source file of `shared/src`, to find the log messages and fields the alerts
/// match.
fn shared_source() -> String {
    fn walk(dir: &Path, out: &mut String) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push_str(&std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let mut out = String::new();
    walk(&workspace_root().join("shared/src"), &mut out);
    out
}

/// The configuration: every file's blocks and attributes, and the files' names.
struct Infra {
    files: BTreeSet<String>,
    blocks: Vec<Block>,
}

impl Infra {
    fn parse(files: &BTreeMap<String, String>) -> Result<Self, String> {
        let mut blocks = Vec::new();
        for (name, text) in files.iter().filter(|(name, _)| name.ends_with(".tf")) {
            let body: Body = hcl::parse(text).map_err(|e| format!("{name}: {e}"))?;
            blocks.extend(body.into_blocks());
        }
        Ok(Self {
            files: files.keys().cloned().collect(),
            blocks,
        })
    }

    /// Blocks `kind "labels…"`, e.g. `("resource", ["google_cloud_tasks_queue"])`.
    fn blocks<'a>(
        &'a self,
        kind: &'a str,
        first_label: &'a str,
    ) -> impl Iterator<Item = &'a Block> + 'a {
        self.blocks.iter().filter(move |b| {
            b.identifier() == kind && b.labels().first().map(|l| l.as_str()) == Some(first_label)
        })
    }

    fn resource(&self, kind: &str, name: &str) -> Option<&Block> {
        self.blocks
            .iter()
            .filter(|b| b.identifier() == "resource")
            .find(|b| {
                let labels: Vec<&str> = b.labels().iter().map(|l| l.as_str()).collect();
                labels == [kind, name]
            })
    }

    /// `local.<name>`'s expression.
    fn local(&self, name: &str) -> Option<&Expression> {
        self.blocks
            .iter()
            .filter(|b| b.identifier() == "locals")
            .find_map(|b| attribute(&b.body, name))
    }

    /// The locals as plain values: literals as they are, anything else as `${…}` text.
    fn locals(&self) -> Value {
        let object = self
            .blocks
            .iter()
            .filter(|b| b.identifier() == "locals")
            .flat_map(|b| b.body.attributes())
            .map(|a| (a.key().to_owned(), Value::from(a.expr().clone())))
            .collect();
        Value::Object(object)
    }
}

fn attribute<'a>(body: &'a Body, key: &str) -> Option<&'a Expression> {
    body.attributes()
        .find(|a| a.key() == key)
        .map(Attribute::expr)
}

/// The first nested block at `path` (`["template", "containers"]`).
fn nested<'a>(body: &'a Body, path: &[&str]) -> Option<&'a Body> {
    path.iter().try_fold(body, |body, name| {
        body.blocks()
            .find(|b| b.identifier() == *name)
            .map(|b| &b.body)
    })
}

/// An expression as written (normalised by the formatter), for structural comparisons: a
/// string literal as its text, anything else as `${…}`.
fn text(expr: &Expression) -> String {
    plain(&Value::from(expr.clone()))
}

/// A value as text: a string without quotes, anything else as HCL writes it.
fn plain(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A context for evaluating expressions: `local` holds the literal locals, `each` the given
/// for_each element, `var` the given variables, and the few Terraform functions used.
fn context(infra: &Infra, each: Option<(&str, &Value)>, vars: Value) -> Context<'static> {
    let mut ctx = Context::new();
    ctx.declare_var("local", infra.locals());
    ctx.declare_var("var", vars);
    if let Some((key, value)) = each {
        ctx.declare_var(
            "each",
            Value::Object(
                [
                    ("key".to_owned(), Value::from(key)),
                    ("value".to_owned(), value.clone()),
                ]
                .into_iter()
                .collect(),
            ),
        );
    }
    ctx.declare_func(
        "coalesce",
        FuncDef::builder()
            .variadic_param(ParamType::Any)
            .build(|args: FuncArgs| {
                Ok(args
                    .iter()
                    .find(|v| !v.is_null())
                    .cloned()
                    .unwrap_or(Value::Null))
            }),
    );
    ctx.declare_func(
        "flatten",
        FuncDef::builder()
            .param(ParamType::array_of(ParamType::Any))
            .build(|args: FuncArgs| {
                let mut flat = Vec::new();
                for item in args[0].as_array().into_iter().flatten() {
                    match item {
                        Value::Array(inner) => flat.extend(inner.iter().cloned()),
                        other => flat.push(other.clone()),
                    }
                }
                Ok(Value::Array(flat))
            }),
    );
    ctx
}

fn evaluate(expr: &Expression, ctx: &Context) -> Result<Value, String> {
    expr.evaluate(ctx).map_err(|e| e.to_string())
}

/// `value[key]`, null when absent.
fn get(value: &Value, key: &str) -> Value {
    value
        .as_object()
        .and_then(|object| object.get(key))
        .cloned()
        .unwrap_or(Value::Null)
}

fn keys(value: &Value) -> BTreeSet<String> {
    value
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

/// Every disagreement between the configuration in `files` and the code; empty when they agree.
fn problems(files: &BTreeMap<String, String>) -> Vec<String> {
    let infra = match Infra::parse(files) {
        Ok(infra) => infra,
        Err(error) => return vec![format!("the HCL does not parse: {error}")],
    };
    let mut problems = Vec::new();
    layout(&infra, &mut problems);
    services(&infra, &mut problems);
    exposure(&infra, &mut problems);
    environment(&infra, &mut problems);
    runtime_roles(&infra, &mut problems);
    queues(&infra, &mut problems);
    firestore(&infra, &mut problems);
    scheduler(&infra, &mut problems);
    alerts(&infra, &mut problems);
    variables(&infra, &mut problems);
    if let Some(script) = files.get(DEPLOY_SCRIPT) {
        deploy_script(&infra, script, &mut problems);
    }
    problems
}

/// `make deploy`'s script, kept beside the configuration it applies.
const DEPLOY_SCRIPT: &str = "deploy.sh";

/// The resources `deploy.sh` applies first exist, and it fills exactly the services' secrets.
fn deploy_script(infra: &Infra, script: &str, problems: &mut Vec<String>) {
    for target in script.split("-target=").skip(1) {
        let address = target.split_whitespace().next().unwrap_or_default();
        let (kind, name) = address.split_once('.').unwrap_or((address, ""));
        if infra.resource(kind, name).is_none() {
            problems.push(format!(
                "deploy.sh targets {address}, which infra/ does not declare"
            ));
        }
    }
    let filled: BTreeSet<String> = script
        .split("for pair in ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_default()
        .split_whitespace()
        .map(|pair| pair.replace(':', "="))
        .collect();
    let secrets: BTreeSet<String> = get(&infra.locals(), "secret_env")
        .as_object()
        .into_iter()
        .flatten()
        .map(|(variable, secret)| format!("{}={variable}", plain(secret)))
        .collect();
    if filled != secrets {
        problems.push(format!(
            "deploy.sh fills the secrets {filled:?}, the services read {secrets:?}"
        ));
    }
}

/// Files by concern, the provider pinned.
fn layout(infra: &Infra, problems: &mut Vec<String>) {
    for file in FILES {
        if !infra.files.contains(&format!("{file}.tf")) {
            problems.push(format!("infra/{file}.tf is missing"));
        }
    }
    let pinned = infra
        .blocks
        .iter()
        .filter(|b| b.identifier() == "terraform")
        .filter_map(|b| {
            b.body
                .blocks()
                .find(|b| b.identifier() == "required_providers")
        })
        .filter_map(|b| attribute(&b.body, "google"))
        .map(|e| Value::from(e.clone()))
        .any(|google| {
            get(&google, "source") == Value::from("hashicorp/google")
                && get(&google, "version")
                    .as_str()
                    .is_some_and(|v| v.starts_with("~> 7."))
        });
    if !pinned {
        problems.push("the hashicorp/google provider is not pinned to ~> 7.x".into());
    }
}

/// One Cloud Run service per function binary, each running its own binary from the one image.
fn services(infra: &Infra, problems: &mut Vec<String>) {
    let locals = infra.locals();
    let functions = keys(&get(&locals, "functions"));
    let binaries = function_binaries();
    if functions != binaries {
        problems.push(format!(
            "local.functions is {functions:?}, but the function binaries are {binaries:?}"
        ));
    }
    let Some(service) = infra.resource("google_cloud_run_v2_service", "function") else {
        problems.push("no google_cloud_run_v2_service \"function\"".into());
        return;
    };
    if attribute(&service.body, "for_each").map(text).as_deref() != Some("${local.functions}") {
        problems.push("the Cloud Run services are not one per local.functions".into());
    }
    let Some(container) = nested(&service.body, &["template", "containers"]) else {
        problems.push("the Cloud Run service has no container".into());
        return;
    };
    if attribute(container, "image").map(text).as_deref() != Some("${var.image}") {
        problems.push("the services do not all run var.image".into());
    }
    for name in &binaries {
        let ctx = context(
            infra,
            Some((name, &get(&get(&locals, "functions"), name.as_str()))),
            Value::Null,
        );
        let command = attribute(container, "command").map(|c| evaluate(c, &ctx));
        let expected = Value::Array(vec![Value::from(format!("{BIN_DIR}/{name}"))]);
        if command != Some(Ok(expected.clone())) {
            problems.push(format!(
                "the {name} service's command is {command:?}, not {expected}"
            ));
        }
    }
}

/// Public ingress and an `allUsers` invoker for the public functions only; the task services
/// internal, invoked by the invoker service account alone.
fn exposure(infra: &Infra, problems: &mut Vec<String>) {
    let locals = infra.locals();
    let public: BTreeSet<String> = PUBLIC_FUNCTIONS.map(String::from).into();
    let Some(service) = infra.resource("google_cloud_run_v2_service", "function") else {
        return;
    };
    for name in function_binaries() {
        let ctx = context(
            infra,
            Some((&name, &get(&get(&locals, "functions"), name.as_str()))),
            Value::Null,
        );
        let ingress = attribute(&service.body, "ingress").map(|i| evaluate(i, &ctx));
        let expected = if public.contains(&name) {
            "INGRESS_TRAFFIC_ALL"
        } else {
            "INGRESS_TRAFFIC_INTERNAL_ONLY"
        };
        if ingress != Some(Ok(Value::from(expected))) {
            problems.push(format!(
                "the {name} service's ingress is {ingress:?}, not {expected}"
            ));
        }
    }
    if attribute(&service.body, "invoker_iam_disabled").is_some() {
        problems.push("invoker_iam_disabled is set: IAM must decide who invokes".into());
    }
    let mut invoked_by: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for member in infra.blocks("resource", "google_cloud_run_v2_service_iam_member") {
        let ctx = context(infra, None, Value::Null);
        let services = attribute(&member.body, "for_each").map(|f| evaluate(f, &ctx));
        let Some(Ok(services)) = services else {
            problems.push(format!(
                "{:?}: for_each does not evaluate: {services:?}",
                member.labels()
            ));
            continue;
        };
        let who = attribute(&member.body, "member")
            .map(text)
            .unwrap_or_default();
        let role = attribute(&member.body, "role")
            .map(text)
            .unwrap_or_default();
        if role != "roles/run.invoker" {
            continue;
        }
        for service in keys(&services) {
            invoked_by.entry(service).or_default().insert(who.clone());
        }
    }
    let invoker = "serviceAccount:${google_service_account.invoker.email}";
    for name in function_binaries() {
        let expected: BTreeSet<String> = if public.contains(&name) {
            ["allUsers".to_owned()].into()
        } else {
            [invoker.to_owned()].into()
        };
        let actual = invoked_by.remove(&name).unwrap_or_default();
        if actual != expected {
            problems.push(format!("{name} is invoked by {actual:?}, not {expected:?}"));
        }
    }
    let everywhere = infra
        .blocks
        .iter()
        .map(|b| format!("{b:?}"))
        .collect::<String>();
    let all_users = everywhere.matches("allUsers").count();
    if all_users != 1 || everywhere.contains("allAuthenticatedUsers") {
        problems.push(format!(
            "allUsers appears {all_users} times (only the public services' invoker may name it)"
        ));
    }
}

/// A value for an environment variable Terraform sets from something only the cloud knows.
fn stand_in(name: &str) -> String {
    match name {
        "ENCRYPTION_KEY" => new_keyring_spec("k1").expose_secret().to_owned(),
        "TASKS_INVOKER_SERVICE_ACCOUNT" => "invoker@project.iam.gserviceaccount.com".into(),
        name if name.ends_with("_URL") => "https://function-123.region.run.app".into(),
        _ => "a-stand-in-of-some-length".into(),
    }
}

/// Every variable the config loader requires is set on every service, production's way.
fn environment(infra: &Infra, problems: &mut Vec<String>) {
    let locals = infra.locals();
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in get(&locals, "env").as_object().into_iter().flatten() {
        let value = match value.as_str() {
            Some(text) if !text.contains("${") => text.to_owned(),
            _ => stand_in(name),
        };
        env.insert(name.clone(), value);
    }
    for name in keys(&get(&locals, "secret_env")) {
        env.insert(name.clone(), stand_in(&name));
    }
    let lookup = |name: &str| env.get(name).cloned();
    match Config::from_env(&lookup) {
        Err(error) => problems.push(format!(
            "the services' environment fails the config loader: {error}"
        )),
        Ok(config) => {
            if !matches!(
                config.store,
                StoreConfig::Firestore {
                    emulator_host: None,
                    ..
                }
            ) {
                problems.push(format!(
                    "the services' store is {:?}, not Firestore",
                    config.store
                ));
            }
            let cloud_tasks = matches!(
                config.queue,
                QueueConfig::CloudTasks {
                    emulator_host: None,
                    invoker_service_account: Some(_),
                    ..
                }
            );
            if !cloud_tasks {
                problems.push(format!(
                    "the services' queue is {:?}, not Cloud Tasks with an invoker",
                    config.queue
                ));
            }
        }
    }
    for (variable, function) in [
        ("OAUTH_CALLBACK_URL", "oauth-callback"),
        ("KLAVIYO_WEBHOOK_URL", "klaviyo-webhook"),
        ("OMNEO_WEBHOOK_URL", "omneo-webhook"),
        ("INBOUND_TASK_URL", "inbound-task"),
        ("OUTBOUND_TASK_URL", "outbound-task"),
    ] {
        let expected = format!("${{local.urls[\"{function}\"]}}");
        if get(&get(&locals, "env"), variable) != Value::from(expected.clone()) {
            problems.push(format!("{variable} is not {expected}"));
        }
    }
    if get(&get(&locals, "env"), "TASKS_INVOKER_SERVICE_ACCOUNT")
        != Value::from("${google_service_account.invoker.email}")
    {
        problems.push("TASKS_INVOKER_SERVICE_ACCOUNT is not the invoker account".into());
    }
    let service_env = infra.local("service_env").map(text).unwrap_or_default();
    if !service_env.starts_with("${merge(local.env,") {
        problems.push("local.service_env does not start from local.env".into());
    }
    let Some(container) = infra
        .resource("google_cloud_run_v2_service", "function")
        .and_then(|s| nested(&s.body, &["template", "containers"]))
    else {
        return;
    };
    let sources: BTreeSet<String> = container
        .blocks()
        .filter(|b| {
            b.identifier() == "dynamic" && b.labels().first().map(|l| l.as_str()) == Some("env")
        })
        .filter_map(|b| attribute(&b.body, "for_each").map(text))
        .collect();
    let expected: BTreeSet<String> = [
        "${local.service_env}".to_owned(),
        "${local.secret_env}".to_owned(),
    ]
    .into();
    if sources != expected {
        problems.push(format!(
            "the container's env comes from {sources:?}, not {expected:?}"
        ));
    }
    let secrets = infra
        .resource("google_secret_manager_secret", "secret")
        .and_then(|s| attribute(&s.body, "for_each"))
        .map(text);
    if secrets.as_deref() != Some("${toset(values(local.secret_env))}") {
        problems.push("the Secret Manager secrets are not those of local.secret_env".into());
    }
    let reads = infra
        .resource("google_secret_manager_secret_iam_member", "runtime_reads")
        .map(|r| {
            (
                attribute(&r.body, "for_each").map(text),
                attribute(&r.body, "role").map(text),
                attribute(&r.body, "member").map(text),
            )
        });
    let expected_reads = (
        Some("${google_secret_manager_secret.secret}".to_owned()),
        Some("roles/secretmanager.secretAccessor".to_owned()),
        Some("serviceAccount:${google_service_account.runtime.email}".to_owned()),
    );
    if reads != Some(expected_reads) {
        problems.push(format!(
            "the runtime account does not read exactly its secrets: {reads:?}"
        ));
    }
}

/// The items of a `toset([…])` or `[…]` expression, as written.
fn listed(expr: &Expression) -> Option<Vec<String>> {
    let list = match expr {
        Expression::FuncCall(call) if call.name.name.as_str() == "toset" => call.args.first()?,
        other => other,
    };
    match list {
        Expression::Array(items) => Some(items.iter().map(text).collect()),
        _ => None,
    }
}

/// The runtime account's project roles are exactly [`RUNTIME_ROLES`] (the custom one holding
/// exactly [`QUEUE_PROVISIONER_PERMISSIONS`]), and it may act as the invoker (to give tasks its
/// OIDC token); nothing else is granted at project level.
fn runtime_roles(infra: &Infra, problems: &mut Vec<String>) {
    let mut granted = BTreeSet::new();
    for grant in infra.blocks("resource", "google_project_iam_member") {
        let member = attribute(&grant.body, "member")
            .map(text)
            .unwrap_or_default();
        if member != "serviceAccount:${google_service_account.runtime.email}" {
            problems.push(format!("a project role is granted to {member}"));
        }
        match attribute(&grant.body, "for_each").and_then(listed) {
            Some(roles) => granted.extend(roles),
            None => problems.push("project roles are not a literal list".into()),
        }
    }
    let permissions = infra
        .resource("google_project_iam_custom_role", "queue_provisioner")
        .and_then(|role| attribute(&role.body, "permissions"))
        .and_then(listed)
        .map(BTreeSet::from_iter);
    let provisioner: BTreeSet<String> = QUEUE_PROVISIONER_PERMISSIONS.map(String::from).into();
    if permissions.as_ref() != Some(&provisioner) {
        problems.push(format!(
            "the queue provisioner role holds {permissions:?}, not {provisioner:?}"
        ));
    }
    let expected: BTreeSet<String> = RUNTIME_ROLES.map(String::from).into();
    if granted != expected {
        problems.push(format!(
            "the runtime account's project roles are {granted:?}, not {expected:?}"
        ));
    }
    if infra
        .blocks("resource", "google_project_iam_binding")
        .next()
        .is_some()
    {
        problems.push("a google_project_iam_binding would take roles from everyone else".into());
    }
    let acts_as = infra
        .resource(
            "google_service_account_iam_member",
            "runtime_acts_as_invoker",
        )
        .map(|r| {
            (
                attribute(&r.body, "service_account_id").map(text),
                attribute(&r.body, "role").map(text),
            )
        });
    let expected = (
        Some("${google_service_account.invoker.name}".to_owned()),
        Some("roles/iam.serviceAccountUser".to_owned()),
    );
    if acts_as != Some(expected) {
        problems.push(format!(
            "the runtime account cannot act as the invoker: {acts_as:?}"
        ));
    }
}

fn seconds(duration: Duration) -> Value {
    Value::from(format!("{}s", duration.as_secs()))
}

/// The queues' settings equal `QueueSettings::for_direction`, their names `TenantQueues::of`.
fn queues(infra: &Infra, problems: &mut Vec<String>) {
    let locals = infra.locals();
    for direction in [Direction::Inbound, Direction::Outbound] {
        let code = QueueSettings::for_direction(direction);
        let expected: [(&str, Value); 7] = [
            (
                "max_dispatches_per_second",
                Value::from(code.max_dispatches_per_second),
            ),
            (
                "max_concurrent_dispatches",
                Value::from(code.max_concurrent_dispatches),
            ),
            ("max_attempts", Value::from(code.max_attempts)),
            ("max_retry_duration", seconds(code.max_retry_duration)),
            ("min_backoff", seconds(code.min_backoff)),
            ("max_backoff", seconds(code.max_backoff)),
            ("max_doublings", Value::from(code.max_doublings)),
        ];
        let settings = &get(&get(&locals, "queue_settings"), direction.as_str());
        for (name, value) in expected {
            let declared = &get(settings, name);
            let equal = match (declared.as_f64(), value.as_f64()) {
                (Some(a), Some(b)) => a == b,
                _ => *declared == value,
            };
            if !equal {
                problems.push(format!(
                    "{} queues: {name} is {declared} in infra, {value} in the code",
                    direction.as_str()
                ));
            }
        }
    }
    let Some(queue) = infra.resource("google_cloud_tasks_queue", "tenant") else {
        problems.push("no google_cloud_tasks_queue \"tenant\"".into());
        return;
    };
    for (block, names) in [
        (
            "rate_limits",
            &["max_dispatches_per_second", "max_concurrent_dispatches"][..],
        ),
        (
            "retry_config",
            &[
                "max_attempts",
                "max_retry_duration",
                "min_backoff",
                "max_backoff",
                "max_doublings",
            ][..],
        ),
    ] {
        for name in names {
            let declared = nested(&queue.body, &[block])
                .and_then(|b| attribute(b, name))
                .map(text);
            let expected = format!("${{local.queue_settings[each.value.direction].{name}}}");
            if declared.as_deref() != Some(expected.as_str()) {
                problems.push(format!(
                    "the queues' {block}.{name} is {declared:?}, not {expected}"
                ));
            }
        }
    }
    let tenants = [
        ("acme", None, "klaviyo"),
        ("acme-au", Some("acme-au-eu"), "kv"),
    ];
    let vars = Value::Object(
        [(
            "tenants".to_owned(),
            Value::Object(
                tenants
                    .iter()
                    .map(|(id, custom, namespace)| {
                        let tenant = [
                            (
                                "task_queue_name".to_owned(),
                                custom.map_or(Value::Null, Value::from),
                            ),
                            ("namespace".to_owned(), Value::from(*namespace)),
                        ];
                        (id.to_string(), Value::Object(tenant.into_iter().collect()))
                    })
                    .collect(),
            ),
        )]
        .into_iter()
        .collect(),
    );
    let ctx = context(infra, None, vars);
    let declared = infra
        .local("tenant_queues")
        .map(|q| evaluate(q, &ctx).map(|v| keys(&v)));
    let mut expected = BTreeSet::new();
    for (id, custom, namespace) in tenants {
        let settings = Settings {
            task_queue_name: custom.map(String::from),
            namespace: namespace.to_owned(),
            ..Settings::default()
        };
        let queues = TenantQueues::of(&TenantId::parse(id).unwrap(), &settings).unwrap();
        expected.insert(queues.inbound.to_string());
        expected.insert(queues.outbound.to_string());
    }
    if declared != Some(Ok(expected.clone())) {
        problems.push(format!(
            "local.tenant_queues names {declared:?}, the code {expected:?}"
        ));
    }
}

/// TTL policies on the store's expiry fields and the composite indexes its queries need.
fn firestore(infra: &Infra, problems: &mut Vec<String>) {
    let locals = infra.locals();
    let declared: BTreeSet<(String, String)> = get(&locals, "ttl_fields")
        .as_object()
        .into_iter()
        .flatten()
        .map(|(collection, field)| (collection.clone(), field.as_str().unwrap_or("").to_owned()))
        .collect();
    let expected: BTreeSet<(String, String)> = TTL_FIELDS
        .iter()
        .map(|ttl| (ttl.collection.to_owned(), ttl.field.to_owned()))
        .collect();
    if declared != expected {
        problems.push(format!(
            "TTL policies on {declared:?}, the store expires {expected:?}"
        ));
    }
    let ttl = infra.resource("google_firestore_field", "ttl");
    let ttl_ok = ttl.is_some_and(|f| {
        attribute(&f.body, "for_each").map(text).as_deref() == Some("${local.ttl_fields}")
            && f.body.blocks().any(|b| b.identifier() == "ttl_config")
    });
    if !ttl_ok {
        problems.push(
            "google_firestore_field \"ttl\" does not declare a TTL for each of local.ttl_fields"
                .into(),
        );
    }

    let declared: BTreeSet<Vec<(String, String)>> = get(&locals, "failure_indexes")
        .as_object()
        .into_iter()
        .flatten()
        .map(|(_, fields)| {
            fields
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| (plain(&get(f, "field")), plain(&get(f, "order"))))
                .collect()
        })
        .collect();
    let mut expected = BTreeSet::new();
    let mut collections = BTreeSet::new();
    for index in FailureQuery::indexes() {
        collections.insert(index.collection);
        expected.insert(
            index
                .fields
                .iter()
                .map(|f| {
                    let order = if f.descending {
                        "DESCENDING"
                    } else {
                        "ASCENDING"
                    };
                    (f.field.to_owned(), order.to_owned())
                })
                .collect::<Vec<_>>(),
        );
    }
    if declared != expected {
        problems.push(format!(
            "failure indexes {declared:?}, the store's queries need {expected:?}"
        ));
    }
    let index = infra.resource("google_firestore_index", "failures");
    let collection = index
        .and_then(|i| attribute(&i.body, "collection"))
        .map(text);
    let expected_collection = collections.into_iter().collect::<Vec<_>>().join(",");
    if collection.as_deref() != Some(expected_collection.as_str())
        || index
            .and_then(|i| attribute(&i.body, "for_each"))
            .map(text)
            .as_deref()
            != Some("${local.failure_indexes}")
    {
        problems.push(format!(
            "google_firestore_index \"failures\" is not one index per local.failure_indexes on {expected_collection}"
        ));
    }
}

/// Cloud Scheduler calls outbound-task's sweep path with the invoker's OIDC token.
fn scheduler(infra: &Infra, problems: &mut Vec<String>) {
    let Some(job) = infra.resource("google_cloud_scheduler_job", "reconcile") else {
        problems.push("no google_cloud_scheduler_job \"reconcile\"".into());
        return;
    };
    let target = nested(&job.body, &["http_target"]);
    let uri = target.and_then(|t| attribute(t, "uri")).map(text);
    let expected = format!("${{local.urls[\"outbound-task\"]}}{SWEEP_PATH}");
    if uri.as_deref() != Some(expected.as_str()) {
        problems.push(format!(
            "the reconciliation job calls {uri:?}, not {expected}"
        ));
    }
    let method = target.and_then(|t| attribute(t, "http_method")).map(text);
    let oidc = target.and_then(|t| nested(t, &["oidc_token"]));
    let account = oidc
        .and_then(|o| attribute(o, "service_account_email"))
        .map(text);
    let audience = oidc.and_then(|o| attribute(o, "audience")).map(text);
    if method.as_deref() != Some("POST")
        || account.as_deref() != Some("${google_service_account.invoker.email}")
        || audience.as_deref() != Some("${local.urls[\"outbound-task\"]}")
    {
        problems.push(format!(
            "the reconciliation job must POST with the invoker's OIDC token for outbound-task: {method:?} {account:?} {audience:?}"
        ));
    }
}

/// Every log message and field an alert's metric matches is one the code writes.
fn alerts(infra: &Infra, problems: &mut Vec<String>) {
    let source = shared_source();
    let metrics: Vec<&Block> = infra.blocks("resource", "google_logging_metric").collect();
    for name in [
        "permanent_failures",
        "reauthorization_required",
        "task_queue_delay",
    ] {
        if !metrics
            .iter()
            .any(|m| m.labels().get(1).map(|l| l.as_str()) == Some(name))
        {
            problems.push(format!("no log-based metric {name}"));
        }
    }
    for metric in metrics {
        let filter = attribute(&metric.body, "filter")
            .map(text)
            .unwrap_or_default();
        for message in filter.split("jsonPayload.message=\"").skip(1) {
            let message = message.split('"').next().unwrap_or_default();
            if !source.contains(&format!("\"{message}\"")) {
                problems.push(format!(
                    "an alert matches the log message {message:?}, which shared/src never writes"
                ));
            }
        }
        for field in filter
            .split("jsonPayload.")
            .skip(1)
            .map(|rest| {
                rest.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .next()
                    .unwrap_or("")
            })
            .filter(|field| *field != "message")
        {
            if !source.contains(field) {
                problems.push(format!(
                    "an alert reads the log field {field:?}, which shared/src never writes"
                ));
            }
        }
    }
    if infra
        .blocks("resource", "google_monitoring_alert_policy")
        .count()
        < 3
    {
        problems.push("fewer than three alert policies".into());
    }
}

/// Every variable has a type and a description; all but booleans validate their value.
fn variables(infra: &Infra, problems: &mut Vec<String>) {
    for variable in infra.blocks.iter().filter(|b| b.identifier() == "variable") {
        let name = variable
            .labels()
            .first()
            .map(|l| l.as_str())
            .unwrap_or_default();
        let kind = attribute(&variable.body, "type").map(text);
        if kind.is_none() || attribute(&variable.body, "description").is_none() {
            problems.push(format!("variable {name} lacks a type or a description"));
        }
        let validated = variable
            .body
            .blocks()
            .any(|b| b.identifier() == "validation");
        if !validated && kind.as_deref() != Some("${bool}") {
            problems.push(format!("variable {name} has no validation block"));
        }
    }
}

fn mutated(file: &str, from: &str, to: &str) -> Vec<String> {
    let mut files = real_files();
    let text = files
        .get_mut(file)
        .unwrap_or_else(|| panic!("infra/{file}"));
    assert!(
        text.contains(from),
        "infra/{file} no longer contains {from:?}"
    );
    *text = text.replacen(from, to, 1);
    problems(&files)
}

fn assert_reported(problems: &[String], expected: &str) {
    assert!(
        problems.iter().any(|p| p.contains(expected)),
        "no problem mentions {expected:?}: {problems:#?}"
    );
}

#[test]
fn the_infra_agrees_with_the_code() {
    let problems = problems(&real_files());
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn a_missing_environment_variable_is_reported() {
    let problems = mutated(
        "run.tf",
        "    OPERATOR_TOKEN        = \"operator-token\"",
        "",
    );
    assert_reported(
        &problems,
        "missing required environment variable OPERATOR_TOKEN",
    );
    let problems = mutated(
        "run.tf",
        "    CLOUD_TASKS_LOCATION          = var.region\n",
        "",
    );
    assert_reported(&problems, "CLOUD_TASKS_LOCATION");
    let problems = mutated(
        "run.tf",
        "STORE                         = \"firestore\"",
        "STORE = \"memory\"",
    );
    assert_reported(&problems, "not Firestore");
}

#[test]
fn a_public_task_service_is_reported() {
    let problems = mutated(
        "run.tf",
        "\"inbound-task\"    = { public = false",
        "\"inbound-task\"    = { public = true",
    );
    assert_reported(&problems, "inbound-task service's ingress");
    assert_reported(&problems, "inbound-task is invoked by {\"allUsers\"}");
    let problems = mutated(
        "iam.tf",
        "member   = \"serviceAccount:${google_service_account.invoker.email}\"",
        "member   = \"allAuthenticatedUsers\"",
    );
    assert_reported(&problems, "outbound-task is invoked by");
}

#[test]
fn a_changed_queue_setting_is_reported() {
    let problems = mutated(
        "tasks.tf",
        "max_dispatches_per_second = 12",
        "max_dispatches_per_second = 12.5",
    );
    assert_reported(
        &problems,
        "outbound queues: max_dispatches_per_second is 12.5 in infra, 12 in the code",
    );
    let problems = mutated(
        "tasks.tf",
        "min_backoff               = \"5s\"",
        "min_backoff = \"1s\"",
    );
    assert_reported(&problems, "inbound queues: min_backoff");
    let problems = mutated(
        "tasks.tf",
        "-${tenant.namespace}-${direction}",
        "-${direction}-${tenant.namespace}",
    );
    assert_reported(&problems, "local.tenant_queues names");
}

#[test]
fn firestore_drift_is_reported() {
    let problems = mutated("firestore.tf", "    processed    = \"expires_at\"\n", "");
    assert_reported(&problems, "TTL policies on");
    let problems = mutated(
        "firestore.tf",
        "{ field = \"task_kind\", order = \"ASCENDING\" },\n      { field = \"at\"",
        "{ field = \"kind\", order = \"ASCENDING\" },\n      { field = \"at\"",
    );
    assert_reported(&problems, "failure indexes");
}

#[test]
fn other_drift_is_reported() {
    assert_reported(
        &mutated(
            "run.tf",
            "command = [\"/usr/local/bin/${each.key}\"]",
            "command = [\"/bin/${each.key}\"]",
        ),
        "command",
    );
    assert_reported(
        &mutated(
            "scheduler.tf",
            "\"]}/tasks/reconcile\"",
            "\"]}/tasks/reconciliation\"",
        ),
        "the reconciliation job calls",
    );
    assert_reported(
        &mutated(
            "alerts.tf",
            "task failed for good; recorded for review",
            "task failed for ever",
        ),
        "which shared/src never writes",
    );
    assert_reported(
        &mutated(
            "deploy.sh",
            "-target=google_artifact_registry_repository.images",
            "-target=google_artifact_registry_repository.image",
        ),
        "deploy.sh targets google_artifact_registry_repository.image,",
    );
    assert_reported(
        &mutated("deploy.sh", " operator-token:OPERATOR_TOKEN", ""),
        "deploy.sh fills the secrets",
    );
    assert_reported(
        &mutated(
            "iam.tf",
            "\"roles/cloudtasks.enqueuer\",",
            "\"roles/editor\",",
        ),
        "project roles",
    );
    assert_reported(
        &mutated(
            "iam.tf",
            "\"cloudtasks.queues.get\",",
            "\"cloudtasks.queues.delete\",",
        ),
        "the queue provisioner role holds",
    );
    assert_reported(
        &mutated(
            "variables.tf",
            "  validation {\n    condition     = var.queue_delay_alert_seconds > 0",
            "  valid {\n    condition     = var.queue_delay_alert_seconds > 0",
        ),
        "variable queue_delay_alert_seconds has no validation block",
    );
}
