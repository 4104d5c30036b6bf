//! tokengate: an authenticating reverse proxy for Confluence.
//!
//! Scripts present gateway API tokens (`tgw_...`) with HTTP Basic or Bearer;
//! the gateway verifies them, applies their restrictions, and forwards the
//! request to Confluence as the token's user. Everything that is not a
//! gateway token passes through untouched.
//!
//! # Request flow
//!
//! 1. `server` accepts a connection (TLS optional), closes it if no request
//!    head arrives in time, and hands each request, its body wrapped so that
//!    a stalled upload ends (`body`), to `pipeline::handle`.
//! 2. `target` canonicalises the path once: it is both what is checked and
//!    what is forwarded.
//! 3. `proxy::headers` strips the identity and secret headers no client may
//!    set; `pipeline::client_ip` finds the client IP (the socket peer, or
//!    `X-Forwarded-For` behind a trusted proxy).
//! 4. `pipeline` builds the request's `auth::RequestContext`: its target,
//!    client IP and connection, and its `Authorization` decoded once.
//!    `routes` serves the gateway's own routes: the probes, the management
//!    API in `routes::admin`, and the web page in `routes::ui`;
//!    `routes::cross_site` refuses calls another site's page made a browser
//!    send to them.
//! 5. Every door authenticates through `auth::Authenticator::authenticate`,
//!    saying what it accepts (`auth::Door`): a forwarded request a token
//!    (or anything else, passed through); the management API a token, a
//!    password or the page's session; the page's login a password. A `tgw_`
//!    secret is resolved through the connection's memo (a keep-alive
//!    connection repeating its last `Authorization`), else the verified
//!    cache, the `store` and argon2 (a client with too many failures gets
//!    429 first); then the token checks run in SPEC order and the token's
//!    `rules`, reading the body only for a JSON rule; `spaces` confines a
//!    token with spaces by its route table (the spaces a request touches,
//!    read as Confluence reads them; content ids' asked of Confluence,
//!    cached for reads; a search's CQL rewritten). Every stage that reads
//!    the body shares its one read and parse (`body::read_json`).
//! 6. `proxy` forwards to Confluence with the user's identity, or `error`
//!    builds the refusal with its reason code. The pipeline withholds an
//!    answer Confluence says it served as anyone but the token's user
//!    (`X-AUSERNAME`, `auth::served_as`), and a WebSocket upgrade
//!    becomes a tunnel (`proxy::tunnel`) that holds its connection's place
//!    and closes with its token.
//! 7. `record` counts usage and the metrics, and queues the audit entry: off
//!    the request path while the audit writer keeps up, waiting for room
//!    when its queue is full (an entry is never dropped). A failed attempt
//!    counts towards the client's throttle; a throttled client's refusals
//!    are counted per minute (`record::throttled`), and every entry and log
//!    line is bounded.
//!
//! Every change to a token, expiry warnings and throttled clients raise
//! events (`notify`): queued in the store, sent to the webhook by the
//! server's sender.
//!
//! Tokens are created, changed, rotated and deleted through `tokens`, which
//! records each change and who made it, from the command line (`cli`) or
//! the management API (`routes::admin`). `config` validates the
//! configuration once at start-up; `settings` holds the switches the
//! management API changes. The `store` is SQLite for one process or
//! PostgreSQL for several replicas; `server`'s background jobs apply
//! deletions made elsewhere (pushed by PostgreSQL, and polled) and follow
//! the stored settings.
//!
//! `confluence` makes the gateway's own calls to Confluence (whom a
//! credential authenticates, personal access tokens, a content id's space)
//! over `proxy`'s connections; `cookies` knows the page's session cookie as
//! headers carry it, for `auth` and `proxy` alike; `secrets` makes, hashes
//! and seals the secret material that `auth` verifies and `tokens` issues.
//!
//! The modules are private; what the binary, the benchmarks and the
//! integration tests use is re-exported here.

mod app;
mod auth;
mod backoff;
mod body;
mod cli;
mod clock;
mod config;
mod confluence;
mod cookies;
mod error;
#[cfg(any(fuzzing, test))]
pub mod fuzzing;
mod notify;
mod pipeline;
mod proxy;
mod record;
mod routes;
mod rules;
mod secrets;
mod server;
mod settings;
mod spaces;
mod store;
mod target;
mod tokens;

pub use app::{App, StartError};
pub use cli::{Cli, main};
pub use clock::{Clock, DAY_MS, Day, EpochMs, ManualClock, SystemClock, day_of, day_text};
pub use config::{Argon2Cost, Config, ForwardAs, Scope, TlsFiles, TokenAuth, Upstream};
pub use record::AuditLog;
pub use rules::{JsonBody, RequestHead, RuleSet, Verdict};
pub use server::run as serve;
pub use settings::SettingsChange;
pub use store::{
    AuditEntry, AuditKind, AuditOutcome, AuditQuery, ChangeKind, EventOutcome, EventRecord, ListedToken, NewEvent,
    ObservedCall, Page, PgStore, Restrictions, Rotation, SessionRecord, Settings, SqliteStore, StoreError, TokenChange,
    TokenOrder, TokenQuery, TokenRecord, TokenState, TokenStates, TokenStore, UsageDay, UsageDelta, open as open_store,
    open_for_serving as open_store_for_serving,
};
pub use tokens::{Actor, Came, CreatedToken, NewToken, RestrictionsChange, TokenError, Updated};

/// The pieces of the warm token path, for the benchmarks (`benches/`).
#[doc(hidden)]
pub mod bench {
    pub use crate::auth::Scheme;
    pub use crate::auth::decode::from_headers as credentials_from_headers;
    pub use crate::auth::{CheckContext, check_token};
    pub use crate::pipeline::{Connection, Next, Trail, decide};
    pub use crate::proxy::ConnInfo;
    pub use crate::record::Metrics;
    pub use crate::spaces::SpaceCache;
    pub use crate::spaces::resolve::plan as plan_spaces;
    pub use crate::target::canonical_path;
}
