//! Forwarding a checked request (SPEC §2.8) and holding its answer to the
//! token's user (§19); a protocol switch Confluence agreed to becomes a
//! tunnel that keeps its connection's place and closes when its token ends.

use std::sync::Arc;

use hyper::{Request, Response};

use super::{Connection, Trail};
use crate::app::App;
use crate::auth::ActiveToken;
use crate::error::{GatewayError, Reason};
use crate::proxy::{Identity, ResponseBody, UpstreamBody};
use crate::target::Target;

/// Forwards a checked request and checks whom Confluence served it as
/// (SPEC §19): an answer to a token request served as anyone else is
/// dropped unread. A protocol switch Confluence agreed to becomes a tunnel
/// that keeps the connection's place and closes when its token ends.
pub(super) async fn forward(
    app: &App,
    conn: &Connection,
    req: Request<UpstreamBody>,
    target: &Target,
    identity: Identity,
    trail: &Trail,
) -> Result<Response<ResponseBody>, GatewayError> {
    // Whom Confluence must serve a token request as: the header's user, or
    // the PAT's, whose token is always bound (fail closed if not).
    let expected = match (&identity, &trail.token) {
        (Identity::Passthrough, _) => None,
        (Identity::User(user), Some(token)) => Some((user.clone(), token)),
        (Identity::Pat(_), Some(token)) => match &token.user {
            Some(user) => Some((user.clone(), token)),
            None => return Err(GatewayError::internal(&"a PAT-mode token without a user")),
        },
        (_, None) => return Err(GatewayError::internal(&"a token request forwarded without its token")),
    };
    let answer = app
        .upstream
        .forward(req, target, identity, &conn.info, &conn.upstream)
        .await?;
    if let Some((user, token)) = &expected {
        app.identity_check
            .check(&answer.served_as, user, token, app.clock.now_ms())?;
    }
    if let Some(tunnel) = answer.tunnel {
        // Switching now would leave the client a tunnel closed at once.
        if app.tunnels.is_closing() {
            return Err(GatewayError::new(Reason::Unavailable, "the gateway is shutting down").retry_after(1));
        }
        let ends = trail.token.clone().map(|token| token_ends(app.clone(), token));
        app.tunnels.open(tunnel, conn.slot.clone(), ends);
    }
    Ok(answer.response)
}

/// Completes within [`TUNNEL_CHECK`] of `token` no longer holding: deleted,
/// expired, or rotated past its grace.
async fn token_ends(app: App, mut token: Arc<ActiveToken>) {
    let mut every = tokio::time::interval(TUNNEL_CHECK);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match app.auth.verifier().still_holds(&token).await {
            Ok(Some(fresh)) => token = fresh,
            Ok(None) => return,
            // The store did not answer: a deletion made here has flagged
            // the token already; one made elsewhere is seen once it answers.
            Err(e) => tracing::debug!(error = %e, "cannot read the tunnel's token again; will try again"),
        }
    }
}

/// How often a tunnel's token is looked at: well within the 1 s SPEC §12 allows.
const TUNNEL_CHECK: std::time::Duration = std::time::Duration::from_millis(200);
