//! Who may do what: namespaces (configured, default, strict), personal rooms, the subscribe
//! and publish policies, the token's `rooms` claim and subscription tokens, in one place.
//!
//! Every surface asks [`Access::check`] before it calls the node for a client: the v1
//! protocol today, SSE and the proxies later. The server API is trusted and does not ask. The
//! check is `async` so that a later policy may await the application backend's answer (the
//! subscribe and publish proxies) without changing its callers.

use switchboard_protocol::wire::{self, ErrorCode};

use crate::{
    auth::Verifier,
    config::{Config, NamespaceConfig, PublishPolicy, SubscribePolicy},
    error::Refused,
    handler::User,
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
