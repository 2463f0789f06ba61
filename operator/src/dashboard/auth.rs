//! Who may log in: the users of the operator config, with argon2 password
//! hashes (PHC strings). Verifying is deliberately slow, so it runs off the
//! async workers, at most two at a time.

use crate::config::{DashboardRole, DashboardUser};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use std::sync::Arc;
use tokio::sync::Semaphore;

#[derive(Debug)]
pub struct Users {
    users: Vec<DashboardUser>,
    /// Checked against when the name is unknown, so a wrong name costs the
    /// same time as a wrong password and names cannot be probed.
    decoy: String,
    verifying: Arc<Semaphore>,
}

/// A PHC argon2id hash of `password` with a fresh random salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::getrandom(&mut salt).map_err(|e| format!("no randomness for a salt: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

fn verify(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

impl Users {
    pub fn new(users: Vec<DashboardUser>) -> Result<Self, String> {
        let decoy = hash_password("no user has this password")?;
        Ok(Self { users, decoy, verifying: Arc::new(Semaphore::new(2)) })
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The user's canonical name and role when the password is right.
    pub async fn check(&self, name: &str, password: &str) -> Option<(String, DashboardRole)> {
        let user = self.users.iter().find(|u| u.name == name).cloned();
        let hash = user.as_ref().map_or_else(|| self.decoy.clone(), |u| u.password_hash.clone());
        let password = password.to_string();
        let _permit = self.verifying.clone().acquire_owned().await.ok()?;
        let ok = tokio::task::spawn_blocking(move || verify(&hash, &password)).await.unwrap_or(false);
        match user {
            Some(u) if ok => Some((u.name, u.role)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn right_password_logs_in_wrong_one_and_unknown_user_do_not() {
        let hash = hash_password("s3cret").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        let users =
            Users::new(vec![DashboardUser { name: "alice".into(), password_hash: hash, role: DashboardRole::Admin }])
                .unwrap();
        assert_eq!(users.check("alice", "s3cret").await, Some(("alice".into(), DashboardRole::Admin)));
        assert_eq!(users.check("alice", "wrong").await, None);
        assert_eq!(users.check("mallory", "s3cret").await, None);
    }
}
