//! The last check before forwarding (SPEC §2.7): a token confined to spaces
//! touches only those (§17).

use hyper::Request;

use super::Trail;
use crate::app::App;
use crate::auth::ActiveToken;
use crate::body::{Forwarded, RequestBody};
use crate::error::{GatewayError, Reason};
use crate::proxy::{ConnInfo, Identity};
use crate::record::{MAX_PATH_BYTES, bounded};
use crate::spaces::{AskAs, Confined, Verdict};
use crate::target::Target;

/// The last check (SPEC §2.7): a token confined to spaces touches only
/// those (§17). An allowed request of an enforced token is forwarded with
/// its query confined; a report-only token's request is forwarded as sent,
/// and reported when the spaces would refuse it.
pub(super) async fn confine<B: RequestBody>(
    app: &App,
    conn: &ConnInfo,
    req: Request<Forwarded<B>>,
    target: &mut Target,
    token: &ActiveToken,
    identity: &Identity,
    trail: &mut Trail,
) -> Result<Request<Forwarded<B>>, GatewayError> {
    let list = match &token.spaces {
        Ok(None) => return Ok(req),
        Ok(Some(list)) => list,
        Err(_) => {
            return Err(GatewayError::new(
                Reason::SpaceUnknown,
                format!(
                    "token '{}' has a space list that no longer parses; ask an admin to replace it",
                    token.label
                ),
            ));
        }
    };
    // Lookups are coalesced per user: the header's user, or a PAT's (whose
    // token is always bound).
    let user = match identity {
        Identity::User(user) => user.as_str(),
        _ => token.user.as_deref().unwrap_or_default(),
    };
    let ask_as = AskAs { identity, user, conn };
    let confined = Confined {
        label: &token.label,
        list,
    };
    // Not boxed: the confinement boxes what makes its future large (a body
    // read, a lookup), so a read of a cached id costs no allocation here.
    let (req, verdict) = app.spaces.confine(confined, req, target, ask_as).await?;
    match verdict {
        Verdict::Allowed { query: Some(query) } if token.enforce => target.set_query(query),
        Verdict::Allowed { query: Some(query) } => {
            let shown = bounded(&query, MAX_PATH_BYTES);
            tracing::info!("report-only token: forwarded as sent, though its spaces would forward the query {shown}");
            trail.detail = Some(format!("spaces would have forwarded the query {query}"));
        }
        Verdict::Allowed { query: None } => {}
        Verdict::Refused(error) if !token.enforce => {
            tracing::info!(
                reason = error.reason.code(),
                "report-only token: forwarded, though {}",
                bounded(&error.message, MAX_PATH_BYTES)
            );
            trail.detail = Some(error.message);
            trail.reported.get_or_insert(error.reason);
        }
        Verdict::Refused(error) => return Err(error),
    }
    Ok(req)
}
