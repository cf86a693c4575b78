//! Who is syncing: the values the context variables of a rule stand for.

/// The security context of a connection: device → user → teams + role. The server builds it
/// from its own store; nothing a device sends can change it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SecurityContext {
    /// The user's name (`$user`).
    pub user: String,
    /// The user's teams (`$teams`).
    pub teams: Vec<String>,
    /// The user's role (`$role`): it also selects which rules apply.
    pub role: String,
    /// The device's fingerprint (`$device`).
    pub device: String,
}

impl SecurityContext {
    /// A context for `user`, member of `teams`, with `role`, syncing from `device` (its
    /// fingerprint).
    pub fn new(
        user: impl Into<String>,
        teams: impl IntoIterator<Item = impl Into<String>>,
        role: impl Into<String>,
        device: impl Into<String>,
    ) -> SecurityContext {
        SecurityContext {
            user: user.into(),
            teams: teams.into_iter().map(Into::into).collect(),
            role: role.into(),
            device: device.into(),
        }
    }
}
