//! Tokens: minting and verifying HS256 JWTs, and what each role may do.

use chrono::{DateTime, TimeZone, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use livevote_protocol::{Channel, ChannelKind, Role};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The claims of a livevote token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Claims {
    pub sub: Uuid,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streamer_id: Option<Uuid>,
    pub iat: i64,
    pub exp: i64,
}

impl Claims {
    pub fn expires_at(&self) -> DateTime<Utc> {
        Utc.timestamp_opt(self.exp, 0)
            .single()
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// Whether this token may subscribe to `channel` (docs/contract.md §3 role table).
    pub fn may_subscribe(&self, channel: &Channel) -> bool {
        match channel.kind {
            ChannelKind::Streamer | ChannelKind::Game => true,
            ChannelKind::User => self.role == Role::Admin || channel.id == self.sub,
        }
    }

    /// The initial balance this token's user gets when the ledger first learns it: viewers
    /// and streamers get `configured`; workers and admins, who run the product rather than
    /// watch it, get nothing (an admin who wants to vote credits itself).
    pub fn initial_balance(&self, configured: i64) -> i64 {
        match self.role {
            Role::Viewer | Role::Streamer => configured,
            Role::Worker | Role::Admin => 0,
        }
    }

    pub fn may_vote(&self) -> bool {
        matches!(self.role, Role::Viewer | Role::Streamer | Role::Admin)
    }

    pub fn may_create_events(&self) -> bool {
        matches!(self.role, Role::Worker | Role::Admin)
    }

    /// Whether this token may close an event of `streamer_id`.
    pub fn may_close(&self, streamer_id: Uuid) -> bool {
        match self.role {
            Role::Worker | Role::Admin => true,
            Role::Streamer => self.streamer_id == Some(streamer_id),
            Role::Viewer => false,
        }
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token missing")]
    Missing,
    #[error("token invalid")]
    Invalid,
    #[error("token expired")]
    Expired,
}

/// Signs and verifies tokens with the configured secret.
pub struct Authenticator {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Authenticator { .. }")
    }
}

/// How far in the future a token's `iat` may be: clocks of the hosts that mint tokens differ.
const ISSUED_AT_SKEW_SECONDS: i64 = 60;

impl Authenticator {
    pub fn new(secret: &str) -> Self {
        // Only HS256: a token that names another algorithm (`none` included) is refused.
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry is exact: the socket closes at `exp` and the API must agree with it.
        validation.leeway = 0;
        // Expiry is judged against the server's Clock in `verify` (which follows paused time in
        // tests), not against jsonwebtoken's own reading of the system time.
        validation.validate_exp = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        // Tokens minted elsewhere with the same secret and claims are accepted, and such a
        // token may name an audience; jsonwebtoken 9 would refuse any `aud` by default.
        validation.validate_aud = false;
        Authenticator {
            encoding: EncodingKey::from_secret(secret.as_bytes()),
            decoding: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    pub fn mint(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .expect("HS256 signing of plain claims cannot fail")
    }

    /// Verifies signature, algorithm and expiry (`now` in unix seconds).
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|error| match error.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        // jsonwebtoken accepts exp == now; the contract treats a token as expired at `exp`.
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        if claims.role == Role::Streamer && claims.streamer_id.is_none() {
            return Err(TokenError::Invalid);
        }
        // Issued in the future (beyond a minute of clock skew between minting hosts) or not
        // before it expires: not a token this server or a trusted backend would mint.
        if claims.iat > now + ISSUED_AT_SKEW_SECONDS || claims.iat >= claims.exp {
            return Err(TokenError::Invalid);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(role: Role, exp: i64) -> Claims {
        Claims {
            sub: Uuid::from_u128(7),
            role,
            streamer_id: None,
            iat: 0,
            exp,
        }
    }

    #[test]
    fn verifies_its_own_tokens_and_refuses_others() {
        let auth = Authenticator::new("a-secret-that-is-long-enough-for-hs256");
        let token = auth.mint(&claims(Role::Viewer, 2_000));
        assert_eq!(auth.verify(&token, 1_000).unwrap().role, Role::Viewer);
        assert_eq!(auth.verify(&token, 2_000), Err(TokenError::Expired));
        let other = Authenticator::new("another-secret-that-is-long-enough-hs");
        assert_eq!(other.verify(&token, 1_000), Err(TokenError::Invalid));
        assert_eq!(auth.verify("", 1_000), Err(TokenError::Missing));
        assert_eq!(auth.verify("not.a.jwt", 1_000), Err(TokenError::Invalid));
    }

    #[test]
    fn refuses_tokens_issued_in_the_future_or_not_before_they_expire() {
        let auth = Authenticator::new("a-secret-that-is-long-enough-for-hs256");
        let issued = |iat: i64, exp: i64| {
            auth.mint(&Claims {
                iat,
                ..claims(Role::Viewer, exp)
            })
        };
        assert!(auth.verify(&issued(1_000, 5_000), 1_000).is_ok());
        assert!(
            auth.verify(&issued(1_050, 5_000), 1_000).is_ok(),
            "skew allowed"
        );
        assert_eq!(
            auth.verify(&issued(2_000, 5_000), 1_000),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            auth.verify(&issued(4_000, 3_000), 1_000),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn accepts_a_token_minted_elsewhere_that_names_an_audience() {
        let secret = "a-secret-that-is-long-enough-for-hs256";
        let auth = Authenticator::new(secret);
        let mut claims = serde_json::to_value(claims(Role::Viewer, 5_000)).unwrap();
        claims["aud"] = serde_json::json!("livevote");
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        assert_eq!(auth.verify(&token, 1_000).unwrap().role, Role::Viewer);
    }

    #[test]
    fn only_viewers_and_streamers_get_the_initial_balance() {
        assert_eq!(claims(Role::Viewer, 10).initial_balance(500), 500);
        assert_eq!(claims(Role::Streamer, 10).initial_balance(500), 500);
        assert_eq!(claims(Role::Worker, 10).initial_balance(500), 0);
        assert_eq!(claims(Role::Admin, 10).initial_balance(500), 0);
    }

    #[test]
    fn refuses_alg_none() {
        let auth = Authenticator::new("a-secret-that-is-long-enough-for-hs256");
        let payload = serde_json::to_vec(&claims(Role::Admin, i64::MAX / 2)).unwrap();
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        use base64::Engine;
        let token = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode(&payload)
        );
        assert_eq!(auth.verify(&token, 1_000), Err(TokenError::Invalid));
    }

    #[test]
    fn role_rules() {
        let viewer = claims(Role::Viewer, 10);
        assert!(viewer.may_subscribe(&Channel::user(viewer.sub)));
        assert!(!viewer.may_subscribe(&Channel::user(Uuid::from_u128(8))));
        assert!(!viewer.may_close(Uuid::from_u128(1)));
        let streamer = Claims {
            streamer_id: Some(Uuid::from_u128(1)),
            ..claims(Role::Streamer, 10)
        };
        assert!(streamer.may_close(Uuid::from_u128(1)));
        assert!(!streamer.may_close(Uuid::from_u128(2)));
        assert!(claims(Role::Admin, 10).may_subscribe(&Channel::user(Uuid::from_u128(8))));
        assert!(!claims(Role::Worker, 10).may_vote());
    }
}
