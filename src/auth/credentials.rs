//! Decoding `Authorization` into credentials (SPEC §2.5), finding gateway
//! tokens where no credential may be. Pure: no
//! I/O, no token knowledge beyond the `tgw_` prefix that marks a gateway
//! credential.

use std::sync::LazyLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hyper::HeaderMap;
use hyper::header::{AUTHORIZATION, HeaderValue};
use memchr::memmem;

use crate::secrets::TOKEN_PREFIX;

/// The scheme a credential arrived in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Basic,
    Bearer,
}

impl Scheme {
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Basic => "Basic",
            Scheme::Bearer => "Bearer",
        }
    }
}

/// What the client presented.
#[derive(PartialEq, Eq)]
pub enum Credentials {
    /// `Basic base64(user:secret)`.
    Basic { user: String, secret: String },
    /// `Bearer secret`.
    Bearer { secret: String },
    /// Any other scheme (Negotiate, Digest, ...): never a gateway credential.
    Other,
}

impl std::fmt::Debug for Credentials {
    /// Redacts the secret, so credentials can never leak through a `{:?}`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Basic { user, .. } => write!(f, "Basic({user:?}, <redacted>)"),
            Credentials::Bearer { .. } => f.write_str("Bearer(<redacted>)"),
            Credentials::Other => f.write_str("Other"),
        }
    }
}

impl Credentials {
    /// The secret and scheme if this looks like a gateway token (`tgw_` prefix).
    pub fn gateway_token(&self) -> Option<(&str, Scheme)> {
        let (secret, scheme) = match self {
            Credentials::Basic { secret, .. } => (secret, Scheme::Basic),
            Credentials::Bearer { secret } => (secret, Scheme::Bearer),
            Credentials::Other => return None,
        };
        secret.starts_with(TOKEN_PREFIX).then_some((secret.as_str(), scheme))
    }

    /// The Basic user name, if any.
    pub fn basic_user(&self) -> Option<&str> {
        match self {
            Credentials::Basic { user, .. } => Some(user),
            _ => None,
        }
    }
}

/// Why an `Authorization` header is malformed (400 `bad_credentials`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadCredentials {
    #[error("more than one Authorization header")]
    Repeated,
    #[error("the Authorization header is not visible ASCII")]
    NotAscii,
    #[error("Basic credentials are not valid base64")]
    BadBase64,
    #[error("Basic credentials are not UTF-8")]
    NotUtf8,
    #[error("Basic credentials have no ':' between user and secret")]
    NoColon,
    #[error("a gateway token must be sent as Basic user:token or Bearer token")]
    StrayToken,
    #[error("a gateway token must be sent in the Authorization header, not in the {0} query parameter")]
    TokenInQuery(&'static str),
    #[error("a gateway token must be sent in the Authorization header, not in {0}")]
    TokenInHeader(String),
}

/// Reads the credentials of a request: `Ok(None)` when there is no `Authorization`.
pub fn from_headers(headers: &HeaderMap) -> Result<Option<Credentials>, BadCredentials> {
    authorization(headers)?.map(decode).transpose()
}

/// The request's one `Authorization` value: `Ok(None)` without one, `Err`
/// when there are several.
pub fn authorization(headers: &HeaderMap) -> Result<Option<&HeaderValue>, BadCredentials> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(BadCredentials::Repeated);
    }
    Ok(Some(value))
}

/// Decodes one `Authorization` value.
pub fn decode(value: &HeaderValue) -> Result<Credentials, BadCredentials> {
    parse(value.to_str().map_err(|_| BadCredentials::NotAscii)?)
}

/// Parses one `Authorization` value. Scheme names are case-insensitive.
pub fn parse(value: &str) -> Result<Credentials, BadCredentials> {
    let value = value.trim();
    let (scheme, param) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    let param = param.trim_start_matches([' ', '\t']);
    let credentials = if scheme.eq_ignore_ascii_case("basic") {
        decode_basic(param)?
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Credentials::Bearer {
            secret: param.to_owned(),
        }
    } else {
        Credentials::Other
    };
    refuse_stray_token(value, &credentials)?;
    Ok(credentials)
}

/// A gateway token must never reach Confluence (SPEC §12), so a credential
/// that carries `tgw_` anywhere but is not a token in Basic or Bearer form
/// (a bare token, an unknown scheme, a token as the Basic user name) is
/// refused rather than passed through.
fn refuse_stray_token(raw: &str, credentials: &Credentials) -> Result<(), BadCredentials> {
    let stray = match credentials {
        Credentials::Basic { user, secret } => {
            user.contains(TOKEN_PREFIX) || (!secret.starts_with(TOKEN_PREFIX) && secret.contains(TOKEN_PREFIX))
        }
        Credentials::Bearer { secret } => !secret.starts_with(TOKEN_PREFIX) && secret.contains(TOKEN_PREFIX),
        Credentials::Other => raw.contains(TOKEN_PREFIX),
    };
    if stray { Err(BadCredentials::StrayToken) } else { Ok(()) }
}

/// Seraph's query-string login parameters: Confluence reads credentials there.
const SERAPH_PARAMETERS: [&str; 2] = ["os_password", "os_username"];

/// Refuses a gateway token anywhere but `Authorization`: in Seraph's
/// `os_password` / `os_username` query parameters, or as a word of any other
/// header's value (`Cookie: t=tgw_...`, `X-Api-Key: tgw_...`). Passed on, it
/// would land in Confluence's access logs, and a token must never reach
/// Confluence (SPEC §12).
pub fn refuse_tokens_elsewhere(headers: &HeaderMap, query: Option<&str>) -> Result<(), BadCredentials> {
    for (name, value) in headers {
        if name != AUTHORIZATION && has_token_word(value.as_bytes()) {
            return Err(BadCredentials::TokenInHeader(name.as_str().to_owned()));
        }
    }
    // Only a query that could name a Seraph parameter is decoded: one with
    // `os` in any case, or a percent-encoded byte (`%6Fs_password`).
    let could_name = |q: &&str| q.contains('%') || q.as_bytes().windows(2).any(|w| w.eq_ignore_ascii_case(b"os"));
    let Some(query) = query.filter(could_name) else {
        return Ok(());
    };
    // Names are compared decoded, as Tomcat reads them, and in any case:
    // a token must not reach Confluence's logs under any spelling.
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if let Some(parameter) = SERAPH_PARAMETERS.into_iter().find(|p| p.eq_ignore_ascii_case(&key))
            && value.contains(TOKEN_PREFIX)
        {
            return Err(BadCredentials::TokenInQuery(parameter));
        }
    }
    Ok(())
}

/// Whether Basic `authorization`'s password holds a gateway token (pasted
/// with spaces around it, too).
pub fn password_is_token(authorization: &HeaderValue) -> bool {
    match authorization.to_str().map(parse) {
        Ok(Ok(Credentials::Basic { secret, .. })) => secret.contains(TOKEN_PREFIX),
        // A token anywhere but as the whole password (`alice: tgw_...`).
        Ok(Err(BadCredentials::StrayToken)) => true,
        _ => false,
    }
}

/// Whether the token prefix starts a word of `value`: at its start, or
/// after a space, tab or one of `,;=:"'`. The searcher is built once: every
/// header of every request passes here.
fn has_token_word(value: &[u8]) -> bool {
    static PREFIX: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(TOKEN_PREFIX));
    PREFIX
        .find_iter(value)
        .any(|at| at == 0 || matches!(value[at - 1], b' ' | b'\t' | b',' | b';' | b'=' | b':' | b'"' | b'\''))
}

fn decode_basic(param: &str) -> Result<Credentials, BadCredentials> {
    let bytes = STANDARD.decode(param).map_err(|_| BadCredentials::BadBase64)?;
    let text = String::from_utf8(bytes).map_err(|_| BadCredentials::NotUtf8)?;
    let (user, secret) = text.split_once(':').ok_or(BadCredentials::NoColon)?;
    Ok(Credentials::Basic {
        user: user.to_owned(),
        secret: secret.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn basic(raw: &str) -> String {
        format!("Basic {}", STANDARD.encode(raw))
    }

    fn headers(values: &[&[u8]]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(AUTHORIZATION, HeaderValue::from_bytes(v).unwrap());
        }
        map
    }

    #[test]
    fn basic_secret_is_everything_after_the_first_colon() {
        let creds = parse(&basic("alice@example.com:tgw_a:b:c")).unwrap();
        assert_eq!(
            creds,
            Credentials::Basic {
                user: "alice@example.com".into(),
                secret: "tgw_a:b:c".into()
            }
        );
        assert_eq!(creds.gateway_token(), Some(("tgw_a:b:c", Scheme::Basic)));
        assert_eq!(creds.basic_user(), Some("alice@example.com"));
    }

    #[test]
    fn scheme_names_are_case_insensitive() {
        assert!(matches!(
            parse(&basic("a:b").replace("Basic", "bAsIc")),
            Ok(Credentials::Basic { .. })
        ));
        assert_eq!(
            parse("BEARER   tgw_x").unwrap(),
            Credentials::Bearer { secret: "tgw_x".into() }
        );
    }

    #[test]
    fn other_schemes_and_non_token_secrets_are_not_gateway_credentials() {
        assert_eq!(parse("Negotiate YIIG").unwrap(), Credentials::Other);
        assert_eq!(parse("Digest username=x").unwrap().gateway_token(), None);
        assert_eq!(parse(&basic("alice:password")).unwrap().gateway_token(), None);
        assert_eq!(
            parse("Bearer NjQ2MDc1NDk0OTQ6Confluence-PAT").unwrap().gateway_token(),
            None
        );
        assert_eq!(parse("Bearer").unwrap().gateway_token(), None);
    }

    #[test]
    fn malformed_basic_is_rejected() {
        assert_eq!(parse("Basic !!!"), Err(BadCredentials::BadBase64));
        assert_eq!(parse("Basic"), Err(BadCredentials::NoColon));
        assert_eq!(parse(&basic("no-colon")), Err(BadCredentials::NoColon));
        let not_utf8 = format!("Basic {}", STANDARD.encode([0xff, 0xfe, b':', b'x']));
        assert_eq!(parse(&not_utf8), Err(BadCredentials::NotUtf8));
    }

    #[test]
    fn tokens_in_any_other_form_are_refused_not_passed_through() {
        let token = "tgw_abcdefghijklmnopqrstuvwxyz0123456789";
        for value in [
            token.to_owned(),
            format!("Token {token}"),
            format!("Bearer x{token}"),
            basic(&format!("{token}:password")),
            basic(&format!("alice:my{token}")),
        ] {
            assert_eq!(parse(&value), Err(BadCredentials::StrayToken), "{value}");
        }
        // A tab is a separator like a space.
        assert_eq!(
            parse(&format!("Bearer\t{token}")).unwrap().gateway_token(),
            Some((token, Scheme::Bearer))
        );
        assert!(
            parse(&basic(&format!("alice:{token}")))
                .unwrap()
                .gateway_token()
                .is_some()
        );
        assert_eq!(parse(&basic("alice:tgw")).unwrap().gateway_token(), None);
    }

    #[test]
    fn header_level_errors() {
        assert_eq!(from_headers(&HeaderMap::new()), Ok(None));
        assert_eq!(
            from_headers(&headers(&[b"Bearer a", b"Bearer b"])),
            Err(BadCredentials::Repeated)
        );
        assert_eq!(
            from_headers(&headers(&[b"Bearer t\xe9st"])),
            Err(BadCredentials::NotAscii)
        );
    }

    #[test]
    fn tokens_in_other_headers_or_seraph_parameters_are_refused() {
        let token = "tgw_abcdefghijklmnopqrstuvwxyz0123456789";
        let with = |name: &str, value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                hyper::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
            headers
        };
        for (name, value) in [
            ("x-api-key", token.to_owned()),
            ("cookie", format!("JSESSIONID=abc; api={token}")),
            ("cookie", token.to_owned()),
            ("x-auth", format!("Token {token}")),
            ("x-auth", format!("\"{token}\"")),
        ] {
            assert_eq!(
                refuse_tokens_elsewhere(&with(name, &value), None),
                Err(BadCredentials::TokenInHeader(name.to_owned())),
                "{name}: {value}"
            );
        }
        // Authorization is decoded elsewhere; a word merely containing the prefix is not a token.
        assert_eq!(
            refuse_tokens_elsewhere(&with("authorization", &format!("Bearer {token}")), None),
            Ok(())
        );
        assert_eq!(refuse_tokens_elsewhere(&with("x-note", "mytgw_thing"), None), Ok(()));
        for (query, parameter) in [
            (format!("os_password={token}"), "os_password"),
            (
                format!("a=1&os_username=alice&os_password=%74gw_{}", &token[4..]),
                "os_password",
            ),
            (format!("os_username={token}"), "os_username"),
            (format!("os%5Fpassword=x{token}"), "os_password"),
            (format!("%6Fs_password={token}"), "os_password"),
            (format!("%6F%73%5F%75sername={token}"), "os_username"),
            (format!("OS_Password={token}"), "os_password"),
            (format!("x=1&o%53_password={token}"), "os_password"),
        ] {
            assert_eq!(
                refuse_tokens_elsewhere(&HeaderMap::new(), Some(&query)),
                Err(BadCredentials::TokenInQuery(parameter)),
                "{query}"
            );
        }
        for query in ["os_password=secret", "os_authType=basic", "cql=text~tgw_", "postcode=1"] {
            assert_eq!(
                refuse_tokens_elsewhere(&HeaderMap::new(), Some(query)),
                Ok(()),
                "{query}"
            );
        }
    }

    #[test]
    fn debug_redacts_secrets() {
        let creds = parse(&basic("alice:tgw_secretvalue")).unwrap();
        assert!(!format!("{creds:?}").contains("secretvalue"));
        let bearer = parse("Bearer tgw_secretvalue").unwrap();
        assert!(!format!("{bearer:?}").contains("secretvalue"));
    }
}
