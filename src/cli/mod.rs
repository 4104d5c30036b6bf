//! The command line (SPEC §9): `serve`, `token create|list|update|delete`,
//! `rules check|suggest`, `audit` and `migrate`. Exit codes: 0 success, 1 failure, 2 usage or configuration error.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::app::{App, StartError};
use crate::config::{self, Config, ForwardAs, LogFormat, Overrides};
use crate::record::audit_json;
use crate::rules::{RequestHead, RuleSet, suggest};
use crate::secrets::Pat;
use crate::spaces;
use crate::store::{AuditKind, AuditQuery, TokenQuery};
use crate::target::canonical_text_target;
use crate::tokens::Actor;
use crate::tokens::{DEFAULT_SUGGEST_DAYS, NewToken, PatSource, RestrictionsChange, TokenError, token_json};

#[derive(Debug, Parser)]
#[command(
    name = "tokengate",
    version,
    about = "Authenticating API-token gateway for Confluence"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway.
    Serve(ServeArgs),
    /// Create, list, update and delete tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Dry-run restriction rules against a request, or suggest rules from a token's calls.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Show the audit log, newest first.
    Audit(AuditArgs),
    /// Apply database migrations and exit.
    Migrate(StoreArgs),
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only entries of this token id.
    #[arg(long = "token", value_name = "ID")]
    pub token_id: Option<String>,
    /// Only entries of this user (who a request acted as, or who acted).
    #[arg(long)]
    pub user: Option<String>,
    /// At most this many entries.
    #[arg(long, default_value_t = 50)]
    pub limit: u64,
    /// Print a JSON array of audit entries.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Print ALLOW with the matching line, or DENY with why each line fails (exit 0 / 1).
    Check(RulesCheckArgs),
    /// Propose rules from a token's audited calls: the rules on standard
    /// output (ready for --limit-to @FILE), the calls each allows on standard error.
    Suggest(RulesSuggestArgs),
}

#[derive(Debug, Args)]
pub struct RulesSuggestArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The token id.
    #[arg(long = "token", value_name = "ID")]
    pub token_id: String,
    /// Read the calls of the last N days.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_SUGGEST_DAYS)]
    pub days: u32,
    /// Print the API's answer as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RulesCheckArgs {
    /// The rules, or @FILE to read them from a file.
    #[arg(long, value_name = "RULES|@FILE")]
    pub rules: String,
    /// The request method.
    #[arg(long, value_name = "M")]
    pub method: String,
    /// The request path and query, e.g. /rest/api/content?spaceKey=DOCS.
    #[arg(long, value_name = "PATH?QUERY")]
    pub url: String,
    /// A file holding the request body (for JsonData rules).
    #[arg(long, value_name = "FILE")]
    pub body: Option<PathBuf>,
    /// The body's Content-Type (default application/json when --body is given).
    #[arg(long, value_name = "T")]
    pub content_type: Option<String>,
    /// The spaces the token is confined to (DOCS,KB:read): rules and spaces must both allow.
    #[arg(long, value_name = "KEYS")]
    pub spaces: Option<String>,
    /// Configuration file whose `scope` applies (default: config/tokengate.toml when it exists).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// Where the configuration and store are; every command that touches the store takes these.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Configuration file (default: config/tokengate.toml when it exists).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Token store URL (overrides database_url).
    #[arg(long, value_name = "URL")]
    pub database: Option<String>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Address to serve on (overrides listen).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Confluence base URL (overrides upstream).
    #[arg(long, value_name = "URL")]
    pub upstream: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print its value (shown this once).
    Create(CreateArgs),
    /// List tokens (never their values).
    List(ListArgs),
    /// Change a token's label, rules, IP list, rate limit or mode (not its
    /// user, value or expiry).
    Update(UpdateArgs),
    /// Give a token a new secret (printed this once); the old one keeps
    /// working for the grace period.
    Rotate(RotateArgs),
    /// Delete one token by id, or all tokens of a user.
    Delete(DeleteArgs),
}

#[derive(Debug, Args)]
pub struct UpdateArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The token id.
    pub id: String,
    /// A new label.
    #[arg(long)]
    pub label: Option<String>,
    /// New restriction rules, or @FILE to read them from a file ("" removes them all).
    #[arg(long, value_name = "RULES")]
    pub limit_to: Option<String>,
    /// New comma-separated client IPs and CIDRs ("" allows every address).
    #[arg(long, value_name = "LIST")]
    pub ip: Option<String>,
    /// A new rate limit (N/s, N/min, N/hour or N/day), or none.
    #[arg(long, value_name = "N/UNIT|none")]
    pub rate_limit: Option<String>,
    /// Make the rules refuse what they do not allow.
    #[arg(long, conflicts_with = "report_only")]
    pub enforce: bool,
    /// Forward what only the rules and spaces would refuse, and audit it as `report`.
    #[arg(long)]
    pub report_only: bool,
    /// New space keys the token is confined to (DOCS,PM), or none.
    #[arg(long, value_name = "KEYS|none")]
    pub spaces: Option<String>,
    /// Print the updated token as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The token id.
    pub id: String,
    /// Hours the old secret keeps working (0 to 168; 0: it stops at once).
    #[arg(long, value_name = "H", default_value_t = crate::tokens::DEFAULT_GRACE_HOURS)]
    pub grace_hours: i64,
    /// Print the API's rotate response as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// What the token is for (1 to 255 characters).
    #[arg(long)]
    pub label: String,
    /// Bind the token to this user (unbound when absent: any Basic user name may use it).
    #[arg(long)]
    pub user: Option<String>,
    /// Days until the token expires (0 or absent: no expiry, or max_days_until_expiry).
    #[arg(long, value_name = "N")]
    pub days: Option<i64>,
    /// Restriction rules, or @FILE to read them from a file.
    #[arg(long, value_name = "RULES")]
    pub limit_to: Option<String>,
    /// Comma-separated client IPs and CIDRs allowed to use the token.
    #[arg(long, value_name = "LIST")]
    pub ip: Option<String>,
    /// A custom value instead of a generated one (must begin with tgw_).
    #[arg(long, value_name = "VALUE")]
    pub token: Option<String>,
    /// With forward_as = "pat": a file holding the user's Confluence personal
    /// access token, or - to read it from standard input (never an argument).
    #[arg(long, value_name = "FILE|-")]
    pub upstream_token_file: Option<PathBuf>,
    /// At most this many calls: N/s, N/min, N/hour or N/day.
    #[arg(long, value_name = "N/UNIT")]
    pub rate_limit: Option<String>,
    /// Forward what only the rules and spaces would refuse, and audit it as
    /// `report` (roll rules out without breaking a script; `token update
    /// --enforce` later).
    #[arg(long)]
    pub report_only: bool,
    /// Confine the token to these spaces (comma-separated keys: DOCS,PM),
    /// whatever endpoint it calls.
    #[arg(long, value_name = "KEYS")]
    pub spaces: Option<String>,
    /// Print the API's create response as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Only tokens bound to this user.
    #[arg(long)]
    pub user: Option<String>,
    /// Print a JSON array of token objects.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
#[command(group = clap::ArgGroup::new("which").required(true).args(["id", "user"]))]
pub struct DeleteArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The token id.
    pub id: Option<String>,
    /// Delete every token bound to this user.
    #[arg(long)]
    pub user: Option<String>,
}

/// A command's failure, and the exit code it maps to.
#[derive(Debug)]
enum Failure {
    /// Exit 2.
    Usage(String),
    /// Exit 1.
    Failed(String),
    /// Exit 1, the answer already printed (a dry run that denies).
    Denied,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::Failed(e.to_string())
    }
}

/// Runs a parsed command line to completion.
pub fn main(cli: Cli) -> ExitCode {
    let outcome = match cli.command {
        // The configuration first: it says how many threads to serve with.
        Command::Serve(args) => serve_config(&args).and_then(|config| {
            let runtime = runtime(config.workers)?;
            runtime.block_on(serve(config))
        }),
        command => runtime(1).and_then(|runtime| runtime.block_on(run(command))),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(message)) => {
            eprintln!("tokengate: {message}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(message)) => {
            eprintln!("tokengate: {message}");
            ExitCode::FAILURE
        }
        Err(Failure::Denied) => ExitCode::FAILURE,
    }
}

/// The runtime: with one worker, tokio's current-thread scheduler, which
/// runs a connection and its upstream request with no hand-over between
/// threads (measured in benches/load.sh); with more, the work-stealing one.
fn runtime(workers: usize) -> Result<tokio::runtime::Runtime, Failure> {
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    builder
        .enable_all()
        .build()
        .map_err(|e| Failure::Failed(format!("cannot start the runtime: {e}")))
}

async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Serve(_) => unreachable!("serve builds its own runtime"),
        Command::Token(TokenCommand::Create(args)) => create(args).await,
        Command::Token(TokenCommand::List(args)) => list(args).await,
        Command::Token(TokenCommand::Update(args)) => update(args).await,
        Command::Token(TokenCommand::Rotate(args)) => rotate(args).await,
        Command::Token(TokenCommand::Delete(args)) => delete(args).await,
        Command::Rules(RulesCommand::Check(args)) => rules_check(args),
        Command::Rules(RulesCommand::Suggest(args)) => rules_suggest(args).await,
        Command::Audit(args) => audit(args).await,
        Command::Migrate(args) => {
            let app = open(&args, Overrides::default()).await?;
            app.store.close().await;
            println!("migrations applied");
            Ok(())
        }
    }
}

fn load_config(args: &StoreArgs, mut overrides: Overrides) -> Result<Config, Failure> {
    overrides.database = args.database.clone();
    let config = config::load(args.config.as_deref(), std::env::vars(), &overrides)
        .map_err(|e| Failure::Usage(e.to_string()))?;
    init_tracing(config.log_format);
    Ok(config)
}

async fn open(args: &StoreArgs, overrides: Overrides) -> Result<App, Failure> {
    let config = load_config(args, overrides)?;
    Ok(App::open(config).await?)
}

/// Logs go to stderr; the level comes from `RUST_LOG` (default `info`).
fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: journald and container logs want plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

fn serve_config(args: &ServeArgs) -> Result<Config, Failure> {
    let overrides = Overrides {
        listen: args.listen.clone(),
        upstream: args.upstream.clone(),
        database: None,
    };
    load_config(&args.store, overrides)
}

async fn serve(config: Config) -> Result<(), Failure> {
    let listen = config.listen;
    let app = App::open_for_serving(config).await?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Listen { addr: listen, source })?;
    crate::server::run(listener, app, shutdown_signal()).await?;
    Ok(())
}

/// Completes on SIGINT or SIGTERM. The handlers are installed at once,
/// before the gateway says it is serving: a signal from then on is a
/// graceful shutdown, never the default exit that loses what is pending.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let interrupt = signal(SignalKind::interrupt());
        let terminate = signal(SignalKind::terminate());
        async move {
            match (interrupt, terminate) {
                (Ok(mut interrupt), Ok(mut terminate)) => {
                    tokio::select! {
                        _ = interrupt.recv() => {}
                        _ = terminate.recv() => {}
                    }
                }
                _ => {
                    tracing::warn!("cannot listen for SIGINT and SIGTERM; stop the gateway with Ctrl-C");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    async {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A value given inline, or `@FILE` to read it from a file.
fn inline_or_file(value: String) -> Result<String, Failure> {
    match value.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|e| Failure::Usage(format!("cannot read {path}: {e}"))),
        None => Ok(value),
    }
}

/// A personal access token from a file, or from standard input for `-`.
fn read_pat(path: &std::path::Path) -> Result<Pat, Failure> {
    let text = if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(|e| {
            Failure::Usage(format!(
                "cannot read the personal access token from standard input: {e}"
            ))
        })?;
        text
    } else {
        std::fs::read_to_string(path).map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?
    };
    let pat = Pat::new(text.trim().to_owned());
    if pat.as_str().is_empty() {
        return Err(Failure::Usage(
            "--upstream-token-file: the personal access token is empty".into(),
        ));
    }
    Ok(pat)
}

async fn create(args: CreateArgs) -> Result<(), Failure> {
    let limit_to = args.limit_to.map(inline_or_file).transpose()?;
    let pat = args.upstream_token_file.as_deref().map(read_pat).transpose()?;
    let app = open(&args.store, Overrides::default()).await?;
    if app.config.forward_as == ForwardAs::Pat && pat.is_none() {
        let user = args.user.as_deref().unwrap_or("the user");
        return Err(Failure::Usage(format!(
            "with forward_as = \"pat\" a token needs its user's Confluence personal access token, and the command \
             line cannot have Confluence create one: pass one of {user}'s with --upstream-token-file FILE (or - for \
             standard input), or let {user} create the token with their password through the management API"
        )));
    }
    let new = NewToken {
        label: args.label,
        user: args.user,
        days_until_expiry: args.days,
        limit_to,
        ip: args.ip,
        token: args.token,
        pat: pat.map(PatSource::Supplied),
        rate_limit: args.rate_limit,
        enforce: Some(!args.report_only),
        spaces: args.spaces,
    };
    let created = app.tokens.create(new, &Actor::cli()).await;
    app.store.close().await;
    let created = created.map_err(|e| describe(&e))?;
    if args.json {
        println!("{}", created.to_json());
    } else {
        let record = &created.record;
        eprintln!("created token '{}' (id {})", record.label, record.id);
        println!("{}", created.value);
        eprintln!("store this value now: it is not shown again");
    }
    Ok(())
}

async fn list(args: ListArgs) -> Result<(), Failure> {
    let app = open(&args.store, Overrides::default()).await?;
    let query = TokenQuery {
        user: args.user,
        max_results: u64::MAX,
        ..TokenQuery::default()
    };
    let page = app.tokens.list(&query).await.map_err(|e| describe(&e))?;
    app.store.close().await;
    let now = app.clock.now_ms();
    let mut out = std::io::stdout().lock();
    if args.json {
        let tokens: Vec<_> = page.items.iter().map(|t| token_json(t, now)).collect();
        writeln!(out, "{}", serde_json::Value::Array(tokens))?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<22}  {:<24}  {:<20}  {:<10}  {:>8}",
        "ID", "LABEL", "USER", "EXPIRES", "USES"
    )?;
    for token in &page.items {
        let expires = match token.valid_until {
            None => "never".to_owned(),
            Some(until) if until <= now => "expired".to_owned(),
            Some(until) => format!(
                "in {}d",
                (until - now + crate::clock::DAY_MS - 1) / crate::clock::DAY_MS
            ),
        };
        writeln!(
            out,
            "{:<22}  {:<24}  {:<20}  {:<10}  {:>8}",
            token.id,
            truncate(&token.label, 24),
            truncate(token.user.as_deref().unwrap_or("(unbound)"), 20),
            expires,
            token.counter
        )?;
    }
    Ok(())
}

fn truncate(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(width - 1).collect();
    short.push('…');
    short
}

async fn update(args: UpdateArgs) -> Result<(), Failure> {
    let change = RestrictionsChange {
        label: args.label,
        limit_to: args.limit_to.map(inline_or_file).transpose()?,
        ip: args.ip,
        rate_limit: args
            .rate_limit
            .map(|limit| Some(limit).filter(|l| !l.trim().eq_ignore_ascii_case("none"))),
        enforce: match (args.enforce, args.report_only) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        },
        spaces: args
            .spaces
            .map(|keys| Some(keys).filter(|k| !k.trim().eq_ignore_ascii_case("none"))),
    };
    if change.is_empty() {
        return Err(Failure::Usage(
            "nothing to change: give --label, --limit-to, --ip, --rate-limit, --enforce, --report-only or --spaces"
                .into(),
        ));
    }
    let app = open(&args.store, Overrides::default()).await?;
    let updated = app.tokens.update(&args.id, change, &Actor::cli()).await;
    app.store.close().await;
    let updated = updated.map_err(|e| describe(&e))?;
    if args.json {
        println!("{}", token_json(&updated.after, app.clock.now_ms()));
    } else {
        let after = &updated.after;
        println!(
            "updated token '{}' (id {}): {}",
            after.label,
            after.id,
            updated.changes()
        );
    }
    Ok(())
}

/// A new secret from the command line, which has none to re-seal a PAT
/// with: with `forward_as = "pat"` tokens rotate themselves (SPEC §18).
async fn rotate(args: RotateArgs) -> Result<(), Failure> {
    let app = open(&args.store, Overrides::default()).await?;
    let rotated = app
        .tokens
        .rotate(&args.id, Some(args.grace_hours), None, &Actor::cli())
        .await;
    app.store.close().await;
    let rotated = rotated.map_err(|e| describe(&e))?;
    if args.json {
        let mut answer = rotated.to_json();
        answer["graceUntil"] = rotated.record.grace_until.into();
        println!("{answer}");
    } else {
        let record = &rotated.record;
        eprintln!("rotated token '{}' (id {})", record.label, record.id);
        println!("{}", rotated.value);
        match record.grace_until {
            Some(_) => eprintln!(
                "store this value now: it is not shown again; the old one works for {} more hours",
                args.grace_hours
            ),
            None => eprintln!("store this value now: it is not shown again; the old one no longer works"),
        }
    }
    Ok(())
}

async fn delete(args: DeleteArgs) -> Result<(), Failure> {
    let app = open(&args.store, Overrides::default()).await?;
    let actor = Actor::cli();
    let deleted = match (&args.id, &args.user) {
        (Some(id), _) => app.tokens.delete(id, &actor).await.map(|_| 1),
        (None, Some(user)) => app.tokens.delete_user(user, &actor).await.map(|deleted| deleted.len()),
        (None, None) => unreachable!("clap requires an id or --user"),
    };
    app.store.close().await;
    let deleted = deleted.map_err(|e| describe(&e))?;
    println!("deleted {deleted} token{}", if deleted == 1 { "" } else { "s" });
    Ok(())
}

async fn audit(args: AuditArgs) -> Result<(), Failure> {
    let app = open(&args.store, Overrides::default()).await?;
    let query = AuditQuery {
        token_id: args.token_id,
        user: args.user,
        start_at: 0,
        max_results: args.limit,
    };
    let page = app.store.list_audit(&query).await;
    app.store.close().await;
    let page = page?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let entries: Vec<_> = page.items.iter().map(audit_json).collect();
        writeln!(out, "{}", serde_json::Value::Array(entries))?;
        return Ok(());
    }
    for e in &page.items {
        let what = match e.kind {
            AuditKind::Request => format!(
                "{} {} {} -> {} {}",
                e.method.as_deref().unwrap_or("-"),
                e.path.as_deref().unwrap_or("-"),
                e.client_ip.as_deref().unwrap_or("-"),
                e.status.map_or("-".to_owned(), |s| s.to_string()),
                e.reason.as_deref().unwrap_or(&e.decision),
            ),
            AuditKind::Management => format!("{} {}", e.decision, e.detail.as_deref().unwrap_or("")),
        };
        writeln!(
            out,
            "{}  {:<22}  {:<20}  {what}",
            format_time(e.at),
            e.token_id.as_deref().unwrap_or("-"),
            e.user.as_deref().unwrap_or("-"),
        )?;
    }
    Ok(())
}

/// An epoch-millisecond time as RFC 3339 (UTC, to the second).
fn format_time(at: crate::clock::EpochMs) -> String {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(at).unwrap_or(0));
    humantime::format_rfc3339_seconds(at).to_string()
}

/// The admin's dry run: the same canonical path, rules and JSON reading as the gateway.
fn rules_check(args: RulesCheckArgs) -> Result<(), Failure> {
    let text = inline_or_file(args.rules)?;
    let rules = RuleSet::parse(&text).map_err(|e| Failure::Usage(format!("invalid rules: {e}")))?;
    let spaces = spaces::SpaceList::parse(args.spaces.as_deref().unwrap_or_default())
        .map_err(|e| Failure::Usage(format!("--spaces: {e}")))?;
    let scope = config::load(args.config.as_deref(), std::env::vars(), &Overrides::default())
        .map_err(|e| Failure::Usage(e.to_string()))?
        .scope;
    let (path, query) = canonical_text_target(&args.url).map_err(|e| Failure::Usage(format!("--url: {e}")))?;
    let method = args.method.to_ascii_uppercase();
    let body = match &args.body {
        None => None,
        Some(file) => {
            Some(std::fs::read(file).map_err(|e| Failure::Usage(format!("cannot read {}: {e}", file.display())))?)
        }
    };
    let head = RequestHead {
        method: &method,
        path: &path,
        query,
    };
    let body = body.as_deref().map(|bytes| (bytes, args.content_type.as_deref()));
    let mut run = rules.dry_run(&head, body);
    let rules_allow = run.allowed;
    run.apply_scope(scope, &head);
    let in_scope = run.allowed || !rules_allow;
    if let (Some(spaces), true) = (&spaces, run.allowed) {
        spaces::dry_run(spaces, &head, body, &mut run);
    }
    let mut out = std::io::stdout().lock();
    if run.allowed {
        writeln!(out, "ALLOW {method} {path}: {}", run.explanation.join("; "))?;
        return Ok(());
    }
    let why = match (rules_allow, in_scope) {
        (false, _) => "no rule matches",
        (true, false) => "the gateway refuses its path (scope or path parameters)",
        (true, true) => "the spaces refuse it",
    };
    writeln!(out, "DENY {method} {path}: {why}")?;
    for why in &run.explanation {
        writeln!(out, "  {why}")?;
    }
    Err(Failure::Denied)
}

/// Suggested rules (SPEC §16): the rules alone on standard output, so that
/// `> rules.txt` makes a file for `--limit-to @rules.txt`; what each allows,
/// and the caveat, on standard error.
async fn rules_suggest(args: RulesSuggestArgs) -> Result<(), Failure> {
    let app = open(&args.store, Overrides::default()).await?;
    let suggested = app.tokens.suggest(&args.token_id, args.days).await;
    app.store.close().await;
    let suggested = suggested.map_err(|e| describe(&e))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", suggested.to_json())?;
        return Ok(());
    }
    let suggestion = &suggested.suggestion;
    eprintln!(
        "{} calls of token {} in the last {} days; {}",
        suggestion.observed,
        suggested.token_id,
        suggested.days,
        suggest::NOTE
    );
    for rule in &suggestion.rules {
        eprintln!("{:>8} calls  {}", rule.calls, rule.rule);
        writeln!(out, "{}", rule.rule)?;
    }
    Ok(())
}

/// A token error as a CLI message; invalid input is a usage error.
fn describe(error: &TokenError) -> Failure {
    match error {
        TokenError::Invalid { field, message, .. } => Failure::Usage(format!("{field}: {message}")),
        other => Failure::Failed(other.to_string()),
    }
}
