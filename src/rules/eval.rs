//! The compiled matcher: every regex of a token compiled once, the URL regexes
//! into one `RegexSet` so a request path is matched against all rules in one
//! pass. Evaluating a request then checks method tags and constraints only for
//! the rules whose URL regex matched (SPEC 3.2 to 3.4), and allocates nothing
//! on the way to a `Permit` beyond the set's match list and, when a candidate
//! rule needs them, the decoded query parameters.

use std::borrow::Cow;

use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

use super::json::{JsonPath, scalar_text};
use super::parse::{Constraint, MethodSet, Pattern, Rule};
use super::{Denied, Explanation, JsonBody, Permit, RequestHead, RuleError, Verdict};

/// Largest compiled size of one constraint regex (regex's default is 10 MiB).
const MAX_REGEX_SIZE: usize = 256 * 1024;
/// Largest compiled size of all regexes of one token together (see
/// [`validate_patterns`]); the URL regexes, compiled as one set, share it too.
const MAX_TOKEN_REGEX_SIZE: usize = 4 * 1024 * 1024;

/// The compiled rules of one token.
#[derive(Debug, Clone)]
pub(super) struct Matcher {
    /// The distinct URL regexes of the rules, anchored. Rules often share one
    /// (a rule per space for the same endpoint), and a set's cost grows with
    /// the number of its regexes that match.
    urls: RegexSet,
    rules: Vec<CompiledRule>,
}

#[derive(Debug, Clone)]
struct CompiledRule {
    line: usize,
    /// The index of the rule's URL regex in [`Matcher::urls`].
    url: usize,
    methods: Option<MethodSet>,
    query: Vec<QueryConstraint>,
    json: Vec<JsonConstraint>,
}

#[derive(Debug, Clone)]
struct QueryConstraint {
    name: String,
    regex: WholeMatch,
}

#[derive(Debug, Clone)]
struct JsonConstraint {
    path: JsonPath,
    regex: WholeMatch,
}

/// A constraint regex, which must match the whole value.
#[derive(Debug, Clone)]
enum WholeMatch {
    /// A regex without metacharacters (`type==page`, `spaceKey==DOCS`, the
    /// usual case) matches exactly its own text: a string comparison gives
    /// the same answer several times faster than running the regex.
    Literal(String),
    Regex {
        regex: Regex,
        source: String,
    },
}

impl Matcher {
    pub(super) fn compile(rules: &[Rule]) -> Result<Matcher, RuleError> {
        validate_patterns(rules)?;
        let mut distinct_urls = Vec::new();
        let compiled = rules
            .iter()
            .map(|rule| CompiledRule::compile(rule, index_in(&mut distinct_urls, &rule.url.source)))
            .collect::<Result<_, _>>()?;
        let urls = RegexSetBuilder::new(distinct_urls.iter().map(|source| anchored(source)))
            .size_limit(MAX_TOKEN_REGEX_SIZE)
            .build()
            .map_err(|_| too_large(rules))?;
        Ok(Matcher { urls, rules: compiled })
    }

    /// The first pass (see [`super::RuleSet::check`]): a rule with `JsonData`
    /// constraints cannot decide without the body, so it only asks for it, and
    /// a later rule without them may still permit.
    pub(super) fn check(&self, head: &RequestHead<'_>) -> Verdict {
        let params = QueryParams::new(head.query);
        let mut needs_body = false;
        for rule in self.candidates(head) {
            if !rule.matches_head(head, &params) {
                continue;
            }
            if rule.json.is_empty() {
                return Verdict::Permit(Permit::by_line(rule.line));
            }
            needs_body = true;
        }
        if needs_body {
            Verdict::NeedsJsonBody
        } else {
            Verdict::Denied(Denied::no_rule_allows(head))
        }
    }

    pub(super) fn check_with_body(&self, head: &RequestHead<'_>, body: &JsonBody) -> Result<Permit, Denied> {
        let params = QueryParams::new(head.query);
        self.candidates(head)
            .find(|rule| rule.matches_head(head, &params) && rule.matches_body(Some(body)))
            .map(|rule| Permit::by_line(rule.line))
            .ok_or_else(|| Denied::no_rule_allows(head))
    }

    /// Evaluates every rule, not only the candidates, to say why each one failed.
    pub(super) fn explain(&self, head: &RequestHead<'_>, body: Option<&JsonBody>) -> Explanation {
        let url_matches = self.urls.matches(head.path);
        let params = QueryParams::new(head.query);
        let mut allowed_by = None;
        let mut failures = Vec::new();
        for rule in &self.rules {
            let reasons = rule.failures(head, url_matches.matched(rule.url), &params, body);
            if reasons.is_empty() {
                allowed_by = allowed_by.or(Some(rule.line));
            } else {
                failures.push((rule.line, reasons.join("; ")));
            }
        }
        Explanation {
            allowed: allowed_by.is_some(),
            allowed_by,
            failures,
        }
    }

    /// The rules whose URL regex matches the path, in rule order.
    fn candidates<'m>(&'m self, head: &RequestHead<'_>) -> impl Iterator<Item = &'m CompiledRule> {
        let url_matches = self.urls.matches(head.path);
        self.rules.iter().filter(move |rule| url_matches.matched(rule.url))
    }
}

impl CompiledRule {
    fn compile(rule: &Rule, url: usize) -> Result<CompiledRule, RuleError> {
        let mut query = Vec::new();
        let mut json = Vec::new();
        for constraint in &rule.constraints {
            match constraint {
                Constraint::QueryParam { name, regex } => query.push(QueryConstraint {
                    name: name.clone(),
                    regex: WholeMatch::compile(regex)?,
                }),
                Constraint::JsonData { path, regex } => json.push(JsonConstraint {
                    path: path.clone(),
                    regex: WholeMatch::compile(regex)?,
                }),
            }
        }
        Ok(CompiledRule {
            line: rule.line,
            url,
            methods: rule.methods,
            query,
            json,
        })
    }

    fn allows_method(&self, method: &str) -> bool {
        self.methods.is_none_or(|methods| methods.contains(method))
    }

    /// Method and query parameters; the URL was matched by the set.
    fn matches_head(&self, head: &RequestHead<'_>, params: &QueryParams<'_>) -> bool {
        self.allows_method(head.method) && self.query.iter().all(|constraint| constraint.check(params).is_ok())
    }

    fn matches_body(&self, body: Option<&JsonBody>) -> bool {
        self.json.iter().all(|constraint| constraint.check(body).is_ok())
    }

    /// Every reason the rule does not allow the request, in evaluation order.
    fn failures(
        &self,
        head: &RequestHead<'_>,
        url_matched: bool,
        params: &QueryParams<'_>,
        body: Option<&JsonBody>,
    ) -> Vec<String> {
        let mut failures = Vec::new();
        if let Some(methods) = self.methods.filter(|methods| !methods.contains(head.method)) {
            failures.push(format!("method {} not in {methods}", head.method));
        }
        if !url_matched {
            failures.push(format!("URL regex does not match {}", head.path));
        }
        for constraint in &self.query {
            if let Err(mismatch) = constraint.check(params) {
                failures.push(mismatch.describe("QueryParam", &constraint.name, &constraint.regex));
            }
        }
        for constraint in &self.json {
            if let Err(mismatch) = constraint.check(body) {
                let path = constraint.path.as_str();
                failures.push(mismatch.describe("JsonData", path, &constraint.regex));
            }
        }
        failures
    }
}

impl QueryConstraint {
    /// SPEC 3.3: present at least once, and every occurrence matches.
    fn check<'p>(&self, params: &'p QueryParams<'_>) -> Result<(), Mismatch<'p>> {
        let mut present = false;
        for value in params.values(&self.name) {
            if !self.regex.is_match(&value) {
                return Err(Mismatch::Value(value));
            }
            present = true;
        }
        if present { Ok(()) } else { Err(Mismatch::Missing) }
    }
}

impl JsonConstraint {
    /// SPEC 3.4; `body` is `None` when the caller has not read it.
    fn check<'b>(&self, body: Option<&'b JsonBody>) -> Result<(), Mismatch<'b>> {
        let root = match body {
            None => return Err(Mismatch::NoBody),
            Some(JsonBody::NotJson) => return Err(Mismatch::NotJson),
            Some(JsonBody::Json(root)) => root,
        };
        let value = self.path.lookup(root).ok_or(Mismatch::Missing)?;
        let text = scalar_text(value).map_err(Mismatch::Composite)?;
        if self.regex.is_match(&text) {
            Ok(())
        } else {
            Err(Mismatch::Value(text))
        }
    }
}

/// Why one constraint did not match. It borrows from the request, so checking
/// a constraint allocates nothing (but a JSON number's text); only `explain`
/// turns it into words.
enum Mismatch<'r> {
    Missing,
    Value(Cow<'r, str>),
    /// The value is an object or an array, which never matches.
    Composite(&'static str),
    NotJson,
    NoBody,
}

impl Mismatch<'_> {
    fn describe(&self, kind: &str, subject: &str, regex: &WholeMatch) -> String {
        match self {
            Mismatch::Missing => format!("{kind} {subject} missing"),
            Mismatch::Value(value) => format!("{kind} {subject} value '{value}' does not match {}", regex.source()),
            Mismatch::Composite(what) => format!("{kind} {subject} is {what}, which never matches"),
            Mismatch::NotJson => format!("{kind} {subject}: body is not JSON"),
            Mismatch::NoBody => format!("{kind} {subject}: no body given"),
        }
    }
}

/// The request's query parameters, form-decoded (`+` is a space) as they
/// are asked for: most requests never reach a rule with a `QueryParam`
/// constraint, and one that does asks for a name or two.
struct QueryParams<'q> {
    raw: &'q str,
}

impl<'q> QueryParams<'q> {
    fn new(raw: Option<&'q str>) -> QueryParams<'q> {
        QueryParams {
            raw: raw.unwrap_or_default(),
        }
    }

    /// Every value of the parameter `name`, in query order, as
    /// `form_urlencoded::parse` reads the query. A pair is decoded only when
    /// its name may be `name` (text without `%` and `+` is its own
    /// decoding), so reading one parameter costs no allocation.
    fn values<'n>(&self, name: &'n str) -> impl Iterator<Item = Cow<'q, str>> + 'n
    where
        'q: 'n,
    {
        let plain = |text: &str| !text.bytes().any(|b| b == b'%' || b == b'+');
        self.raw
            .split('&')
            .filter(|pair| !pair.is_empty())
            .filter_map(move |pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                if plain(key) {
                    if key != name {
                        return None;
                    }
                    if plain(value) {
                        return Some(Cow::Borrowed(value));
                    }
                }
                let (key, value) = form_urlencoded::parse(pair.as_bytes()).next()?;
                (key == name).then_some(value)
            })
    }
}

impl WholeMatch {
    fn compile(pattern: &Pattern) -> Result<WholeMatch, RuleError> {
        let source = pattern.source.clone();
        if regex::escape(&source) == source {
            return Ok(WholeMatch::Literal(source));
        }
        let regex = RegexBuilder::new(&anchored(&source))
            .size_limit(MAX_REGEX_SIZE)
            .build()
            // Syntax was checked on the bare pattern; what is left is its size.
            .map_err(|error| pattern.error(0, format!("regex too large: {error}")))?;
        Ok(WholeMatch::Regex { regex, source })
    }

    fn is_match(&self, value: &str) -> bool {
        match self {
            WholeMatch::Literal(literal) => value == literal,
            WholeMatch::Regex { regex, .. } => regex.is_match(value),
        }
    }

    /// The regex as written in the rule.
    fn source(&self) -> &str {
        match self {
            WholeMatch::Literal(source) | WholeMatch::Regex { source, .. } => source,
        }
    }
}

/// The index of `item` in `distinct`, appended if it is not there yet.
fn index_in<'a>(distinct: &mut Vec<&'a str>, item: &'a str) -> usize {
    distinct.iter().position(|known| *known == item).unwrap_or_else(|| {
        distinct.push(item);
        distinct.len() - 1
    })
}

/// SPEC 3.2: regexes match the whole value, like Java's `matches()`.
fn anchored(source: &str) -> String {
    format!("^(?:{source})$")
}

/// Checks every regex as written, before anchoring: a pattern that is only
/// valid inside the `^(?:…)$` wrapper, such as `x)|(.*`, would escape the
/// anchors. One set of all patterns does it in one compile and bounds the
/// token's total compiled size, which regex reports no other way.
fn validate_patterns(rules: &[Rule]) -> Result<(), RuleError> {
    let patterns: Vec<&Pattern> = rules.iter().flat_map(Rule::patterns).collect();
    let all_at_once = RegexSetBuilder::new(patterns.iter().map(|pattern| &pattern.source))
        .size_limit(MAX_TOKEN_REGEX_SIZE)
        .build();
    match all_at_once {
        Ok(_) => Ok(()),
        Err(_) => Err(first_invalid_pattern(&patterns).unwrap_or_else(|| too_large(rules))),
    }
}

/// Compiles the patterns one by one to find which one is wrong and where.
fn first_invalid_pattern(patterns: &[&Pattern]) -> Option<RuleError> {
    patterns.iter().find_map(|pattern| {
        let error = RegexBuilder::new(&pattern.source)
            .size_limit(MAX_REGEX_SIZE)
            .build()
            .err()?;
        Some(invalid_regex(pattern, &error))
    })
}

/// Every pattern is valid alone but together they are too large; no single
/// line is at fault, so the error points at the start of the first rule.
fn too_large(rules: &[Rule]) -> RuleError {
    RuleError {
        line: rules.first().map_or(1, |rule| rule.line),
        column: 1,
        message: format!(
            "the regexes of these rules together exceed the compiled-size limit of {} KiB \
             per token",
            MAX_TOKEN_REGEX_SIZE / 1024
        ),
    }
}

/// A rule error for a regex that does not compile, pointing at the offending
/// character when regex says which.
fn invalid_regex(pattern: &Pattern, error: &regex::Error) -> RuleError {
    let (offset, summary) = match error {
        regex::Error::Syntax(report) => (
            caret_offset(&pattern.source, report).unwrap_or(0),
            syntax_summary(report),
        ),
        other => (0, other.to_string()),
    };
    pattern.error(offset, format!("invalid regex '{}': {summary}", pattern.source))
}

/// regex reports a syntax error as text: the pattern indented by four spaces,
/// a line of `^` under the offending span, then `error: <summary>`. Reads the
/// span's start back; `None` when the report is not laid out that way.
fn caret_offset(source: &str, report: &str) -> Option<usize> {
    let mut lines = report.lines();
    lines.find(|line| line.strip_prefix("    ") == Some(source))?;
    let carets = lines.next()?.strip_prefix("    ")?;
    // Only spaces precede the first caret, so its byte offset counts characters.
    let offset = carets.find('^')?;
    (offset <= source.chars().count()).then_some(offset)
}

/// The `error: …` line of a syntax error report, or the whole report.
fn syntax_summary(report: &str) -> String {
    report
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("error: "))
        .unwrap_or(report)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::super::RuleSet;
    use super::*;

    fn rule_set(text: &str) -> RuleSet {
        RuleSet::parse(text).unwrap_or_else(|error| panic!("{text:?}: {error}"))
    }

    /// A request head from `target`, a path with an optional `?query`.
    fn head<'a>(method: &'a str, target: &'a str) -> RequestHead<'a> {
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (target, None),
        };
        RequestHead { method, path, query }
    }

    fn check(rules: &str, method: &str, target: &str) -> Verdict {
        rule_set(rules).check(&head(method, target))
    }

    /// The line that permits the request in the first pass, if any.
    fn permitted_by(rules: &str, method: &str, target: &str) -> Option<usize> {
        match check(rules, method, target) {
            Verdict::Permit(permit) => permit.line(),
            other => panic!("{method} {target} against {rules:?}: {other:?}"),
        }
    }

    fn allows(rules: &str, method: &str, target: &str) -> bool {
        matches!(check(rules, method, target), Verdict::Permit(_))
    }

    /// Both passes with a JSON body, as the gateway runs them.
    fn allows_with_body(rules: &str, method: &str, target: &str, body: &str) -> bool {
        let rules = rule_set(rules);
        let head = head(method, target);
        match rules.check(&head) {
            Verdict::Permit(_) => true,
            Verdict::Denied(_) => false,
            Verdict::NeedsJsonBody => {
                let body = JsonBody::parse(Some("application/json"), body.as_bytes()).unwrap();
                rules.check_with_body(&head, &body).is_ok()
            }
        }
    }

    fn rule_error(text: &str) -> RuleError {
        match RuleSet::parse(text) {
            Ok(rules) => panic!("{text:?} compiled: {:?}", rules.lines()),
            Err(error) => error,
        }
    }

    // SPEC 3.6, one example per test, each with requests it allows and refuses.

    #[test]
    fn spec_all_space_endpoints() {
        let rules = ".*/rest/api/space.*";
        assert!(allows(rules, "GET", "/rest/api/space"));
        assert!(allows(rules, "DELETE", "/rest/api/space/DOCS?x=1"));
        assert!(allows(rules, "GET", "/confluence/rest/api/space/DOCS"));
        assert!(!allows(rules, "GET", "/rest/api/content/123"));
    }

    #[test]
    fn spec_property_of_space_extender_post_only() {
        let rules = "[post].*/rest/api/space/EXTENDER/property.*";
        assert!(allows(rules, "POST", "/rest/api/space/EXTENDER/property"));
        assert!(allows(rules, "POST", "/rest/api/space/EXTENDER/property/colour"));
        assert!(!allows(rules, "GET", "/rest/api/space/EXTENDER/property"));
        assert!(!allows(rules, "POST", "/rest/api/space/OTHER/property"));
    }

    #[test]
    fn spec_pages_in_spaces_starting_with_pm() {
        let rules = "[get].*/rest/api/content.*[QueryParam::spaceKey==PM.*]";
        assert!(allows(rules, "GET", "/rest/api/content?spaceKey=PM"));
        assert!(allows(rules, "GET", "/rest/api/content/search?limit=5&spaceKey=PMO"));
        assert!(!allows(rules, "GET", "/rest/api/content?spaceKey=DOCS"));
        assert!(!allows(rules, "GET", "/rest/api/content?spaceKey=XPM"));
        assert!(!allows(rules, "GET", "/rest/api/content"));
        assert!(!allows(rules, "POST", "/rest/api/content?spaceKey=PM"));
    }

    #[test]
    fn spec_two_query_params() {
        let rules = "[get].*/rest/api/content[QueryParam::spaceKey==.*PM][QueryParam::expand==history]";
        assert!(allows(rules, "GET", "/rest/api/content?spaceKey=XPM&expand=history"));
        assert!(!allows(rules, "GET", "/rest/api/content?spaceKey=XPM"));
        assert!(!allows(rules, "GET", "/rest/api/content?spaceKey=XPM&expand=body"));
        assert!(!allows(rules, "GET", "/rest/api/content/1?spaceKey=XPM&expand=history"));
    }

    #[test]
    fn spec_create_pages_only() {
        let rules = "[post].*/rest/api/content/?[JsonData::type==page]";
        assert_eq!(check(rules, "POST", "/rest/api/content"), Verdict::NeedsJsonBody);
        assert!(allows_with_body(
            rules,
            "POST",
            "/rest/api/content/",
            r#"{"type":"page"}"#
        ));
        assert!(!allows_with_body(
            rules,
            "POST",
            "/rest/api/content",
            r#"{"type":"blogpost"}"#
        ));
        assert!(!allows_with_body(
            rules,
            "POST",
            "/rest/api/content",
            r#"{"title":"x"}"#
        ));
        assert!(!allows_with_body(
            rules,
            "PUT",
            "/rest/api/content",
            r#"{"type":"page"}"#
        ));
    }

    #[test]
    fn spec_create_test_pages_only() {
        let rules = "[post].*/rest/api/content/?[JsonData::type==page][JsonData::title==TEST.*]";
        let page = r#"{"type":"page","title":"TEST release notes"}"#;
        assert!(allows_with_body(rules, "POST", "/rest/api/content", page));
        let wrong_title = r#"{"type":"page","title":"Release TEST"}"#;
        assert!(!allows_with_body(rules, "POST", "/rest/api/content", wrong_title));
        let wrong_type = r#"{"type":"blogpost","title":"TEST"}"#;
        assert!(!allows_with_body(rules, "POST", "/rest/api/content", wrong_type));
    }

    #[test]
    fn spec_create_or_update_in_space_docs() {
        let rules = "[post|put].*/rest/api/content.*[JsonData::space.key==DOCS]";
        let docs = r#"{"type":"page","space":{"key":"DOCS"}}"#;
        assert!(allows_with_body(rules, "POST", "/rest/api/content", docs));
        assert!(allows_with_body(rules, "PUT", "/rest/api/content/123", docs));
        let other = r#"{"space":{"key":"OTHER"}}"#;
        assert!(!allows_with_body(rules, "PUT", "/rest/api/content/123", other));
        assert!(matches!(
            check(rules, "DELETE", "/rest/api/content/123"),
            Verdict::Denied(_)
        ));
    }

    #[test]
    fn spec_examples_together_in_one_token() {
        let rules = [
            ".*/rest/api/space.*",
            "[post].*/rest/api/space/EXTENDER/property.*",
            "[get].*/rest/api/content.*[QueryParam::spaceKey==PM.*]",
            "[get].*/rest/api/content[QueryParam::spaceKey==.*PM][QueryParam::expand==history]",
            "[post].*/rest/api/content/?[JsonData::type==page]",
            "[post].*/rest/api/content/?[JsonData::type==page][JsonData::title==TEST.*]",
            "[post|put].*/rest/api/content.*[JsonData::space.key==DOCS]",
        ]
        .join("<br>");
        assert_eq!(permitted_by(&rules, "GET", "/rest/api/space/X"), Some(1));
        assert_eq!(permitted_by(&rules, "GET", "/rest/api/content?spaceKey=PM"), Some(3));
        assert_eq!(
            permitted_by(&rules, "GET", "/rest/api/content?spaceKey=XPM&expand=history"),
            Some(4)
        );
        assert_eq!(check(&rules, "POST", "/rest/api/content"), Verdict::NeedsJsonBody);
        assert!(!allows(&rules, "GET", "/rest/api/user/current"));
    }

    // Matching (SPEC 3.2).

    #[test]
    fn regexes_match_the_whole_path() {
        let rules = "/rest/api/space";
        assert!(allows(rules, "GET", "/rest/api/space"));
        assert!(!allows(rules, "GET", "/rest/api/space/DOCS"));
        assert!(!allows(rules, "GET", "/confluence/rest/api/space"));
    }

    #[test]
    fn url_regex_sees_the_path_without_the_query() {
        assert!(allows("/rest/api/content", "GET", "/rest/api/content?spaceKey=PM"));
        assert!(!allows(
            r"/rest/api/content\?.*",
            "GET",
            "/rest/api/content?spaceKey=PM"
        ));
    }

    #[test]
    fn an_alternation_cannot_escape_the_anchors() {
        let rules = "/rest/api/space|/rest/api/content";
        assert!(allows(rules, "GET", "/rest/api/content"));
        assert!(!allows(rules, "GET", "/rest/api/space/x"));
        assert!(!allows(rules, "GET", "/x/rest/api/content"));
    }

    #[test]
    fn a_rule_without_tag_allows_every_method() {
        for method in ["GET", "POST", "PROPFIND", "get"] {
            assert!(allows("/x", method, "/x"), "{method}");
        }
    }

    #[test]
    fn a_tag_compares_the_request_method_exactly() {
        assert!(allows("[GET]/x", "GET", "/x"));
        assert!(!allows("[GET]/x", "get", "/x"));
        assert!(!allows("[GET]/x", "HEAD", "/x"));
    }

    #[test]
    fn the_first_matching_rule_permits() {
        let rules = "[post]/x\n.*\n/x";
        assert_eq!(permitted_by(rules, "GET", "/x"), Some(2));
        assert_eq!(permitted_by(rules, "POST", "/x"), Some(1));
    }

    #[test]
    fn rules_sharing_a_url_regex_are_told_apart() {
        let rules = "[post]/x[QueryParam::a==1]\n[get]/x\n/x[QueryParam::a==2]\n/y";
        assert_eq!(permitted_by(rules, "GET", "/x"), Some(2));
        assert_eq!(permitted_by(rules, "POST", "/x?a=1"), Some(1));
        assert_eq!(permitted_by(rules, "POST", "/x?a=2"), Some(3));
        assert_eq!(permitted_by(rules, "POST", "/y"), Some(4));
        assert!(!allows(rules, "POST", "/x?a=3"));
    }

    #[test]
    fn permit_lines_count_blank_lines() {
        assert_eq!(permitted_by("/a\n\n/b", "GET", "/b"), Some(3));
    }

    #[test]
    fn a_set_without_rules_permits_everything() {
        let rules = rule_set(" \n<br>");
        assert!(rules.is_empty());
        let head = head("DELETE", "/rest/api/space/X");
        assert_eq!(rules.check(&head), Verdict::Permit(Permit::unrestricted()));
        assert_eq!(rules.check_with_body(&head, &JsonBody::NotJson).unwrap().line(), None);
        assert!(rules.explain(&head, None).allowed);
    }

    #[test]
    fn lines_are_the_trimmed_rules_without_blank_lines() {
        let rules = rule_set("  /a  <br/><br>\\n [get] /b [QueryParam::x==1] \r\n");
        assert_eq!(rules.lines(), ["/a", "[get] /b [QueryParam::x==1]"]);
        assert_eq!(rules.line(1), Some("/a"));
        assert_eq!(rules.line(2), None, "line 2 is blank");
        assert_eq!(rules.line(4), Some("[get] /b [QueryParam::x==1]"));
    }

    #[test]
    fn denied_names_method_and_path_but_not_the_query() {
        let Verdict::Denied(denied) = check("/x", "POST", "/rest/api/content?os_password=hunter2") else {
            panic!("not denied");
        };
        assert_eq!(denied.reason(), "rule_mismatch");
        assert_eq!(denied.message(), "may not POST /rest/api/content: no rule matches");
    }

    // QueryParam (SPEC 3.3).

    #[test]
    fn query_param_must_be_present() {
        let rules = "/x[QueryParam::spaceKey==.*]";
        assert!(allows(rules, "GET", "/x?spaceKey="));
        assert!(allows(rules, "GET", "/x?spaceKey"));
        assert!(!allows(rules, "GET", "/x"));
        assert!(!allows(rules, "GET", "/x?"));
        assert!(!allows(rules, "GET", "/x?spacekey=PM&other=1"));
    }

    #[test]
    fn every_occurrence_of_a_query_param_must_match() {
        let rules = "/x[QueryParam::spaceKey==PM.*]";
        assert!(allows(rules, "GET", "/x?spaceKey=PM1&spaceKey=PM2"));
        assert!(!allows(rules, "GET", "/x?spaceKey=PM1&spaceKey=DOCS"));
        assert!(!allows(rules, "GET", "/x?spaceKey=DOCS&spaceKey=PM1"));
    }

    #[test]
    fn query_params_are_form_decoded() {
        let rules = "/x[QueryParam::title==Team notes & more]";
        assert!(allows(rules, "GET", "/x?title=Team+notes+%26+more"));
        assert!(allows(rules, "GET", "/x?title=Team%20notes%20%26%20more"));
        assert!(!allows(rules, "GET", "/x?title=Team+notes+&+more"));
        assert!(allows("/x[QueryParam::spaceKey==PM]", "GET", "/x?space%4Bey=P%4D"));
        assert!(allows("/x[QueryParam::a b==c]", "GET", "/x?a+b=c"));
    }

    #[test]
    fn query_param_regex_matches_the_whole_value() {
        let rules = "/x[QueryParam::expand==history]";
        assert!(!allows(rules, "GET", "/x?expand=history,body"));
        assert!(!allows(rules, "GET", "/x?expand=xhistory"));
    }

    #[test]
    fn plain_values_and_regexes_match_alike() {
        for (regex, value, expected) in [
            ("DOCS", "DOCS", true),
            ("DOCS", "DOCS2", false),
            ("DOCS", "docs", false),
            ("Team notes", "Team notes", true),
            ("a.b", "a.b", true),
            ("a.b", "axb", true),
            (r"a\.b", "axb", false),
            ("PM-1", "PM-1", true),
        ] {
            let rules = format!("/x[QueryParam::q=={regex}]");
            let target = format!("/x?q={}", value.replace(' ', "+"));
            assert_eq!(allows(&rules, "GET", &target), expected, "{regex} against {value}");
        }
    }

    // JsonData (SPEC 3.4).

    #[test]
    fn json_paths_reach_nested_objects_and_arrays() {
        let body = r#"{"ancestors":[{"id":"101"},{"id":202}],"space":{"key":"DOCS"}}"#;
        assert!(allows_with_body(
            "/x[JsonData::ancestors.0.id==101]",
            "POST",
            "/x",
            body
        ));
        assert!(allows_with_body(
            "/x[JsonData::ancestors.1.id==202]",
            "POST",
            "/x",
            body
        ));
        assert!(!allows_with_body(
            "/x[JsonData::ancestors.2.id==.*]",
            "POST",
            "/x",
            body
        ));
        assert!(!allows_with_body(
            "/x[JsonData::ancestors.first.id==.*]",
            "POST",
            "/x",
            body
        ));
        assert!(!allows_with_body("/x[JsonData::space.key.x==.*]", "POST", "/x", body));
    }

    #[test]
    fn an_all_digit_key_indexes_an_object_by_name() {
        let body = r#"{"versions":{"0":"first","10":"tenth"}}"#;
        assert!(allows_with_body("/x[JsonData::versions.0==first]", "POST", "/x", body));
        assert!(allows_with_body("/x[JsonData::versions.10==tenth]", "POST", "/x", body));
    }

    #[test]
    fn an_escaped_dot_is_part_of_a_key() {
        let body = r#"{"metadata":{"a.b":"dotted","a":{"b":"nested"}}}"#;
        assert!(allows_with_body(
            r"/x[JsonData::metadata.a\.b==dotted]",
            "POST",
            "/x",
            body
        ));
        assert!(allows_with_body(
            "/x[JsonData::metadata.a.b==nested]",
            "POST",
            "/x",
            body
        ));
    }

    #[test]
    fn scalars_match_by_their_json_text() {
        let body = r#"{"n":42,"f":1.5,"neg":-3,"yes":true,"no":false,"nothing":null,"s":"42"}"#;
        for (path, regex) in [
            ("n", "42"),
            ("n", "[0-9]+"),
            ("f", r"1\.5"),
            ("neg", "-3"),
            ("yes", "true"),
            ("no", "false"),
            ("nothing", "null"),
            ("s", "42"),
        ] {
            let rules = format!("/x[JsonData::{path}=={regex}]");
            assert!(allows_with_body(&rules, "POST", "/x", body), "{rules}");
        }
        assert!(!allows_with_body("/x[JsonData::nothing==(?:)]", "POST", "/x", body));
        assert!(!allows_with_body("/x[JsonData::n==4]", "POST", "/x", body));
    }

    #[test]
    fn objects_and_arrays_never_match() {
        let body = r#"{"space":{"key":"DOCS"},"labels":["a"],"empty":{}}"#;
        for path in ["space", "labels", "empty"] {
            let rules = format!("/x[JsonData::{path}==.*]");
            assert!(!allows_with_body(&rules, "POST", "/x", body), "{path}");
        }
    }

    #[test]
    fn a_body_that_is_not_json_fails_every_json_constraint() {
        let rules = rule_set("/x[JsonData::type==.*]");
        let head = head("POST", "/x");
        let body = JsonBody::parse(Some("text/plain"), br#"{"type":"page"}"#).unwrap();
        assert!(rules.check_with_body(&head, &body).is_err());
        let body = JsonBody::parse(Some("application/json"), b"type=page").unwrap();
        assert!(rules.check_with_body(&head, &body).is_err());
    }

    // The two passes.

    #[test]
    fn a_matching_rule_without_json_permits_without_the_body() {
        let rules = "[post]/x[JsonData::type==page]\n[post]/x";
        assert_eq!(permitted_by(rules, "POST", "/x"), Some(2));
    }

    #[test]
    fn the_body_is_needed_only_when_a_json_rule_matches_the_head() {
        let rules = "[post]/x[QueryParam::a==1][JsonData::type==page]\n[get]/y";
        assert_eq!(check(rules, "POST", "/x?a=1"), Verdict::NeedsJsonBody);
        assert!(matches!(check(rules, "POST", "/x?a=2"), Verdict::Denied(_)));
        assert!(matches!(check(rules, "PUT", "/x?a=1"), Verdict::Denied(_)));
        assert!(matches!(check(rules, "POST", "/y"), Verdict::Denied(_)));
        assert_eq!(permitted_by(rules, "GET", "/y"), Some(2));
    }

    #[test]
    fn check_with_body_applies_every_rule() {
        let rules = rule_set("[post]/x[JsonData::type==page]\n[post]/x[JsonData::type==blogpost]\n[get]/y");
        let body = JsonBody::parse(Some("application/json"), br#"{"type":"blogpost"}"#).unwrap();
        let permit = rules.check_with_body(&head("POST", "/x"), &body).unwrap();
        assert_eq!(permit.line(), Some(2));
        let permit = rules.check_with_body(&head("GET", "/y"), &body).unwrap();
        assert_eq!(permit.line(), Some(3));
        let denied = rules.check_with_body(&head("PUT", "/x"), &body).unwrap_err();
        assert_eq!(denied.message(), "may not PUT /x: no rule matches");
    }

    // explain, for `tokengate rules check`.

    #[test]
    fn explain_says_why_each_line_fails() {
        let rules = rule_set(
            "[get].*/rest/api/content[QueryParam::spaceKey==PM.*]\n\
             .*/rest/x\n\
             [post]/rest/api/content[QueryParam::spaceKey==PM.*][QueryParam::expand==history]\n\
             [post]/rest/api/content[JsonData::type==page][JsonData::space==.*]",
        );
        let head = head("POST", "/rest/api/content?spaceKey=X&spaceKey=PM1");
        let body = JsonBody::parse(Some("application/json"), br#"{"type":"blog","space":{}}"#).unwrap();
        let explanation = rules.explain(&head, Some(&body));
        assert!(!explanation.allowed);
        assert_eq!(explanation.allowed_by, None);
        let failures: Vec<(usize, &str)> = explanation
            .failures
            .iter()
            .map(|(line, why)| (*line, why.as_str()))
            .collect();
        assert_eq!(
            failures,
            [
                (
                    1,
                    "method POST not in [GET]; QueryParam spaceKey value 'X' does not match PM.*"
                ),
                (2, "URL regex does not match /rest/api/content"),
                (
                    3,
                    "QueryParam spaceKey value 'X' does not match PM.*; QueryParam expand missing"
                ),
                (
                    4,
                    "JsonData type value 'blog' does not match page; \
                     JsonData space is an object, which never matches"
                ),
            ]
        );
    }

    #[test]
    fn explain_without_a_usable_body() {
        let rules = rule_set("[post]/x[JsonData::type==page]");
        let head = head("POST", "/x");
        let no_body = rules.explain(&head, None);
        assert_eq!(no_body.failures, [(1, "JsonData type: no body given".to_owned())]);
        let not_json = rules.explain(&head, Some(&JsonBody::NotJson));
        assert_eq!(not_json.failures, [(1, "JsonData type: body is not JSON".to_owned())]);
        let body = JsonBody::parse(Some("application/json"), b"{}").unwrap();
        let missing = rules.explain(&head, Some(&body));
        assert_eq!(missing.failures, [(1, "JsonData type missing".to_owned())]);
    }

    #[test]
    fn explain_names_the_first_allowing_line() {
        let rules = rule_set("[get]/x\n\n/y\n.*");
        let explanation = rules.explain(&head("POST", "/y"), None);
        assert!(explanation.allowed);
        assert_eq!(explanation.allowed_by, Some(3));
        assert_eq!(explanation.failures.len(), 1);
        assert_eq!(explanation.failures[0].0, 1);
    }

    // Regex compilation errors (SPEC 3.5).

    #[test]
    fn invalid_regex_points_at_the_offending_character() {
        let error = rule_error("/ok\n  .*/rest/[a-z");
        assert_eq!((error.line, error.column), (2, 11));
        assert_eq!(error.message, "invalid regex '.*/rest/[a-z': unclosed character class");
        assert_eq!(
            error.to_string(),
            "line 2, column 11: invalid regex '.*/rest/[a-z': unclosed character class"
        );
    }

    #[test]
    fn invalid_constraint_regex_points_into_the_constraint() {
        let error = rule_error("/x[QueryParam::a==(b]");
        assert_eq!((error.line, error.column), (1, 19));
        assert!(error.message.ends_with("unclosed group"), "{}", error.message);
        let error = rule_error("[get] /é[JsonData::a==x{2]");
        assert_eq!((error.line, error.column), (1, 24));
        assert!(
            error.message.contains("unclosed counted repetition"),
            "{}",
            error.message
        );
    }

    #[test]
    fn an_unbalanced_group_cannot_escape_the_anchors() {
        // Valid inside `^(?:…)$` as `^(?:/x)|(?:.*)$`, which would allow everything.
        let error = rule_error("/x)|(?:.*");
        assert_eq!((error.line, error.column), (1, 3));
        assert!(error.message.ends_with("unopened group"), "{}", error.message);
    }

    #[test]
    fn an_unbalanced_bracket_in_a_url_regex() {
        let error = rule_error("[get] .*/rest/api/[content");
        assert_eq!((error.line, error.column), (1, 19));
        assert!(error.message.ends_with("unclosed character class"));
        // Not a tag, so a regex: the class is never closed.
        let error = rule_error("[get.*/rest/api");
        assert_eq!((error.line, error.column), (1, 1));
    }

    #[test]
    fn a_constraint_regex_too_large_alone() {
        let error = rule_error(r"/x[QueryParam::a==\w{2000}]");
        assert_eq!((error.line, error.column), (1, 19));
        assert!(error.message.contains("size limit"), "{}", error.message);
    }

    #[test]
    fn a_url_regex_too_large_even_for_the_token() {
        let error = rule_error("/ok\n/x\\w{50000}");
        assert_eq!((error.line, error.column), (2, 1));
        assert!(error.message.contains("size limit"), "{}", error.message);
    }

    #[test]
    fn regexes_too_large_together() {
        let rules = vec![r"/x[QueryParam::a==[a-z]{1000}]"; 400].join("\n");
        let error = rule_error(&rules);
        assert_eq!((error.line, error.column), (1, 1));
        assert!(error.message.contains("together exceed"), "{}", error.message);
    }

    proptest::proptest! {
        /// Reading one parameter gives what decoding every pair would.
        #[test]
        fn a_parameter_reads_as_form_urlencoded_decodes_it(
            query in "([ab%+=&]|%2[0-9bB]|%6[12]|%C3%A9|%FF|[xy]){0,24}",
            name in "(a|b|ab| a|a b|é|\u{FFFD})",
        ) {
            let read: Vec<Cow<'_, str>> = QueryParams::new(Some(&query)).values(&name).collect();
            let decoded: Vec<Cow<'_, str>> = form_urlencoded::parse(query.as_bytes())
                .filter(|(key, _)| *key == name)
                .map(|(_, value)| value)
                .collect();
            proptest::prop_assert_eq!(read, decoded);
        }
    }
}
