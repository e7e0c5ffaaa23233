//! The second factor (API.md section 9): enrolling TOTP, recovery codes, turning it off, and
//! the login's second step. A code works once: the accepted time step and each recovery code
//! are spent in one conditional statement, so a replay fails on every instance.

use serde_json::json;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::{
    AccountError, Accounts, Caller, SignedIn,
    links::{new_token, token_hash},
    validate::Validator,
};
use crate::{
    audit::{Event, EventType},
    auth::{
        mfa::{self, Enrollment},
        tokens::Amr,
    },
    client::ClientInfo,
    db::entities::{totp_factor, user},
    session::challenge::Challenge,
};

/// How long a login waits for its second factor (`expires_in` of the `mfa_token`).
pub const CHALLENGE_SECS: i64 = 300;
/// Wrong codes that end a challenge.
const CHALLENGE_MAX_WRONG: u32 = 5;

/// A login that needs its second factor: the opaque token to finish it with.
#[derive(Debug, Clone)]
pub struct MfaChallenge {
    pub mfa_token: String,
    pub expires_in: i64,
}

/// What a login answered.
#[derive(Debug, Clone)]
pub enum LoginOutcome {
    SignedIn(Box<SignedIn>),
    SecondFactor(MfaChallenge),
}

/// The second step of a login, or the confirmation of a sensitive change.
#[derive(Debug, Clone)]
pub enum Proof {
    /// A 6-digit TOTP code.
    Totp(String),
    /// One of the recovery codes.
    RecoveryCode(String),
}

/// A digest of the password hash a challenge was started with (the hash itself stays out of
/// the session store).
fn password_check(user: &user::Model) -> String {
    hex::encode(&Sha256::digest(user.password_hash.expose().as_bytes())[..16])
}

fn now_secs() -> u64 {
    u64::try_from(crate::store::clock::now_secs()).unwrap_or(0)
}

impl Accounts {
    /// Starts TOTP enrollment: a new secret, pending until confirmed with a code from it.
    pub async fn enroll_totp(
        &self,
        caller: &Caller,
        password: Option<String>,
        client: &ClientInfo,
    ) -> Result<Enrollment, AccountError> {
        let mut v = Validator::new();
        let password = v.given_password("password", password);
        let password = v.finish(password)?;
        let user = &caller.user;
        if user.mfa_enabled_at.is_some() {
            return Err(AccountError::MfaAlreadyEnabled);
        }
        self.confirm_password(user, "password", password).await?;
        let secret = mfa::new_secret();
        let sealed = self.mfa.secrets.seal(user.id, &secret);
        if !self.db.mfa().start(user.id, sealed).await? {
            return Err(AccountError::MfaAlreadyEnabled);
        }
        let enrollment = mfa::enrollment(&secret, &self.mfa.issuer, &user.email)
            .map_err(|err| AccountError::Internal(err.into()))?;
        let event = Event::new(
            EventType::MfaEnrollmentStarted,
            Some(user.id),
            Some(caller.session_id),
        );
        self.audit.record(client, event).await;
        Ok(enrollment)
    }

    /// Confirms the pending enrollment with a first code: the second factor is on, and here are
    /// the recovery codes (shown once).
    pub async fn confirm_totp(
        &self,
        caller: &Caller,
        code: Option<String>,
        client: &ClientInfo,
    ) -> Result<Vec<String>, AccountError> {
        let mut v = Validator::new();
        let code = v.required("code", code);
        let code = v.finish(code)?;
        let user = &caller.user;
        let factor = self.db.mfa().factor(user.id).await?;
        let factor = factor
            .filter(|f| f.confirmed_at.is_none())
            .ok_or(AccountError::MfaNotPending)?;
        let secret = self.open_secret(&factor)?;
        let Some(step) = mfa::matching_step(&secret, &code, now_secs()) else {
            return Err(Validator::incorrect("code"));
        };
        let codes = mfa::new_recovery_codes();
        let hashes = codes.iter().map(|c| mfa::recovery_code_hash(c)).collect();
        if !self.db.mfa().confirm(user.id, step, hashes).await? {
            return Err(AccountError::MfaNotPending);
        }
        tracing::info!(user_id = %user.id, "second factor enabled");
        let event = Event::new(
            EventType::MfaEnabled,
            Some(user.id),
            Some(caller.session_id),
        );
        self.audit.record(client, event).await;
        Ok(codes)
    }

    /// New recovery codes in place of the old ones, with the password and a code.
    pub async fn regenerate_recovery_codes(
        &self,
        caller: &Caller,
        password: Option<String>,
        code: Option<String>,
        client: &ClientInfo,
    ) -> Result<Vec<String>, AccountError> {
        self.confirm_sensitive_change(caller, password, code)
            .await?;
        let codes = mfa::new_recovery_codes();
        let hashes = codes.iter().map(|c| mfa::recovery_code_hash(c)).collect();
        let user_id = caller.user.id;
        self.db
            .mfa()
            .replace_recovery_codes(user_id, hashes)
            .await?;
        let event = Event::new(
            EventType::MfaRecoveryCodesRegenerated,
            Some(user_id),
            Some(caller.session_id),
        );
        self.audit.record(client, event).await;
        Ok(codes)
    }

    /// Turns the second factor off, with the password and a code.
    pub async fn disable_totp(
        &self,
        caller: &Caller,
        password: Option<String>,
        code: Option<String>,
        client: &ClientInfo,
    ) -> Result<(), AccountError> {
        self.confirm_sensitive_change(caller, password, code)
            .await?;
        let user_id = caller.user.id;
        self.db.mfa().remove(user_id).await?;
        tracing::info!(user_id = %user_id, "second factor disabled");
        let event = Event::new(
            EventType::MfaDisabled,
            Some(user_id),
            Some(caller.session_id),
        );
        self.audit.record(client, event).await;
        Ok(())
    }

    /// Removes a user's second factor for them (a lost device), by an admin (`by`: the
    /// admin's id) or the command line (`by`: `cli`). Every session of the user ends.
    pub async fn reset_mfa(
        &self,
        user_id: Uuid,
        by: serde_json::Value,
        client: &ClientInfo,
    ) -> Result<(), AccountError> {
        self.get_user(user_id).await?;
        let removed = self.db.mfa().remove(user_id).await?;
        let revoked = self.sessions.revoke_all(user_id, None).await?;
        tracing::info!(user_id = %user_id, removed, revoked, "second factor reset");
        let detail = json!({"by": by, "had_factor": removed, "sessions_revoked": revoked});
        let event = Event::new(EventType::MfaReset, Some(user_id), None).detail(detail);
        self.audit.record(client, event).await;
        Ok(())
    }

    /// The password, then a TOTP or recovery code, each a field error when wrong (and counted
    /// in the account's backoff).
    async fn confirm_sensitive_change(
        &self,
        caller: &Caller,
        password: Option<String>,
        code: Option<String>,
    ) -> Result<(), AccountError> {
        let mut v = Validator::new();
        let password = v.given_password("password", password);
        let code = v.required("code", code);
        let (password, code) = v.finish(password.zip(code))?;
        let user = &caller.user;
        if user.mfa_enabled_at.is_none() {
            return Err(AccountError::MfaNotEnabled);
        }
        self.confirm_password(user, "password", password).await?;
        if self.spend_proof(user, &proof_of(code)).await? {
            return Ok(());
        }
        self.limits.login_failed(&user.email).await?;
        Err(Validator::incorrect("code"))
    }

    /// The second step of a login whose password was right: stores the challenge and returns
    /// its token.
    pub(super) async fn start_challenge(
        &self,
        user: &user::Model,
        client: &ClientInfo,
    ) -> Result<MfaChallenge, AccountError> {
        let mfa_token = new_token()?;
        let challenge = Challenge {
            user_id: user.id,
            password_check: password_check(user),
        };
        let key = token_hash(&mfa_token);
        self.challenges
            .create(&key, &challenge, CHALLENGE_SECS)
            .await?;
        self.metrics
            .logins
            .with_label_values(&["mfa_required"])
            .inc();
        let event = Event::new(EventType::LoginMfaRequired, Some(user.id), None);
        self.audit.record(client, event).await;
        Ok(MfaChallenge {
            mfa_token,
            expires_in: CHALLENGE_SECS,
        })
    }

    /// Finishes a login with its `mfa_token` and a TOTP or recovery code: a session exactly as
    /// a password login makes, its tokens saying `amr: ["pwd", "otp"]`.
    pub async fn finish_login(
        &self,
        mfa_token: Option<String>,
        code: Option<String>,
        recovery_code: Option<String>,
        client: &ClientInfo,
    ) -> Result<SignedIn, AccountError> {
        let mut v = Validator::new();
        let token = v.required("mfa_token", mfa_token);
        let proof = match (code, recovery_code) {
            (Some(code), None) => Some(Proof::Totp(code)),
            (None, Some(code)) => Some(Proof::RecoveryCode(code)),
            _ => {
                v.fail("code", "give either code or recovery_code");
                None
            }
        };
        let (token, proof) = v.finish(token.zip(proof))?;
        let key = token_hash(&token);
        let challenge = self.challenges.get(&key).await?;
        let user = match challenge {
            Some(challenge) => self.challenged_user(&challenge).await?,
            None => None,
        };
        let Some(user) = user else {
            self.challenges.take(&key).await?;
            return Err(AccountError::MfaInvalid);
        };
        if !self.spend_proof(&user, &proof).await? {
            let wrong = self.challenges.fail(&key, CHALLENGE_MAX_WRONG).await?;
            self.limits.login_failed(&user.email).await?;
            self.mfa_failed(&user, wrong, client).await;
            return Err(AccountError::MfaInvalid);
        }
        // Of two finishes with two good codes, one gets the session.
        if !self.challenges.take(&key).await? {
            return Err(AccountError::MfaInvalid);
        }
        self.signed_in_with_second_factor(user, &proof, client)
            .await
    }

    async fn signed_in_with_second_factor(
        &self,
        user: user::Model,
        proof: &Proof,
        client: &ClientInfo,
    ) -> Result<SignedIn, AccountError> {
        let signed_in = self
            .start_session(user, Amr::PasswordAndOtp, client)
            .await?;
        let (user_id, session_id) = (signed_in.user.id, signed_in.pair.access.sid);
        let method = match proof {
            Proof::Totp(_) => "totp",
            Proof::RecoveryCode(_) => "recovery_code",
        };
        let mut detail = json!({"method": method});
        if let Proof::RecoveryCode(_) = proof {
            detail["recovery_codes_left"] =
                json!(self.db.mfa().recovery_codes_left(user_id).await?);
        }
        tracing::info!(user_id = %user_id, session_id = %session_id, method, "login succeeded with a second factor");
        self.metrics.logins.with_label_values(&["ok"]).inc();
        let event =
            Event::new(EventType::MfaSucceeded, Some(user_id), Some(session_id)).detail(detail);
        self.audit.record(client, event).await;
        let event = Event::new(EventType::LoginSucceeded, Some(user_id), Some(session_id));
        self.audit.record(client, event).await;
        Ok(signed_in)
    }

    async fn mfa_failed(&self, user: &user::Model, wrong: u32, client: &ClientInfo) {
        tracing::info!(user_id = %user.id, wrong, "wrong second-factor code");
        self.metrics.logins.with_label_values(&["mfa_failed"]).inc();
        let detail = json!({"wrong_codes": wrong, "challenge_ended": wrong >= CHALLENGE_MAX_WRONG});
        let event = Event::new(EventType::MfaFailed, Some(user.id), None).detail(detail);
        self.audit.record(client, event).await;
    }

    /// The challenge's user, if it may still finish: enabled, second factor on, and the
    /// password unchanged since the first step.
    async fn challenged_user(
        &self,
        challenge: &Challenge,
    ) -> Result<Option<user::Model>, AccountError> {
        let user = self.db.users().find_by_id(challenge.user_id).await?;
        Ok(user.filter(|u| {
            !u.disabled
                && u.mfa_enabled_at.is_some()
                && password_check(u) == challenge.password_check
        }))
    }

    /// Checks and spends a code of `user`: the TOTP time step (once), or a recovery code.
    async fn spend_proof(&self, user: &user::Model, proof: &Proof) -> Result<bool, AccountError> {
        match proof {
            Proof::RecoveryCode(code) => {
                let hash = mfa::recovery_code_hash(code);
                Ok(self.db.mfa().spend_recovery_code(user.id, &hash).await?)
            }
            Proof::Totp(code) => {
                let factor = self.db.mfa().factor(user.id).await?;
                let Some(factor) = factor.filter(|f| f.confirmed_at.is_some()) else {
                    return Ok(false);
                };
                let secret = self.open_secret(&factor)?;
                match mfa::matching_step(&secret, code, now_secs()) {
                    Some(step) => Ok(self.db.mfa().spend_step(user.id, step).await?),
                    None => Ok(false),
                }
            }
        }
    }

    fn open_secret(&self, factor: &totp_factor::Model) -> Result<Vec<u8>, AccountError> {
        self.mfa.secrets.open(factor.user_id, &factor.secret_sealed).map_err(|err| {
            tracing::error!(user_id = %factor.user_id, error = %err, "TOTP secret does not open: is MFA_ENCRYPTION_KEY the key it was sealed with?");
            AccountError::Internal(err.into())
        })
    }

    /// Re-seals every TOTP secret under the current `MFA_ENCRYPTION_KEY` (after a rotation,
    /// with the old key as `MFA_ENCRYPTION_KEY_PREVIOUS`); how many were re-sealed.
    pub async fn reseal_mfa_secrets(&self) -> Result<usize, AccountError> {
        let mut resealed = 0;
        for factor in self.db.mfa().all_factors().await? {
            if !self.mfa.secrets.is_stale(&factor.secret_sealed) {
                continue;
            }
            let secret = self.open_secret(&factor)?;
            let sealed = self.mfa.secrets.seal(factor.user_id, &secret);
            if self
                .db
                .mfa()
                .reseal(factor.user_id, &factor.secret_sealed, sealed)
                .await?
            {
                resealed += 1;
            }
        }
        Ok(resealed)
    }
}

/// A code field: recovery codes are told apart from TOTP codes by their shape.
fn proof_of(code: String) -> Proof {
    if mfa::looks_like_recovery_code(&code) {
        Proof::RecoveryCode(code)
    } else {
        Proof::Totp(code)
    }
}
