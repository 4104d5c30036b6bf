//! tokengate: an authenticating reverse proxy for Confluence.
//!
//! Scripts present gateway API tokens (`tgw_...`) with HTTP Basic or Bearer;
//! the gateway verifies them, applies their restrictions, and forwards the
//! request to Confluence as the token's user. Everything that is not a
//! gateway token passes through untouched.
//!
//! # Request flow
//!
//! 1. [`server`] accepts a connection (TLS optional) and hands each request to
//!    [`pipeline::handle`].
//! 2. [`pipeline::canonical`] canonicalises the path once: it is both what is
//!    checked and what is forwarded.
//! 3. [`proxy::headers`] strips the identity and secret headers no client may set.
//! 4. [`routes`] serves the gateway's own routes: the probes, and the
//!    management API in [`admin`], which authenticates admins itself.
//! 5. [`auth::credentials`] decodes `Authorization`; [`auth::Verifier`] turns a
//!    `tgw_` secret into an [`auth::ActiveToken`] through the verified cache,
//!    the [`store`] and argon2.
//! 6. [`pipeline::authorize`] runs the token checks in SPEC order, then the
//!    token's [`rules`].
//! 7. [`proxy`] forwards to Confluence with the user's identity, or
//!    [`error`] answers with a reason code.
//! 8. [`record`] counts usage, queues the audit entry and updates metrics,
//!    off the request path.
//!
//! Tokens are created and deleted through [`tokens`], from the CLI ([`cli`])
//! or the management API ([`admin`]). [`config`] validates configuration once at start-up.
//! The [`store`] is SQLite for one process or PostgreSQL for several
//! replicas; [`server`]'s background tasks apply deletions made elsewhere
//! (pushed by PostgreSQL, and polled) and follow the stored settings.
//! `fuzzing` (hidden) holds the fuzz targets' bodies and invariants, shared
//! by `fuzz/` and the regression corpus replay in `cargo test`.

pub mod admin;
pub mod app;
pub mod auth;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod pipeline;
pub mod proxy;
pub mod record;
pub mod routes;
pub mod rules;
pub mod server;
pub mod store;
pub mod tokens;

pub use app::App;
pub use config::Config;
