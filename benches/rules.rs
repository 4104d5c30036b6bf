//! Rule evaluation cost per request (SPEC 11: under 10 µs for a token with
//! 100 rules), for tokens of 1, 10 and 100 rules of three kinds, with a
//! request the last rule allows and one no rule allows. Also what parsing and
//! compiling a token costs, which is paid once per token load.
//!
//! Run: `cargo bench --bench rules -- --measurement-time 1 --warm-up-time 0.3`

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use tokengate::{JsonBody, RequestHead, RuleSet, Verdict};

const RULE_COUNTS: [usize; 3] = [1, 10, 100];

/// A request as the bench sends it.
struct Request {
    method: &'static str,
    path: String,
    query: Option<String>,
    /// A JSON body, parsed before timing: its parsing is timed on its own.
    json: Option<String>,
}

impl Request {
    fn get(path: impl Into<String>, query: Option<String>) -> Request {
        let path = path.into();
        Request {
            method: "GET",
            path,
            query,
            json: None,
        }
    }

    fn post_json(path: &str, json: String) -> Request {
        let (path, query) = (path.to_owned(), None);
        Request {
            method: "POST",
            path,
            query,
            json: Some(json),
        }
    }

    fn head(&self) -> RequestHead<'_> {
        RequestHead {
            method: self.method,
            path: &self.path,
            query: self.query.as_deref(),
        }
    }

    fn body(&self) -> JsonBody {
        match &self.json {
            Some(json) => JsonBody::parse(Some("application/json"), json.as_bytes()).unwrap(),
            None => JsonBody::NotJson,
        }
    }
}

/// A token kind: how its rule `i` reads, the request the last of `n` rules
/// allows, and a request no rule allows.
struct TokenKind {
    name: &'static str,
    rule: fn(usize) -> String,
    allowed: fn(usize) -> Request,
    denied: fn() -> Request,
}

const KINDS: [TokenKind; 3] = [
    // Distinct URLs: the set finds the one candidate in one pass.
    TokenKind {
        name: "url_only",
        rule: |i| format!("[get|head].*/rest/api/space/SPACE{i}/content.*"),
        allowed: |n| Request::get(format!("/rest/api/space/SPACE{}/content/page", n - 1), None),
        denied: || Request::get("/rest/api/user/current", None),
    },
    // One URL for all rules: every rule is a candidate, its QueryParams decide.
    // Their values are real regexes, the slower path (plain values compare as strings).
    TokenKind {
        name: "query_param",
        rule: |i| {
            format!(
                "[get].*/rest/api/content[QueryParam::spaceKey==(SPACE|ARCHIVE){i}]\
                 [QueryParam::expand==history|body\\.storage]"
            )
        },
        allowed: |n| {
            let query = format!("spaceKey=SPACE{}&expand=history&limit=25", n - 1);
            Request::get("/rest/api/content", Some(query))
        },
        denied: || {
            let query = "spaceKey=OTHER&expand=history&limit=25".to_owned();
            Request::get("/rest/api/content", Some(query))
        },
    },
    // One URL for all rules: both passes, as the gateway runs them. Plain
    // values, as in SPEC 3.6.
    TokenKind {
        name: "json_data",
        rule: |i| format!("[post].*/rest/api/content/?[JsonData::space.key==SPACE{i}][JsonData::type==page]"),
        allowed: |n| Request::post_json("/rest/api/content", page_in_space(n - 1)),
        denied: || Request::post_json("/rest/api/content", page_in_space(999)),
    },
];

fn page_in_space(space: usize) -> String {
    format!(
        r#"{{"type":"page","title":"Release notes","space":{{"key":"SPACE{space}"}},"body":{{"storage":{{"value":"<p>Hello</p>","representation":"storage"}}}}}}"#
    )
}

fn token(kind: &TokenKind, rule_count: usize) -> RuleSet {
    let text: Vec<String> = (0..rule_count).map(kind.rule).collect();
    RuleSet::parse(&text.join("\n")).expect("bench rules parse")
}

/// Evaluates a request as the gateway does: the first pass, then the second
/// with the (already parsed) body when the first asks for it.
fn evaluate(rules: &RuleSet, head: &RequestHead<'_>, body: &JsonBody) -> bool {
    match rules.check(head) {
        Verdict::Permit(_) => true,
        Verdict::Denied(_) => false,
        Verdict::NeedsJsonBody => rules.check_with_body(head, body).is_ok(),
    }
}

fn bench_evaluation(c: &mut Criterion) {
    let mut group = c.benchmark_group("evaluate");
    for kind in &KINDS {
        for rule_count in RULE_COUNTS {
            let rules = token(kind, rule_count);
            let (allowed, denied) = ((kind.allowed)(rule_count), (kind.denied)());
            let (allowed_head, allowed_body) = (allowed.head(), allowed.body());
            let (denied_head, denied_body) = (denied.head(), denied.body());
            assert!(evaluate(&rules, &allowed_head, &allowed_body));
            assert!(!evaluate(&rules, &denied_head, &denied_body));

            let id = |outcome: &str| BenchmarkId::new(format!("{}/{outcome}", kind.name), rule_count);
            group.bench_function(id("allowed_last_rule"), |b| {
                b.iter(|| evaluate(&rules, black_box(&allowed_head), &allowed_body))
            });
            group.bench_function(id("denied"), |b| {
                b.iter(|| evaluate(&rules, black_box(&denied_head), &denied_body))
            });
        }
    }
    group.finish();
}

fn bench_json_body_parse(c: &mut Criterion) {
    let body = page_in_space(99);
    c.bench_function("json_body_parse", |b| {
        b.iter(|| JsonBody::parse(Some("application/json"), black_box(body.as_bytes())))
    });
}

fn bench_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_and_compile");
    for kind in &KINDS {
        for rule_count in [1, 10] {
            let text: Vec<String> = (0..rule_count).map(kind.rule).collect();
            let text = text.join("\n");
            group.bench_function(BenchmarkId::new(kind.name, rule_count), |b| {
                b.iter(|| RuleSet::parse(black_box(&text)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench_evaluation, bench_json_body_parse, bench_parse);
criterion_main!(benches);
