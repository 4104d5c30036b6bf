//! Rules suggested from what a token did (SPEC §16): from the methods and
//! paths of its audited calls, a small `limitTo` that allows every one of
//! them and little else.
//!
//! 1. Each call's path is cut into segments; an all-digit segment (a
//!    content id) becomes `[0-9]+`, an attachment id `att[0-9]+`, an
//!    attachment's file name (`/download/attachments/{pageId}/{file}`)
//!    `[^/]+`, so the rules keep working for the next page and file; every
//!    other segment stays literal (regex-escaped).
//! 2. One line per method and path shape, with the calls it covers.
//! 3. Lines of one method that differ in one literal segment only are merged
//!    into an alternation there (`(DOCS|PM)`), until no more merge.
//! 4. Lines with the same path for different methods share one method tag.
//!
//! Everything is ordered (`BTreeMap`s), so the same calls give the same
//! rules. The proposal is then compiled and every observed call is checked
//! against it with the real evaluator; a proposal that would refuse one is
//! an error, never printed.

use std::collections::{BTreeMap, BTreeSet};

use super::{RequestHead, RuleSet, Verdict};

/// The most words one merged segment holds; more stay on separate lines.
const MAX_ALTERNATIVES: usize = 24;

/// What every proposal says about itself.
pub const NOTE: &str = "the audit log keeps no query strings or bodies: these rules constrain methods and paths only";

/// One method and path a token called, and how often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call<'a> {
    pub method: &'a str,
    /// The canonical path, as audited.
    pub path: &'a str,
    pub calls: u64,
}

/// A proposed `limitTo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suggestion {
    /// In order: the lines of `limitTo`.
    pub rules: Vec<SuggestedRule>,
    /// Calls observed in all.
    pub observed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuggestedRule {
    pub rule: String,
    /// Observed calls this line is the first to allow.
    pub calls: u64,
}

impl Suggestion {
    /// The rules as `limitTo` text, one per line.
    pub fn limit_to(&self) -> String {
        let lines: Vec<&str> = self.rules.iter().map(|r| r.rule.as_str()).collect();
        lines.join("\n")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SuggestError {
    #[error("no calls observed: nothing to suggest rules from")]
    NothingObserved,
    /// The proposal does not compile or does not allow an observed call: a
    /// defect here, reported instead of printing rules that would break the script.
    #[error("the proposed rules would not allow {0}; please report this")]
    Unverified(String),
}

/// A path segment of a line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Segment {
    /// All digits: `[0-9]+`.
    Number,
    /// An attachment id: `att[0-9]+`.
    AttachmentId,
    /// An attachment's file name: `[^/]+`.
    FileName,
    /// One of these literal words (one, unless lines were merged).
    Words(BTreeSet<String>),
}

type Shape = Vec<Segment>;

/// Proposes rules that allow every one of `calls` (see the module doc).
pub fn suggest(calls: &[Call<'_>]) -> Result<Suggestion, SuggestError> {
    let observed: u64 = calls.iter().map(|c| c.calls).sum();
    if calls.is_empty() || observed == 0 {
        return Err(SuggestError::NothingObserved);
    }
    let mut lines: BTreeSet<(String, Shape)> = calls
        .iter()
        .map(|call| (call.method.to_owned(), shape_of(call.path)))
        .collect();
    while let Some(merged) = merge_once(&lines) {
        lines = merged;
    }
    // Same path shape, several methods: one line with a method tag listing them.
    let mut by_shape: BTreeMap<Shape, BTreeSet<usize>> = BTreeMap::new();
    let mut untagged: BTreeSet<Shape> = BTreeSet::new();
    for (method, shape) in lines {
        match method_index(&method) {
            Some(index) => {
                by_shape.entry(shape).or_default().insert(index);
            }
            // A method no tag can name: the line allows every method there.
            None => {
                untagged.insert(shape);
            }
        }
    }
    let mut texts: Vec<(String, String)> = by_shape
        .into_iter()
        .map(|(shape, methods)| {
            let path = path_regex(&shape);
            let tag: Vec<String> = methods.iter().map(|i| METHODS[*i].to_ascii_lowercase()).collect();
            (path.clone(), format!("[{}]{path}", tag.join("|")))
        })
        .chain(untagged.iter().map(|shape| (path_regex(shape), path_regex(shape))))
        .collect();
    texts.sort();
    texts.dedup();
    let rules: Vec<String> = texts.into_iter().map(|(_, rule)| rule).collect();
    verify(rules, calls, observed)
}

/// Compiles the proposal and finds, for every observed call, the first line
/// that allows it.
fn verify(rules: Vec<String>, calls: &[Call<'_>], observed: u64) -> Result<Suggestion, SuggestError> {
    let set = RuleSet::parse(&rules.join("\n")).map_err(|e| SuggestError::Unverified(format!("anything ({e})")))?;
    let mut counts = vec![0u64; rules.len()];
    for call in calls {
        let head = RequestHead {
            method: call.method,
            path: call.path,
            query: None,
        };
        let refused = || SuggestError::Unverified(format!("{} {}", call.method, call.path));
        let Verdict::Permit(permit) = set.check(&head) else {
            return Err(refused());
        };
        let line = permit.line().ok_or_else(refused)?;
        let text = set.line(line).ok_or_else(refused)?;
        let index = rules.iter().position(|rule| rule == text).ok_or_else(refused)?;
        counts[index] += call.calls;
    }
    let rules = rules
        .into_iter()
        .zip(counts)
        .map(|(rule, calls)| SuggestedRule { rule, calls })
        .collect();
    Ok(Suggestion { rules, observed })
}

/// The methods a tag may name, in the order a tag lists them.
const METHODS: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];

fn method_index(method: &str) -> Option<usize> {
    METHODS.iter().position(|m| *m == method)
}

fn shape_of(path: &str) -> Shape {
    let path = path.strip_prefix('/').unwrap_or(path);
    let is_number = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let mut shape: Shape = path
        .split('/')
        .map(|segment| match segment.strip_prefix("att") {
            _ if is_number(segment) => Segment::Number,
            Some(digits) if is_number(digits) => Segment::AttachmentId,
            _ => Segment::Words(BTreeSet::from([segment.to_owned()])),
        })
        .collect();
    let word = |s: &str| Segment::Words(BTreeSet::from([s.to_owned()]));
    if shape.len() == 4 && shape[..3] == [word("download"), word("attachments"), Segment::Number] {
        shape[3] = Segment::FileName;
    }
    shape
}

/// One round of merging: for the last position first, lines of one method
/// and length that differ only in a literal segment there become one line.
/// `None` when nothing merges any more.
fn merge_once(lines: &BTreeSet<(String, Shape)>) -> Option<BTreeSet<(String, Shape)>> {
    let longest = lines.iter().map(|(_, shape)| shape.len()).max().unwrap_or(0);
    for position in (0..longest).rev() {
        // Lines with words at `position`, keyed by their method and every
        // other segment (before and after it), with those words.
        type Key<'a> = (&'a str, &'a [Segment], &'a [Segment]);
        let mut groups: BTreeMap<Key<'_>, Vec<&BTreeSet<String>>> = BTreeMap::new();
        let mut rest: BTreeSet<(String, Shape)> = BTreeSet::new();
        for (method, shape) in lines {
            match shape.get(position) {
                Some(Segment::Words(words)) => {
                    let key = (method.as_str(), &shape[..position], &shape[position + 1..]);
                    groups.entry(key).or_default().push(words);
                }
                _ => {
                    rest.insert((method.clone(), shape.clone()));
                }
            }
        }
        let mut merged_any = false;
        for ((method, before, after), word_sets) in groups {
            let union: BTreeSet<String> = word_sets.iter().copied().flatten().cloned().collect();
            let merge = word_sets.len() > 1 && union.len() <= MAX_ALTERNATIVES;
            merged_any |= merge;
            let sets = if merge {
                vec![union]
            } else {
                word_sets.into_iter().cloned().collect()
            };
            for words in sets {
                let shape = before
                    .iter()
                    .cloned()
                    .chain([Segment::Words(words)])
                    .chain(after.iter().cloned())
                    .collect();
                rest.insert((method.to_owned(), shape));
            }
        }
        if merged_any {
            return Some(rest);
        }
    }
    None
}

fn path_regex(shape: &Shape) -> String {
    let mut regex = String::new();
    for segment in shape {
        regex.push('/');
        match segment {
            Segment::Number => regex.push_str("[0-9]+"),
            Segment::AttachmentId => regex.push_str("att[0-9]+"),
            Segment::FileName => regex.push_str("[^/]+"),
            Segment::Words(words) if words.len() == 1 => regex.push_str(&escape(words.first().expect("one word"))),
            Segment::Words(words) => {
                let words: Vec<String> = words.iter().map(|w| escape(w)).collect();
                regex.push('(');
                regex.push_str(&words.join("|"));
                regex.push(')');
            }
        }
    }
    regex
}

/// A path segment as a literal regex that also survives the rule syntax:
/// no `[` (it could start a `[QueryParam::`), no `\` before an `n` or `<`
/// (they could read as a line break), no spaces (a rule is trimmed).
fn escape(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    for c in word.chars() {
        match c {
            '\\' | '[' | '<' => out.push_str(&format!("\\x{{{:X}}}", u32::from(c))),
            c if c.is_whitespace() || c.is_control() => out.push_str(&format!("\\x{{{:X}}}", u32::from(c))),
            '.' | '+' | '*' | '?' | '(' | ')' | '|' | ']' | '{' | '}' | '^' | '$' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn call(method: &'static str, path: &'static str, calls: u64) -> Call<'static> {
        Call { method, path, calls }
    }

    fn rules(suggestion: &Suggestion) -> Vec<(&str, u64)> {
        suggestion.rules.iter().map(|r| (r.rule.as_str(), r.calls)).collect()
    }

    #[test]
    fn numbers_generalise_words_stay_and_near_identical_lines_merge() {
        let calls = [
            call("GET", "/rest/api/content/123", 5),
            call("GET", "/rest/api/content/456", 2),
            call("PUT", "/rest/api/content/123", 1),
            call("GET", "/rest/api/space/DOCS", 3),
            call("GET", "/rest/api/space/PM", 1),
            call("POST", "/rest/api/content", 4),
            call("GET", "/rest/api/content/123/child/attachment", 2),
        ];
        let suggestion = suggest(&calls).unwrap();
        assert_eq!(
            rules(&suggestion),
            [
                ("[post]/rest/api/content", 4),
                ("[get|put]/rest/api/content/[0-9]+", 8),
                ("[get]/rest/api/content/[0-9]+/child/attachment", 2),
                ("[get]/rest/api/space/(DOCS|PM)", 4),
            ]
        );
        assert_eq!(suggestion.observed, 18);
        assert_eq!(suggest(&calls).unwrap(), suggestion, "deterministic");
        let mut reversed = calls;
        reversed.reverse();
        assert_eq!(
            suggest(&reversed).unwrap(),
            suggestion,
            "whatever the order of the audit"
        );
    }

    #[test]
    fn attachment_ids_and_file_names_generalise() {
        let calls = [
            call("GET", "/download/attachments/123/report.pdf", 2),
            call("GET", "/download/attachments/456/diagram%20v2.png", 1),
            call("PUT", "/rest/api/content/123/child/attachment/att456/data", 1),
        ];
        let suggestion = suggest(&calls).unwrap();
        assert_eq!(
            rules(&suggestion),
            [
                ("[get]/download/attachments/[0-9]+/[^/]+", 3),
                ("[put]/rest/api/content/[0-9]+/child/attachment/att[0-9]+/data", 1),
            ]
        );
        let set = RuleSet::parse(&suggestion.limit_to()).unwrap();
        for (method, path) in [
            ("GET", "/download/attachments/789/next-file.docx"),
            ("PUT", "/rest/api/content/9/child/attachment/att10/data"),
        ] {
            let head = RequestHead {
                method,
                path,
                query: None,
            };
            assert!(matches!(set.check(&head), Verdict::Permit(_)), "the next {path}");
        }
        let head = RequestHead {
            method: "GET",
            path: "/download/attachments/789/a/b",
            query: None,
        };
        assert!(
            matches!(set.check(&head), Verdict::Denied(_)),
            "one file name, not a path"
        );
    }

    #[test]
    fn the_proposal_refuses_what_was_never_done() {
        let suggestion = suggest(&[
            call("GET", "/rest/api/space/DOCS/content", 9),
            call("GET", "/rest/api/content/77", 1),
        ])
        .unwrap();
        let set = RuleSet::parse(&suggestion.limit_to()).unwrap();
        let allowed = |method, path| {
            matches!(
                set.check(&RequestHead {
                    method,
                    path,
                    query: None
                }),
                Verdict::Permit(_)
            )
        };
        assert!(allowed("GET", "/rest/api/content/78"));
        assert!(!allowed("GET", "/rest/api/space/SECRET/content"), "another space");
        assert!(!allowed("DELETE", "/rest/api/content/77"), "a method never used");
        assert!(!allowed("GET", "/rest/api/content/77/x"));
        assert!(!allowed("GET", "/rest/api/content/abc"));
    }

    #[test]
    fn literals_that_look_like_rule_syntax_are_escaped() {
        let odd = [
            call("GET", "/wiki/a.b+c(d)/x", 1),
            call("GET", "/x/[QueryParam::a==b]", 1),
            call("GET", "/x/a\\nb", 1),
            call("GET", "/x/<br>", 1),
            call("GET", "/x/tail ", 1),
            call("GET", "/x/", 1),
            call("PROPFIND", "/dav/1", 1),
        ];
        let suggestion = suggest(&odd).unwrap();
        assert!(
            suggestion
                .rules
                .iter()
                .all(|r| !r.rule.contains("[Q") && !r.rule.contains("<br"))
        );
        assert!(
            rules(&suggestion).contains(&("/dav/[0-9]+", 1)),
            "no tag names PROPFIND"
        );
        assert_eq!(suggestion.rules.iter().map(|r| r.calls).sum::<u64>(), 7);
    }

    #[test]
    fn nothing_observed_is_an_error() {
        assert_eq!(suggest(&[]), Err(SuggestError::NothingObserved));
        assert_eq!(suggest(&[call("GET", "/x", 0)]), Err(SuggestError::NothingObserved));
    }

    #[test]
    fn many_different_words_stay_on_separate_lines() {
        let paths: Vec<String> = (0..40).map(|i| format!("/display/DOCS/Page-{i:02}x")).collect();
        let calls: Vec<Call<'_>> = paths
            .iter()
            .map(|path| Call {
                method: "GET",
                path,
                calls: 1,
            })
            .collect();
        let suggestion = suggest(&calls).unwrap();
        assert!(suggestion.rules.len() >= 2);
        assert!(
            suggestion
                .rules
                .iter()
                .all(|r| r.rule.matches('|').count() < MAX_ALTERNATIVES)
        );
    }

    fn method() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "MOVE"])
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            "[0-9]{1,6}",
            "[A-Z]{2,5}",
            "(content|space|child|attachment|api|rest|label)",
            "[a-zA-Z0-9._~%!$&'()*+,;=:@\\[\\]<>\\\\ -]{0,8}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn every_observed_call_is_allowed(
            observed in prop::collection::vec(
                (method(), prop::collection::vec(segment(), 0..6), 1u64..50),
                1..40,
            )
        ) {
            let paths: Vec<(&str, String, u64)> = observed
                .iter()
                .map(|(method, segments, calls)| (*method, format!("/{}", segments.join("/")), *calls))
                .collect();
            let calls: Vec<Call<'_>> = paths
                .iter()
                .map(|(method, path, calls)| Call { method, path, calls: *calls })
                .collect();
            let suggestion = suggest(&calls).unwrap();
            let total: u64 = calls.iter().map(|c| c.calls).sum();
            prop_assert_eq!(suggestion.rules.iter().map(|r| r.calls).sum::<u64>(), total);
            let set = RuleSet::parse(&suggestion.limit_to()).unwrap();
            for call in &calls {
                let head = RequestHead { method: call.method, path: call.path, query: None };
                prop_assert!(matches!(set.check(&head), Verdict::Permit(_)), "{} {}", call.method, call.path);
            }
            prop_assert_eq!(suggest(&calls).unwrap(), suggestion);
        }
    }
}
