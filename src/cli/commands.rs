//! The one-shot commands: tokens (`token create|list|update|rotate|delete`),
//! the audit log (`audit`) and rules (`rules check|suggest`). Each opens
//! the store, does its one thing through the token service (which records
//! every change), closes the store and prints the outcome (as JSON with
//! `--json`, where the command has it).

use std::io::Write as _;

use super::args::{
    AuditArgs, CreateArgs, DeleteArgs, ListArgs, RotateArgs, RulesCheckArgs, RulesSuggestArgs, UpdateArgs,
};
use super::{Failure, open};
use crate::config::{self, ForwardAs, Overrides};
use crate::record::audit_json;
use crate::rules::{RequestHead, RuleSet, suggest};
use crate::secrets::Pat;
use crate::spaces;
use crate::store::{AuditKind, AuditQuery, TokenQuery};
use crate::target::canonical_text_target;
use crate::tokens::{Actor, NewToken, PatSource, RestrictionsChange, TokenAnswer, TokenError, token_json};

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
    let limit_to = args.limit_to.map(inline_or_file).transpose()?;
    let pat = args.upstream_token_file.as_deref().map(read_pat).transpose()?;
    let tokens = open(&args.store).await?;
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
    let tokens = open(&args.store).await?;
    let query = TokenQuery {
        user: args.user,
        max_results: u64::MAX,
        ..TokenQuery::default()
    };
    let page = tokens.list(&query).await.map_err(|e| describe(&e))?;
    tokens.store.close().await;
    let now = tokens.clock.now_ms();
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
    let tokens = open(&args.store).await?;
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
    let tokens = open(&args.store).await?;
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

pub(super) async fn delete(args: DeleteArgs) -> Result<(), Failure> {
    let tokens = open(&args.store).await?;
    let actor = Actor::cli();
    let deleted = match (&args.id, &args.user) {
        (Some(id), _) => tokens.delete(id, &actor).await.map(|_| 1),
        (None, Some(user)) => tokens.delete_user(user, &actor).await.map(|deleted| deleted.len()),
        (None, None) => unreachable!("clap requires an id or --user"),
    };
    tokens.store.close().await;
    let deleted = deleted.map_err(|e| describe(&e))?;
    println!("deleted {deleted} token{}", if deleted == 1 { "" } else { "s" });
    Ok(())
}

pub(super) async fn audit(args: AuditArgs) -> Result<(), Failure> {
    let tokens = open(&args.store).await?;
    let query = AuditQuery {
        token_id: args.token_id,
        user: args.user,
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
    let tokens = open(&args.store).await?;
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
