//! Who may do what: namespaces (configured, default, strict), personal rooms, the subscribe
//! and publish policies, the token's `rooms` claim and subscription tokens, in one place.
//!
//! Every surface asks [`Access::check`] before it calls the node for a client: the v1
//! protocol and SSE. The server API is trusted and does not ask. The static policy here is
//! decided first; the application backend (the subscribe and publish proxies,
//! [`crate::proxy`]) is asked afterwards by the surface, which knows the connection's id and
//! may get replaced data back.

use switchboard_protocol::wire::{self, ErrorCode};

use crate::{
    auth::Verifier,
    config::{Config, NamespaceConfig, PublishPolicy, SubscribePolicy},
    conn::User,
    error::Refused,
};

/// What a client asks to do with a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action<'a> {
    /// Subscribe, with the subscription token the command carried, if any.
    Subscribe {
        /// The command's `token` field.
        token: Option<&'a str>,
    },
    /// Be subscribed at connect time because the token's `rooms` claim names the room.
    ClaimSubscribe,
    /// Publish; `subscribed`: whether the connection is subscribed to the room.
    Publish {
        /// The connection is subscribed to the room.
        subscribed: bool,
    },
    /// Read presence.
    Presence {
        /// The connection is subscribed to the room.
        subscribed: bool,
    },
    /// Read history.
    History {
        /// The connection is subscribed to the room.
        subscribed: bool,
    },
}

/// The access policy of a node's configuration.
#[derive(Debug)]
pub struct Access {
    config: Config,
    verifier: Verifier,
    default_namespace: NamespaceConfig,
}

impl Access {
    /// The policy of `config`, verifying tokens with `verifier`.
    pub fn new(config: Config, verifier: Verifier) -> Access {
        Access {
            config,
            verifier,
            default_namespace: NamespaceConfig::default(),
        }
    }

    /// The configuration the policy reads.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The token verifier.
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// Whether `room` is a personal room (`user:<id>` while personal rooms are on).
    pub fn is_personal(&self, room: &str) -> bool {
        self.config.personal_rooms && wire::namespace(room) == "user"
    }

    /// The personal room of `user`, if personal rooms are on and the user is not anonymous.
    pub fn personal_room(&self, user: &User) -> Option<String> {
        (self.config.personal_rooms && !user.id.is_empty()).then(|| format!("user:{}", user.id))
    }

    /// The options of `room`'s namespace, or `None` when strict namespaces refuse it.
    pub fn namespace(&self, room: &str) -> Option<&NamespaceConfig> {
        let ns = wire::namespace(room);
        match self.config.namespace(ns) {
            Some(n) => Some(n),
            None if self.config.strict_namespaces
                && !(ns == "user" && self.config.personal_rooms) =>
            {
                None
            }
            None => Some(&self.default_namespace),
        }
    }

    /// A valid room name in a namespace the node serves: `bad_room` or `unknown_namespace`
    /// otherwise. Every request about a room, trusted or not, passes this.
    pub fn room(&self, room: &str) -> Result<&NamespaceConfig, Refused> {
        valid_room(room)?;
        self.namespace(room).ok_or_else(|| {
            Refused::new(
                ErrorCode::UnknownNamespace,
                format!("namespace '{}' is not configured", wire::namespace(room)),
            )
        })
    }

    /// Whether `user` may do `action` with `room`; the room's namespace options if so.
    pub async fn check(
        &self,
        user: &User,
        room: &str,
        action: Action<'_>,
    ) -> Result<&NamespaceConfig, Refused> {
        let ns = self.room(room)?;
        let personal = self.is_personal(room);
        let namespace = wire::namespace(room);
        match action {
            Action::Subscribe { .. } | Action::ClaimSubscribe if personal => {
                if user.id.is_empty() || room["user:".len()..] != *user.id {
                    return Err(Refused::forbidden(
                        "only the user's own connections may subscribe to a personal room",
                    ));
                }
            }
            Action::ClaimSubscribe => {}
            Action::Subscribe { token } => self.subscribe_policy(ns, user, room, token)?,
            Action::Publish { .. } if personal => {
                return Err(Refused::forbidden(
                    "publishing to a personal room needs the server API",
                ));
            }
            Action::Publish { subscribed } => match ns.publish {
                PublishPolicy::Subscribers if !subscribed => {
                    return Err(Refused::not_subscribed(format!(
                        "publishing to '{room}' needs a subscription to it"
                    )));
                }
                PublishPolicy::Authenticated if user.id.is_empty() => {
                    return Err(Refused::forbidden("publishing needs an authenticated user"));
                }
                PublishPolicy::None => {
                    return Err(Refused::forbidden(format!(
                        "publishing to '{namespace}:*' needs the server API"
                    )));
                }
                _ => {}
            },
            Action::Presence { subscribed } => {
                if !subscribed {
                    return Err(Refused::not_subscribed(format!(
                        "presence of '{room}' needs a subscription to it"
                    )));
                }
                if !ns.presence {
                    return Err(Refused::forbidden(format!(
                        "presence is off for namespace '{namespace}'"
                    )));
                }
            }
            Action::History { subscribed } => {
                if !subscribed {
                    return Err(Refused::not_subscribed(format!(
                        "history of '{room}' needs a subscription to it"
                    )));
                }
            }
        }
        Ok(ns)
    }

    fn subscribe_policy(
        &self,
        ns: &NamespaceConfig,
        user: &User,
        room: &str,
        token: Option<&str>,
    ) -> Result<(), Refused> {
        match ns.subscribe {
            SubscribePolicy::Anyone => Ok(()),
            SubscribePolicy::Authenticated if user.id.is_empty() => Err(Refused::forbidden(
                "subscribing needs an authenticated user",
            )),
            SubscribePolicy::Authenticated => Ok(()),
            SubscribePolicy::Token => {
                let token = token.ok_or_else(|| {
                    Refused::forbidden("this namespace needs a subscription token in 'token'")
                })?;
                self.verifier
                    .verify_subscription_token(token, &user.id, room)
                    .map_err(|e| {
                        Refused::forbidden(format!("subscription token refused: {}", e.reason()))
                    })
            }
            SubscribePolicy::Claim if !user.rooms.iter().any(|r| r == room) => {
                Err(Refused::forbidden(
                    "this namespace allows only the rooms of the token's 'rooms' claim",
                ))
            }
            SubscribePolicy::Claim => Ok(()),
        }
    }
}

/// `bad_room` unless `room` is a valid room name.
pub fn valid_room(room: &str) -> Result<(), Refused> {
    wire::validate_room(room).map_err(|why| {
        Refused::new(
            ErrorCode::BadRoom,
            format!("room '{}': {why}", truncate(room)),
        )
    })
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::auth::{HmacAlgorithm, MintClaims, mint};

    const SECRET: &str = "switchboard-access-tests-secret-0123456789";

    fn access(configure: impl FnOnce(&mut Config)) -> Access {
        let mut config = Config::default();
        config.auth.secret = Some(SECRET.into());
        configure(&mut config);
        let verifier = Verifier::new(&config.auth).unwrap();
        Access::new(config, verifier)
    }

    fn user(id: &str, rooms: &[&str]) -> User {
        User {
            id: Arc::from(id),
            rooms: rooms.iter().map(|r| r.to_string()).collect(),
            ..User::default()
        }
    }

    fn ns(subscribe: SubscribePolicy, publish: PublishPolicy) -> NamespaceConfig {
        NamespaceConfig {
            subscribe,
            publish,
            ..NamespaceConfig::default()
        }
    }

    fn code(r: Result<&NamespaceConfig, Refused>) -> Option<&'static str> {
        r.err().map(|e| e.code.as_str())
    }

    const SUB: Action<'static> = Action::Subscribe { token: None };

    #[tokio::test]
    async fn personal_rooms_belong_to_their_user_only() {
        let a = access(|_| {});
        let alice = user("alice", &[]);
        assert_eq!(code(a.check(&alice, "user:alice", SUB).await), None);
        assert_eq!(
            code(a.check(&alice, "user:bob", SUB).await),
            Some("forbidden")
        );
        assert_eq!(
            code(a.check(&user("", &[]), "user:alice", SUB).await),
            Some("forbidden"),
            "anonymous connections have no personal room"
        );
        // A claim never grants another user's personal room, nor publishing to one's own.
        let claims_bob = user("alice", &["user:bob"]);
        assert_eq!(
            code(
                a.check(&claims_bob, "user:bob", Action::ClaimSubscribe)
                    .await
            ),
            Some("forbidden")
        );
        let publish = Action::Publish { subscribed: true };
        assert_eq!(
            code(a.check(&alice, "user:alice", publish).await),
            Some("forbidden")
        );
        assert_eq!(a.personal_room(&alice).as_deref(), Some("user:alice"));
        assert_eq!(a.personal_room(&user("", &[])), None);
        // Off: `user:` is a namespace like any other.
        let off = access(|c| c.personal_rooms = false);
        assert!(!off.is_personal("user:bob"));
        assert_eq!(code(off.check(&alice, "user:bob", SUB).await), None);
    }

    #[tokio::test]
    async fn subscribe_policies() {
        let a = access(|c| {
            c.namespaces.insert(
                "open".into(),
                ns(SubscribePolicy::Anyone, PublishPolicy::None),
            );
            c.namespaces.insert(
                "auth".into(),
                ns(SubscribePolicy::Authenticated, PublishPolicy::Subscribers),
            );
            c.namespaces.insert(
                "tok".into(),
                ns(SubscribePolicy::Token, PublishPolicy::None),
            );
            c.namespaces.insert(
                "claim".into(),
                ns(SubscribePolicy::Claim, PublishPolicy::None),
            );
        });
        let anon = user("", &[]);
        let alice = user("alice", &["claim:a"]);
        assert_eq!(code(a.check(&anon, "open:x", SUB).await), None);
        assert_eq!(code(a.check(&anon, "auth:x", SUB).await), Some("forbidden"));
        assert_eq!(code(a.check(&alice, "auth:x", SUB).await), None);
        assert_eq!(code(a.check(&alice, "claim:a", SUB).await), None);
        assert_eq!(
            code(a.check(&alice, "claim:b", SUB).await),
            Some("forbidden")
        );

        // Subscription tokens: missing, for another room, for this room.
        let refused = a.check(&alice, "tok:x", SUB).await.unwrap_err();
        assert!(refused.message.contains("'token'"), "{refused}");
        let token = |room: &str| {
            mint(
                SECRET.as_bytes(),
                HmacAlgorithm::HS256,
                &MintClaims {
                    sub: "alice".into(),
                    ttl: Some(std::time::Duration::from_secs(60)),
                    room: Some(room.into()),
                    ..MintClaims::default()
                },
            )
        };
        let other = token("tok:y");
        let action = Action::Subscribe {
            token: Some(&other),
        };
        let refused = a.check(&alice, "tok:x", action).await.unwrap_err();
        assert!(
            refused.message.starts_with("subscription token refused"),
            "{refused}"
        );
        let right = token("tok:x");
        let action = Action::Subscribe {
            token: Some(&right),
        };
        assert_eq!(code(a.check(&alice, "tok:x", action).await), None);
    }

    #[tokio::test]
    async fn publish_presence_and_history_rules() {
        let a = access(|c| {
            c.namespaces.insert(
                "feed".into(),
                ns(SubscribePolicy::Anyone, PublishPolicy::None),
            );
            c.namespaces.insert(
                "board".into(),
                ns(SubscribePolicy::Anyone, PublishPolicy::Authenticated),
            );
            let quiet = NamespaceConfig {
                presence: false,
                ..NamespaceConfig::default()
            };
            c.namespaces.insert("quiet".into(), quiet);
        });
        let alice = user("alice", &[]);
        let anon = user("", &[]);
        let publish = |subscribed| Action::Publish { subscribed };
        assert_eq!(
            code(a.check(&alice, "chat:x", publish(false)).await),
            Some("not_subscribed")
        );
        assert_eq!(code(a.check(&alice, "chat:x", publish(true)).await), None);
        assert_eq!(
            code(a.check(&alice, "feed:x", publish(true)).await),
            Some("forbidden")
        );
        assert_eq!(code(a.check(&alice, "board:x", publish(false)).await), None);
        assert_eq!(
            code(a.check(&anon, "board:x", publish(false)).await),
            Some("forbidden")
        );
        let presence = |subscribed| Action::Presence { subscribed };
        assert_eq!(
            code(a.check(&alice, "chat:x", presence(false)).await),
            Some("not_subscribed")
        );
        assert_eq!(
            code(a.check(&alice, "quiet:x", presence(true)).await),
            Some("forbidden")
        );
        let history = |subscribed| Action::History { subscribed };
        assert_eq!(
            code(a.check(&alice, "chat:x", history(false)).await),
            Some("not_subscribed")
        );
        assert_eq!(code(a.check(&alice, "chat:x", history(true)).await), None);
    }

    #[tokio::test]
    async fn rooms_and_strict_namespaces() {
        let strict = access(|c| {
            c.strict_namespaces = true;
            c.namespaces
                .insert("chat".into(), NamespaceConfig::default());
        });
        let alice = user("alice", &[]);
        assert_eq!(
            code(strict.check(&alice, "game:1", SUB).await),
            Some("unknown_namespace")
        );
        assert_eq!(code(strict.check(&alice, "chat:1", SUB).await), None);
        // Personal rooms are served even when their namespace is not listed.
        assert_eq!(code(strict.check(&alice, "user:alice", SUB).await), None);
        assert_eq!(code(strict.check(&alice, "", SUB).await), Some("bad_room"));
        let long = "é".repeat(200);
        let refused = strict.room(&long).unwrap_err();
        assert_eq!(refused.code.as_str(), "bad_room");
        assert!(refused.message.len() < 120, "{refused}");
    }
}
