//! The client side of SCRAM (RFC 5802, RFC 7677), as Kafka brokers speak it for
//! `SCRAM-SHA-256` and `SCRAM-SHA-512`: client-first, then client-final with the proof, then a
//! check of the server's signature, so a broker that does not know the password is refused too.
//! Pure logic: the bytes travel in SaslAuthenticate requests (see [`crate::wire`]).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ring::{hmac, pbkdf2};

/// Kafka refuses fewer iterations than this; more than [`MAX_ITERATIONS`] would let a hostile
/// broker burn our CPU on every connection.
const MIN_ITERATIONS: u32 = 4096;
const MAX_ITERATIONS: u32 = 1_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScramHash {
    Sha256,
    Sha512,
}

impl ScramHash {
    fn hmac(self) -> hmac::Algorithm {
        match self {
            Self::Sha256 => hmac::HMAC_SHA256,
            Self::Sha512 => hmac::HMAC_SHA512,
        }
    }

    fn pbkdf2(self) -> pbkdf2::Algorithm {
        match self {
            Self::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            Self::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }

    fn digest(self) -> &'static ring::digest::Algorithm {
        match self {
            Self::Sha256 => &ring::digest::SHA256,
            Self::Sha512 => &ring::digest::SHA512,
        }
    }

    fn len(self) -> usize {
        self.digest().output_len()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("server-first message is malformed: {0}")]
    ServerFirst(&'static str),
    #[error("the server's nonce does not extend ours")]
    Nonce,
    #[error("{0} iterations is outside {MIN_ITERATIONS}..={MAX_ITERATIONS}")]
    Iterations(u32),
    #[error("the server refused the credentials: {0}")]
    Refused(String),
    #[error("server-final message is malformed")]
    ServerFinal,
    #[error("the server's signature is wrong: it does not know this user's credentials")]
    ServerSignature,
}

/// One SCRAM conversation. The password lives only for the duration of the exchange.
pub struct ScramClient {
    hash: ScramHash,
    password: String,
    client_nonce: String,
    client_first_bare: String,
}

/// What the client-final message committed to: the server must sign `auth_message` with the
/// ServerKey derived from the password.
pub struct ExpectedServerSignature {
    server_key: hmac::Key,
    auth_message: String,
}

impl std::fmt::Debug for ExpectedServerSignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpectedServerSignature").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramClient").field("hash", &self.hash).field("password", &"<redacted>").finish()
    }
}

impl ScramClient {
    /// `nonce` must be fresh random printable ASCII without commas (base64 of random bytes).
    pub fn new(hash: ScramHash, username: &str, password: &str, nonce: String) -> Self {
        let client_first_bare = format!("n={},r={nonce}", escape_username(username));
        Self { hash, password: password.to_owned(), client_nonce: nonce, client_first_bare }
    }

    /// A client with a nonce from the system's random source.
    pub fn with_random_nonce(
        hash: ScramHash,
        username: &str,
        password: &str,
    ) -> Result<Self, ring::error::Unspecified> {
        let mut bytes = [0u8; 24];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)?;
        Ok(Self::new(hash, username, password, B64.encode(bytes)))
    }

    /// `n,,n=USER,r=NONCE`: no channel binding, no authorization identity.
    pub fn client_first(&self) -> String {
        format!("n,,{}", self.client_first_bare)
    }

    /// The client-final message for the server's first answer, and the signature the server's
    /// final answer must carry.
    pub fn client_final(&self, server_first: &str) -> Result<(String, ExpectedServerSignature), ScramError> {
        let mut nonce = None;
        let mut salt = None;
        let mut iterations = None;
        for attribute in server_first.split(',') {
            match attribute.split_once('=') {
                Some(("r", v)) => nonce = Some(v),
                Some(("s", v)) => {
                    salt = Some(B64.decode(v).map_err(|_| ScramError::ServerFirst("salt is not base64"))?)
                }
                Some(("i", v)) => {
                    iterations = Some(v.parse::<u32>().map_err(|_| ScramError::ServerFirst("iterations"))?);
                }
                Some(("e", v)) => return Err(ScramError::Refused(v.to_owned())),
                Some(("m", _)) => return Err(ScramError::ServerFirst("mandatory extension")),
                _ => {}
            }
        }
        let nonce = nonce.ok_or(ScramError::ServerFirst("no nonce"))?;
        let salt = salt.ok_or(ScramError::ServerFirst("no salt"))?;
        let iterations = iterations.ok_or(ScramError::ServerFirst("no iteration count"))?;
        if nonce.len() <= self.client_nonce.len() || !nonce.starts_with(&self.client_nonce) {
            return Err(ScramError::Nonce);
        }
        if !(MIN_ITERATIONS..=MAX_ITERATIONS).contains(&iterations) {
            return Err(ScramError::Iterations(iterations));
        }
        let rounds = std::num::NonZeroU32::new(iterations).ok_or(ScramError::Iterations(iterations))?;

        let mut salted = vec![0u8; self.hash.len()];
        pbkdf2::derive(self.hash.pbkdf2(), rounds, &salt, self.password.as_bytes(), &mut salted);
        let salted = hmac::Key::new(self.hash.hmac(), &salted);
        let client_key = hmac::sign(&salted, b"Client Key");
        let stored_key = ring::digest::digest(self.hash.digest(), client_key.as_ref());
        // "biws" is base64("n,,"): the GS2 header of client-first, bound into the proof.
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let client_signature =
            hmac::sign(&hmac::Key::new(self.hash.hmac(), stored_key.as_ref()), auth_message.as_bytes());
        let proof: Vec<u8> = client_key.as_ref().iter().zip(client_signature.as_ref()).map(|(k, s)| k ^ s).collect();
        let server_key = hmac::Key::new(self.hash.hmac(), hmac::sign(&salted, b"Server Key").as_ref());
        Ok((format!("{without_proof},p={}", B64.encode(proof)), ExpectedServerSignature { server_key, auth_message }))
    }
}

impl ExpectedServerSignature {
    /// Checks `v=SIGNATURE` (or reports `e=ERROR`), in constant time.
    pub fn verify(&self, server_final: &str) -> Result<(), ScramError> {
        let mut verifier = None;
        for attribute in server_final.split(',') {
            match attribute.split_once('=') {
                Some(("e", v)) => return Err(ScramError::Refused(v.to_owned())),
                Some(("v", v)) => verifier = Some(B64.decode(v).map_err(|_| ScramError::ServerFinal)?),
                _ => {}
            }
        }
        let verifier = verifier.ok_or(ScramError::ServerFinal)?;
        hmac::verify(&self.server_key, self.auth_message.as_bytes(), &verifier).map_err(|_| ScramError::ServerSignature)
    }
}

/// RFC 5802 5.1: `=` and `,` in a username are written `=3D` and `=2C`.
fn escape_username(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 section 3, SCRAM-SHA-256 with user "user" and password "pencil".
    #[test]
    fn rfc7677_sha256_conversation() {
        let client = ScramClient::new(ScramHash::Sha256, "user", "pencil", "rOprNGfwEbeRWgbNEkqO".into());
        assert_eq!(client.client_first(), "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let server_first = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
        let (client_final, expected) = client.client_final(server_first).expect("client-final");
        assert_eq!(
            client_final,
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        expected.verify("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=").expect("server signature");
        assert_eq!(expected.verify("v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="), Err(ScramError::ServerSignature));
        assert_eq!(expected.verify("e=invalid-proof"), Err(ScramError::Refused("invalid-proof".into())));
        assert_eq!(expected.verify("x=1"), Err(ScramError::ServerFinal));
    }

    /// SHA-512 has no RFC vector: the proof must differ from SHA-256's and have 64 bytes, and
    /// the signature check must accept only its own signature.
    #[test]
    fn sha512_uses_its_own_digest() {
        let server_first = "r=abcdefXYZ,s=c2FsdA==,i=4096";
        let c256 = ScramClient::new(ScramHash::Sha256, "u", "p", "abcdef".into());
        let c512 = ScramClient::new(ScramHash::Sha512, "u", "p", "abcdef".into());
        let (f256, _) = c256.client_final(server_first).expect("256");
        let (f512, sig512) = c512.client_final(server_first).expect("512");
        let proof = |f: &str| B64.decode(f.rsplit_once("p=").expect("proof").1).expect("b64");
        assert_eq!(proof(&f256).len(), 32);
        assert_eq!(proof(&f512).len(), 64);
        let good = format!("v={}", B64.encode(hmac::sign(&sig512.server_key, sig512.auth_message.as_bytes())));
        sig512.verify(&good).expect("own signature");
    }

    #[test]
    fn hostile_server_first_is_refused() {
        let c = ScramClient::new(ScramHash::Sha256, "u", "p", "abc".into());
        assert_eq!(c.client_final("r=zzz123,s=c2FsdA==,i=4096").map(|_| ()), Err(ScramError::Nonce));
        assert_eq!(c.client_final("r=abc,s=c2FsdA==,i=4096").map(|_| ()), Err(ScramError::Nonce), "nonce not extended");
        assert_eq!(c.client_final("r=abcd,s=c2FsdA==,i=10").map(|_| ()), Err(ScramError::Iterations(10)));
        assert_eq!(
            c.client_final("r=abcd,s=c2FsdA==,i=4000000000").map(|_| ()),
            Err(ScramError::Iterations(4_000_000_000))
        );
        assert!(matches!(c.client_final("r=abcd,s=!!,i=4096"), Err(ScramError::ServerFirst(_))));
        assert!(matches!(c.client_final("r=abcd,i=4096"), Err(ScramError::ServerFirst("no salt"))));
        assert!(matches!(c.client_final("m=ext,r=abcd,s=c2FsdA==,i=4096"), Err(ScramError::ServerFirst(_))));
        assert_eq!(c.client_final("e=unknown-user").map(|_| ()), Err(ScramError::Refused("unknown-user".into())));
    }

    #[test]
    fn usernames_are_escaped_and_passwords_never_printed() {
        let c = ScramClient::new(ScramHash::Sha512, "a=b,c", "hunter2", "n".into());
        assert_eq!(c.client_first(), "n,,n=a=3Db=2Cc,r=n");
        assert!(!format!("{c:?}").contains("hunter2"));
        let random = ScramClient::with_random_nonce(ScramHash::Sha256, "u", "p").expect("random");
        assert!(random.client_first().len() > "n,,n=u,r=".len() + 24);
    }
}
