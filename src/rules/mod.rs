//! Restriction rules (`limitTo`, SPEC 3): which requests a token may make.
//!
//! A token's rule text is parsed and compiled once, when the token is created
//! or loaded, into a [`RuleSet`]; a text that does not parse is refused with
//! the line and column of the mistake ([`RuleError`]). Per request:
//!
//! 1. [`RuleSet::check`] sees the method, canonical path and raw query. It
//!    answers [`Verdict::Permit`] or [`Verdict::Denied`], or
//!    [`Verdict::NeedsJsonBody`] when only rules with `JsonData` constraints
//!    could still allow the request.
//! 2. Only then does the caller buffer the body, read it with
//!    [`JsonBody::parse`] (a duplicate key is an error, 400
//!    `ambiguous_json`) and ask [`RuleSet::check_with_body`].
//!
//! [`RuleSet::explain`] evaluates the same rules for the `tokengate rules
//! check` dry run and says, line by line, why each one does not apply.
//!
//! Inside: `parse` turns text into typed rules, `eval` compiles and evaluates
//! them, `json` reads bodies and `JsonData` paths.

mod eval;
mod json;
mod parse;
pub mod suggest;

pub use json::{JsonBody, is_json_media_type};

use eval::Matcher;

/// The compiled restriction rules of one token. Built once when the token is
/// created or loaded; cheap to evaluate. Clones share the compiled regexes,
/// so tokens with the same rule text can share one compilation.
// Deliberately no `Default`: a default that permits everything is too easy
// to reach for by accident.
#[derive(Debug, Clone)]
pub struct RuleSet {
    lines: Vec<String>,
    /// The line number (as in errors and verdicts) of each of `lines`.
    line_numbers: Vec<usize>,
    /// `None` when the text holds no rule: the token may make any request in
    /// its scope (SPEC 3.2).
    matcher: Option<Matcher>,
}

impl RuleSet {
    /// Parses and compiles `limitTo` text, with any separator of SPEC 3.1.
    /// Empty or blank text is a set without rules, which permits everything.
    ///
    /// # Errors
    ///
    /// A [`RuleError`] for the first line that does not parse or whose regexes
    /// do not compile, or when all regexes together exceed the size limit.
    pub fn parse(text: &str) -> Result<RuleSet, RuleError> {
        let rules = parse::parse_rules(text)?;
        if rules.is_empty() {
            return Ok(RuleSet::unrestricted());
        }
        let matcher = Matcher::compile(&rules)?;
        Ok(RuleSet {
            line_numbers: rules.iter().map(|rule| rule.line).collect(),
            lines: rules.into_iter().map(|rule| rule.text).collect(),
            matcher: Some(matcher),
        })
    }

    fn unrestricted() -> RuleSet {
        RuleSet {
            lines: Vec::new(),
            line_numbers: Vec::new(),
            matcher: None,
        }
    }

    /// Whether the set has no rules and so permits everything.
    pub fn is_empty(&self) -> bool {
        self.matcher.is_none()
    }

    /// The rule lines as written (trimmed, blank lines dropped), in order:
    /// what is stored as `limit_to` (joined with `"\n"`) and shown as `rules`.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// The rule on line `number` (counted as in errors and verdicts).
    pub fn line(&self, number: usize) -> Option<&str> {
        let index = self.line_numbers.iter().position(|n| *n == number)?;
        Some(&self.lines[index])
    }

    /// The first pass, without the body. `Permit` when a rule without
    /// `JsonData` constraints matches (method tag, URL regex, every
    /// `QueryParam`); `NeedsJsonBody` when none does but a rule with `JsonData`
    /// constraints matches on all of those, so the caller must buffer the
    /// body; `Denied` otherwise. A set without rules permits everything.
    pub fn check(&self, head: &RequestHead<'_>) -> Verdict {
        match &self.matcher {
            None => Verdict::Permit(Permit::unrestricted()),
            Some(matcher) => matcher.check(head),
        }
    }

    /// The second pass, once the body is buffered and parsed: `Permit` when a
    /// rule matches with all its constraints, `JsonData` included.
    ///
    /// # Errors
    ///
    /// [`Denied`] when no rule matches.
    pub fn check_with_body(&self, head: &RequestHead<'_>, body: &JsonBody) -> Result<Permit, Denied> {
        match &self.matcher {
            None => Ok(Permit::unrestricted()),
            Some(matcher) => matcher.check_with_body(head, body),
        }
    }

    /// For the `tokengate rules check` dry run: which line allows the
    /// request, and why each other line does not, in words an admin
    /// understands. Unlike [`Denied`], the reasons quote query and body
    /// values: the admin typed them. With `body` `None`, `JsonData`
    /// constraints fail as "no body given".
    pub fn explain(&self, head: &RequestHead<'_>, body: Option<&JsonBody>) -> Explanation {
        match &self.matcher {
            None => Explanation {
                allowed: true,
                allowed_by: None,
                failures: Vec::new(),
            },
            Some(matcher) => matcher.explain(head, body),
        }
    }
}

/// A dry run of rules against one request (`tokengate rules check`, `POST
/// /check`): the verdict, and why in words an admin understands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DryRun {
    pub allowed: bool,
    /// The line of the rule that allows the request.
    pub line: Option<usize>,
    /// The rule that allows it, or why each rule does not; quotes query and
    /// body values (the admin typed them).
    pub explanation: Vec<String>,
}

impl DryRun {
    /// The answer of `POST /check` and `rules check --json` (SPEC §15).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "status": "ok",
            "allowed": self.allowed,
            "line": self.line,
            "explanation": self.explanation,
        })
    }

    /// Applies what the gateway checks of a token request's target before
    /// the rules (SPEC §2.7): no path parameters, a path inside the token
    /// scope. Either refuses whatever the rules say.
    pub fn apply_scope(&mut self, scope: crate::config::Scope, head: &RequestHead<'_>) {
        let method = hyper::Method::from_bytes(head.method.as_bytes()).unwrap_or(hyper::Method::GET);
        let refusal = if head.path.contains(';') {
            "bad_path: path parameters (';') are not allowed on token requests".to_owned()
        } else if !scope.allows(&method, head.path) {
            format!("scope: out_of_scope: tokens may only be used on {}", scope.describe())
        } else {
            return;
        };
        self.allowed = false;
        self.line = None;
        self.explanation.insert(0, refusal);
    }
}

impl RuleSet {
    /// The same evaluation as the gateway's, for a request the caller
    /// describes; `body` is its bytes and `Content-Type` (JSON when absent).
    pub fn dry_run(&self, head: &RequestHead<'_>, body: Option<(&[u8], Option<&str>)>) -> DryRun {
        let json = match body {
            None => None,
            Some((bytes, content_type)) => match JsonBody::parse(content_type.or(Some("application/json")), bytes) {
                Ok(json) => Some(json),
                Err(duplicate) => {
                    return DryRun {
                        allowed: false,
                        line: None,
                        explanation: vec![format!("{duplicate} (the gateway answers 400 ambiguous_json)")],
                    };
                }
            },
        };
        let explanation = self.explain(head, json.as_ref());
        match (explanation.allowed, explanation.allowed_by) {
            (true, Some(line)) => DryRun {
                allowed: true,
                line: Some(line),
                explanation: vec![format!("line {line}: {}", self.line(line).unwrap_or_default())],
            },
            (true, None) => DryRun {
                allowed: true,
                line: None,
                explanation: vec!["no rules: everything in scope is allowed".to_owned()],
            },
            (false, _) => DryRun {
                allowed: false,
                line: None,
                explanation: explanation
                    .failures
                    .iter()
                    .map(|(line, why)| format!("line {line}: {why}"))
                    .collect(),
            },
        }
    }
}

/// What the rules see of a request before its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHead<'a> {
    /// The method as sent; compared case-sensitively with the method tags'
    /// upper-case names, as HTTP methods are case-sensitive.
    pub method: &'a str,
    /// The canonical path (SPEC 2.2), which is also what is forwarded.
    pub path: &'a str,
    /// The raw query string, without the `?`.
    pub query: Option<&'a str>,
}

/// The outcome of [`RuleSet::check`].
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A rule allows the request; the body need not be read.
    Permit(Permit),
    /// Only rules with `JsonData` constraints could allow the request: buffer
    /// the body, parse it with [`JsonBody::parse`] and call
    /// [`RuleSet::check_with_body`].
    NeedsJsonBody,
    /// No rule allows the request.
    Denied(Denied),
}

/// The rules allow the request. Only this module constructs it.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    line: Option<usize>,
}

impl Permit {
    fn unrestricted() -> Permit {
        Permit { line: None }
    }

    fn by_line(line: usize) -> Permit {
        Permit { line: Some(line) }
    }

    /// The 1-based line of the first rule that allows the request, counted as
    /// in [`RuleError::line`]; `None` when the token has no rules.
    pub fn line(&self) -> Option<usize> {
        self.line
    }
}

/// No rule allows the request (403 `rule_mismatch`). Only this module
/// constructs it. Its message names the method and path but never the query
/// string, which can hold secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Denied {
    message: String,
}

impl Denied {
    fn no_rule_allows(head: &RequestHead<'_>) -> Denied {
        Denied {
            message: format!("may not {} {}: no rule matches", head.method, head.path),
        }
    }

    /// The reason code of SPEC 2.7 and 10.
    pub fn reason(&self) -> &'static str {
        "rule_mismatch"
    }

    /// For the token's holder, e.g. `may not POST /rest/api/content: no rule matches`, to follow the token label.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// Rule text that does not parse or compile (SPEC 3.5: 400 with line, column
/// and message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct RuleError {
    /// 1-based line among all lines of the text after splitting at the
    /// separators, blank lines included.
    pub line: usize,
    /// 1-based column, in characters, of the offending character within that
    /// line as written (leading spaces included).
    pub column: usize,
    /// What is wrong, quoting the part of the rule concerned.
    pub message: String,
}

/// The answer of [`RuleSet::explain`].
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// Whether the request is allowed: a rule matches, or there are no rules.
    pub allowed: bool,
    /// The line of the first rule that allows the request.
    pub allowed_by: Option<usize>,
    /// Each rule that does not allow the request, by line, with every reason
    /// it fails, joined by `"; "`.
    pub failures: Vec<(usize, String)>,
}

#[cfg(test)]
mod proptests {
    use super::*;
    use proptest::prelude::*;

    /// Pieces of the rule grammar, so that generated text is often nearly valid.
    const RULE_TOKENS: &[&str] = &[
        "[",
        "]",
        "|",
        "==",
        "=",
        "[QueryParam::",
        "[JsonData::",
        "[queryparam::",
        "\\n",
        "\n",
        "\r\n",
        "<br>",
        "<BR />",
        "<br/>",
        "[get]",
        "[post|put]",
        "get",
        "POST",
        ".*",
        "/rest/api",
        "a",
        "0",
        ".",
        "\\",
        "\\.",
        "\\]",
        " ",
        "(",
        ")",
        "{2}",
        "?",
        "+",
        "é",
        "(?:)",
        "\t",
    ];

    fn rule_text() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            4 => prop::sample::select(RULE_TOKENS).prop_map(str::to_owned),
            1 => any::<String>(),
        ];
        prop::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
    }

    const JSON_TOKENS: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        "\"a\"",
        "\"b\"",
        "\"\\u0061\"",
        "1",
        "-1.5e3",
        "true",
        "null",
        " ",
        "\"",
        "\\",
    ];

    fn json_text() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(prop::sample::select(JSON_TOKENS), 0..32).prop_map(|pieces| pieces.concat().into_bytes())
    }

    /// Valid rules over a small vocabulary, so that requests below often match.
    fn small_rules() -> impl Strategy<Value = String> {
        let tag = prop::sample::select(&["", "[get]", "[post|put]"][..]);
        let url = prop::sample::select(&["/x", "/x/.*", ".*", "/[a-z]+"][..]);
        let constraint = prop::sample::select(
            &[
                "[QueryParam::a==1]",
                "[QueryParam::a==.*]",
                "[QueryParam::b==[0-9]+]",
                "[JsonData::a==1]",
                "[JsonData::b.c==.*]",
                "[JsonData::l.0==x]",
            ][..],
        );
        let rule = (tag, url, prop::collection::vec(constraint, 0..3))
            .prop_map(|(tag, url, constraints)| format!("{tag}{url}{}", constraints.concat()));
        prop::collection::vec(rule, 1..6).prop_map(|rules| rules.join("\n"))
    }

    fn request() -> impl Strategy<Value = (String, String, Option<String>)> {
        let method = prop::sample::select(&["GET", "POST", "PUT", "get", "PROPFIND"][..]);
        let path = prop_oneof!["(/[a-z0-9é.]{0,6}){0,4}", "/x(/y)?"];
        let query = proptest::option::of("([ab]{1,2}(=[0-9a+%]{0,3})?&?){0,3}");
        (method.prop_map(str::to_owned), path, query)
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        let known = prop::sample::select(
            &[
                r#"{"a":1}"#,
                r#"{"a":"1","b":{"c":[]}}"#,
                r#"{"b":{"c":"z"},"l":["x"]}"#,
                "[]",
            ][..],
        );
        prop_oneof![known.prop_map(|body| body.as_bytes().to_vec()), json_text()]
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_text(text in any::<String>()) {
            let _ = RuleSet::parse(&text);
        }

        #[test]
        fn parse_never_panics_on_grammar_tokens(text in rule_text()) {
            if let Err(error) = RuleSet::parse(&text) {
                prop_assert!(error.line >= 1 && error.column >= 1, "{error}");
            }
        }

        #[test]
        fn json_body_parse_never_panics(bytes in any::<Vec<u8>>(), json in json_text()) {
            let _ = JsonBody::parse(Some("application/json"), &bytes);
            let _ = JsonBody::parse(Some("application/json"), &json);
        }

        /// The two passes and `explain` agree, whatever the rules and request.
        #[test]
        fn passes_and_explain_agree(
            text in prop_oneof![rule_text(), small_rules()],
            (method, path, query) in request(),
            json in body(),
        ) {
            let Ok(rules) = RuleSet::parse(&text) else { return Ok(()) };
            let head = RequestHead { method: &method, path: &path, query: query.as_deref() };
            let Ok(body) = JsonBody::parse(Some("application/json"), &json) else { return Ok(()) };
            let with_body = rules.check_with_body(&head, &body);
            let explained = rules.explain(&head, Some(&body));
            prop_assert_eq!(with_body.is_ok(), explained.allowed);
            match rules.check(&head) {
                // check_with_body may name an earlier rule, one whose JsonData matched.
                Verdict::Permit(permit) => prop_assert!(with_body.is_ok_and(|p| p.line() <= permit.line())),
                Verdict::Denied(_) => prop_assert!(with_body.is_err()),
                Verdict::NeedsJsonBody => {}
            }
        }
    }
}
