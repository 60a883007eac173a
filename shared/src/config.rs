//! Configuration from the environment (product.md §9), parsed once at start into typed settings.
//!
//! A missing or malformed variable is a [`ConfigError`] whose message is one line naming it; the
//! binaries print it and exit. Secrets are held in [`SecretString`] so they cannot be logged.

use std::net::SocketAddr;

use secrecy::SecretString;
use url::Url;

use crate::crypto::Keyring;

/// A configuration problem, naming the variable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A required variable is not set (or is empty).
    #[error("missing required environment variable {0}")]
    Missing(String),
    /// A variable is set but not usable.
    #[error("invalid environment variable {name}: {reason}")]
    Invalid {
        /// The variable.
        name: String,
        /// Why it is not usable (never the value itself: it may be a secret).
        reason: String,
    },
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line, as Cloud Logging reads it (the default).
    Json,
    /// Human-readable lines for local use.
    Pretty,
}

/// Where tenant state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// In-process, lost on exit (local runs).
    Memory,
    /// Google Cloud Firestore (or its emulator when `emulator_host` is set).
    Firestore {
        /// `GOOGLE_CLOUD_PROJECT`.
        project: String,
        /// `FIRESTORE_EMULATOR_HOST` (`host:port`).
        emulator_host: Option<String>,
    },
}

/// How tasks are queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueueConfig {
    /// The in-process Cloud Tasks look-alike (local runs).
    Local,
    /// Google Cloud Tasks (or the emulator when `emulator_host` is set).
    CloudTasks {
        /// `GOOGLE_CLOUD_PROJECT`.
        project: String,
        /// `CLOUD_TASKS_LOCATION`, e.g. `australia-southeast1`.
        location: String,
        /// `CLOUD_TASKS_EMULATOR_HOST` (`host:port`).
        emulator_host: Option<String>,
        /// `TASKS_INVOKER_SERVICE_ACCOUNT`: the OIDC identity tasks are pushed with (none on the emulator).
        invoker_service_account: Option<String>,
    },
}

/// The public base URLs of the five functions (each defaults to `PUBLIC_URL`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionUrls {
    /// `OAUTH_CALLBACK_URL`: the redirect URI is `{this}/oauth/callback`.
    pub oauth_callback: Url,
    /// `KLAVIYO_WEBHOOK_URL`: where Klaviyo delivers webhooks.
    pub klaviyo_webhook: Url,
    /// `OMNEO_WEBHOOK_URL`: where Omneo delivers webhooks and target calls.
    pub omneo_webhook: Url,
    /// `INBOUND_TASK_URL`: where inbound tasks are pushed (also their OIDC audience).
    pub inbound_task: Url,
    /// `OUTBOUND_TASK_URL`: where outbound tasks are pushed (also their OIDC audience).
    pub outbound_task: Url,
}

/// Klaviyo OAuth app and API settings.
#[derive(Debug, Clone)]
pub struct KlaviyoConfig {
    /// `KLAVIYO_CLIENT_ID`.
    pub client_id: String,
    /// `KLAVIYO_CLIENT_SECRET`.
    pub client_secret: SecretString,
    /// `KLAVIYO_AUTH_URL` (browser authorize page).
    pub auth_url: Url,
    /// `KLAVIYO_TOKEN_URL`.
    pub token_url: Url,
    /// `KLAVIYO_REVOKE_URL`.
    pub revoke_url: Url,
    /// `KLAVIYO_API_URL`: a base; request paths start with `/api/`.
    pub api_url: Url,
    /// `KLAVIYO_REVISION`, sent as the `revision` header.
    pub revision: ApiRevision,
}

/// A Klaviyo API revision: a date `YYYY-MM-DD`, or a beta revision `YYYY-MM-DD.pre`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRevision(String);

impl ApiRevision {
    /// Parses a revision; the error says what is wrong (without echoing the value).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let date = raw.strip_suffix(".pre").unwrap_or(raw);
        let well_formed = date.len() == 10
            && date.bytes().enumerate().all(|(i, b)| {
                if i == 4 || i == 7 {
                    b == b'-'
                } else {
                    b.is_ascii_digit()
                }
            });
        if well_formed && date.parse::<jiff::civil::Date>().is_ok() {
            Ok(Self(raw.to_owned()))
        } else {
            Err("must be a Klaviyo API revision: a date YYYY-MM-DD (or YYYY-MM-DD.pre)".into())
        }
    }

    /// The revision as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Everything the functions read from the environment.
#[derive(Debug, Clone)]
pub struct Config {
    /// `PORT` (default 8080); the server listens on `0.0.0.0:PORT`.
    pub port: u16,
    /// Public URLs of the functions.
    pub urls: FunctionUrls,
    /// Klaviyo settings.
    pub klaviyo: KlaviyoConfig,
    /// `OMNEO_API_URL_TEMPLATE`, containing `{tenant}`.
    pub omneo_api_url_template: String,
    /// `STORE` and its settings.
    pub store: StoreConfig,
    /// `QUEUE` and its settings.
    pub queue: QueueConfig,
    /// `ENCRYPTION_KEY`.
    pub keyring: Keyring,
    /// `OPERATOR_TOKEN`: the platform team's bearer token.
    pub operator_token: SecretString,
    /// `LOG_FORMAT` (`json` default, or `pretty`).
    pub log_format: LogFormat,
}

/// Reads configuration variables; the process environment in production, a map in tests.
pub trait Env {
    /// The variable's value, `None` when unset. Empty values count as unset.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.trim().is_empty())
    }
}

impl<F: Fn(&str) -> Option<String>> Env for F {
    fn var(&self, name: &str) -> Option<String> {
        self(name).filter(|v| !v.trim().is_empty())
    }
}

struct Reader<'a>(&'a dyn Env);

impl Reader<'_> {
    fn optional(&self, name: &str) -> Option<String> {
        self.0.var(name)
    }

    fn required(&self, name: &str) -> Result<String, ConfigError> {
        self.optional(name)
            .ok_or_else(|| ConfigError::Missing(name.to_owned()))
    }

    fn or_default(&self, name: &str, default: &str) -> String {
        self.optional(name).unwrap_or_else(|| default.to_owned())
    }

    fn url(&self, name: &str, raw: &str) -> Result<Url, ConfigError> {
        let url = Url::parse(raw).map_err(|e| invalid(name, format!("not a URL ({e})")))?;
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            return Err(invalid(name, "must be an http(s) URL with a host".into()));
        }
        Ok(url)
    }

    fn url_or_default(&self, name: &str, default: &str) -> Result<Url, ConfigError> {
        self.url(name, &self.or_default(name, default))
    }

    /// A function URL: its own variable, else `PUBLIC_URL`.
    fn function_url(&self, name: &str) -> Result<Url, ConfigError> {
        match (self.optional(name), self.optional("PUBLIC_URL")) {
            (Some(own), _) => self.url(name, &own),
            (None, Some(public)) => self.url("PUBLIC_URL", &public),
            (None, None) => Err(ConfigError::Missing(format!("{name} (or PUBLIC_URL)"))),
        }
    }
}

fn invalid(name: &str, reason: String) -> ConfigError {
    ConfigError::Invalid {
        name: name.to_owned(),
        reason,
    }
}

/// Klaviyo's production endpoints and API revision (product.md §9 defaults).
pub mod defaults {
    /// Browser authorize page.
    pub const KLAVIYO_AUTH_URL: &str = "https://www.klaviyo.com/oauth/authorize";
    /// Token endpoint.
    pub const KLAVIYO_TOKEN_URL: &str = "https://a.klaviyo.com/oauth/token";
    /// Revocation endpoint.
    pub const KLAVIYO_REVOKE_URL: &str = "https://a.klaviyo.com/oauth/revoke";
    /// API base.
    pub const KLAVIYO_API_URL: &str = "https://a.klaviyo.com";
    /// API revision header value.
    pub const KLAVIYO_REVISION: &str = "2026-07-15";
    /// Omneo API base per tenant.
    pub const OMNEO_API_URL_TEMPLATE: &str = "https://api.{tenant}.getomneo.com";
    /// Listening port.
    pub const PORT: u16 = 8080;
}

impl Config {
    /// Reads the process environment.
    pub fn from_process_env() -> Result<Self, ConfigError> {
        Self::from_env(&ProcessEnv)
    }

    /// Reads configuration through `env`.
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let r = Reader(env);
        let port = match r.optional("PORT") {
            None => defaults::PORT,
            Some(raw) => raw
                .parse()
                .map_err(|_| invalid("PORT", "must be a port number (0-65535)".into()))?,
        };
        let urls = FunctionUrls {
            oauth_callback: r.function_url("OAUTH_CALLBACK_URL")?,
            klaviyo_webhook: r.function_url("KLAVIYO_WEBHOOK_URL")?,
            omneo_webhook: r.function_url("OMNEO_WEBHOOK_URL")?,
            inbound_task: r.function_url("INBOUND_TASK_URL")?,
            outbound_task: r.function_url("OUTBOUND_TASK_URL")?,
        };
        let klaviyo = KlaviyoConfig {
            client_id: r.required("KLAVIYO_CLIENT_ID")?,
            client_secret: SecretString::from(r.required("KLAVIYO_CLIENT_SECRET")?),
            auth_url: r.url_or_default("KLAVIYO_AUTH_URL", defaults::KLAVIYO_AUTH_URL)?,
            token_url: r.url_or_default("KLAVIYO_TOKEN_URL", defaults::KLAVIYO_TOKEN_URL)?,
            revoke_url: r.url_or_default("KLAVIYO_REVOKE_URL", defaults::KLAVIYO_REVOKE_URL)?,
            api_url: r.url_or_default("KLAVIYO_API_URL", defaults::KLAVIYO_API_URL)?,
            revision: ApiRevision::parse(
                &r.or_default("KLAVIYO_REVISION", defaults::KLAVIYO_REVISION),
            )
            .map_err(|reason| invalid("KLAVIYO_REVISION", reason))?,
        };
        let omneo_api_url_template =
            r.or_default("OMNEO_API_URL_TEMPLATE", defaults::OMNEO_API_URL_TEMPLATE);
        if !omneo_api_url_template.contains("{tenant}") {
            return Err(invalid(
                "OMNEO_API_URL_TEMPLATE",
                "must contain {tenant}".into(),
            ));
        }
        r.url(
            "OMNEO_API_URL_TEMPLATE",
            &omneo_api_url_template.replace("{tenant}", "tenant"),
        )?;
        let store = match r.or_default("STORE", "firestore").as_str() {
            "memory" => StoreConfig::Memory,
            "firestore" => StoreConfig::Firestore {
                project: r.required("GOOGLE_CLOUD_PROJECT")?,
                emulator_host: r.optional("FIRESTORE_EMULATOR_HOST"),
            },
            _ => return Err(invalid("STORE", "must be `memory` or `firestore`".into())),
        };
        let queue = match r.or_default("QUEUE", "cloud-tasks").as_str() {
            "local" => QueueConfig::Local,
            "cloud-tasks" => {
                let emulator_host = r.optional("CLOUD_TASKS_EMULATOR_HOST");
                let invoker_service_account = r.optional("TASKS_INVOKER_SERVICE_ACCOUNT");
                if emulator_host.is_none() && invoker_service_account.is_none() {
                    return Err(ConfigError::Missing(
                        "TASKS_INVOKER_SERVICE_ACCOUNT (required by QUEUE=cloud-tasks outside the emulator)".into(),
                    ));
                }
                QueueConfig::CloudTasks {
                    project: r.required("GOOGLE_CLOUD_PROJECT")?,
                    location: r.required("CLOUD_TASKS_LOCATION")?,
                    emulator_host,
                    invoker_service_account,
                }
            }
            _ => return Err(invalid("QUEUE", "must be `local` or `cloud-tasks`".into())),
        };
        let keyring = Keyring::parse(&r.required("ENCRYPTION_KEY")?)
            .map_err(|e| invalid("ENCRYPTION_KEY", e.to_string()))?;
        let operator_token = r.required("OPERATOR_TOKEN")?;
        if operator_token.len() < 16 {
            return Err(invalid(
                "OPERATOR_TOKEN",
                "must be at least 16 characters".into(),
            ));
        }
        let log_format = match r.or_default("LOG_FORMAT", "json").as_str() {
            "json" => LogFormat::Json,
            "pretty" => LogFormat::Pretty,
            _ => return Err(invalid("LOG_FORMAT", "must be `json` or `pretty`".into())),
        };
        Ok(Self {
            port,
            urls,
            klaviyo,
            omneo_api_url_template,
            store,
            queue,
            keyring,
            operator_token: SecretString::from(operator_token),
            log_format,
        })
    }

    /// The address to listen on: `0.0.0.0:PORT`.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], self.port))
    }

    /// The OAuth redirect URI, `{OAUTH_CALLBACK_URL}/oauth/callback`.
    pub fn redirect_uri(&self) -> Url {
        join(&self.urls.oauth_callback, "/oauth/callback")
    }

    /// The Omneo API base URL of a tenant, from the template.
    pub fn omneo_api_url(&self, tenant: &crate::domain::TenantId) -> String {
        self.omneo_api_url_template
            .replace("{tenant}", tenant.as_str())
    }
}

/// Appends an absolute `path` to a base URL, keeping any path prefix the base has.
pub fn join(base: &Url, path: &str) -> Url {
    let mut url = base.clone();
    let prefix = url.path().trim_end_matches('/').to_owned();
    url.set_path(&format!("{prefix}{path}"));
    url
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use secrecy::ExposeSecret;

    use super::*;

    const KEY: &str = "k1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";

    fn base() -> HashMap<&'static str, String> {
        HashMap::from([
            ("PUBLIC_URL", "https://ext.example.com".to_owned()),
            ("KLAVIYO_CLIENT_ID", "client".to_owned()),
            ("KLAVIYO_CLIENT_SECRET", "client-secret".to_owned()),
            ("STORE", "memory".to_owned()),
            ("QUEUE", "local".to_owned()),
            ("ENCRYPTION_KEY", KEY.to_owned()),
            ("OPERATOR_TOKEN", "operator-token-0123456789".to_owned()),
        ])
    }

    fn parse(vars: &HashMap<&'static str, String>) -> Result<Config, ConfigError> {
        Config::from_env(&|name: &str| vars.get(name).cloned())
    }

    #[test]
    fn minimal_environment_gets_the_documented_defaults() {
        let config = parse(&base()).unwrap();
        assert_eq!(config.port, 8080);
        assert_eq!(
            config.klaviyo.token_url.as_str(),
            defaults::KLAVIYO_TOKEN_URL
        );
        assert_eq!(config.klaviyo.api_url.as_str(), "https://a.klaviyo.com/");
        assert_eq!(config.klaviyo.revision.as_str(), "2026-07-15");
        assert_eq!(
            config.urls.inbound_task.as_str(),
            "https://ext.example.com/"
        );
        assert_eq!(
            config.redirect_uri().as_str(),
            "https://ext.example.com/oauth/callback"
        );
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.store, StoreConfig::Memory);
        assert_eq!(config.queue, QueueConfig::Local);
        assert_eq!(
            config.omneo_api_url(&"acme".parse().unwrap()),
            "https://api.acme.getomneo.com"
        );
        assert_eq!(
            config.operator_token.expose_secret(),
            "operator-token-0123456789"
        );
    }

    #[test]
    fn per_function_urls_override_public_url() {
        let mut vars = base();
        vars.insert(
            "OAUTH_CALLBACK_URL",
            "https://oauth.example.com/prefix".into(),
        );
        let config = parse(&vars).unwrap();
        assert_eq!(
            config.redirect_uri().as_str(),
            "https://oauth.example.com/prefix/oauth/callback"
        );
        assert_eq!(
            config.urls.klaviyo_webhook.as_str(),
            "https://ext.example.com/"
        );
    }

    #[test]
    fn each_problem_names_its_variable() {
        let cases: Vec<(&str, Option<&str>, &str)> = vec![
            ("KLAVIYO_CLIENT_ID", None, "KLAVIYO_CLIENT_ID"),
            ("KLAVIYO_CLIENT_SECRET", None, "KLAVIYO_CLIENT_SECRET"),
            ("ENCRYPTION_KEY", None, "ENCRYPTION_KEY"),
            ("ENCRYPTION_KEY", Some("k1:short"), "ENCRYPTION_KEY"),
            ("OPERATOR_TOKEN", None, "OPERATOR_TOKEN"),
            ("OPERATOR_TOKEN", Some("short"), "OPERATOR_TOKEN"),
            ("PUBLIC_URL", None, "OAUTH_CALLBACK_URL (or PUBLIC_URL)"),
            ("PUBLIC_URL", Some("not a url"), "PUBLIC_URL"),
            ("PORT", Some("eighty"), "PORT"),
            ("STORE", Some("redis"), "STORE"),
            ("QUEUE", Some("sqs"), "QUEUE"),
            ("LOG_FORMAT", Some("xml"), "LOG_FORMAT"),
            ("KLAVIYO_API_URL", Some("ftp://x"), "KLAVIYO_API_URL"),
            (
                "KLAVIYO_REVISION",
                Some("bad\nrevision"),
                "KLAVIYO_REVISION",
            ),
            ("KLAVIYO_REVISION", Some("latest"), "KLAVIYO_REVISION"),
            ("KLAVIYO_REVISION", Some("2026-13-40"), "KLAVIYO_REVISION"),
            ("ENCRYPTION_KEY", Some("c2hvcnQ="), "ENCRYPTION_KEY"),
            (
                "OMNEO_API_URL_TEMPLATE",
                Some("https://api.example.com"),
                "OMNEO_API_URL_TEMPLATE",
            ),
        ];
        for (name, value, named) in cases {
            let mut vars = base();
            match value {
                Some(v) => vars.insert(name, v.to_owned()),
                None => vars.remove(name),
            };
            let message = parse(&vars).unwrap_err().to_string();
            assert!(message.contains(named), "{name}={value:?}: {message}");
            assert!(!message.contains('\n'), "one line: {message}");
            if let Some(v) = value {
                assert!(
                    !message.contains(v) || v.len() < 3,
                    "never echo values: {message}"
                );
            }
        }
    }

    #[test]
    fn revisions_and_bare_keys_are_accepted_as_documented() {
        let mut vars = base();
        vars.insert("KLAVIYO_REVISION", "2026-10-15.pre".into());
        // What `head -c32 /dev/urandom | base64` prints.
        vars.insert(
            "ENCRYPTION_KEY",
            "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80=".into(),
        );
        let config = parse(&vars).unwrap();
        assert_eq!(config.klaviyo.revision.as_str(), "2026-10-15.pre");
        assert_eq!(config.keyring.key_ids().len(), 1);
    }

    #[test]
    fn firestore_and_cloud_tasks_need_their_project_settings() {
        let mut vars = base();
        vars.insert("STORE", "firestore".into());
        assert_eq!(
            parse(&vars).unwrap_err(),
            ConfigError::Missing("GOOGLE_CLOUD_PROJECT".into())
        );
        vars.insert("GOOGLE_CLOUD_PROJECT", "proj".into());
        vars.insert("FIRESTORE_EMULATOR_HOST", "127.0.0.1:8200".into());
        assert_eq!(
            parse(&vars).unwrap().store,
            StoreConfig::Firestore {
                project: "proj".into(),
                emulator_host: Some("127.0.0.1:8200".into())
            }
        );
        vars.insert("QUEUE", "cloud-tasks".into());
        assert!(
            parse(&vars)
                .unwrap_err()
                .to_string()
                .contains("TASKS_INVOKER_SERVICE_ACCOUNT")
        );
        vars.insert(
            "TASKS_INVOKER_SERVICE_ACCOUNT",
            "tasks@proj.iam.gserviceaccount.com".into(),
        );
        assert_eq!(
            parse(&vars).unwrap_err(),
            ConfigError::Missing("CLOUD_TASKS_LOCATION".into())
        );
        vars.insert("CLOUD_TASKS_LOCATION", "australia-southeast1".into());
        assert!(matches!(
            parse(&vars).unwrap().queue,
            QueueConfig::CloudTasks { .. }
        ));
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let config = parse(&base()).unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("client-secret"));
        assert!(!debug.contains("operator-token-0123456789"));
    }
}
