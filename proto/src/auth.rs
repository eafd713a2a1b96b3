//! The cluster token: clients send `authorization: Bearer <token>` on every
//! call; servers refuse anything else with `Unauthenticated`.

use std::sync::Arc;

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Client side: adds the token to every request.
#[derive(Clone)]
pub struct BearerToken {
    header: MetadataValue<tonic::metadata::Ascii>,
}

impl BearerToken {
    /// Fails when the token is not printable ASCII (it goes in an HTTP header).
    pub fn new(token: &str) -> Result<Self, Status> {
        let header = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::invalid_argument("the cluster token must be printable ASCII"))?;
        Ok(BearerToken { header })
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        req.metadata_mut()
            .insert("authorization", self.header.clone());
        Ok(req)
    }
}

/// Server side: checks the token in constant time.
#[derive(Clone)]
pub struct TokenCheck {
    expected: Arc<Vec<u8>>,
}

impl TokenCheck {
    pub fn new(token: &str) -> Self {
        TokenCheck {
            expected: Arc::new(format!("Bearer {token}").into_bytes()),
        }
    }
}

impl Interceptor for TokenCheck {
    fn call(&mut self, req: Request<()>) -> Result<Request<()>, Status> {
        let Some(got) = req.metadata().get("authorization") else {
            return Err(Status::unauthenticated(
                "missing cluster token (authorization: Bearer <token>)",
            ));
        };
        if !constant_time_eq(got.as_bytes(), &self.expected) {
            return Err(Status::unauthenticated("wrong cluster token"));
        }
        Ok(req)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_check_accepts_only_the_token() {
        let mut check = TokenCheck::new("s3cret");
        let mut add = BearerToken::new("s3cret").unwrap();
        assert!(check.call(add.call(Request::new(())).unwrap()).is_ok());
        let mut wrong = BearerToken::new("s3cres").unwrap();
        let err = check
            .call(wrong.call(Request::new(())).unwrap())
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        let err = check.call(Request::new(())).unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }
}
