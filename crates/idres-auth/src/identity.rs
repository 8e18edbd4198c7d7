//! Identities: who a request speaks for.

use std::fmt;

use idres_model::Handle;

/// An administrator identity: the value `index` of `handle`, which holds
/// its key (HS_SECKEY or HS_PUBKEY).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Index of the key value.
    pub index: u32,
    /// The identity's handle.
    pub handle: Handle,
}

impl Identity {
    /// Parses `300:88.118.8/ADMIN`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (index, handle) = s
            .split_once(':')
            .ok_or_else(|| format!("identity {s:?} is not of the form index:handle"))?;
        let index = index
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|i| *i > 0)
            .ok_or_else(|| format!("identity {s:?} has no valid index before ':'"))?;
        let handle = Handle::parse(handle).map_err(|e| format!("identity {s:?}: {e}"))?;
        Ok(Self { index, handle })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.index, self.handle)
    }
}

/// The party behind a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// No credentials were presented.
    Anonymous,
    /// Credentials were presented and checked.
    Authenticated(Identity),
}

impl Caller {
    /// The identity, if authenticated.
    pub fn identity(&self) -> Option<&Identity> {
        match self {
            Caller::Anonymous => None,
            Caller::Authenticated(i) => Some(i),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities() {
        let i = Identity::parse("300:88.118.8/ADMIN").unwrap();
        assert_eq!(i.index, 300);
        assert_eq!(i.handle.key(), "88.118.8/ADMIN");
        assert_eq!(i.to_string(), "300:88.118.8/ADMIN");
        assert!(Identity::parse("88.118.8/ADMIN").is_err());
        assert!(Identity::parse("0:88.118.8/ADMIN").is_err());
        assert!(Identity::parse("x:88.118.8/ADMIN").is_err());
        assert!(Identity::parse("300:nohandle").is_err());
    }
}
