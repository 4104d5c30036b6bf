//! Who changes tokens, and the audit entry each change leaves: written by
//! the token service itself, so a change made through the management API,
//! the page or the CLI is recorded the same way, once.

use std::net::IpAddr;

use super::Updated;
use crate::clock::EpochMs;
use crate::store::{AuditEntry, TokenRecord};

/// Who makes a change, how they came, and from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The user (or `cli`) the audit log names.
    pub name: String,
    pub came: Came,
    pub client_ip: Option<IpAddr>,
}

/// How an actor came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Came {
    /// With a gateway token, by its id.
    Token(String),
    /// With a password Confluence accepted.
    Password,
    /// Through the web page's session.
    Page,
    /// From the command line, run by this operating-system user.
    Cli { os_user: String },
}

impl Actor {
    /// The command line, run by the operating-system user in `$USER`.
    pub fn cli() -> Self {
        let os_user = std::env::var("USER").unwrap_or_else(|_| "unknown".to_owned());
        Actor {
            name: "cli".to_owned(),
            came: Came::Cli { os_user },
            client_ip: None,
        }
    }

    /// How the actor came, as the audit entry's detail starts.
    pub fn via(&self) -> String {
        match &self.came {
            Came::Token(id) => format!("via token {id}"),
            Came::Password => "via password".to_owned(),
            Came::Page => "via the web page".to_owned(),
            Came::Cli { os_user } => format!("via cli (os user {os_user})"),
        }
    }
}

/// A change to tokens, as it is recorded.
#[derive(Debug, Clone, Copy)]
pub(super) enum Change<'a> {
    /// A token was created (the record holds no value).
    Create(&'a TokenRecord),
    /// A token's restrictions changed.
    Update(&'a Updated),
    /// A token got a new secret (the record holds no value).
    Rotate(&'a TokenRecord),
    Delete(&'a TokenRecord),
    DeleteUser {
        user: &'a str,
        deleted: usize,
    },
}

impl Change<'_> {
    /// The audit entry of this change by `actor` at `at`. Never a token value.
    pub(super) fn entry(self, actor: &Actor, at: EpochMs) -> AuditEntry {
        let via = actor.via();
        let (action, token, detail) = match self {
            Change::Create(token) => {
                let user = token.user.as_deref().unwrap_or("(unbound)");
                ("create", Some(token), format!("{via}; token user {user}"))
            }
            Change::Update(updated) => ("update", Some(&updated.after), format!("{via}; {}", updated.changes())),
            Change::Rotate(token) => {
                let detail = match token.grace_until {
                    Some(until) => format!("{via}; the previous secret works until {until}"),
                    None => format!("{via}; the previous secret stopped at once"),
                };
                ("rotate", Some(token), detail)
            }
            Change::Delete(token) => ("delete", Some(token), via),
            Change::DeleteUser { user, deleted } => {
                ("delete_user", None, format!("{via}; {deleted} tokens of user {user}"))
            }
        };
        let mut entry = AuditEntry::management(at, &actor.name, action);
        entry.client_ip = actor.client_ip.map(|ip| ip.to_string());
        entry.token_id = token.map(|t| t.id.clone());
        entry.token_label = token.map(|t| t.label.clone());
        entry.detail = Some(detail);
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_change_names_its_actor_how_they_came_and_the_token() {
        let token = crate::store::test_record("t1", Some("alice"), 0);
        let admin = Actor {
            name: "admin".into(),
            came: Came::Token("t9".into()),
            client_ip: Some("10.0.0.7".parse().unwrap()),
        };
        let entry = Change::Create(&token).entry(&admin, 5);
        assert_eq!((entry.at, entry.user.as_deref()), (5, Some("admin")));
        assert_eq!(entry.decision, "create");
        assert_eq!(entry.token_id.as_deref(), Some("t1"));
        assert_eq!(entry.client_ip.as_deref(), Some("10.0.0.7"));
        assert_eq!(entry.detail.as_deref(), Some("via token t9; token user alice"));
        let cli = Actor {
            came: Came::Cli { os_user: "root".into() },
            ..Actor::cli()
        };
        let entry = Change::DeleteUser {
            user: "bob",
            deleted: 2,
        }
        .entry(&cli, 0);
        assert_eq!((entry.user.as_deref(), entry.token_id), (Some("cli"), None));
        assert_eq!(
            entry.detail.as_deref(),
            Some("via cli (os user root); 2 tokens of user bob")
        );
        let page = Actor {
            came: Came::Page,
            ..admin.clone()
        };
        let entry = Change::Delete(&token).entry(&page, 0);
        assert_eq!(entry.detail.as_deref(), Some("via the web page"));
    }
}
