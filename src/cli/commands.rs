//! The one-shot commands: tokens (`token create|list|update|rotate|delete`),
//! the audit log (`audit`) and rules (`rules check|suggest`). Each opens
//! the store, does its one thing through the token service (which records
//! every change), closes the store and prints the outcome (as JSON with
//! `--json`, where the command has it).

use std::io::{IsTerminal as _, Write as _};

use super::args::{
    AuditArgs, CreateArgs, DeleteArgs, ListArgs, RotateArgs, RulesCheckArgs, RulesSuggestArgs, ShowArgs, UpdateArgs,
};
use super::{Failure, Store, open, open_naming};
use crate::clock::{DAY_MS, EpochMs};
use crate::config::{self, ForwardAs, Overrides};
use crate::record::audit_json;
use crate::rules::{RequestHead, RuleSet, suggest};
use crate::secrets::Pat;
use crate::spaces;
use crate::store::{AuditKind, AuditQuery, ListedToken, TokenQuery};
use crate::target::canonical_text_target;
use crate::tokens::{
    Actor, NewToken, PatSource, RestrictionsChange, TokenAnswer, TokenError, TokenManager, token_json,
};

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

pub(super) async fn create(args: CreateArgs) -> Result<(), Failure> {
    if args.user.is_none() && !args.unbound {
        return Err(Failure::Usage(
            "give --user USER, the Confluence user the token acts as, or --unbound for a token that acts as \
             whichever user the client names (Basic NAME:TOKEN)"
                .into(),
        ));
    }
    let limit_to = args.limit_to.map(inline_or_file).transpose()?;
    let pat = args.upstream_token_file.as_deref().map(read_pat).transpose()?;
    let tokens = open(&args.store, Store::Create).await?;
    if tokens.policy.forward_as == ForwardAs::Pat && pat.is_none() {
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
    let created = tokens.create(new, &Actor::cli()).await;
    tokens.store.close().await;
    let created = created.map_err(|e| describe(&e))?;
    if args.json {
        println!("{}", created.answer().to_json());
    } else {
        let record = &created.record;
        eprintln!("created token '{}' (id {})", record.label, record.id);
        println!("{}", created.value);
        eprintln!("store this value now: it is not shown again");
    }
    Ok(())
}

pub(super) async fn list(args: ListArgs) -> Result<(), Failure> {
    let (tokens, store) = open_naming(&args.store, Store::Existing).await?;
    let now = tokens.clock.now_ms();
    let query = TokenQuery {
        user: args.user,
        now,
        max_results: u64::MAX,
        ..TokenQuery::default()
    };
    let page = tokens.list(&query).await.map_err(|e| describe(&e))?;
    tokens.store.close().await;
    if page.total == 0 {
        // The trap of a store read from the wrong place: say which it was.
        let whose = query
            .user
            .as_deref()
            .map(|user| format!(" of {user}"))
            .unwrap_or_default();
        eprintln!("no tokens{whose} in {store}");
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let tokens: Vec<_> = page.items.iter().map(|t| token_json(&t.record, now)).collect();
        writeln!(out, "{}", serde_json::Value::Array(tokens))?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<22}  {:<24}  {:<20}  {:<10}  {:>8}",
        "ID", "LABEL", "USER", "EXPIRES", "USES"
    )?;
    for ListedToken { record: token, .. } in &page.items {
        let expires = match token.valid_until {
            None => "never".to_owned(),
            Some(until) if until <= now => "expired".to_owned(),
            Some(until) => format!("in {}d", days_left(until, now)),
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

pub(super) async fn update(args: UpdateArgs) -> Result<(), Failure> {
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
    let tokens = open(&args.store, Store::Existing).await?;
    let updated = tokens.update(&args.id, change, &Actor::cli()).await;
    tokens.store.close().await;
    let updated = updated.map_err(|e| describe(&e))?;
    if args.json {
        println!(
            "{}",
            TokenAnswer::changed(&updated.after, tokens.clock.now_ms()).to_json()
        );
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
pub(super) async fn rotate(args: RotateArgs) -> Result<(), Failure> {
    let tokens = open(&args.store, Store::Existing).await?;
    let rotated = tokens
        .rotate(&args.id, Some(args.grace_hours), None, &Actor::cli())
        .await;
    tokens.store.close().await;
    let rotated = rotated.map_err(|e| describe(&e))?;
    if args.json {
        println!("{}", rotated.answer().to_json());
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

/// Deletes one token, or every token of a user once confirmed: asked on a
/// terminal, `--yes` otherwise (SPEC §9).
pub(super) async fn delete(args: DeleteArgs) -> Result<(), Failure> {
    let asking = args.id.is_none() && !args.yes;
    let terminal = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if asking && !terminal {
        return Err(Failure::Usage(
            "token delete --user deletes every token of that user: add --yes to confirm (there is no terminal to ask on)"
                .into(),
        ));
    }
    let tokens = open(&args.store, Store::Existing).await?;
    let deleted = delete_confirmed(&tokens, &args, asking).await;
    tokens.store.close().await;
    let deleted = deleted?;
    if args.json {
        println!("{}", serde_json::json!({"status": "ok", "deleted": deleted}));
    } else {
        println!("deleted {deleted} token{}", if deleted == 1 { "" } else { "s" });
    }
    Ok(())
}

async fn delete_confirmed(tokens: &TokenManager, args: &DeleteArgs, asking: bool) -> Result<usize, Failure> {
    let actor = Actor::cli();
    let user = match (&args.id, &args.user) {
        (Some(id), _) => return tokens.delete(id, &actor).await.map(|_| 1).map_err(|e| describe(&e)),
        (None, Some(user)) => user,
        (None, None) => unreachable!("clap requires an id or --user"),
    };
    if asking {
        let query = TokenQuery {
            user: Some(user.clone()),
            max_results: 0,
            ..TokenQuery::default()
        };
        let held = tokens.list(&query).await.map_err(|e| describe(&e))?.total;
        if held == 0 {
            return Ok(0);
        }
        let question = match held {
            1 => format!("delete the one token of {user}? It stops working at once. [y/N] "),
            _ => format!("delete all {held} tokens of {user}? They stop working at once. [y/N] "),
        };
        let confirmed = tokio::task::spawn_blocking(move || confirm(&question, &mut std::io::stdin().lock()))
            .await
            .map_err(|e| Failure::Failed(e.to_string()))??;
        if !confirmed {
            return Err(Failure::Failed("not confirmed: nothing deleted".into()));
        }
    }
    let deleted = tokens.delete_user(user, &actor).await.map_err(|e| describe(&e))?;
    Ok(deleted.len())
}

/// Asks `question` on stderr; `y` or `yes` (any case) confirms.
fn confirm(question: &str, answer: &mut impl std::io::BufRead) -> Result<bool, Failure> {
    eprint!("{question}");
    let mut line = String::new();
    answer.read_line(&mut line)?;
    Ok(matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}

/// One token, as `get` lists it (`--json`) or as lines for a person.
pub(super) async fn show(args: ShowArgs) -> Result<(), Failure> {
    let tokens = open(&args.store, Store::Existing).await?;
    let token = tokens.get(&args.id).await;
    tokens.store.close().await;
    let token = token.map_err(|e| describe(&e))?;
    let now = tokens.clock.now_ms();
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", token_json(&token, now))?;
        return Ok(());
    }
    let or = |value: Option<String>, otherwise: &str| value.unwrap_or_else(|| otherwise.to_owned());
    let rules: Vec<&str> = token.limit_to.lines().filter(|l| !l.trim().is_empty()).collect();
    let lines = [
        ("id", token.id.clone()),
        ("label", token.label.clone()),
        (
            "user",
            or(token.user.clone(), "(unbound: acts as whichever user the client names)"),
        ),
        (
            "created",
            format!("{} by {}", format_time(token.created_at), token.author),
        ),
        ("expires", expiry(token.valid_until, now)),
        (
            "rules",
            if rules.is_empty() {
                "none: everything in scope".to_owned()
            } else {
                // Rules may hold any character: none may drive the terminal.
                rules
                    .iter()
                    .map(|rule| printable(rule))
                    .collect::<Vec<_>>()
                    .join("\n             ")
            },
        ),
        (
            "ip",
            Some(token.ip.clone())
                .filter(|ip| !ip.is_empty())
                .unwrap_or_else(|| "any".into()),
        ),
        ("rate limit", or(token.rate_limit.clone(), "none")),
        (
            "mode",
            if token.enforce { "enforced" } else { "report-only" }.to_owned(),
        ),
        (
            "spaces",
            or(
                token.spaces.as_deref().map(|keys| spaces::entries(keys).join(", ")),
                "any",
            ),
        ),
        (
            "forwarded",
            match (&token.sealed_pat, &token.upstream_token_id) {
                (None, _) => "with the identity header".to_owned(),
                (Some(_), Some(id)) => format!("with the user's personal access token (Confluence id {id})"),
                (Some(_), None) => "with the user's personal access token".to_owned(),
            },
        ),
        (
            "used",
            match (token.last_used_at, &token.last_ip) {
                (None, _) => "never".to_owned(),
                (Some(at), ip) => format!(
                    "{} times, last {} from {}",
                    token.counter,
                    format_time(at),
                    ip.as_deref().unwrap_or("-")
                ),
            },
        ),
    ];
    for (name, value) in lines {
        writeln!(out, "{name:<11}  {value}")?;
    }
    if let Some(until) = token.grace_until.filter(|until| *until > now) {
        writeln!(
            out,
            "{:<11}  the replaced secret works until {}",
            "rotated",
            format_time(until)
        )?;
    }
    Ok(())
}

/// `text` with its control characters written as `\u{..}` escapes, so
/// that what a user stored (rules, paths) cannot drive the terminal.
fn printable(text: &str) -> String {
    if !text.chars().any(char::is_control) {
        return text.to_owned();
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// When a token expires, as a person reads it.
fn expiry(valid_until: Option<EpochMs>, now: EpochMs) -> String {
    match valid_until {
        None => "never".to_owned(),
        Some(until) if until <= now => format!("expired {}", format_time(until)),
        Some(until) => format!("{} (in {}d)", format_time(until), days_left(until, now)),
    }
}

/// Whole days until `until`, a part day counted as one.
fn days_left(until: EpochMs, now: EpochMs) -> i64 {
    (until - now + DAY_MS - 1) / DAY_MS
}

pub(super) async fn audit(args: AuditArgs) -> Result<(), Failure> {
    let tokens = open(&args.store, Store::Existing).await?;
    let query = AuditQuery {
        token_id: args.token_id,
        user: args.user,
        outcome: None,
        start_at: 0,
        max_results: args.limit,
    };
    let page = tokens.store.list_audit(&query).await;
    tokens.store.close().await;
    let page = page?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let entries: Vec<_> = page.items.iter().map(audit_json).collect();
        writeln!(out, "{}", serde_json::Value::Array(entries))?;
        return Ok(());
    }
    if page.items.is_empty() {
        eprintln!("no audit entries match");
        return Ok(());
    }
    writeln!(
        out,
        "{:<20}  {:<22}  {:<20}  {:<20}  WHAT",
        "TIME", "TOKEN", "LABEL", "USER"
    )?;
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
            "{:<20}  {:<22}  {:<20}  {:<20}  {}",
            format_time(e.at),
            e.token_id.as_deref().unwrap_or("-"),
            truncate(e.token_label.as_deref().unwrap_or("-"), 20),
            truncate(e.user.as_deref().unwrap_or("-"), 20),
            printable(&what),
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
pub(super) fn rules_check(args: RulesCheckArgs) -> Result<(), Failure> {
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
    if args.json {
        writeln!(out, "{}", run.to_json())?;
        return if run.allowed { Ok(()) } else { Err(Failure::Denied) };
    }
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
pub(super) async fn rules_suggest(args: RulesSuggestArgs) -> Result<(), Failure> {
    let tokens = open(&args.store, Store::Existing).await?;
    let suggested = tokens.suggest(&args.token_id, args.days).await;
    tokens.store.close().await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_yes_confirms() {
        for (typed, confirmed) in [
            ("y\n", true),
            ("YES\n", true),
            (" yes \n", true),
            ("\n", false),
            ("n\n", false),
            ("yess\n", false),
            ("", false),
        ] {
            assert_eq!(confirm("? ", &mut typed.as_bytes()).unwrap(), confirmed, "{typed:?}");
        }
    }
}
