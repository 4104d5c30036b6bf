//! Turns `limitTo` text into typed rules (SPEC 3.1): splits it into lines,
//! then reads each line's method tag, URL regex and constraints, reporting
//! every syntax error with its line and column. Regexes stay source text here;
//! `eval` compiles them, and uses the positions kept here to report regex errors.

use std::fmt;
use std::ops::Range;

use super::RuleError;
use super::json::JsonPath;

/// One syntactically valid rule line; its regexes are not compiled yet.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Rule {
    /// 1-based position among all lines of the text, blank ones included.
    pub(super) line: usize,
    /// The rule as written, trimmed.
    pub(super) text: String,
    /// The methods of the tag; `None` when the rule has no tag and so allows every method.
    pub(super) methods: Option<MethodSet>,
    pub(super) url: Pattern,
    pub(super) constraints: Vec<Constraint>,
}

impl Rule {
    /// Every regex of the rule: the URL regex, then the constraints' in order.
    pub(super) fn patterns(&self) -> impl Iterator<Item = &Pattern> {
        let constraint_patterns = self.constraints.iter().map(|constraint| match constraint {
            Constraint::QueryParam { regex, .. } | Constraint::JsonData { regex, .. } => regex,
        });
        std::iter::once(&self.url).chain(constraint_patterns)
    }
}

/// One `[QueryParam::…]` or `[JsonData::…]` of a rule.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Constraint {
    /// `[QueryParam::name==regex]` (SPEC 3.3).
    QueryParam { name: String, regex: Pattern },
    /// `[JsonData::path==regex]` (SPEC 3.4).
    JsonData { path: JsonPath, regex: Pattern },
}

/// A regex as written in a rule, with where it was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Pattern {
    pub(super) source: String,
    pub(super) line: usize,
    /// 1-based column of the regex's first character in its line.
    pub(super) column: usize,
}

impl Pattern {
    /// An error about the character `char_offset` characters into the regex.
    pub(super) fn error(&self, char_offset: usize, message: String) -> RuleError {
        RuleError {
            line: self.line,
            column: self.column + char_offset,
            message,
        }
    }
}

/// HTTP methods a method tag may name, in the order of [`MethodSet`]'s bits.
const METHODS: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];

/// The methods named by a method tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct MethodSet(u8);

impl MethodSet {
    /// The set named by `list`, a `|`-list of method names in any case
    /// (`get|POST`); the name that is not a known method, and its offset in
    /// `list`, otherwise.
    fn parse_list(list: &str) -> Result<MethodSet, (&str, usize)> {
        let mut set = 0;
        let mut offset = 0;
        for name in list.split('|') {
            let trimmed = name.trim();
            let at = offset + (name.len() - name.trim_start().len());
            set |= method_bit(trimmed).ok_or((trimmed, at))?;
            offset += name.len() + 1;
        }
        Ok(MethodSet(set))
    }

    /// Whether a bracket group at the start of a rule is meant as a method
    /// tag: letters (any script), with only `|`, spaces and the separators
    /// people mistype for `|` (`,` `;` `_`) between them. Anything else
    /// (`[a-z]+/rest/…`, `[0-9]`) is a character class of the URL regex.
    fn is_tag_shaped(list: &str) -> bool {
        list.chars().any(char::is_alphabetic)
            && list
                .chars()
                .all(|c| c.is_alphabetic() || matches!(c, '|' | ' ' | '\t' | ',' | ';' | '_'))
    }

    /// Whether the request method is in the set. HTTP methods are
    /// case-sensitive, so a request method `get` is not `GET`.
    pub(super) fn contains(self, method: &str) -> bool {
        METHODS
            .iter()
            .position(|known| *known == method)
            .is_some_and(|index| self.0 & (1 << index) != 0)
    }
}

fn method_bit(name: &str) -> Option<u8> {
    METHODS
        .iter()
        .position(|known| known.eq_ignore_ascii_case(name))
        .map(|index| 1 << index)
}

impl fmt::Display for MethodSet {
    /// As an admin would write the tag: `[GET|POST]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = METHODS
            .iter()
            .enumerate()
            .filter(|(index, _)| self.0 & (1 << index) != 0)
            .map(|(_, name)| *name)
            .collect();
        write!(f, "[{}]", names.join("|"))
    }
}

/// The two kinds of constraint, told apart by their opening keyword.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConstraintKind {
    QueryParam,
    JsonData,
}

impl ConstraintKind {
    const ALL: [ConstraintKind; 2] = [ConstraintKind::QueryParam, ConstraintKind::JsonData];

    fn keyword(self) -> &'static str {
        match self {
            ConstraintKind::QueryParam => "[QueryParam::",
            ConstraintKind::JsonData => "[JsonData::",
        }
    }

    /// What comes between the keyword and `==`, for error messages.
    fn subject(self) -> &'static str {
        match self {
            ConstraintKind::QueryParam => "QueryParam name",
            ConstraintKind::JsonData => "JsonData path",
        }
    }
}

/// Parses `limitTo` text into its rules, in order; blank lines are skipped
/// but still counted as lines.
pub(super) fn parse_rules(text: &str) -> Result<Vec<Rule>, RuleError> {
    split_lines(text)
        .into_iter()
        .enumerate()
        .map(|(index, text)| SourceLine {
            number: index + 1,
            text,
        })
        .filter(|line| !line.text.trim().is_empty())
        .map(|line| line.parse_rule())
        .collect()
}

/// Separators matched exactly.
const SEPARATORS: [&str; 3] = ["\r\n", "\n", "\\n"];
/// Separators matched ignoring ASCII case (`<BR>`), as Extender writes them.
const HTML_SEPARATORS: [&str; 3] = ["<br>", "<br/>", "<br />"];

/// Splits the text at every separator of SPEC 3.1. Blank lines are kept so
/// that a line's index is its line number.
fn split_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut line_start = 0;
    let mut at = 0;
    while at < text.len() {
        match separator_len(&text.as_bytes()[at..]) {
            Some(len) => {
                // Separators are ASCII, so `at` and `at + len` are character boundaries.
                lines.push(&text[line_start..at]);
                at += len;
                line_start = at;
            }
            None => at += 1,
        }
    }
    lines.push(&text[line_start..]);
    lines
}

fn separator_len(rest: &[u8]) -> Option<usize> {
    let exact = SEPARATORS
        .iter()
        .find(|separator| rest.starts_with(separator.as_bytes()));
    let html = || {
        HTML_SEPARATORS
            .iter()
            .find(|separator| starts_with_ignore_ascii_case(rest, separator))
    };
    exact.or_else(html).map(|separator| separator.len())
}

fn starts_with_ignore_ascii_case(text: &[u8], prefix: &str) -> bool {
    text.get(..prefix.len())
        .is_some_and(|start| start.eq_ignore_ascii_case(prefix.as_bytes()))
}

/// The keyword of the constraint starting at byte `at`, matched ignoring ASCII
/// case: `[queryparam::` read as a regex class would silently drop the constraint.
fn keyword_at(text: &str, at: usize) -> Option<ConstraintKind> {
    let rest = text.as_bytes().get(at..)?;
    ConstraintKind::ALL
        .into_iter()
        .find(|kind| starts_with_ignore_ascii_case(rest, kind.keyword()))
}

/// The byte position of the first constraint keyword in `range`.
fn find_keyword(text: &str, range: Range<usize>) -> Option<usize> {
    let start = range.start;
    text[range]
        .match_indices('[')
        .map(|(offset, _)| start + offset)
        .find(|&at| keyword_at(text, at).is_some())
}

/// One line of the text; byte offsets below are into `text`, columns count characters.
struct SourceLine<'t> {
    number: usize,
    text: &'t str,
}

impl SourceLine<'_> {
    fn parse_rule(&self) -> Result<Rule, RuleError> {
        let rule = self.trimmed(0..self.text.len());
        let (methods, after_tag) = self.method_tag(rule.clone())?;
        let first_constraint = find_keyword(self.text, after_tag..rule.end).unwrap_or(rule.end);
        let url = self.url_pattern(after_tag..first_constraint)?;
        let constraints = self.constraints(first_constraint..rule.end)?;
        Ok(Rule {
            line: self.number,
            text: self.text[rule].to_owned(),
            methods,
            url,
            constraints,
        })
    }

    /// The method tag at the start of the rule, if there is one, and where
    /// the rest begins. A tag that names something other than an HTTP
    /// method Confluence serves (`[gte]`, `[post|fetch]`) is an error at
    /// that name (SPEC §9): read as a character class it would match no
    /// path, and the rule would silently allow nothing.
    fn method_tag(&self, rule: Range<usize>) -> Result<(Option<MethodSet>, usize), RuleError> {
        let Some((list, _)) = self.text[rule.clone()]
            .strip_prefix('[')
            .and_then(|rest| rest.split_once(']'))
            .filter(|(list, _)| MethodSet::is_tag_shaped(list))
        else {
            return Ok((None, rule.start));
        };
        let methods = MethodSet::parse_list(list).map_err(|(name, at)| {
            let what = if name.is_empty() {
                "an empty method name".to_owned()
            } else {
                format!("`{name}` is not an HTTP method")
            };
            self.error(
                rule.start + 1 + at,
                format!(
                    "{what} in the method tag: name GET, HEAD, POST, PUT, DELETE, PATCH or OPTIONS, \
                     separated by | (a URL regex that begins with a class of letters: write (?:[abc]))"
                ),
            )
        })?;
        Ok((Some(methods), rule.start + list.len() + "[]".len()))
    }

    /// The URL regex: everything between the tag and the first constraint, trimmed.
    fn url_pattern(&self, region: Range<usize>) -> Result<Pattern, RuleError> {
        let url = self.trimmed(region.clone());
        if url.is_empty() {
            return Err(self.error(region.end, "missing URL regex"));
        }
        Ok(self.pattern(url))
    }

    /// The constraints from the first keyword to the end of the rule. Each
    /// one's text runs to the next keyword, so a `]` inside its regex is kept.
    fn constraints(&self, region: Range<usize>) -> Result<Vec<Constraint>, RuleError> {
        let mut constraints = Vec::new();
        let mut open = region.start;
        while let Some(kind) = keyword_at(self.text, open) {
            let body_start = open + kind.keyword().len();
            let next = find_keyword(self.text, body_start..region.end).unwrap_or(region.end);
            constraints.push(self.constraint(kind, open, body_start..next)?);
            open = next;
        }
        Ok(constraints)
    }

    /// One constraint whose `[` is at `open`; `body` runs from after the
    /// keyword to the next constraint or the end of the rule.
    fn constraint(&self, kind: ConstraintKind, open: usize, body: Range<usize>) -> Result<Constraint, RuleError> {
        let close = self.closing_bracket(open, body.clone())?;
        let written = &self.text[open..=close];
        let Some(equals) = self.text[body.start..close].find("==") else {
            return Err(self.error(open, format!("missing '==' in {written}")));
        };
        let subject = self.trimmed(body.start..body.start + equals);
        let regex = body.start + equals + "==".len()..close;
        if subject.is_empty() {
            let message = format!("empty {} in {written}", kind.subject());
            return Err(self.error(body.start, message));
        }
        if regex.is_empty() {
            let message = format!("empty regex in {written} (write (?:) to require an empty value)");
            return Err(self.error(close, message));
        }
        self.typed_constraint(kind, subject, regex)
    }

    /// The constraint of `kind` on `subject` (a name or a path) with `regex`.
    fn typed_constraint(
        &self,
        kind: ConstraintKind,
        subject: Range<usize>,
        regex: Range<usize>,
    ) -> Result<Constraint, RuleError> {
        let subject_text = &self.text[subject.clone()];
        let regex = self.pattern(regex);
        match kind {
            ConstraintKind::QueryParam => Ok(Constraint::QueryParam {
                name: subject_text.to_owned(),
                regex,
            }),
            ConstraintKind::JsonData => match JsonPath::parse(subject_text) {
                Ok(path) => Ok(Constraint::JsonData { path, regex }),
                Err(empty) => {
                    let message = format!("empty key in JsonData path '{subject_text}'");
                    Err(self.error(subject.start + empty.offset, message))
                }
            },
        }
    }

    /// The `]` that closes a constraint: the last one before the next
    /// constraint or the end of the rule, with only spaces after it.
    fn closing_bracket(&self, open: usize, body: Range<usize>) -> Result<usize, RuleError> {
        let written = self.text[body.clone()].trim_end();
        let Some(last) = written.rfind(']') else {
            let unclosed = &self.text[open..body.start + written.len()];
            let message = format!("unbalanced '[': {unclosed} is never closed by ']'");
            return Err(self.error(open, message));
        };
        let close = body.start + last;
        let trailing = self.trimmed(close + 1..body.start + written.len());
        if !trailing.is_empty() {
            let message = format!(
                "unexpected text '{}' after ']': a constraint must be followed by the end \
                 of the rule or by another [QueryParam:: or [JsonData::",
                &self.text[trailing.clone()]
            );
            return Err(self.error(trailing.start, message));
        }
        Ok(close)
    }

    /// `range` without the whitespace at either end.
    fn trimmed(&self, range: Range<usize>) -> Range<usize> {
        let text = &self.text[range.clone()];
        let start = range.start + (text.len() - text.trim_start().len());
        start..start + text.trim().len()
    }

    fn pattern(&self, range: Range<usize>) -> Pattern {
        Pattern {
            source: self.text[range.clone()].to_owned(),
            line: self.number,
            column: self.column(range.start),
        }
    }

    fn column(&self, at: usize) -> usize {
        self.text[..at].chars().count() + 1
    }

    fn error(&self, at: usize, message: impl Into<String>) -> RuleError {
        RuleError {
            line: self.number,
            column: self.column(at),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::RuleSet;

    fn rules(text: &str) -> Vec<Rule> {
        parse_rules(text).unwrap_or_else(|error| panic!("{text:?}: {error}"))
    }

    fn only_rule(text: &str) -> Rule {
        let mut rules = rules(text);
        assert_eq!(rules.len(), 1, "{text:?}");
        rules.remove(0)
    }

    /// The (line, column, message) of the error `text` gives.
    fn error(text: &str) -> (usize, usize, String) {
        match parse_rules(text) {
            Ok(rules) => panic!("{text:?} parsed: {rules:?}"),
            Err(error) => (error.line, error.column, error.message),
        }
    }

    fn assert_error(text: &str, line: usize, column: usize, message_part: &str) {
        let (actual_line, actual_column, message) = error(text);
        assert_eq!((actual_line, actual_column), (line, column), "{text:?}: {message}");
        assert!(message.contains(message_part), "{text:?}: {message}");
    }

    fn methods(rule: &Rule) -> String {
        rule.methods.map_or("-".to_owned(), |methods| methods.to_string())
    }

    fn constraint_parts(constraint: &Constraint) -> (&str, &str) {
        match constraint {
            Constraint::QueryParam { name, regex } => (name, &regex.source),
            Constraint::JsonData { path, regex } => (path.as_str(), &regex.source),
        }
    }

    #[test]
    fn every_separator_splits_lines() {
        for separator in [
            "\n", "\r\n", "\\n", "<br>", "<BR>", "<br/>", "<Br/>", "<br />", "<BR />",
        ] {
            let text = format!("/a{separator}/b");
            let rules = rules(&text);
            let lines: Vec<(usize, &str)> = rules.iter().map(|rule| (rule.line, rule.url.source.as_str())).collect();
            assert_eq!(lines, [(1, "/a"), (2, "/b")], "separator {separator:?}");
        }
    }

    #[test]
    fn separators_mix_and_count_blank_lines() {
        let rules = rules("/a\n\n   \r\n/b<br>\\n<br />/c\n");
        let lines: Vec<usize> = rules.iter().map(|rule| rule.line).collect();
        assert_eq!(lines, [1, 4, 7]);
    }

    /// SPEC 3.1 makes backslash-n a separator everywhere, so a regex cannot
    /// use `\n`; paths and parameters hold no newlines anyway.
    #[test]
    fn backslash_n_separates_even_inside_a_regex() {
        assert_error("/x[QueryParam::a==x\\ny]", 1, 3, "never closed");
        // An escaped backslash before `n` still leaves a separator behind it.
        let urls: Vec<String> = rules("/a\\\\n/b").into_iter().map(|rule| rule.url.source).collect();
        assert_eq!(urls, ["/a\\", "/b"]);
    }

    #[test]
    fn blank_text_has_no_rules() {
        for text in ["", "   ", "\n\n", "<br><br/>", " \\n \r\n\t"] {
            assert!(rules(text).is_empty(), "{text:?}");
        }
    }

    #[test]
    fn a_br_lookalike_is_not_a_separator() {
        assert_eq!(only_rule("/a<b>/b").url.source, "/a<b>/b");
        assert_eq!(only_rule("/a<br  >/b").url.source, "/a<br  >/b");
    }

    #[test]
    fn rule_text_and_url_regex_are_trimmed() {
        let rule = only_rule("  \t[get]   .*/rest/api/space.*  ");
        assert_eq!(rule.text, "[get]   .*/rest/api/space.*");
        assert_eq!(rule.url.source, ".*/rest/api/space.*");
        assert_eq!(rule.url.column, 12);
    }

    #[test]
    fn method_tag_names_are_case_insensitive() {
        assert_eq!(methods(&only_rule("[Get|pOsT]/x")), "[GET|POST]");
        assert_eq!(methods(&only_rule("[post]/x")), "[POST]");
        let all = "[get|post|put|delete|patch|head|options]/x";
        assert_eq!(methods(&only_rule(all)), "[GET|POST|PUT|DELETE|PATCH|HEAD|OPTIONS]");
    }

    #[test]
    fn method_tag_allows_spaces_around_names() {
        assert_eq!(methods(&only_rule("[ get | put ] /x")), "[GET|PUT]");
    }

    #[test]
    fn method_set_holds_exactly_its_methods() {
        let methods = only_rule("[get|put]/x").methods.unwrap();
        assert!(methods.contains("GET") && methods.contains("PUT"));
        assert!(!methods.contains("POST") && !methods.contains("HEAD"));
        // HTTP methods are case-sensitive: a request method `get` is not GET.
        assert!(!methods.contains("get"));
    }

    #[test]
    fn character_classes_at_the_start_belong_to_the_url_regex() {
        for text in ["[a-z]+/rest/api/.*", "[0-9]+/x", "[]]/x", "[get]x]/y"] {
            let rule = only_rule(text);
            if text.starts_with("[get]") {
                // The tag is `[get]`; what follows is the regex, however odd.
                assert_eq!((methods(&rule), rule.url.source.as_str()), ("[GET]".into(), "x]/y"));
            } else {
                assert_eq!((methods(&rule), rule.url.source.as_str()), ("-".into(), text));
            }
        }
    }

    /// A bracket list of words at the start is a method tag, and a word in
    /// it that is not a method is an error at that word (SPEC §9, turn 3):
    /// `[gte]` read as a character class would match no path.
    #[test]
    fn a_tag_with_an_unknown_method_is_invalid_at_that_name() {
        for (text, column, name) in [
            ("[gte]/x", 2, "`gte`"),
            ("[post|fetch].*/rest/api/content", 7, "`fetch`"),
            ("[ get | pots ]/x", 9, "`pots`"),
            ("[get|]/x", 6, "an empty method name"),
            ("  [GTE] /x", 4, "`GTE`"),
            ("[get,post]/x", 2, "`get,post`"),
            ("[get; post]/x", 2, "`get; post`"),
            ("[get_post]/x", 2, "`get_post`"),
            ("[gét]/x", 2, "`gét`"),
        ] {
            let error = RuleSet::parse(text).unwrap_err();
            assert_eq!((error.line, error.column), (1, column), "{text}: {error}");
            assert!(error.message.contains(name), "{text}: {error}");
            assert!(error.message.contains("GET, HEAD, POST"), "{error}");
        }
        let error = RuleSet::parse("[get]/ok\n[gte]/x").unwrap_err();
        assert_eq!((error.line, error.column), (2, 2));
        for text in ["[]/x", "[|]/x", "[a-z]/x", "[A-Z0-9]+/x"] {
            assert_eq!(only_rule(text).methods, None, "{text} is a character class");
        }
    }

    #[test]
    fn a_tag_is_recognised_only_at_the_start() {
        let rule = only_rule("/x[get]");
        assert_eq!((rule.methods, rule.url.source.as_str()), (None, "/x[get]"));
    }

    #[test]
    fn url_regex_ends_at_the_first_constraint() {
        let rule = only_rule("[get].*/rest/api/content[QueryParam::spaceKey==PM.*]");
        assert_eq!(rule.url.source, ".*/rest/api/content");
        assert_eq!(rule.url.column, 6);
        let parts: Vec<_> = rule.constraints.iter().map(constraint_parts).collect();
        assert_eq!(parts, [("spaceKey", "PM.*")]);
    }

    #[test]
    fn constraints_follow_each_other_with_or_without_spaces() {
        let text = "/x[QueryParam::a==1][JsonData::b.c==2]  [QueryParam::d==3]  ";
        let rule = only_rule(text);
        let parts: Vec<_> = rule.constraints.iter().map(constraint_parts).collect();
        assert_eq!(parts, [("a", "1"), ("b.c", "2"), ("d", "3")]);
    }

    #[test]
    fn constraint_keywords_are_case_insensitive() {
        let rule = only_rule("/x[queryparam::a==1][JSONDATA::b==2]");
        assert!(matches!(rule.constraints[0], Constraint::QueryParam { .. }));
        assert!(matches!(rule.constraints[1], Constraint::JsonData { .. }));
    }

    #[test]
    fn a_closing_bracket_inside_a_constraint_regex_is_kept() {
        let rule = only_rule(r"/x[QueryParam::key==[A-Z\]]+]");
        assert_eq!(constraint_parts(&rule.constraints[0]), ("key", r"[A-Z\]]+"));
        let rule = only_rule("/x[QueryParam::a==[ab]][JsonData::b==[cd]x[]]");
        let parts: Vec<_> = rule.constraints.iter().map(constraint_parts).collect();
        assert_eq!(parts, [("a", "[ab]"), ("b", "[cd]x[]")]);
    }

    #[test]
    fn constraint_names_are_trimmed_but_regexes_are_not() {
        let rule = only_rule("/x[QueryParam:: title ==  Two words ]");
        assert_eq!(constraint_parts(&rule.constraints[0]), ("title", "  Two words "));
    }

    #[test]
    fn a_constraint_regex_may_contain_equals_signs() {
        let rule = only_rule("/x[QueryParam::cql==type=page and a==b]");
        assert_eq!(constraint_parts(&rule.constraints[0]), ("cql", "type=page and a==b"));
    }

    #[test]
    fn pattern_columns_count_characters_not_bytes() {
        let rule = only_rule("/é[QueryParam::ü==x]");
        assert_eq!(rule.constraints.len(), 1);
        let Constraint::QueryParam { regex, .. } = &rule.constraints[0] else {
            panic!("not a QueryParam");
        };
        assert_eq!(regex.column, 19);
    }

    #[test]
    fn missing_url_regex() {
        assert_error("[get]", 1, 6, "missing URL regex");
        assert_error("[QueryParam::a==b]", 1, 1, "missing URL regex");
        assert_error("/a\n  [get]  [JsonData::a==b]", 2, 10, "missing URL regex");
    }

    #[test]
    fn missing_equals() {
        assert_error(
            "/x[QueryParam::spaceKey=PM]",
            1,
            3,
            "missing '==' in [QueryParam::spaceKey=PM]",
        );
        assert_error("/a<br>/x [JsonData::type]", 2, 4, "missing '=='");
    }

    #[test]
    fn empty_name_or_path() {
        assert_error("/x[QueryParam::==PM]", 1, 16, "empty QueryParam name");
        assert_error("/x[QueryParam::  ==PM]", 1, 16, "empty QueryParam name");
        assert_error("/x[JsonData::==page]", 1, 14, "empty JsonData path");
    }

    #[test]
    fn empty_key_in_a_json_path() {
        assert_error("/x[JsonData::a..b==c]", 1, 16, "empty key in JsonData path 'a..b'");
        assert_error("/x[JsonData::.a==c]", 1, 14, "empty key");
        assert_error("/x[JsonData:: a.==c]", 1, 17, "empty key");
    }

    /// Decision: an empty constraint regex is an error, as an empty URL regex
    /// is; `(?:)` says "present and empty" explicitly.
    #[test]
    fn empty_constraint_regex() {
        assert_error("/x[QueryParam::a==]", 1, 19, "empty regex in [QueryParam::a==]");
        assert_error("/x[JsonData::a==][QueryParam::b==c]", 1, 17, "write (?:)");
        assert_eq!(
            constraint_parts(&only_rule("/x[QueryParam::a==(?:)]").constraints[0]).1,
            "(?:)"
        );
    }

    #[test]
    fn unterminated_constraint() {
        assert_error(
            "/x[QueryParam::a==b",
            1,
            3,
            "unbalanced '[': [QueryParam::a==b is never closed",
        );
        assert_error("/x[QueryParam::a==b[JsonData::c==d]", 1, 3, "never closed");
        assert_error("/ok\n/x [JsonData::a==b  ", 2, 4, "never closed");
    }

    #[test]
    fn text_between_or_after_constraints() {
        assert_error(
            "/x[QueryParam::a==b] junk [JsonData::c==d]",
            1,
            22,
            "unexpected text 'junk'",
        );
        assert_error("/x[QueryParam::a==b]junk", 1, 21, "unexpected text 'junk'");
        assert_error("/x[QueryParam::a==[b]c", 1, 22, "unexpected text 'c' after ']'");
    }

    #[test]
    fn error_lines_count_every_separator() {
        assert_error("/a<br>/b\\n\r\n<BR />[get]", 5, 6, "missing URL regex");
    }
}
