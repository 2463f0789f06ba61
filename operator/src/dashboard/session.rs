//! Server-side sessions: a random id in an HttpOnly cookie names a record
//! kept here, with the user, their role and the session's CSRF token.
//! Nothing about the user is in the cookie, so logging out or expiring ends
//! the session for good.

use crate::config::DashboardRole;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const COOKIE: &str = "harmony_session";

/// Sessions beyond this many are refused until some expire: a bound on
/// memory however many logins arrive.
const MAX_SESSIONS: usize = 10_000;

#[derive(Debug, Clone)]
pub struct Session {
    pub user: String,
    pub role: DashboardRole,
    /// Sent back with every state-changing request (header or form field).
    pub csrf: String,
    created: Instant,
    last_seen: Instant,
}

#[derive(Debug)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    idle: Duration,
    max_age: Duration,
}

/// 32 bytes from the OS's CSPRNG, hex: unguessable session ids and tokens.
pub fn random_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes)?;
    Ok(hex::encode(bytes))
}

/// Equal in time whatever the inputs share: tokens are compared without
/// telling an attacker how many leading characters were right.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Sessions {
    pub fn new(idle: Duration, max_age: Duration) -> Self {
        Self { map: Mutex::new(HashMap::new()), idle, max_age }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding the lock cannot leave a half-written session.
        self.map.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn live(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.last_seen) < self.idle && now.duration_since(s.created) < self.max_age
    }

    /// A new session; `None` when the table is full of live sessions or the
    /// OS has no randomness to give.
    pub fn create(&self, user: &str, role: DashboardRole) -> Option<(String, Session)> {
        let id = random_token().ok()?;
        let csrf = random_token().ok()?;
        let now = Instant::now();
        let session = Session { user: user.to_string(), role, csrf, created: now, last_seen: now };
        let mut map = self.lock();
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| {
                now.duration_since(s.last_seen) < self.idle && now.duration_since(s.created) < self.max_age
            });
            if map.len() >= MAX_SESSIONS {
                log::warn!("dashboard: {MAX_SESSIONS} live sessions; refusing another login");
                return None;
            }
        }
        map.insert(id.clone(), session.clone());
        Some((id, session))
    }

    /// The live session with this id, its idle clock restarted.
    pub fn touch(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let mut map = self.lock();
        let alive = map.get(id).map(|s| self.live(s, now))?;
        if !alive {
            map.remove(id);
            return None;
        }
        let s = map.get_mut(id)?;
        s.last_seen = now;
        Some(s.clone())
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    pub fn max_age(&self) -> Duration {
        self.max_age
    }
}

/// The `Set-Cookie` value for a session id (empty id and `Max-Age=0` clear it).
pub fn cookie(id: &str, max_age: Duration, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}", max_age.as_secs())
}

/// The session id from a request's `Cookie` headers, if any.
pub fn id_from_headers(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_when_idle_and_can_be_removed() {
        let s = Sessions::new(Duration::from_millis(50), Duration::from_secs(60));
        let (id, made) = s.create("alice", DashboardRole::Admin).unwrap();
        assert_eq!(id.len(), 64);
        assert_ne!(made.csrf, id);
        assert_eq!(s.touch(&id).unwrap().user, "alice");
        std::thread::sleep(Duration::from_millis(80));
        assert!(s.touch(&id).is_none());
        let (id, _) = s.create("bob", DashboardRole::Viewer).unwrap();
        s.remove(&id);
        assert!(s.touch(&id).is_none());
    }

    #[test]
    fn cookie_is_httponly_strict_and_parses_back() {
        let c = cookie("abc", Duration::from_secs(10), true);
        assert!(c.contains("HttpOnly") && c.contains("SameSite=Strict") && c.contains("Secure"));
        let mut h = axum::http::HeaderMap::new();
        h.insert(axum::http::header::COOKIE, "x=1; harmony_session=abc; y=2".parse().unwrap());
        assert_eq!(id_from_headers(&h).as_deref(), Some("abc"));
        assert!(same_token("abc", "abc") && !same_token("abc", "abd") && !same_token("abc", "ab"));
    }
}
