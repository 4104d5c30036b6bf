//! The command line's arguments (SPEC §9), as clap reads them: what each
//! command takes, with its help text. The commands themselves are in
//! [`super::commands`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::tokens::{DEFAULT_GRACE_HOURS, DEFAULT_SUGGEST_DAYS};

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
    Migrate(MigrateArgs),
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
    /// Print the answer of the API's `POST /check` as JSON (still exit 1 when denied).
    #[arg(long)]
    pub json: bool,
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
    /// Show one token: its restrictions, expiry and use (never its value).
    Show(ShowArgs),
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
    #[arg(long, value_name = "H", default_value_t = DEFAULT_GRACE_HOURS)]
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
    /// The Confluence user the token acts as (or --unbound).
    #[arg(long, conflicts_with = "unbound")]
    pub user: Option<String>,
    /// Make a token bound to no user: it acts as whichever user the
    /// client names (Basic NAME:TOKEN). Required without --user.
    #[arg(long)]
    pub unbound: bool,
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
    /// Delete every token bound to this user (asks first; --yes where no
    /// terminal can ask).
    #[arg(long)]
    pub user: Option<String>,
    /// Delete every token of --user without asking.
    #[arg(long, requires = "user", conflicts_with = "id")]
    pub yes: bool,
    /// Print the answer as JSON ({"status":"ok","deleted":N}).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// The token id.
    pub id: String,
    /// Print the token object of the API's `get`.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Print {"status":"ok"} once the migrations are applied.
    #[arg(long)]
    pub json: bool,
}
