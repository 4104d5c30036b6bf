//! Configuration: a TOML file, `TOKENGATE_<KEY>` environment overrides and
//! command-line flags, merged in that order of increasing precedence and then
//! validated once into a typed [`Config`]. Every error names the key (and where
//! its value came from), so an operator can fix a bad start-up at a glance.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use hyper::Uri;
use hyper::header::{HeaderName, HeaderValue};
use ipnet::IpNet;

/// Every configuration key: those [`Config::from_sources`] reads, where
/// each is named once, with its default and how its value is checked
/// (`config/tokengate.example.toml` documents each, checked by a test).
/// Environment variables are `TOKENGATE_` and the key in capitals.
pub fn keys() -> &'static [&'static str] {
    static KEYS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
        let raw = RawConfig::default();
        let reader = Reader::new(&raw);
        Config::read(&reader).expect("built-in defaults are valid");
        reader.read.into_inner()
    });
    &KEYS
}

/// The file read when `--config` is not given, if it exists: in
/// `TOKENGATE_HOME` when that is set, else in the current directory.
pub const DEFAULT_CONFIG_PATH: &str = "config/tokengate.toml";

/// The environment variable naming the gateway's home: where the default
/// configuration file and a relative SQLite store are (SPEC §9). Not a
/// configuration key.
pub const HOME_VAR: &str = "TOKENGATE_HOME";

/// A configuration problem. Start-up stops with exit code 2 and this message.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("unknown configuration key `{key}` ({origin})")]
    UnknownKey { key: String, origin: Origin },
    #[error("{HOME_VAR}={path} is not a directory: set it to the gateway's home (where config/ and data/ are)")]
    Home { path: PathBuf },
    #[error("invalid value for `{key}` ({origin}): {message}")]
    Invalid {
        key: &'static str,
        origin: Origin,
        message: String,
    },
}

/// Where a raw value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    Env(String),
    Flag(&'static str),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("built-in default"),
            Origin::File(path) => write!(f, "from {}", path.display()),
            Origin::Env(var) => write!(f, "from environment variable {var}"),
            Origin::Flag(flag) => write!(f, "from {flag}"),
        }
    }
}

/// Which schemes may carry a gateway token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAuth {
    Basic,
    Bearer,
    Both,
}

impl TokenAuth {
    pub fn allows_basic(self) -> bool {
        matches!(self, TokenAuth::Basic | TokenAuth::Both)
    }
    pub fn allows_bearer(self) -> bool {
        matches!(self, TokenAuth::Bearer | TokenAuth::Both)
    }
}

/// Which paths tokens may be used on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `/rest/*`
    Rest,
    /// `/rest/extender/*`
    Extender,
}

impl Scope {
    pub fn prefix(self) -> &'static str {
        match self {
            Scope::Rest => "/rest/",
            Scope::Extender => "/rest/extender/",
        }
    }

    /// Whether a token may be used for `method path`: below the prefix, and
    /// with `rest`, reading attachment downloads (SPEC §17), which
    /// Confluence serves outside `/rest`.
    pub fn allows(self, method: &hyper::Method, path: &str) -> bool {
        path.starts_with(self.prefix())
            || (self == Scope::Rest
                && (*method == hyper::Method::GET || *method == hyper::Method::HEAD)
                && path.starts_with("/download/attachments/"))
    }

    /// Where tokens may be used, for a refusal's message.
    pub fn describe(self) -> &'static str {
        match self {
            Scope::Rest => "/rest/* (and GET of /download/attachments/*)",
            Scope::Extender => "/rest/extender/*",
        }
    }
}

/// How a forwarded token request tells Confluence who the user is (SPEC §13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardAs {
    /// The identity header (`X-Forwarded-User`), which Confluence must trust.
    Header,
    /// The user's own Confluence personal access token, sealed under the gateway token.
    Pat,
}

impl ForwardAs {
    pub fn name(self) -> &'static str {
        match self {
            ForwardAs::Header => "header",
            ForwardAs::Pat => "pat",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The upstream Confluence origin: scheme and authority only. Requests keep
/// their own path, so Confluence must be reachable at the same context path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub https: bool,
    pub authority: hyper::http::uri::Authority,
}

impl Upstream {
    /// `http://host:port`, the prefix an upstream `Location` header starts with.
    pub fn origin(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.authority)
    }
}

/// argon2id cost parameters for new token hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Cost {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Argon2Cost {
    /// The cheapest cost argon2 accepts, for tests: hashing is not what
    /// they check.
    #[cfg(test)]
    pub const CHEAP: Argon2Cost = Argon2Cost {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };
}

/// A PEM certificate chain and key to serve HTTPS with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The validated configuration. Built once at start-up; code after that trusts it.
#[derive(Clone)]
#[cfg_attr(test, derive(PartialEq))]
pub struct Config {
    pub listen: SocketAddr,
    pub upstream: Upstream,
    /// Where clients reach the gateway, for `Location` rewriting, the
    /// cross-site check and `Secure` cookies.
    pub public_url: Option<PublicUrl>,
    pub database_url: String,
    pub tls: Option<TlsFiles>,
    pub upstream_ca: Option<PathBuf>,
    pub connect_timeout: Duration,
    pub upstream_timeout: Duration,
    /// Idle upstream connections kept for reuse, beyond those held by open client connections.
    pub upstream_max_idle: usize,
    /// How long an upstream connection may sit idle before it is closed.
    pub upstream_idle_timeout: Duration,
    pub token_auth: TokenAuth,
    pub scope: Scope,
    pub identity_header: HeaderName,
    pub upstream_secret: Option<HeaderValue>,
    pub upstream_secret_header: HeaderName,
    pub preserve_host: bool,
    pub passthrough: bool,
    pub allow_anonymous: bool,
    pub admin_users: Vec<String>,
    pub max_json_body: usize,
    pub max_days_until_expiry: Option<u32>,
    pub verify_cache_ttl: Duration,
    /// How long a content id → space lookup is kept (SPEC §17).
    pub space_cache_ttl: Duration,
    pub argon2: Argon2Cost,
    pub failed_auth_per_minute: u32,
    pub trusted_proxies: Vec<IpNet>,
    pub audit_retention_days: u32,
    pub log_format: LogFormat,
    /// Open client connections at most; more are refused with 503.
    pub max_connections: usize,
    /// Threads serving requests: one runs everything on a single thread
    /// (tokio's current-thread scheduler); more share the work by stealing.
    pub workers: usize,
    pub forward_as: ForwardAs,
    /// Whether users manage their own tokens (SPEC §14).
    pub self_service: bool,
    /// Tokens one user may hold.
    pub max_tokens_per_user: u32,
    /// A key file kept outside the store, mixed into the sealing of PATs;
    /// read (and checked) when the gateway state is built.
    pub seal_key_file: Option<PathBuf>,
    /// Whether the web page is served at `/tokengate/ui/` (SPEC §15).
    pub ui: bool,
    /// A web page session ends this long after login...
    pub ui_session: Duration,
    /// ...or this long after its last use.
    pub ui_idle: Duration,
    /// Where every replica shares each token's rate-limit bucket (SPEC §16);
    /// unset: each replica keeps its own.
    pub rate_limit_redis: Option<String>,
    /// Where token events are POSTed (SPEC §18); unset: none are raised.
    pub notify_url: Option<Uri>,
    /// The key that signs each event (HMAC-SHA256).
    pub notify_secret: Option<String>,
    /// Days before expiry at which `token.expiring` fires, largest first.
    pub expiry_warning_days: Vec<u32>,
}

impl fmt::Debug for Config {
    /// Like a derived Debug, but never prints a secret: neither the upstream
    /// secret nor a password in `database_url`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("upstream", &self.upstream.origin())
            .field("database_url", &redact_password(&self.database_url))
            .field("tls", &self.tls.is_some())
            .field("token_auth", &self.token_auth)
            .field("scope", &self.scope)
            .field("identity_header", &self.identity_header)
            .field("upstream_secret", &self.upstream_secret.as_ref().map(|_| "<set>"))
            .field("passthrough", &self.passthrough)
            .field("allow_anonymous", &self.allow_anonymous)
            .field("forward_as", &self.forward_as)
            .field("self_service", &self.self_service)
            .field(
                "rate_limit_redis",
                &self.rate_limit_redis.as_deref().map(redact_password),
            )
            // Only the origin: a chat webhook's path is its secret.
            .field(
                "notify_url",
                &self.notify_url.as_ref().map(|u| {
                    format!(
                        "{}://{}/...",
                        u.scheme_str().unwrap_or_default(),
                        u.host().unwrap_or_default()
                    )
                }),
            )
            .field("notify_secret", &self.notify_secret.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::from_sources(RawConfig::default()).expect("built-in defaults are valid")
    }
}

/// Command-line flags that override configuration keys.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub upstream: Option<String>,
    pub database: Option<String>,
}

/// Raw key/value pairs before validation, each remembering where it came from.
#[derive(Debug, Default, Clone)]
pub struct RawConfig {
    values: BTreeMap<String, (toml::Value, Origin)>,
}

impl RawConfig {
    /// Reads the TOML file. Unknown keys are refused here.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Syntax {
            path: path.to_owned(),
            message: match e.span() {
                Some(span) => {
                    let (line, column) = line_and_column(&text, span.start);
                    format!("line {line}, column {column}: {}", e.message())
                }
                None => e.message().to_owned(),
            },
        })?;
        let mut raw = RawConfig::default();
        for (key, value) in table {
            raw.set(key, value, Origin::File(path.to_owned()))?;
        }
        Ok(raw)
    }

    /// Applies `TOKENGATE_<KEY>` variables. An unknown `TOKENGATE_` variable is an error,
    /// since it is almost always a misspelt key.
    pub fn apply_env(&mut self, vars: impl IntoIterator<Item = (String, String)>) -> Result<(), ConfigError> {
        for (name, value) in vars {
            let Some(key) = name.strip_prefix("TOKENGATE_").filter(|_| name != HOME_VAR) else {
                continue;
            };
            let key = key.to_ascii_lowercase();
            self.set(key, toml::Value::String(value), Origin::Env(name))?;
        }
        Ok(())
    }

    /// Applies command-line flags.
    pub fn apply_overrides(&mut self, overrides: &Overrides) {
        let flags = [
            ("listen", "--listen", &overrides.listen),
            ("upstream", "--upstream", &overrides.upstream),
            ("database_url", "--database", &overrides.database),
        ];
        for (key, flag, value) in flags {
            if let Some(value) = value {
                let origin = Origin::Flag(flag);
                self.values
                    .insert(key.to_owned(), (toml::Value::String(value.clone()), origin));
            }
        }
    }

    /// Sets one key, refusing keys that do not exist.
    pub fn set(&mut self, key: String, value: toml::Value, origin: Origin) -> Result<(), ConfigError> {
        if !keys().contains(&key.as_str()) {
            return Err(ConfigError::UnknownKey { key, origin });
        }
        self.values.insert(key, (value, origin));
        Ok(())
    }
}

/// The 1-based line and column (in characters) of byte `offset` of `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line_start = before.rfind('\n').map_or(0, |at| at + 1);
    (
        before.matches('\n').count() + 1,
        before[line_start..].chars().count() + 1,
    )
}

/// Loads the configuration as `tokengate serve` does: file (explicit, else
/// the default path when it exists), then environment, then flags.
///
/// A relative SQLite path from the file or the default
/// (`sqlite://data/tokengate.db`) is the gateway home's, so every command
/// finds the same store wherever it runs (SPEC §9): the home is
/// `TOKENGATE_HOME`, else the configuration file's directory (its parent
/// when that is a `config` directory, as in `HOME/config/tokengate.toml`
/// beside `HOME/data/`), else the current directory. A relative path given
/// by a flag or an environment variable stays the current directory's: it
/// was typed there.
pub fn load(
    config_path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    overrides: &Overrides,
) -> Result<Config, ConfigError> {
    let env: Vec<(String, String)> = env.into_iter().collect();
    let home = env
        .iter()
        .find(|(name, value)| name == HOME_VAR && !value.is_empty())
        .map(|(_, value)| std::path::absolute(value).unwrap_or_else(|_| PathBuf::from(value)));
    if let Some(home) = home.as_ref().filter(|home| !home.is_dir()) {
        return Err(ConfigError::Home { path: home.clone() });
    }
    let file = match (config_path, &home) {
        (Some(path), _) => Some(path.to_owned()),
        (None, Some(home)) => Some(home.join(DEFAULT_CONFIG_PATH)).filter(|path| path.exists()),
        (None, None) => Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|path| path.exists()),
    };
    let mut raw = match &file {
        Some(path) => RawConfig::from_file(path)?,
        None => RawConfig::default(),
    };
    raw.apply_env(env)?;
    raw.apply_overrides(overrides);
    let typed_here = matches!(
        raw.values.get("database_url"),
        Some((_, Origin::Env(_) | Origin::Flag(_)))
    );
    let mut config = Config::from_sources(raw)?;
    let home = home
        .or_else(|| file.as_deref().map(home_of))
        .or_else(|| std::path::absolute(".").ok());
    if let (Some(home), false) = (home, typed_here) {
        config.database_url = within(&home, &config.database_url);
    }
    Ok(config)
}

/// The home a configuration file implies: its directory, or the parent of
/// a `config` directory.
fn home_of(file: &Path) -> PathBuf {
    let dir = file
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let home = match dir.file_name() {
        Some(name) if name == "config" => dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
        _ => dir,
    };
    std::path::absolute(home).unwrap_or_else(|_| home.to_owned())
}

/// `url` with a relative SQLite path made `home`'s; any other URL as it is.
fn within(home: &Path, url: &str) -> String {
    match sqlite_path(url) {
        Some(path) if Path::new(path).is_relative() => format!("sqlite://{}", home.join(path).display()),
        _ => url.to_owned(),
    }
}

/// The file a `sqlite://PATH` (or `sqlite:PATH`) URL names; `None` for
/// another URL.
pub fn sqlite_path(url: &str) -> Option<&str> {
    url.strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .filter(|p| !p.is_empty() && !p.contains('?'))
}

impl Config {
    /// Validates raw values into a typed configuration, filling in defaults.
    pub fn from_sources(raw: RawConfig) -> Result<Self, ConfigError> {
        Config::read(&Reader::new(&raw))
    }

    /// Every key, read once: its default and how it is checked.
    fn read(r: &Reader<'_>) -> Result<Self, ConfigError> {
        let tls_cert = r.opt_string("tls_cert")?.map(PathBuf::from);
        let tls_key = r.opt_string("tls_key")?.map(PathBuf::from);
        let tls = match (tls_cert, tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => return Err(r.invalid("tls_key", "must be set together with tls_cert")),
            (None, Some(_)) => return Err(r.invalid("tls_cert", "must be set together with tls_key")),
        };
        let config = Config {
            listen: r.parse("listen", "127.0.0.1:8080", |s| {
                s.parse::<SocketAddr>()
                    .map_err(|_| "expected ADDRESS:PORT, e.g. 127.0.0.1:8080".to_owned())
            })?,
            upstream: r.parse("upstream", "http://127.0.0.1:8090", parse_upstream)?,
            public_url: r.opt_parse("public_url", str::parse)?,
            database_url: r.parse("database_url", "sqlite://data/tokengate.db", parse_database_url)?,
            tls,
            upstream_ca: r.opt_string("upstream_ca")?.map(PathBuf::from),
            connect_timeout: Duration::from_secs(r.positive("connect_timeout_s", 5)?),
            upstream_timeout: Duration::from_secs(r.positive("upstream_timeout_s", 300)?),
            upstream_max_idle: r.positive("upstream_max_idle", 256)?,
            upstream_idle_timeout: Duration::from_secs(r.positive("upstream_idle_timeout_s", 60)?),
            token_auth: r.choice(
                "token_auth",
                "basic",
                &[
                    ("basic", TokenAuth::Basic),
                    ("bearer", TokenAuth::Bearer),
                    ("both", TokenAuth::Both),
                ],
            )?,
            scope: r.choice("scope", "rest", &[("rest", Scope::Rest), ("extender", Scope::Extender)])?,
            identity_header: r.parse("identity_header", "X-Forwarded-User", parse_header_name)?,
            upstream_secret: r.opt_parse("upstream_secret", |s| {
                let mut value = HeaderValue::from_str(s).map_err(|_| "must be visible ASCII".to_owned())?;
                value.set_sensitive(true);
                Ok(value)
            })?,
            upstream_secret_header: r.parse("upstream_secret_header", "X-Tokengate-Secret", parse_header_name)?,
            preserve_host: r.bool("preserve_host", true)?,
            passthrough: r.bool("passthrough", true)?,
            allow_anonymous: r.choice("anonymous", "allow", &[("allow", true), ("deny", false)])?,
            admin_users: r.list("admin_users", &["admin"])?,
            max_json_body: r.size("max_json_body", 1 << 20)?,
            max_days_until_expiry: r.opt_positive("max_days_until_expiry")?,
            verify_cache_ttl: Duration::from_secs(r.positive("verify_cache_ttl_s", 600)?),
            space_cache_ttl: Duration::from_secs(r.positive("space_cache_ttl_s", 60)?),
            argon2: Argon2Cost {
                memory_kib: r.positive("argon2_memory_kib", 19456)?,
                iterations: r.positive("argon2_iterations", 2)?,
                parallelism: r.positive("argon2_parallelism", 1)?,
            },
            failed_auth_per_minute: r.positive("failed_auth_per_minute", 20)?,
            trusted_proxies: r
                .list("trusted_proxies", &[])?
                .iter()
                .map(|s| parse_net(s).map_err(|m| r.invalid("trusted_proxies", &m)))
                .collect::<Result<_, _>>()?,
            audit_retention_days: r.positive("audit_retention_days", 90)?,
            log_format: r.choice(
                "log_format",
                "text",
                &[("text", LogFormat::Text), ("json", LogFormat::Json)],
            )?,
            max_connections: r.positive("max_connections", 10_000)?,
            workers: r.positive("workers", default_workers())?,
            forward_as: r.choice(
                "forward_as",
                "header",
                &[("header", ForwardAs::Header), ("pat", ForwardAs::Pat)],
            )?,
            self_service: r.bool("self_service", true)?,
            max_tokens_per_user: r.positive("max_tokens_per_user", 10)?,
            seal_key_file: r.opt_string("seal_key_file")?.map(PathBuf::from),
            ui: r.bool("ui", true)?,
            ui_session: Duration::from_secs(60 * r.positive::<u64>("ui_session_minutes", 480)?),
            ui_idle: Duration::from_secs(60 * r.positive::<u64>("ui_idle_minutes", 30)?),
            rate_limit_redis: r.opt_parse("rate_limit_redis", parse_redis_url)?,
            notify_url: r.opt_parse("notify_url", parse_notify_url)?,
            notify_secret: r.opt_string("notify_secret")?.filter(|s| !s.is_empty()),
            expiry_warning_days: r.day_list("expiry_warning_days", &[30, 7, 1])?,
        };
        config.check_argon2(r)?;
        Ok(config)
    }

    fn check_argon2(&self, r: &Reader<'_>) -> Result<(), ConfigError> {
        let cost = self.argon2;
        argon2::Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
            .map(|_| ())
            .map_err(|e| r.invalid("argon2_memory_kib", &format!("argon2 rejects these parameters: {e}")))
    }
}

/// Typed access to raw values; every error it makes names the key and
/// origin. It notes each key read: that is the list of keys.
struct Reader<'a> {
    raw: &'a RawConfig,
    read: RefCell<Vec<&'static str>>,
}

impl<'a> Reader<'a> {
    fn new(raw: &'a RawConfig) -> Self {
        Reader {
            raw,
            read: RefCell::default(),
        }
    }

    /// The raw value of `key`, noting that the key exists.
    fn value(&self, key: &'static str) -> Option<&'a (toml::Value, Origin)> {
        let mut read = self.read.borrow_mut();
        if !read.contains(&key) {
            read.push(key);
        }
        self.raw.values.get(key)
    }

    fn origin(&self, key: &str) -> Origin {
        self.raw.values.get(key).map_or(Origin::Default, |(_, o)| o.clone())
    }

    fn invalid(&self, key: &'static str, message: &str) -> ConfigError {
        ConfigError::Invalid {
            key,
            origin: self.origin(key),
            message: message.to_owned(),
        }
    }

    /// The value as text: strings as they are, numbers and booleans as written.
    fn opt_string(&self, key: &'static str) -> Result<Option<String>, ConfigError> {
        match self.value(key) {
            None => Ok(None),
            Some((toml::Value::String(s), _)) => Ok(Some(s.clone())),
            Some((v @ (toml::Value::Integer(_) | toml::Value::Boolean(_)), _)) => Ok(Some(v.to_string())),
            Some((v, _)) => Err(self.invalid(key, &format!("expected a string, found {}", v.type_str()))),
        }
    }

    fn opt_parse<T>(&self, key: &'static str, f: impl Fn(&str) -> Result<T, String>) -> Result<Option<T>, ConfigError> {
        match self.opt_string(key)? {
            None => Ok(None),
            Some(s) => f(s.trim()).map(Some).map_err(|m| self.invalid(key, &m)),
        }
    }

    fn parse<T>(
        &self,
        key: &'static str,
        default: &str,
        f: impl Fn(&str) -> Result<T, String>,
    ) -> Result<T, ConfigError> {
        let text = self.opt_string(key)?.unwrap_or_else(|| default.to_owned());
        f(text.trim()).map_err(|m| self.invalid(key, &m))
    }

    fn choice<T: Copy>(&self, key: &'static str, default: &str, options: &[(&str, T)]) -> Result<T, ConfigError> {
        self.parse(key, default, |s| {
            options
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(s))
                .map(|(_, value)| *value)
                .ok_or_else(|| {
                    let names: Vec<_> = options.iter().map(|(n, _)| format!("`{n}`")).collect();
                    format!("`{s}` is not one of {}", names.join(", "))
                })
        })
    }

    fn bool(&self, key: &'static str, default: bool) -> Result<bool, ConfigError> {
        self.parse(key, if default { "true" } else { "false" }, |s| {
            match s.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(format!("`{s}` is not a boolean (true or false)")),
            }
        })
    }

    fn opt_positive<T: TryFrom<u64>>(&self, key: &'static str) -> Result<Option<T>, ConfigError> {
        self.opt_parse(key, |s| {
            let n: u64 = s.parse().map_err(|_| format!("`{s}` is not a whole number"))?;
            if n == 0 {
                return Err("must be greater than 0".to_owned());
            }
            T::try_from(n).map_err(|_| format!("{n} is too large"))
        })
    }

    fn positive<T: TryFrom<u64>>(&self, key: &'static str, default: T) -> Result<T, ConfigError> {
        Ok(self.opt_positive(key)?.unwrap_or(default))
    }

    fn size(&self, key: &'static str, default: usize) -> Result<usize, ConfigError> {
        Ok(self.opt_parse(key, parse_size)?.unwrap_or(default))
    }

    /// Days: a TOML array of whole numbers, or comma-separated text; each 1
    /// to 3650, returned largest first without repeats.
    fn day_list(&self, key: &'static str, default: &[u32]) -> Result<Vec<u32>, ConfigError> {
        let texts: Vec<String> = match self.value(key) {
            None => return Ok(default.to_vec()),
            Some((toml::Value::Array(items), _)) => items
                .iter()
                .map(|v| match v {
                    toml::Value::Integer(n) => n.to_string(),
                    other => other.as_str().unwrap_or("?").to_owned(),
                })
                .collect(),
            Some((toml::Value::String(s), _)) => s.split(',').map(|s| s.trim().to_owned()).collect(),
            Some((v, _)) => return Err(self.invalid(key, &format!("expected an array, found {}", v.type_str()))),
        };
        let mut days = Vec::with_capacity(texts.len());
        for text in texts.iter().filter(|t| !t.is_empty()) {
            match text.parse::<u32>() {
                Ok(n @ 1..=3650) => days.push(n),
                _ => return Err(self.invalid(key, &format!("`{text}` is not a number of days from 1 to 3650"))),
            }
        }
        days.sort_unstable_by(|a, b| b.cmp(a));
        days.dedup();
        Ok(days)
    }

    /// A list: a TOML array of strings, or (from the environment) comma-separated text.
    fn list(&self, key: &'static str, default: &[&str]) -> Result<Vec<String>, ConfigError> {
        let items = match self.value(key) {
            None => return Ok(default.iter().map(|s| (*s).to_owned()).collect()),
            Some((toml::Value::Array(items), _)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| self.invalid(key, "expected an array of strings"))?,
            Some((toml::Value::String(s), _)) => s.split(',').map(str::to_owned).collect(),
            Some((v, _)) => return Err(self.invalid(key, &format!("expected an array, found {}", v.type_str()))),
        };
        Ok(items
            .into_iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect())
    }
}

/// One worker per CPU.
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// `s` as an absolute http:// or https:// URL: the URI, whether it is
/// https, and its host and port.
fn http_url(s: &str) -> Result<(Uri, bool, hyper::http::uri::Authority), String> {
    let uri: Uri = s.parse().map_err(|e| format!("`{s}` is not a URL: {e}"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(format!("`{s}` must start with http:// or https://")),
    };
    let authority = uri.authority().cloned().ok_or_else(|| format!("`{s}` has no host"))?;
    Ok((uri, https, authority))
}

fn parse_upstream(s: &str) -> Result<Upstream, String> {
    let (uri, https, authority) = http_url(s)?;
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "`{s}` must be an origin without a path (requests keep their own path, so serve the gateway at Confluence's context path)"
        ));
    }
    Ok(Upstream { https, authority })
}

/// `public_url`, parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicUrl {
    /// The URL without a trailing slash: what an upstream origin in a
    /// `Location` becomes.
    pub url: String,
    /// Its host and port, as a browser's `Origin` names this gateway.
    pub authority: String,
    pub https: bool,
}

impl std::str::FromStr for PublicUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (_, https, authority) = http_url(s)?;
        Ok(PublicUrl {
            url: s.trim_end_matches('/').to_owned(),
            authority: authority.as_str().to_owned(),
            https,
        })
    }
}

fn parse_database_url(s: &str) -> Result<String, String> {
    if s.contains(":memory:") {
        return Err("an in-memory SQLite store would lose every token at exit: give a file, sqlite://PATH".into());
    }
    if s.starts_with("sqlite:") || s.starts_with("postgres://") || s.starts_with("postgresql://") {
        Ok(s.to_owned())
    } else {
        Err(format!("`{s}` must start with sqlite:// or postgres://"))
    }
}

/// A database URL with the password of its user info (if any) replaced.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((user_info, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match user_info.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// A Redis URL (`redis://[:password@]host[:port][/db]` or
/// `redis+unix:///path`), checked without connecting.
fn parse_redis_url(s: &str) -> Result<String, String> {
    redis::Client::open(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("`{}` is not a Redis URL: {e}", redact_password(s)))
}

fn parse_notify_url(s: &str) -> Result<Uri, String> {
    let uri: Uri = s
        .parse()
        .map_err(|e| format!("`{}` is not a URL: {e}", redact_password(s)))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(host)) if !host.is_empty() => Ok(uri),
        _ => Err(format!("`{}` must be an http:// or https:// URL", redact_password(s))),
    }
}

fn parse_header_name(s: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(s.as_bytes()).map_err(|_| format!("`{s}` is not a valid header name"))
}

/// An IP network, or a single address as a /32 or /128.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{s}` is not an IP address or CIDR network"))
}

/// A list of client networks, as tokens store it: comma-separated addresses
/// and CIDRs (host bits dropped); empty for any.
pub fn parse_ip_list(text: &str) -> Result<Vec<IpNet>, String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| parse_net(s).map(|net| net.trunc()))
        .collect()
}

/// A byte size: a whole number of bytes, or a number with a unit (KiB, MiB, GiB, KB, MB, GB, B).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a size such as 1MiB"))?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => return Err(format!("unknown size unit `{other}` (use B, KiB, MiB or GiB)")),
    };
    number
        .checked_mul(factor)
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("`{s}` is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let table: toml::Table = toml::from_str(text).unwrap();
        let mut raw = RawConfig::default();
        for (k, v) in table {
            raw.set(k, v, Origin::File("test.toml".into()))?;
        }
        Config::from_sources(raw)
    }

    fn error_of(text: &str) -> String {
        from_toml(text).unwrap_err().to_string()
    }

    #[test]
    fn defaults_match_the_spec_table() {
        let c = Config::default();
        assert_eq!(c.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.upstream.origin(), "http://127.0.0.1:8090");
        assert_eq!(c.database_url, "sqlite://data/tokengate.db");
        assert_eq!(c.connect_timeout, Duration::from_secs(5));
        assert_eq!(c.upstream_timeout, Duration::from_secs(300));
        assert_eq!(c.upstream_max_idle, 256);
        assert_eq!(c.upstream_idle_timeout, Duration::from_secs(60));
        assert_eq!(c.token_auth, TokenAuth::Basic);
        assert_eq!(c.scope, Scope::Rest);
        assert_eq!(c.identity_header, "x-forwarded-user");
        assert_eq!(c.upstream_secret_header, "x-tokengate-secret");
        assert!(c.upstream_secret.is_none() && c.public_url.is_none() && c.tls.is_none());
        assert!(c.preserve_host && c.passthrough && c.allow_anonymous);
        assert_eq!(c.admin_users, vec!["admin"]);
        assert_eq!(c.max_json_body, 1 << 20);
        assert_eq!(c.max_days_until_expiry, None);
        assert_eq!(c.verify_cache_ttl, Duration::from_secs(600));
        assert_eq!(c.space_cache_ttl, Duration::from_secs(60));
        assert_eq!(
            c.argon2,
            Argon2Cost {
                memory_kib: 19456,
                iterations: 2,
                parallelism: 1
            }
        );
        assert_eq!(c.failed_auth_per_minute, 20);
        assert!(c.trusted_proxies.is_empty());
        assert_eq!(c.audit_retention_days, 90);
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.workers, default_workers());
        assert_eq!(c.forward_as, ForwardAs::Header);
        assert!(c.self_service);
        assert_eq!(c.max_tokens_per_user, 10);
        assert_eq!(c.seal_key_file, None);
        assert!(c.ui);
        assert_eq!(c.ui_session, Duration::from_secs(480 * 60));
        assert_eq!(c.ui_idle, Duration::from_secs(30 * 60));
    }

    #[test]
    fn workers_must_be_positive() {
        assert_eq!(from_toml("workers = 1").unwrap().workers, 1);
        assert!(
            error_of("workers = 0").contains("`workers`"),
            "{}",
            error_of("workers = 0")
        );
        assert!(error_of("workers = 'many'").contains("`workers`"));
    }

    #[test]
    fn the_webhook_keys_are_checked_and_never_printed() {
        let c = from_toml(
            "notify_url = 'https://hooks.slack.com/services/T0/B0/SECRETPATH'\nnotify_secret = 's3'\nexpiry_warning_days = [1, 30, 7, 7]",
        )
        .unwrap();
        assert_eq!(c.expiry_warning_days, [30, 7, 1], "largest first, no repeats");
        assert_eq!(c.notify_secret.as_deref(), Some("s3"));
        let printed = format!("{c:?}");
        assert!(
            !printed.contains("SECRETPATH") && !printed.contains("s3\""),
            "{printed}"
        );
        assert_eq!(Config::default().expiry_warning_days, [30, 7, 1]);
        assert_eq!(Config::default().notify_url, None);
        for bad in [
            "notify_url = 'ftp://x/y'",
            "notify_url = 'not a url'",
            "expiry_warning_days = [0]",
            "expiry_warning_days = [5000]",
            "expiry_warning_days = ['soon']",
            "expiry_warning_days = 7",
        ] {
            let key = bad.split(' ').next().unwrap();
            assert!(error_of(bad).contains(&format!("`{key}`")), "{bad}: {}", error_of(bad));
        }
    }

    #[test]
    fn the_example_file_documents_every_key_with_its_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tokengate.example.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut documented: Vec<&str> = text
            .lines()
            .filter_map(|l| l.trim_start_matches(['#', ' ']).split_once(" = "))
            .map(|(key, _)| key)
            .filter(|key| {
                key.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            })
            .collect();
        documented.sort_unstable();
        documented.dedup();
        let mut known = keys().to_vec();
        known.sort_unstable();
        assert_eq!(documented, known, "the example file documents every key, and only keys");
        let example = RawConfig::from_file(&path).and_then(Config::from_sources).unwrap();
        assert!(
            example == Config::default(),
            "the values the example file sets are the defaults"
        );
    }

    #[test]
    fn public_url_is_read_once_into_what_its_users_need() {
        let c = from_toml("public_url = 'https://Wiki.example.com:8443/'").unwrap();
        let url = c.public_url.unwrap();
        assert_eq!(url.url, "https://Wiki.example.com:8443");
        assert_eq!(url.authority, "Wiki.example.com:8443");
        assert!(url.https);
        let plain: PublicUrl = "http://gw.internal/confluence".parse().unwrap();
        assert_eq!(
            (plain.url.as_str(), plain.authority.as_str(), plain.https),
            ("http://gw.internal/confluence", "gw.internal", false)
        );
        assert!("ftp://gw".parse::<PublicUrl>().is_err());
        assert!("/relative".parse::<PublicUrl>().is_err());
    }

    #[test]
    fn every_key_is_read_and_named_once() {
        let all = keys();
        assert!(all.len() >= 44, "{all:?}");
        let mut unique = all.to_vec();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), all.len());
        for key in [
            "listen",
            "public_url",
            "expiry_warning_days",
            "tls_key",
            "trusted_proxies",
        ] {
            assert!(all.contains(&key), "{key}");
        }
    }

    #[test]
    fn a_file_that_is_not_toml_is_refused_with_its_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:8080\"\n# é\nupstream = http://x\n").unwrap();
        let error = RawConfig::from_file(&path).unwrap_err().to_string();
        assert!(error.contains("line 3, column 12"), "{error}");
        assert!(error.contains("bad.toml"), "{error}");
        assert_eq!(line_and_column("aé\nb", 4), (2, 1));
        assert_eq!(line_and_column("aé", 2), (1, 2), "inside a character: its start");
    }

    #[test]
    fn the_store_is_the_homes_wherever_a_command_runs() {
        let no_flags = Overrides::default();
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        let home = tempfile::tempdir().unwrap();
        let home_path = std::path::absolute(home.path()).unwrap();
        let expected = format!("sqlite://{}", home_path.join("data/tokengate.db").display());
        // TOKENGATE_HOME: the default store is there, and it is not a key.
        let config = load(None, env(&[(HOME_VAR, home.path().to_str().unwrap())]), &no_flags).unwrap();
        assert_eq!(config.database_url, expected);
        // ... and so is the default configuration file.
        std::fs::create_dir(home.path().join("config")).unwrap();
        let file = home.path().join("config/tokengate.toml");
        std::fs::write(&file, "database_url = 'sqlite://db/gate.db'\n").unwrap();
        let config = load(None, env(&[(HOME_VAR, home.path().to_str().unwrap())]), &no_flags).unwrap();
        assert_eq!(
            config.database_url,
            format!("sqlite://{}", home_path.join("db/gate.db").display())
        );
        // A file in a `config` directory: the home is its parent.
        let config = load(Some(&file), env(&[]), &no_flags).unwrap();
        assert_eq!(
            config.database_url,
            format!("sqlite://{}", home_path.join("db/gate.db").display())
        );
        // A file elsewhere: the store is beside it.
        let elsewhere = home.path().join("gate.toml");
        std::fs::write(&elsewhere, "listen = '127.0.0.1:9000'\n").unwrap();
        let config = load(Some(&elsewhere), env(&[]), &no_flags).unwrap();
        assert_eq!(config.database_url, expected);
        // Typed on the command line or in the environment: as given.
        let flags = Overrides {
            database: Some("sqlite://here.db".into()),
            ..Overrides::default()
        };
        assert_eq!(
            load(Some(&file), env(&[]), &flags).unwrap().database_url,
            "sqlite://here.db"
        );
        let typed = env(&[("TOKENGATE_DATABASE_URL", "sqlite://env.db")]);
        assert_eq!(
            load(Some(&file), typed, &no_flags).unwrap().database_url,
            "sqlite://env.db"
        );
        // A home that is not a directory, and an in-memory store, are refused.
        let error = load(None, env(&[(HOME_VAR, "/nonexistent/home")]), &no_flags).unwrap_err();
        assert!(error.to_string().contains("is not a directory"), "{error}");
        let memory = env(&[("TOKENGATE_DATABASE_URL", "sqlite://:memory:")]);
        assert!(
            load(None, memory, &no_flags)
                .unwrap_err()
                .to_string()
                .contains("in-memory")
        );
        // Absolute paths and PostgreSQL stay as they are.
        assert_eq!(within(&home_path, "sqlite:///var/gate.db"), "sqlite:///var/gate.db");
        assert_eq!(within(&home_path, "postgres://db/x"), "postgres://db/x");
    }

    #[test]
    fn unknown_keys_are_named() {
        assert_eq!(
            error_of("listen_addr = '0.0.0.0:80'"),
            "unknown configuration key `listen_addr` (from test.toml)"
        );
        let mut raw = RawConfig::default();
        let err = raw
            .apply_env([("TOKENGATE_UPSTREM".to_owned(), "x".to_owned())])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown configuration key `upstrem` (from environment variable TOKENGATE_UPSTREM)"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("listen = 'localhost'", "`listen`"),
            ("upstream = 'ftp://x'", "`upstream`"),
            ("upstream = 'http://x:8090/confluence'", "`upstream`"),
            ("database_url = 'mysql://x'", "`database_url`"),
            ("token_auth = 'digest'", "`token_auth`"),
            ("scope = 'all'", "`scope`"),
            ("identity_header = 'X User'", "`identity_header`"),
            ("preserve_host = 'maybe'", "`preserve_host`"),
            ("anonymous = 'sometimes'", "`anonymous`"),
            ("admin_users = 5", "`admin_users`"),
            ("max_json_body = '1 parsec'", "`max_json_body`"),
            ("verify_cache_ttl_s = 0", "`verify_cache_ttl_s`"),
            ("space_cache_ttl_s = 0", "`space_cache_ttl_s`"),
            ("connect_timeout_s = -1", "`connect_timeout_s`"),
            ("argon2_memory_kib = 1", "`argon2_memory_kib`"),
            ("trusted_proxies = ['10.0.0.0/33']", "`trusted_proxies`"),
            ("log_format = 'xml'", "`log_format`"),
            ("tls_cert = 'a.pem'", "`tls_key`"),
            ("public_url = 'gateway.example.com'", "`public_url`"),
            ("listen = [1]", "`listen`"),
            ("forward_as = 'cookie'", "`forward_as`"),
            ("self_service = 'sometimes'", "`self_service`"),
            ("max_tokens_per_user = 0", "`max_tokens_per_user`"),
            ("ui = 'maybe'", "`ui`"),
            ("ui_session_minutes = 0", "`ui_session_minutes`"),
            ("ui_idle_minutes = 'long'", "`ui_idle_minutes`"),
        ];
        for (text, key) in cases {
            let message = error_of(text);
            assert!(message.contains(key), "{text}: {message}");
        }
    }

    #[test]
    fn env_overrides_file_and_flags_override_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(
            &path,
            "listen = '127.0.0.1:1'\nupstream = 'http://file:1'\nscope = 'extender'\n",
        )
        .unwrap();
        let env = [
            ("TOKENGATE_UPSTREAM".to_owned(), "https://env:2".to_owned()),
            ("TOKENGATE_ADMIN_USERS".to_owned(), "alice, bob".to_owned()),
            ("TOKENGATE_MAX_JSON_BODY".to_owned(), "64KiB".to_owned()),
            ("TOKENGATE_PASSTHROUGH".to_owned(), "false".to_owned()),
            ("TOKENGATE_VERIFY_CACHE_TTL_S".to_owned(), "30".to_owned()),
            ("PATH".to_owned(), "/bin".to_owned()),
        ];
        let flags = Overrides {
            listen: Some("127.0.0.1:3".into()),
            ..Default::default()
        };
        let c = load(Some(&path), env, &flags).unwrap();
        assert_eq!(c.listen.port(), 3);
        assert_eq!(c.upstream.origin(), "https://env:2");
        assert_eq!(c.scope, Scope::Extender);
        assert_eq!(c.admin_users, vec!["alice", "bob"]);
        assert_eq!(c.max_json_body, 64 << 10);
        assert!(!c.passthrough);
        assert_eq!(c.verify_cache_ttl, Duration::from_secs(30));
    }

    #[test]
    fn env_errors_name_the_variable() {
        let err = load(
            None,
            [("TOKENGATE_CONNECT_TIMEOUT_S".to_owned(), "soon".to_owned())],
            &Overrides::default(),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid value for `connect_timeout_s` (from environment variable TOKENGATE_CONNECT_TIMEOUT_S): `soon` is not a whole number"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("2mb"), Ok(2_000_000));
        assert!(parse_size("0").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let c = from_toml("upstream_secret = 's3cr3t-value'").unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t"));
        let c = from_toml("database_url = 'postgres://gw:pa55:w@rd@db.internal/tokens'").unwrap();
        let debug = format!("{c:?}");
        assert!(!debug.contains("pa55") && !debug.contains("w@rd"), "{debug}");
        assert!(debug.contains("postgres://gw:***@db.internal/tokens"), "{debug}");
    }

    #[test]
    fn redaction_keeps_urls_without_a_password() {
        assert_eq!(
            redact_password("sqlite://data/tokengate.db"),
            "sqlite://data/tokengate.db"
        );
        assert_eq!(redact_password("postgres://gw@db/t"), "postgres://gw@db/t");
        assert_eq!(
            redact_password("postgres://gw:secret@db:5432/t?sslmode=require"),
            "postgres://gw:***@db:5432/t?sslmode=require"
        );
    }
}
