//! Confining a CQL search to a token's spaces (SPEC §17). The query is read as
//! Confluence's lexer reads it, refused when that reading is in doubt, and
//! rewritten to `(<query>) AND space in ("A","B")`, so that whatever the query
//! says, the top level of what Confluence runs is the added `AND`.
//!
//! Decisions beyond the spec: outside strings a `\` is refused (Confluence might
//! read it as an escape that hides a quote or a parenthesis), and so is any
//! control character other than tab, CR and LF. A trailing `ORDER BY` is rebuilt
//! from its tokens (`ORDER BY title DESC, created`), so nothing but field names
//! made of `[A-Za-z0-9_.-]`, `ASC`, `DESC` and commas reaches the top level.

/// Why a CQL query cannot be confined (400 `bad_cql`). A variant's number is
/// the position of the offending character, counting characters from 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CqlError {
    /// Nothing to search with: the query is blank, or only an `ORDER BY`.
    #[error("the cql has no query before its end or its ORDER BY")]
    Empty,
    /// A string that the end of the query leaves open, possibly because a `\`
    /// escapes its closing quote.
    #[error("the cql's string starting at character {0} is not closed")]
    UnclosedString(usize),
    /// A `\` outside any string.
    #[error("the cql has a '\\' outside a string at character {0}")]
    BackslashOutsideString(usize),
    /// A control character other than tab, CR or LF, in a string or not.
    #[error("the cql has a control character at character {0}")]
    ControlCharacter(usize),
    /// A `)` with no `(` open before it.
    #[error("the cql's parentheses do not balance: a ')' at character {0} closes nothing")]
    UnmatchedClose(usize),
    /// A `(` that the end of the query leaves open.
    #[error("the cql's parentheses do not balance: the '(' at character {0} is never closed")]
    UnclosedOpen(usize),
    /// A trailing `ORDER BY` that is not a list of fields.
    #[error("the cql's ORDER BY is not a comma-separated list of fields with an optional ASC or DESC (character {0})")]
    BadOrderBy(usize),
}

/// `cql` confined to `spaces`: `(<query>) AND space in ("A","B")`, followed by
/// ` ORDER BY a DESC, b` when the query ends with an `ORDER BY` (fields kept as
/// written, directions in capitals). The query is kept byte for byte from its
/// first token to its last, its surrounding whitespace dropped. The keys are
/// validated elsewhere (`[A-Za-z0-9_~.@-]+`, at least one); `"` and `\` are
/// escaped all the same.
pub fn confine(cql: &str, spaces: &[String]) -> Result<String, CqlError> {
    let tokens = tokenize(cql)?;
    check_nesting(cql, &tokens)?;
    let (query, order_by) = match order_by_start(cql, &tokens) {
        Some(order) => (&tokens[..order], order_by_items(cql, &tokens[order + 2..])?),
        None => (&tokens[..], Vec::new()),
    };
    let (Some(first), Some(last)) = (query.first(), query.last()) else {
        return Err(CqlError::Empty);
    };
    let keys: Vec<String> = spaces
        .iter()
        .map(|key| format!("\"{}\"", key.replace('\\', r"\\").replace('"', r#"\""#)))
        .collect();
    let mut confined = format!("({}) AND space in ({})", &cql[first.start..last.end], keys.join(","));
    if !order_by.is_empty() {
        confined.push_str(" ORDER BY ");
        confined.push_str(&order_by.join(", "));
    }
    Ok(confined)
}

/// The fuzz and property invariant. Panics, naming what broke, unless `confine`
/// refuses `cql` with a well-formed message, or its result re-tokenises to
/// exactly `( <query> ) AND space in ( "k1" , ... ) [ORDER BY field [ASC|DESC] (, ...)*]`
/// where `<query>` is `cql` minus surrounding whitespace and its `ORDER BY`,
/// the keys are `spaces`, and the fields are those of `cql`'s `ORDER BY`.
#[cfg(any(fuzzing, test))]
pub fn check_invariants(cql: &str, spaces: &[String]) {
    let confined = match confine(cql, spaces) {
        Ok(confined) => confined,
        Err(error) => {
            let message = error.to_string();
            let well_formed = message.starts_with(char::is_lowercase) && !message.ends_with('.');
            assert!(well_formed, "{message:?} is not lowercase without a final period");
            return;
        }
    };
    let tokens = tokenize(&confined).unwrap_or_else(|e| panic!("{confined:?} does not tokenise: {e}"));
    let close = matching_close(&tokens).unwrap_or_else(|| panic!("{confined:?} does not start with a closed '('"));
    let query = &confined[tokens[0].end..tokens[close].start];
    let starts_cql = |&at: &usize| tokenize(&cql[..at]).is_ok_and(|before| before.is_empty());
    let at = cql.find(query).filter(starts_cql).filter(|_| !query.trim().is_empty());
    let at = at.unwrap_or_else(|| panic!("{confined:?} does not wrap the start of {cql:?}"));
    let tail = check_space_list(&confined, &tokens[close + 1..], spaces);
    check_order_by(&confined, tail, &cql[at + query.len()..]);
    assert!(
        confine(&confined, spaces).is_ok(),
        "{confined:?} cannot itself be confined"
    );
}

/// That `top` (the tokens after the outer parentheses) begins with
/// `AND space in ( "k1" , ... )` listing `spaces`; returns the tokens after it.
#[cfg(any(fuzzing, test))]
fn check_space_list<'t>(confined: &str, top: &'t [Token], spaces: &[String]) -> &'t [Token] {
    let value = |t: &Token| match t.kind {
        Kind::Str => unquote(t.text(confined)),
        _ => t.text(confined).to_owned(),
    };
    let found: Vec<(Kind, String)> = top.iter().map(|t| (t.kind, value(t))).collect();
    let owned = |kind, text: &str| (kind, text.to_owned());
    let mut expected = vec![
        owned(Kind::Word, "AND"),
        owned(Kind::Word, "space"),
        owned(Kind::Word, "in"),
    ];
    expected.push(owned(Kind::Open, "("));
    for (index, key) in spaces.iter().enumerate() {
        expected.extend((index > 0).then(|| owned(Kind::Comma, ",")));
        expected.push(owned(Kind::Str, key));
    }
    expected.push(owned(Kind::Close, ")"));
    assert!(
        found.starts_with(&expected),
        "{confined:?} is not confined by the added AND to {spaces:?}"
    );
    &top[expected.len()..]
}

/// That `tail`, the top level after the space list, is nothing or `ORDER BY`
/// and `field [ASC|DESC]` items separated by commas, and that it is
/// `original`, the text after the query, up to the case of keywords.
#[cfg(any(fuzzing, test))]
fn check_order_by(confined: &str, tail: &[Token], original: &str) {
    let texts: Vec<&str> = tail.iter().map(|t| t.text(confined)).collect();
    if !texts.is_empty() {
        assert!(
            texts.starts_with(&["ORDER", "BY"]),
            "{confined:?} has more than ORDER BY after the space list"
        );
        for item in tail[2..].split(|t| t.kind == Kind::Comma) {
            let words: Vec<&str> = item.iter().map(|t| t.text(confined)).collect();
            let field = item.first().is_some_and(|t| is_field(confined, t));
            let directed = matches!(words[..], [_] | [_, "ASC" | "DESC"]);
            assert!(field && directed, "{confined:?} has {words:?} as an ORDER BY item");
        }
    }
    let original_tokens = tokenize(original).expect("what follows a token tokenises");
    let originals: Vec<&str> = original_tokens.iter().map(|t| t.text(original)).collect();
    let kept = texts.len() == originals.len()
        && texts.iter().zip(&originals).all(|(ours, theirs)| {
            ours == theirs || (ours.eq_ignore_ascii_case(theirs) && ["ORDER", "BY", "ASC", "DESC"].contains(ours))
        });
    assert!(kept, "{confined:?} does not keep the ORDER BY {original:?}");
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Open,
    Close,
    Comma,
    /// A quoted string, quotes included.
    Str,
    /// A run of `= ! ~ < >`.
    Operator,
    /// Anything else between separators: fields, values, keywords.
    Word,
}

/// A token and its byte span in the query.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

impl Token {
    fn text(self, cql: &str) -> &str {
        &cql[self.start..self.end]
    }
}

/// The tokens of `cql` as Confluence reads them: whitespace separates; `(`,
/// `)` and `,` stand alone; strings are in `"` or `'` and `\` escapes the next
/// character.
fn tokenize(cql: &str) -> Result<Vec<Token>, CqlError> {
    let mut tokens = Vec::new();
    let mut chars = cql.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        let kind = match c {
            c if is_refused_control(c) => {
                return Err(CqlError::ControlCharacter(position(cql, start)));
            }
            c if c.is_whitespace() => continue,
            '(' => Kind::Open,
            ')' => Kind::Close,
            ',' => Kind::Comma,
            '\\' => {
                return Err(CqlError::BackslashOutsideString(position(cql, start)));
            }
            '"' | '\'' => {
                let mut escaped = false;
                loop {
                    let Some((at, next)) = chars.next() else {
                        return Err(CqlError::UnclosedString(position(cql, start)));
                    };
                    if is_refused_control(next) {
                        return Err(CqlError::ControlCharacter(position(cql, at)));
                    }
                    match next {
                        _ if escaped => escaped = false,
                        '\\' => escaped = true,
                        _ if next == c => break,
                        _ => {}
                    }
                }
                Kind::Str
            }
            c if is_operator(c) => {
                while chars.next_if(|&(_, c)| is_operator(c)).is_some() {}
                Kind::Operator
            }
            _ => {
                while chars.next_if(|&(_, c)| is_word_char(c)).is_some() {}
                Kind::Word
            }
        };
        let end = chars.peek().map_or(cql.len(), |&(at, _)| at);
        tokens.push(Token { kind, start, end });
    }
    Ok(tokens)
}

/// Control characters are refused in and out of strings, but for tab, CR and LF.
fn is_refused_control(c: char) -> bool {
    c.is_control() && !matches!(c, '\t' | '\n' | '\r')
}

fn is_operator(c: char) -> bool {
    matches!(c, '=' | '!' | '~' | '<' | '>')
}

fn is_word_char(c: char) -> bool {
    !(c.is_whitespace() || c.is_control() || is_operator(c) || matches!(c, '(' | ')' | ',' | '"' | '\'' | '\\'))
}

/// The 1-based character position of the byte offset `at`.
fn position(cql: &str, at: usize) -> usize {
    cql[..at].chars().count() + 1
}

/// Depth never below zero, and zero at the end.
fn check_nesting(cql: &str, tokens: &[Token]) -> Result<(), CqlError> {
    let mut open = Vec::new();
    for token in tokens {
        match token.kind {
            Kind::Open => open.push(token.start),
            Kind::Close if open.pop().is_none() => {
                return Err(CqlError::UnmatchedClose(position(cql, token.start)));
            }
            _ => {}
        }
    }
    match open.last() {
        Some(&start) => Err(CqlError::UnclosedOpen(position(cql, start))),
        None => Ok(()),
    }
}

/// The index of the first `ORDER` followed by `BY` at depth zero.
fn order_by_start(cql: &str, tokens: &[Token]) -> Option<usize> {
    let mut depth = 0usize;
    tokens.windows(2).position(|pair| {
        match pair[0].kind {
            Kind::Open => depth += 1,
            Kind::Close => depth = depth.saturating_sub(1),
            _ => {}
        }
        depth == 0 && is_keyword(cql, &pair[0], "ORDER") && is_keyword(cql, &pair[1], "BY")
    })
}

/// The `field [ASC|DESC]` items of the tokens after `ORDER BY`, rebuilt with
/// the direction in capitals.
fn order_by_items(cql: &str, tokens: &[Token]) -> Result<Vec<String>, CqlError> {
    let bad = |token: Option<&Token>| CqlError::BadOrderBy(position(cql, token.map_or(cql.len(), |t| t.start)));
    let mut items = Vec::new();
    let mut rest = tokens.iter().peekable();
    loop {
        let next = rest.next();
        let mut item = next
            .filter(|t| is_field(cql, t))
            .ok_or_else(|| bad(next))?
            .text(cql)
            .to_owned();
        if let Some(direction) = rest.next_if(|t| is_direction(t.text(cql))) {
            item.push(' ');
            item.push_str(&direction.text(cql).to_ascii_uppercase());
        }
        items.push(item);
        match rest.next() {
            None => return Ok(items),
            Some(comma) if comma.kind == Kind::Comma => {}
            Some(other) => return Err(bad(Some(other))),
        }
    }
}

/// A field name to order by: `[A-Za-z0-9_.-]+`, and not a keyword.
fn is_field(cql: &str, token: &Token) -> bool {
    let text = token.text(cql);
    let keywords = ["AND", "OR", "NOT", "IN", "ORDER", "BY", "ASC", "DESC"];
    token.kind == Kind::Word
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && !keywords.iter().any(|k| text.eq_ignore_ascii_case(k))
}

fn is_direction(text: &str) -> bool {
    text.eq_ignore_ascii_case("ASC") || text.eq_ignore_ascii_case("DESC")
}

fn is_keyword(cql: &str, token: &Token, keyword: &str) -> bool {
    token.kind == Kind::Word && token.text(cql).eq_ignore_ascii_case(keyword)
}

/// The index of the `)` that closes the first token, if that is a `(`.
#[cfg(any(fuzzing, test))]
fn matching_close(tokens: &[Token]) -> Option<usize> {
    if tokens.first()?.kind != Kind::Open {
        return None;
    }
    let mut depth = 0usize;
    for (index, token) in tokens.iter().enumerate() {
        match token.kind {
            Kind::Open => depth += 1,
            Kind::Close => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    return Some(index);
                }
            }
            _ => {}
        }
    }
    None
}

/// A string token's value: quotes removed, escapes resolved.
#[cfg(any(fuzzing, test))]
fn unquote(quoted: &str) -> String {
    let mut chars = quoted[1..quoted.len() - 1].chars();
    let mut value = String::new();
    while let Some(c) = chars.next() {
        value.push(if c == '\\' { chars.next().unwrap_or('\\') } else { c });
    }
    value
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn spaces() -> Vec<String> {
        vec!["DOCS".into(), "PM".into()]
    }

    fn confined(cql: &str) -> String {
        check_invariants(cql, &spaces());
        confine(cql, &spaces()).unwrap_or_else(|e| panic!("{cql:?} refused: {e}"))
    }

    fn refused(cql: &str) -> CqlError {
        check_invariants(cql, &spaces());
        confine(cql, &spaces()).expect_err(cql)
    }

    #[test]
    fn wraps_the_query_byte_for_byte_whatever_it_says() {
        for cql in [
            "type=page",
            "  (a = b) OR ((c ~ d))\n",
            "space = SECRET OR type = page",
            "title ~ \"héllo – 日本\"\t",
            r"title ~ 'it\'s'",
            r#"title ~ "a\" OR space=SECRET OR \"b""#,
            "(type=page ORDER BY title)",
            "title ~ \"x ORDER BY title\"",
            "title = order",
            "order = by",
        ] {
            assert_eq!(confined(cql), format!(r#"({}) AND space in ("DOCS","PM")"#, cql.trim()));
        }
        let one = confine("space = SECRET OR type = page", &["DOCS".into()]);
        assert_eq!(
            one.as_deref(),
            Ok(r#"(space = SECRET OR type = page) AND space in ("DOCS")"#)
        );
        assert_eq!(
            confine("x", &[r#"a"b\"#.into()]).as_deref(),
            Ok(r#"(x) AND space in ("a\"b\\")"#)
        );
    }

    #[test]
    fn keeps_a_trailing_order_by_after_the_added_clause() {
        for (cql, query, tail) in [
            ("type=page ORDER BY title", "type=page", "ORDER BY title"),
            ("type=page order by created desc", "type=page", "ORDER BY created DESC"),
            (
                "a Order\n By b Asc ,c,  x.y-z DESC",
                "a",
                "ORDER BY b ASC, c, x.y-z DESC",
            ),
            ("(a = b)ORDER BY title", "(a = b)", "ORDER BY title"),
        ] {
            assert_eq!(confined(cql), format!(r#"({query}) AND space in ("DOCS","PM") {tail}"#));
        }
    }

    #[test]
    fn refuses_what_it_cannot_read_as_confluence_does() {
        use CqlError::*;
        for (cql, error) in [
            ("type=page) OR space=SECRET OR (type=page", UnmatchedClose(10)),
            ("(type=page", UnclosedOpen(1)),
            ("((a) (b)", UnclosedOpen(1)),
            ("type=page)", UnmatchedClose(10)),
            ("title = \"a)\" OR (b", UnclosedOpen(17)),
            ("title = \"abc", UnclosedString(9)),
            ("title = 'abc", UnclosedString(9)),
            (r#"title ~ "abc\""#, UnclosedString(9)),
            (r#"title ~ "abc\"#, UnclosedString(9)),
            (r#"title = a\"b"#, BackslashOutsideString(10)),
            ("a\0", ControlCharacter(2)),
            ("'\u{1b}'", ControlCharacter(2)),
            (" \t\r\n ", Empty),
            ("ORDER BY title", Empty),
            ("a = b ORDER BY title) OR (x", UnmatchedClose(21)),
            ("a ORDER BY x, DESC", BadOrderBy(15)),
            ("a ORDER BY x,", BadOrderBy(14)),
        ] {
            assert_eq!(refused(cql), error, "{cql:?}");
        }
        let message = refused("type=page) OR (x").to_string();
        assert_eq!(
            message,
            "the cql's parentheses do not balance: a ')' at character 10 closes nothing"
        );
    }

    #[test]
    fn refuses_an_order_by_that_is_not_a_field_list() {
        for cql in [
            "a = b ORDER BY title OR space=X",
            "a = b ORDER BY (title) OR (x)",
            "a = b ORDER BY",
            "a = b ORDER BY title ASC DESC",
            "a = b ORDER BY \"title\"",
            "a = b ORDER BY title ORDER BY x",
            "a = b ORDER BY desc",
            "a = b ORDER BY title=x",
        ] {
            assert!(matches!(refused(cql), CqlError::BadOrderBy(_)), "{cql:?}");
        }
    }

    fn cql_soup() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            4 => r#"[()"'\\ a-zA-Z0-9=,~!<>.\t]"#,
            2 => prop::sample::select(&["AND", "OR", "NOT", "space", "in", "desc", ", x", "\0", "\u{a0}"][..])
                .prop_map(String::from),
            1 => Just(" ORDER BY ".to_owned()),
        ];
        prop::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
    }

    fn quoted(quote: char, value: &str) -> String {
        let mut text = quote.to_string();
        for c in value.chars() {
            if c == quote || c == '\\' {
                text.push('\\');
            }
            text.push(c);
        }
        text.push(quote);
        text
    }

    fn clause() -> impl Strategy<Value = String> {
        let value = prop_oneof![
            "[a-z0-9]{1,8}",
            (prop::sample::select(&['"', '\''][..]), r#"[a-z ()'"\\,é]{0,10}"#).prop_map(|(q, v)| quoted(q, &v)),
        ];
        let operator = prop::sample::select(&["=", "!=", "~", "!~", ">", ">=", "<", "<="][..]);
        let field = prop::sample::select(&["type", "space", "title", "label", "ancestor"][..]);
        let leaf = (field, operator, value).prop_map(|(f, o, v)| format!("{f} {o} {v}"));
        leaf.prop_recursive(4, 24, 2, |inner| {
            prop_oneof![
                (inner.clone(), prop::sample::select(&["AND", "or"][..]), inner.clone())
                    .prop_map(|(a, k, b)| format!("{a} {k} {b}")),
                inner.clone().prop_map(|c| format!("({c})")),
                inner.prop_map(|c| format!("NOT {c}")),
            ]
        })
    }

    proptest! {
        #[test]
        fn invariants_hold_for_cql_like_text(cql in cql_soup()) {
            check_invariants(&cql, &spaces());
        }

        #[test]
        fn invariants_hold_for_any_text(cql in any::<String>()) {
            check_invariants(&cql, &spaces());
        }

        #[test]
        fn well_formed_queries_are_accepted_verbatim(query in clause(), order in prop::option::of("title|created DESC")) {
            let cql = match &order {
                Some(order) => format!("{query} ORDER BY {order}"),
                None => query.clone(),
            };
            let confined = confine(&cql, &spaces()).map_err(|e| TestCaseError::fail(format!("{cql:?}: {e}")))?;
            prop_assert!(confined.starts_with(&format!("({query}) AND space in (")), "{}", confined);
            check_invariants(&cql, &spaces());
        }

        #[test]
        fn tokens_cover_the_text_but_whitespace(cql in cql_soup()) {
            let Ok(tokens) = tokenize(&cql) else { return Ok(()) };
            let mut end = 0;
            for token in &tokens {
                prop_assert!(token.start < token.end && cql[end..token.start].trim().is_empty(), "{:?}", token);
                end = token.end;
            }
            prop_assert!(cql[end..].trim().is_empty());
        }
    }
}
